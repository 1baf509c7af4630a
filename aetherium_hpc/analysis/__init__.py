"""Merge, report and export of aetherium-hpc metrics databases.

``merge`` folds many per-task / per-node databases into one database of the same
schema; ``report`` turns one database (merged or not) into text, PNG, HTML and JSON;
``export`` writes tables and views as CSV or JSON. Only :mod:`.report.plots`
imports matplotlib, and only when a plot is drawn.
"""

from __future__ import annotations

from .merge import MergeResult, Skipped, merge

__all__ = ["MergeResult", "Skipped", "merge"]
