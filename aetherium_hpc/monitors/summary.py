"""The end-of-run summary: count, mean and max per metric, and the JSON file it is written to."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable
from typing import Any

from ..paths import replaced_atomically

log = logging.getLogger(__name__)

#: The summary's file name when ``output_path`` is a folder (an existing one, or a path ending in "/").
SUMMARY_FILE_NAME = "aetherium_resource_summary.json"

#: One bucket of one series, as the window hands it over: ((metric type, name, device), unit,
#: count, sum, max) of the samples in it.
Bucket = tuple[tuple[str, str, str], str, float, float, float]


class SampleSummary:
    """Count / mean / max per metric over the whole run, for the JSON summary written at stop.

    It is fed by the monitor's :class:`~.window.RecentWindow`, not sample by sample: each
    five-second bucket of the window is folded in (:meth:`fold`) as it leaves the window, and
    :meth:`as_dict` adds the buckets still in it. The sampling thread so does no work of its own
    for the summary at a tick. The window keeps its figures as 32-bit floats (7 significant
    digits, as the store writes them); the summary gives 6."""

    def __init__(self) -> None:
        # (metric_type, metric_name, device) -> [n, sum, max, unit]; the text key is made at the end only.
        self._acc: dict[tuple[str, str, str], list[Any]] = {}

    @staticmethod
    def key(metric_type: str, metric_name: str, device: str) -> str:
        # (fold() pools per-process rows: their device is blank here; GPUs stay apart)
        return f"{metric_type}/{metric_name}[{device}]" if device else f"{metric_type}/{metric_name}"

    def fold(self, bucket: Bucket) -> None:
        """Add one bucket of one series: see :data:`Bucket`."""
        _fold(self._acc, bucket)

    def as_dict(self, live: Iterable[Bucket] = ()) -> dict[str, dict[str, Any]]:
        """{"type/name[device]": {"unit", "n", "mean", "max"}}, sorted by key: what was folded in,
        and the buckets ``live`` not folded in yet."""
        acc = {key: list(entry) for key, entry in self._acc.items()}
        for bucket in live:
            _fold(acc, bucket)
        out = {}
        for key, (n, total, peak, unit) in acc.items():
            top, mean = _round(peak), _round(total / n)
            if top is not None and mean is not None:
                mean = min(mean, top)  # (32-bit sums: a mean is never shown above the peak)
            out[self.key(*key)] = {"unit": unit, "n": int(n), "mean": mean, "max": top}
        return dict(sorted(out.items()))


def _fold(acc: dict[tuple[str, str, str], list[Any]], bucket: Bucket) -> None:
    (mtype, mname, device), unit, n, total, peak = bucket
    key = (mtype, mname, "" if mtype == "process" else device)
    entry = acc.get(key)
    if entry is None:
        acc[key] = [n, total, peak, unit]
    else:
        entry[0] += n
        entry[1] += total
        if peak > entry[2]:
            entry[2] = peak


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
