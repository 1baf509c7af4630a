"""What a merge did: :class:`MergeResult`, its summary line and exit code."""

from __future__ import annotations

from dataclasses import dataclass, field

#: Exit code of ``aetherium-hpc merge`` when one or more inputs were skipped.
SKIPPED_EXIT_CODE = 3


@dataclass(frozen=True)
class Skipped:
    """An input that was not merged, and why (one line)."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"skipped {self.path}: {self.reason}"


@dataclass
class MergeResult:
    """What :func:`~.core.merge` did."""

    output: str
    inputs: list[str] = field(default_factory=list)
    merged: list[str] = field(default_factory=list)  # inputs that added or replaced a source
    unchanged: list[str] = field(default_factory=list)  # inputs whose sources were all present already
    skipped: list[Skipped] = field(default_factory=list)
    sources_added: int = 0
    sources_present: int = 0  # same fingerprint already in the output
    sources_replaced: int = 0  # an older copy of the same source was dropped for this one
    sources_outdated: int = 0  # this input held an older copy than the output: not copied
    resolved: list[str] = field(default_factory=list)  # "<task>: running -> <status> (<how>)" per job resolved now
    still_running: int = 0  # jobs rows saying running whose job really still runs
    status_unknown: int = 0  # jobs rows saying running that could not be checked from here
    status_pending: int = 0  # ended, but accounting has not the details yet: not stored, merge again later
    missing: list[str] = field(default_factory=list)  # "<task>: no database; <what Slurm says>" per task
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        return SKIPPED_EXIT_CODE if self.skipped else 0

    def summary(self) -> str:
        """One line per job resolved and per task without a database, then the counts."""
        n_ok = len(self.inputs) - len(self.skipped)
        line = (
            f"merged {n_ok} of {len(self.inputs)} inputs into {self.output} in {self.seconds:.2f} s: "
            f"{self.sources_added} sources added, {self.sources_present} already present"
        )
        counts = (
            (self.sources_replaced, "replaced by a newer copy"),
            (self.sources_outdated, "older copies ignored"),
            (len(self.resolved), "ended without a status (resolved after the fact)"),
            (self.still_running, "still running"),
            (self.status_unknown, "with a status that cannot be checked from here"),
            (self.status_pending, "ended but not in Slurm accounting yet (merge again later)"),
        )
        line += "".join(f", {n} {what}" for n, what in counts if n)
        if self.missing:
            line += f"; {len(self.missing)} submitted task(s) left no database"
        if self.skipped:
            line += f"; {len(self.skipped)} skipped (exit code {SKIPPED_EXIT_CODE})"
        return "\n".join([*(f"status of {r}" for r in self.resolved), *(f"task {m}" for m in self.missing), line])
