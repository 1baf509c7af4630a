"""The end-of-run summary: count, mean and max per metric, and the JSON file it is written to."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from typing import Any

from ..paths import replaced_atomically
from .base import Sample

log = logging.getLogger(__name__)

#: The summary's file name when ``output_path`` is a folder (an existing one, or a path ending in "/").
SUMMARY_FILE_NAME = "aetherium_resource_summary.json"


class SampleSummary:
    """Running count / mean / max per metric, for the JSON summary written at stop.

    :meth:`add` keeps the tick's list (not a copy) and folds the kept ticks in every
    :attr:`FOLD_EVERY` ticks: one pass over several ticks costs the sampling thread less
    than one pass a tick (each tick runs on caches gone cold since the last)."""

    FOLD_EVERY = 10

    def __init__(self) -> None:
        # (metric_type, metric_name, device) -> [n, sum, max, unit]; the text key is made at the end only.
        self._acc: dict[tuple[str, str, str], list[Any]] = {}
        self._ticks: list[Sequence[Sample]] = []  # added, not folded in yet

    @staticmethod
    def key(metric_type: str, metric_name: str, device: str) -> str:
        # (add() pools per-process rows: their device is blank here; GPUs stay apart)
        return f"{metric_type}/{metric_name}[{device}]" if device else f"{metric_type}/{metric_name}"

    def add(self, samples: Sequence[Sample]) -> None:
        ticks = self._ticks
        ticks.append(samples)
        if len(ticks) >= self.FOLD_EVERY:
            self._fold()

    def _fold(self) -> None:
        ticks, self._ticks = self._ticks, []
        acc = self._acc
        for samples in ticks:
            for mtype, mname, value, unit, device in samples:
                if value != value:  # NaN
                    continue
                key = (mtype, mname, "" if mtype == "process" else device)
                entry = acc.get(key)
                if entry is None:
                    acc[key] = [1, value, value, unit]
                else:
                    entry[0] += 1
                    entry[1] += value
                    if value > entry[2]:
                        entry[2] = value

    def as_dict(self) -> dict[str, dict[str, Any]]:
        self._fold()
        out = {
            self.key(*key): {"unit": unit, "n": n, "mean": _round(total / n), "max": _round(peak)}
            for key, (n, total, peak, unit) in self._acc.items()
        }
        return dict(sorted(out.items()))


def _round(value: float) -> float | None:
    return None if math.isinf(value) or value != value else float(f"{value:.6g}")


def summary_path(output_path: str | os.PathLike[str]) -> str:
    """Where the summary goes: ``output_path`` itself, or :data:`SUMMARY_FILE_NAME` inside it
    when it is a folder (one that exists, or a path ending in a separator)."""
    path = os.fspath(output_path)
    if path.endswith((os.sep, "/")) or os.path.isdir(path):
        return os.path.join(path, SUMMARY_FILE_NAME)
    return path


def write_summary(output_path: str, summary: dict[str, Any]) -> None:
    """Write ``summary`` as JSON to :func:`summary_path` of ``output_path``, atomically, through a
    fresh file of an unpredictable name (a link planted beside it in a shared folder is never
    followed); a failure is a warning (the run goes on)."""
    path = summary_path(output_path)
    try:
        if path != output_path:  # a folder: create it if it is a path ending in "/"
            os.makedirs(output_path, exist_ok=True)
        text = json.dumps(summary, indent=2, allow_nan=False) + "\n"
        with replaced_atomically(path) as part, open(part, "w", encoding="utf-8") as fh:
            fh.write(text)
    except (OSError, ValueError) as exc:
        log.warning("aetherium-hpc: could not write the monitor summary to %s: %s", path, exc)
