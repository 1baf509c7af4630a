"""What a collector is: the interface host.py and gpu.py implement, and the sample tuple.

Sampling and aggregation are kept apart (as in mlflow's system metrics): a
:class:`Collector` only reads one resource and appends sample tuples; the
:class:`~.monitor.ResourceMonitor` stamps them with the tick's time and hands them to the store
and its window of the last minute, which feeds the summary for the end-of-run JSON file.

A collector may split a tick in two: :meth:`Collector.read` runs at the tick and keeps what
must be read then (the bytes of a ``/proc`` file), :meth:`Collector.samples_from` turns that
into samples later, when the monitor processes several ticks in one go (see
:attr:`~.monitor.ResourceMonitor.batch_ticks`). A collector that only has :meth:`collect`
does all its work at the tick.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: (metric_type, metric_name, value, unit, device), as log_resource_samples takes it.
Sample = tuple[str, str, float, str, str]
SampleSink = Callable[[list[Sample], float], object]


class Collector:
    """Reads one resource. ``start`` runs once in the monitor thread, then ``collect`` each tick."""

    name = "collector"
    #: False once :meth:`start` found nothing to read (a GPU collector on a node without one): the
    #: monitor then leaves it out of its ticks.
    active = True

    def start(self) -> None:
        """Open handles and take the baselines that rates need (runs in the monitor thread)."""

    def collect(self, out: list[Sample], timestamp: float) -> None:
        """Append this tick's samples to ``out``."""
        raise NotImplementedError

    def read(self, timestamp: float) -> Any:
        """What this tick must read now; :meth:`samples_from` makes it samples later, in tick order.
        By default the whole of :meth:`collect`, at the tick."""
        out: list[Sample] = []
        self.collect(out, timestamp)
        return out

    def samples_from(self, reading: Any, out: list[Sample], timestamp: float) -> None:
        """Append the samples of one :meth:`read` (taken at ``timestamp``) to ``out``."""
        out.extend(reading)

    def close(self) -> None:
        """Release handles (runs in the monitor thread after the last tick)."""
