"""Report on one metrics database (a node database or a merged one): text, PNG, HTML, JSON.

:func:`build_report` reads the database read-only and computes everything into
:attr:`Report.data` (plain JSON-able values); :attr:`Report.text` is the summary for the
terminal; :meth:`Report.plots` renders PNGs with matplotlib's Agg backend (imported only
then); :meth:`Report.to_html` returns one self-contained page with the plots embedded as
base64 PNG, every string escaped with :func:`html.escape`. Nothing here prints: the
``report`` command (:mod:`..commands`) does.

The modules, in the order the data flows: :mod:`.load` (the database, and Slurm accounting
for jobs still marked running), :mod:`.compute` (statistics and advice), then the outputs
:mod:`.text`, :mod:`.plots` (the only matplotlib importer) and :mod:`.html`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from . import compute, html, load, plots, text
from .load import EmptyDatabaseError, Loaded

__all__ = ["EmptyDatabaseError", "Report", "build_report"]


@dataclass
class Report:
    """Everything :func:`build_report` found; ``data`` is JSON-able, ``text`` the terminal summary."""

    db: str
    data: dict[str, Any]
    text: str
    loaded: Loaded = field(repr=False)  # what the plots draw

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.data, indent=indent, allow_nan=False, default=str)

    def plots(self) -> dict[str, bytes]:
        """Each plot as PNG bytes, by name (only plots with data)."""
        return plots.pngs(self.data, self.loaded)

    def dashboard_png(self) -> bytes:
        """All plots in one PNG (two columns)."""
        return plots.dashboard_png(self.data, self.loaded)

    def to_html(self) -> str:
        return html.render(self.data, self.plots)


def build_report(db: str | os.PathLike[str], objective: str | None = None, label: str | None = None) -> Report:
    """Read ``db`` (read-only) and compute the report; :class:`EmptyDatabaseError` if it holds nothing.

    ``objective``: ``METRIC[:min|max]`` that ranks the tasks of an array (``val/loss:min``);
    default: the first validation loss, else the first metric that is not a learning rate.
    ``label``: what the report names as its database instead of the path (a central store's masked
    URL and filter, for the temporary file it was pulled into)."""
    path = os.path.abspath(os.fspath(db))
    loaded = load.read(path)
    sacct = load.resolve_unfinished(path, loaded.jobs)  # before the figures: it settles rows still "running"
    data = compute.conclude(loaded, sacct, objective)
    if label is not None:
        data["database"] = label
    return Report(path, data, text.render(data), loaded)
