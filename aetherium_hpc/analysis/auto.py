"""``report: {auto: true}``: a job that merges a run's databases and writes its report.

On Slurm it is submitted with ``--dependency=afterany:<job or array id>``, so it starts when
every task has ended (completed, failed, cancelled or timed out: their data is on disk too).
On the local backend it waits for the task processes to exit.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..paths import RunLayout

MERGED_DB = "merged.db"
REPORT_HTML = "report.html"
REPORT_PNG = "report.png"
REPORT_JSON = "report.json"


@dataclass
class MergeReportJob:
    """Picklable callable run as its own job: merge ``run_dir``'s databases, then report."""

    run_dir: str
    wait_for_pids: list[int] = field(default_factory=list)
    poll_s: float = 1.0

    def __call__(self) -> str:
        for pid in self.wait_for_pids:
            while process_alive(pid):
                time.sleep(self.poll_s)
        from .commands import run_report
        from .merge import merge

        layout = RunLayout(Path(self.run_dir))
        merged = layout.root / MERGED_DB
        result = merge([str(layout.db_dir)], merged, progress=False)
        print(result.summary())
        run_report(
            str(merged),
            plot=str(layout.root / REPORT_PNG),
            html=str(layout.root / REPORT_HTML),
            json_out=False,
            json_path=str(layout.root / REPORT_JSON),
            plot_dir=None,
            quiet=True,
        )
        return str(layout.root / REPORT_HTML)


def process_alive(pid: int) -> bool:
    """A process of that id exists and has not ended. Another user's process counts (signal 0
    is refused, not missing); a zombie -- ended, not reaped yet, like a finished child of ours
    -- does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        # Gone since the signal -- unless this system has no /proc to tell zombies by.
        return not os.path.isdir("/proc")
    except OSError:
        return False
