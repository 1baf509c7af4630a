"""The demo pipeline logs chunks and epochs through the store, from a fork Pool."""

from __future__ import annotations

from pathlib import Path

import pytest

import aetherium_hpc as ah
from aetherium_hpc.demo import pipeline


def test_pipeline_logs_every_chunk_and_epoch(tmp_path: Path) -> None:
    store = ah.init_db(tmp_path / "demo.db", flush_interval=0.2)
    result = pipeline.run(rounds=2, epochs=3, chunks=3, samples_per_chunk=32, workers=2, width=32)
    gen = store.query_generation_metrics(operation="signal_injection")
    assert sorted((r["round_number"], r["chunk_number"]) for r in gen) == [(r, c) for r in range(2) for c in range(3)]
    assert all(r["samples_generated"] == 32 and r["memory_used_mb"] > 0 for r in gen)
    assert {r["pid"] for r in gen} - {result["pid"]}, "chunks ran in worker processes"
    train = store.query_training_metrics()
    names = {(r["metric_name"], r["phase"]) for r in train}
    assert {("loss", "train"), ("loss", "val"), ("learning_rate", "train")} <= names
    assert len([r for r in train if r["metric_name"] == "loss" and r["phase"] == "train"]) == 2 * 3
    ah.shutdown_db()


@pytest.mark.filterwarnings("ignore:Metrics database not initialized")
def test_pipeline_learns_the_injected_signal() -> None:
    result = pipeline.run(rounds=1, epochs=5, chunks=2, samples_per_chunk=64, workers=1)
    assert result["val_accuracy"] > 0.7 and result["train_loss"] < 0.69
