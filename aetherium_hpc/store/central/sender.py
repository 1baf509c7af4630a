"""The live sender: a thread of the node store that pushes what SQLite committed to PostgreSQL.

Every ``interval`` seconds it calls :func:`.push.push` with the mark it keeps in memory, so only
what was committed since the last push travels (a restarted sender starts from an empty mark and
resumes from what PostgreSQL holds: chunks are not sent again, rows are offered and skipped).
The job never waits on it: log calls and the writer do not know it exists; the SQLite file is
the durable backlog and a push reads at most :data:`.push.BATCH_ROWS` rows per table, so its
memory is bounded whatever the backlog. A failed push is retried after 1, 2, 4 ... up to
:data:`BACKOFF_CAP_S` seconds, from the same mark: nothing is lost and nothing stored twice.

At start, a URL that cannot work (malformed, unknown host, refused login, no such database) is
one line on stderr, password masked, and the job goes on with the local store only. At the end
:meth:`CentralSender.stop` gives a last push at most ``final_timeout`` seconds.

Its own counters go to ``store_stats`` (names in :mod:`..catalogue`) through the store's queue.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from ...credentials import mask, scrub
from ...errors import CentralStoreError
from ...signals import block_job_signals
from .. import catalogue, reader
from . import schema
from .push import Mark, push
from .url import connect, psycopg_module

#: Seconds between pushes.
INTERVAL_S = 5.0
#: Longest wait between two attempts while PostgreSQL is away.
BACKOFF_CAP_S = 60.0
#: Seconds the last push at the end of the job may take.
FINAL_TIMEOUT_S = 5.0
#: Pushes PostgreSQL refuses for the data itself (not the network) before the sender gives up.
MAX_DATA_FAILURES = 3
#: Connection failures no retry can fix (besides a refused password, a missing database or role).
_FATAL_TEXT = ("could not translate host name", "invalid dsn", "invalid connection option", "invalid uri")


class CentralSender(threading.Thread):
    """Pushes the SQLite database at ``path`` to the PostgreSQL at ``url`` until stopped."""

    def __init__(
        self,
        path: str,
        url: str,
        *,
        counters: Callable[[dict[str, float]], Any],
        interval: float | None = None,
        final_timeout: float | None = None,
    ) -> None:
        super().__init__(name="aetherium-central-sender", daemon=True)
        self.path = path
        self.url = url
        self.where = mask(url)
        self.interval = INTERVAL_S if interval is None else interval
        self.final_timeout = FINAL_TIMEOUT_S if final_timeout is None else final_timeout
        self._counters = counters  # adds increments to store_stats (the store's queue)
        self._stop_event = threading.Event()
        self._final_deadline: float | None = None
        self.mark: Mark | None = None
        self.sent_rows = 0
        self.errors = 0
        self.dropped = 0
        self.pending = 0
        self.last_ok = 0.0
        self.gave_up: str | None = None  # why the sender stopped for good
        self._reported: dict[str, float] | None = None  # None: every counter goes in the first report
        self._pg: Any = None
        self._sqlite: Any = None

    # -- life cycle -----------------------------------------------------------------------------
    def stop(self) -> None:
        """One last push (of what the writer committed before this call), at most
        ``final_timeout`` seconds; then the thread ends. The caller stopped the writer first."""
        self._final_deadline = time.monotonic() + self.final_timeout
        self._stop_event.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(self.final_timeout + 0.5)  # a push stuck on the network is left behind (daemon)

    def run(self) -> None:
        block_job_signals()
        psycopg = psycopg_module()
        delay = 0.0
        failures = 0
        data_failures = 0
        first = True
        while True:
            stopping = self._stop_event.wait(delay)  # once set: one last attempt, then the end
            try:
                self._push_all(final=stopping)
            except CentralStoreError as exc:  # connecting failed
                text = str(exc)
                if first and _fatal(text):
                    self._give_up(f"{text}; the job goes on with its local store only")
                    break
                failures += 1
                self._failed(text, failures)
            except psycopg.OperationalError as exc:  # the server went away mid-push
                failures += 1
                self._disconnect()
                self._failed(f"central store {self.where}: {scrub(str(exc), self.url)}", failures)
            except psycopg.Error as exc:  # PostgreSQL refused the data itself
                data_failures += 1
                self._disconnect()
                text = f"central store {self.where}: {scrub(str(exc), self.url)}"
                if data_failures >= MAX_DATA_FAILURES:
                    self.dropped += self.pending
                    self._give_up(
                        f"{text}; refused {data_failures} times, the sender stops (the local store keeps all)"
                    )
                    break
                failures += 1
                self._failed(text, failures)
            except Exception as exc:  # the SQLite file went away (the job's end), or a bug: never the job's problem
                self._give_up(f"central sender for {self.path} stopped: {type(exc).__name__}: {exc}")
                break
            else:
                if failures:
                    print(f"aetherium-hpc: central store {self.where} reachable again; sending resumed",
                          file=sys.stderr, flush=True)  # fmt: skip
                failures = data_failures = 0
            first = False
            self._report()
            if stopping:
                break
            delay = self.interval if not failures else min(BACKOFF_CAP_S, self.interval * 2 ** (failures - 1))
        self._report()
        self._disconnect()
        self._close_sqlite()

    # -- one round --------------------------------------------------------------------------------
    def _push_all(self, *, final: bool) -> None:
        if self._pg is None:
            timeout = self._remaining() if final else None
            self._pg = connect(self.url, timeout=timeout or 5, application="aetherium-hpc sender")
            schema.ensure(self._pg, self.where)
        if self._sqlite is None:
            self._sqlite = reader.open_readonly(self.path, timeout=5.0)
            self._sqlite.isolation_level = None
        while True:
            try:
                self.mark, pushed = push(self._sqlite, self._pg, self.mark)
            except BaseException:
                self.pending = max(self.pending, 1)
                raise
            self.sent_rows += pushed.rows
            self.pending = 0
            self.last_ok = time.time()
            if not pushed.more or (final and self._remaining() <= 0) or (not final and self._stop_event.is_set()):
                break

    def _remaining(self) -> float:
        return 5.0 if self._final_deadline is None else self._final_deadline - time.monotonic()

    def _failed(self, text: str, failures: int) -> None:
        self.errors += 1
        if failures == 1:  # once per outage; the next line says it is back
            print(f"aetherium-hpc: {text}; retrying with back-off (the job goes on, the local store keeps all)",
                  file=sys.stderr, flush=True)  # fmt: skip

    def _give_up(self, text: str) -> None:
        self.errors += 1
        self.gave_up = text
        print(f"aetherium-hpc: {text}", file=sys.stderr, flush=True)

    def _disconnect(self) -> None:
        pg, self._pg = self._pg, None
        if pg is not None:
            try:
                pg.close()
            except Exception:
                pass

    def _close_sqlite(self) -> None:
        conn, self._sqlite = self._sqlite, None
        if conn is not None:
            conn.close()

    def _report(self) -> None:
        """The counters' changes since the last report, into store_stats (which adds them up)."""
        now = {
            catalogue.CENTRAL_SENT_ROWS: float(self.sent_rows),
            catalogue.CENTRAL_PENDING: float(self.pending),
            catalogue.CENTRAL_DROPPED: float(self.dropped),
            catalogue.CENTRAL_ERRORS: float(self.errors),
            catalogue.CENTRAL_LAST_OK: self.last_ok,
        }
        before = self._reported
        delta = {k: v - (before[k] if before else 0.0) for k, v in now.items() if before is None or v != before[k]}
        if delta:
            try:
                self._counters(delta)
            except Exception:  # the store is closing: the counters stay in memory
                return
            self._reported = now


def _fatal(text: str) -> bool:
    """A connection failure no retry can fix (CentralStoreError text from :func:`.url.connect`)."""
    low = text.lower()
    return (
        any(s.lower() in low for s in _FATAL_TEXT)
        or "password authentication failed" in low
        or ("does not exist" in low and ("database" in low or "role" in low))
    )
