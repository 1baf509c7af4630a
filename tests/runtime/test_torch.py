"""Real PyTorch (CPU): DataLoader workers that log, in a plain script.

PyTorch's DataLoader workers catch SIGTERM in C (``sigaction``, invisible to ``signal.getsignal``)
and exit 0 when their parent ends them at interpreter exit; the store's SIGTERM policy must not
replace that handler, or the parent's SIGCHLD handler raises "DataLoader worker ... is killed by
signal: Terminated" at exit. In CI torch must be installed (the test extra); elsewhere the tests
are skipped with the reason.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

if os.environ.get("CI"):
    import torch  # noqa: F401  (CI installs the test extra: a missing torch fails here)
else:
    pytest.importorskip("torch", reason="PyTorch is not installed: pip install -e '.[test]'")

from testenv import ROOT, SUPPORT

from aetherium_hpc.signal_policy import caught_outside_python  # noqa: E402


def run_script(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AETHERIUM_")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, str(SUPPORT / "torch_train.py"), *args], cwd=cwd, capture_output=True, text=True,
        timeout=180, env=env,
    )  # fmt: skip


def test_a_plain_script_with_dataloader_workers_exits_cleanly_and_keeps_every_row(tmp_path: Path) -> None:
    proc = run_script(str(tmp_path / "m.db"), "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # no "DataLoader worker ... killed by signal: Terminated" at exit
    conn = sqlite3.connect(tmp_path / "m.db")
    try:
        rows = conn.execute("SELECT metric_name, count(*) FROM training_rows GROUP BY 1 ORDER BY 1").fetchall()
    finally:
        conn.close()
    assert rows == [("item", 128), ("loss", 2)]


class _Probe:
    """A map-style dataset whose item is what the worker's kernel says of SIGTERM."""

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> bool:
        return caught_outside_python(signal.SIGTERM)


def test_a_c_level_sigterm_handler_is_seen_and_left_alone() -> None:
    from torch.utils.data import DataLoader

    assert not caught_outside_python(signal.SIGTERM)  # this process: nothing caught outside Python
    loader = DataLoader(_Probe(), batch_size=None, num_workers=1)  # type: ignore[arg-type]
    assert list(loader) == [True]  # a DataLoader worker: PyTorch's sigaction handler
