"""Helpers of the monitor tests: waiting on a running monitor, and the child processes its tree follows."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from aetherium_hpc.monitors import ResourceMonitor


def wait_for(condition: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def wait_ticks(monitor: ResourceMonitor, n: int) -> None:
    """Wait for ``n`` more ticks, then have the monitor process them (it batches ticks): their
    samples are in the store's queue when this returns."""
    target = monitor.samples_taken + n
    wait_for(lambda: monitor.samples_taken >= target, what=f"{n} more ticks")
    monitor.process_pending()


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def parent_with_grandchild(children: list[subprocess.Popen[bytes]]) -> tuple[subprocess.Popen[bytes], int]:
    """A child that starts a grandchild (sleeping 60 s) and ends when its stdin is closed, leaving the
    grandchild re-parented out of the tree: (the child, the grandchild's pid)."""
    parent = subprocess.Popen(
        python(
            "import subprocess, sys\n"
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            "print(p.pid, flush=True)\n"
            "sys.stdin.readline()"
        ),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    children.append(parent)
    assert parent.stdout is not None and parent.stdin is not None
    return parent, int(parent.stdout.readline())
