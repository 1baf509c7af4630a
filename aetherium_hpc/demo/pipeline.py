"""The out-of-the-box pipeline: signal-injection data generation, then training rounds.

Per round: ``chunks`` chunks of noise arrays shaped (samples, 6, 16, width) are generated in a
fork Pool; half the samples get a narrow-band signal whose frequency drifts along the 16 rows.
Each worker returns a pooled spectral feature per sample (not the arrays) and logs its chunk
through the store it inherited. Then ``epochs`` epochs of logistic regression (numpy, full
batch) on those features log train loss, val loss and learning rate.

Runs in a few seconds on 2 cores with the defaults.
"""

from __future__ import annotations

import multiprocessing
import os
from typing import Any

import numpy as np
import psutil

from .. import log_data_generation_complete, log_data_generation_start, log_training_epoch_metric

__all__ = ["generate_chunk", "run"]

CHANNELS = 6
ROWS = 16
OPERATION = "signal_injection"


def _resident_mb() -> float:
    return float(psutil.Process().memory_info().rss) / 2**20


def generate_chunk(task: tuple[int, int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One chunk: (round, chunk, samples, width, seed) -> (features, labels); logs the chunk."""
    round_number, chunk_number, samples, width, seed = task
    start = log_data_generation_start(operation=OPERATION, round_number=round_number, chunk_number=chunk_number)
    rng = np.random.default_rng([seed, round_number, chunk_number])
    data = rng.standard_normal((samples, CHANNELS, ROWS, width)).astype(np.float32)
    labels = (rng.random(samples) < 0.5).astype(np.float64)
    x = np.arange(width, dtype=np.float32)
    for i in np.flatnonzero(labels):
        base = rng.uniform(0.1, 0.35)  # cycles per sample: a narrow band ...
        drift = rng.uniform(-0.004, 0.004)  # ... that drifts from row to row
        amplitude = rng.uniform(0.4, 0.8)
        phase = rng.uniform(0, 2 * np.pi)
        freqs = base + drift * np.arange(ROWS, dtype=np.float32)
        wave = amplitude * np.sin(2 * np.pi * freqs[:, None] * x[None, :] + phase)
        data[i] += wave[None, :, :].astype(np.float32)
    spectrum = np.abs(np.fft.rfft(data, axis=-1))  # (samples, 6, 16, width//2+1)
    pooled = spectrum.mean(axis=(1, 2))  # one spectral profile per sample
    features = np.log1p(pooled.max(axis=1, keepdims=True) / pooled.mean(axis=1, keepdims=True))
    features = np.concatenate([features, np.log1p(pooled)], axis=1)
    log_data_generation_complete(
        start_time=start,
        operation=OPERATION,
        samples_generated=samples,
        round_number=round_number,
        chunk_number=chunk_number,
        memory_used_mb=_resident_mb(),
    )
    return features.astype(np.float64), labels


def _loss(w: np.ndarray, b: float, x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray, float]:
    z = np.clip(x @ w + b, -30, 30)
    p = 1.0 / (1.0 + np.exp(-z))
    eps = 1e-9
    loss = float(-np.mean(y * np.log(p + eps) + (1 - y) * np.log(1 - p + eps)))
    grad = p - y
    return loss, x.T @ grad / len(y), float(grad.mean())


def run(
    rounds: int = 2,
    epochs: int = 5,
    chunks: int = 4,
    samples_per_chunk: int = 64,
    workers: int = 2,
    width: int = 64,
    learning_rate: float = 0.05,
    seed: int = 0,
) -> dict[str, Any]:
    """Generate data and train; returns the last round's losses and accuracy."""
    ctx = multiprocessing.get_context("fork")
    w: np.ndarray | None = None
    b = 0.0
    result: dict[str, Any] = {}
    for r in range(rounds):
        tasks = [(r, c, samples_per_chunk, width, seed) for c in range(chunks)]
        if workers > 1:
            pool = ctx.Pool(workers)
            try:
                parts = pool.map(generate_chunk, tasks)
                pool.close()
            except BaseException:
                pool.terminate()
                raise
            finally:
                pool.join()
        else:
            parts = [generate_chunk(t) for t in tasks]
        x = np.concatenate([p[0] for p in parts])
        y = np.concatenate([p[1] for p in parts])
        mean, std = x.mean(axis=0), x.std(axis=0) + 1e-9
        x = (x - mean) / std
        n_val = max(1, len(y) // 5)
        x_tr, y_tr, x_val, y_val = x[n_val:], y[n_val:], x[:n_val], y[:n_val]
        if w is None:
            w = np.zeros(x.shape[1])
        lr = learning_rate
        for e in range(epochs):
            for _ in range(20):  # a few full-batch steps per epoch
                loss, gw, gb = _loss(w, b, x_tr, y_tr)
                w -= lr * 10 * gw
                b -= lr * 10 * gb
            val_loss, _, _ = _loss(w, b, x_val, y_val)
            log_training_epoch_metric("loss", loss, round_number=r, epoch_number=e, phase="train")
            log_training_epoch_metric("loss", val_loss, round_number=r, epoch_number=e, phase="val")
            log_training_epoch_metric("learning_rate", lr, round_number=r, epoch_number=e, phase="train")
            lr *= 0.95
        accuracy = float(np.mean(((x_val @ w + b) > 0) == (y_val > 0.5)))
        log_training_epoch_metric("accuracy", accuracy, round_number=r, epoch_number=epochs - 1, phase="val")
        result = {"round": r, "train_loss": loss, "val_loss": val_loss, "val_accuracy": accuracy, "pid": os.getpid()}
    return result
