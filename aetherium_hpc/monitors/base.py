"""What a collector is: the interface host.py and gpu.py implement, and the sample tuple.

Sampling and aggregation are kept apart (as in mlflow's system metrics): a
:class:`Collector` only reads one resource and appends sample tuples; the
:class:`~.monitor.ResourceMonitor` stamps them with the tick's time, hands them to the store
and folds them into a summary for the end-of-run JSON file.
"""

from __future__ import annotations

from collections.abc import Callable

#: (metric_type, metric_name, value, unit, device), as log_resource_samples takes it.
Sample = tuple[str, str, float, str, str]
SampleSink = Callable[[list[Sample], float], object]


class Collector:
    """Reads one resource. ``start`` runs once in the monitor thread, then ``collect`` each tick."""

    name = "collector"

    def start(self) -> None:
        """Open handles and take the baselines that rates need (runs in the monitor thread)."""

    def collect(self, out: list[Sample], timestamp: float) -> None:
        """Append this tick's samples to ``out``."""
        raise NotImplementedError

    def close(self) -> None:
        """Release handles (runs in the monitor thread after the last tick)."""
