"""The live sender: a thread of the node store that pushes what SQLite committed to PostgreSQL.

Every ``interval`` seconds it reads a :func:`.push.snapshot` beyond the mark it keeps in memory
and hands it to :func:`.push.send`, so only what was committed since the last push travels (a restarted sender starts from an empty mark and
resumes from what PostgreSQL holds: chunks are not sent again, rows are offered and skipped).
The job never waits on it: log calls and the writer do not know it exists; the SQLite file is
the durable backlog and a push reads at most :data:`.push.BATCH_ROWS` rows per table, so its
memory is bounded whatever the backlog.

**One connection per push, not per job.** A sender reads what is new from SQLite first; only
then, and only if there is something, it connects, sends it, and disconnects: it holds a server
connection for the few milliseconds of a push, so a thousand nodes at a 5 s
interval share a handful of the server's connections instead of holding a thousand (which locked
every other client out). The bound itself is the server's to enforce, since nodes do not know each
other: a ``CONNECTION LIMIT`` on the senders' role, or PgBouncer's pool (docs/CENTRAL.md). No
server-side prepared statement is used, so transaction pooling works.

**Spread out.** The first push comes at a random moment of the first interval and each later one
after ``interval`` ±20 %, so an array started together does not push in the same second.

**Busy is not an outage.** A server with no connection to give ("too many clients", a role's
limit, PgBouncer refusing) puts the push off by a random part of a growing wait: no line on
stderr, counted in ``central/busy``. At the end of the job, a busy server is tried again after
0.25, 0.5, 1 ... s (at most 2 s; each wait a random 50-100 % of that: :data:`FINAL_BACKOFF_S`) until
the last push's time is up: an attempt refused at a role's limit holds one of the server's slots
until its backend exits, so a whole array ending at once must not retry in a tight loop (it took
the other clients' slots), and its retries are spread over a quarter second and more.
A failed push (the network, the server away) is retried after 1, 2, 4 ... intervals, up to
:data:`BACKOFF_CAP_S` seconds (jittered), from the same mark: nothing is lost and nothing stored
twice.

At start, a URL that cannot work (malformed, unknown host, refused login, no such database) is
one line on stderr, password masked, and the job goes on with the local store only. At the end
:meth:`CentralSender.stop` gives a last push at most ``final_timeout`` seconds.

Its own counters go to ``store_stats`` (names in :mod:`..catalogue`) through the store's queue.
"""

from __future__ import annotations

import random
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from ...credentials import mask, scrub
from ...errors import CentralBusyError, CentralStoreError
from ...signal_policy import block_job_signals
from .. import catalogue, reader
from . import schema
from .push import Mark, send, snapshot
from .url import connect, is_busy, psycopg_module

#: Seconds between pushes.
INTERVAL_S = 5.0
#: Each wait between two pushes is the interval times a random factor in this range.
JITTER = (0.8, 1.2)
#: Longest wait between two attempts while PostgreSQL is away or busy.
BACKOFF_CAP_S = 60.0
#: Seconds the last push at the end of the job may take.
FINAL_TIMEOUT_S = 5.0
#: First and longest wait between two attempts of that last push while the server is busy.
FINAL_BACKOFF_S = (0.25, 2.0)
#: Pushes PostgreSQL refuses for the data itself (not the network) before the sender gives up.
MAX_DATA_FAILURES = 3
#: Connection failures no retry can fix (besides a refused password, a missing database or role).
_FATAL_TEXT = ("could not translate host name", "invalid dsn", "invalid connection option", "invalid uri")
#: What one attempt came to.
_OK, _BUSY, _FAILED, _GAVE_UP = "ok", "busy", "failed", "gave up"


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
        self.pushes = 0  # transactions committed on the server
        self.busy = 0  # pushes put off because the server had no connection to give
        self.gave_up: str | None = None  # why the sender stopped for good
        self._rng = random.Random()  # seeded from the OS: every node draws its own moments
        self._failures = 0  # in a row: failed attempts (network, server), data refusals, busy answers
        self._data_failures = 0
        self._busy_run = 0
        self._first = True  # no attempt has reached the server yet
        self._schema_ready = False
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
        delay = self._rng.uniform(0.0, self.interval)  # nodes started together spread over the first interval
        while True:
            stopping = self._stop_event.wait(delay)  # once set: the last push, then the end
            outcome = self._attempt(final=stopping)
            self._report()
            if outcome == _GAVE_UP:
                break
            if stopping:
                if outcome == _BUSY and self._remaining() > 0.05:  # the whole array ends at once
                    time.sleep(min(self._remaining(), self._next_delay(outcome, final=True)))
                    continue
                break
            delay = self._next_delay(outcome)
        self._report()
        self._close_sqlite()

    def _next_delay(self, outcome: str, *, final: bool = False) -> float:
        if outcome == _OK:
            return self.interval * self._rng.uniform(*JITTER)
        run = self._busy_run if outcome == _BUSY else self._failures
        first, cap = FINAL_BACKOFF_S if final else (self.interval, BACKOFF_CAP_S)
        return min(cap, first * 2 ** (run - 1)) * self._rng.uniform(0.5, 1.0)

    def _attempt(self, *, final: bool) -> str:
        """One round: connect, push what is new, disconnect. Returns what it came to."""
        psycopg = psycopg_module()
        try:
            self._push_all(final=final)
        except CentralBusyError:
            return self._busy_answer()
        except CentralStoreError as exc:  # connecting failed
            text = str(exc)
            if self._first and _fatal(text):
                self._give_up(f"{text}; the job goes on with its local store only")
                return _GAVE_UP
            return self._failed(text)
        except psycopg.OperationalError as exc:  # the server went away (or PgBouncer gave up waiting) mid-push
            if is_busy(exc):
                return self._busy_answer()
            return self._failed(f"central store {self.where}: {scrub(str(exc), self.url)}")
        except psycopg.Error as exc:  # PostgreSQL refused the data itself
            self._data_failures += 1
            text = f"central store {self.where}: {scrub(str(exc), self.url)}"
            if self._data_failures >= MAX_DATA_FAILURES:
                self.dropped += self.pending
                self._give_up(
                    f"{text}; refused {self._data_failures} times, the sender stops (the local store keeps all)"
                )
                return _GAVE_UP
            return self._failed(text)
        except Exception as exc:  # the SQLite file went away (the job's end), or a bug: never the job's problem
            self._give_up(f"central sender for {self.path} stopped: {type(exc).__name__}: {exc}")
            return _GAVE_UP
        finally:
            self._disconnect()
        if self._failures:
            print(f"aetherium-hpc: central store {self.where} reachable again; sending resumed",
                  file=sys.stderr, flush=True)  # fmt: skip
        self._failures = self._data_failures = self._busy_run = 0
        self._first = False
        return _OK

    def _busy_answer(self) -> str:
        self.busy += 1
        self._busy_run += 1
        return _BUSY

    # -- one round --------------------------------------------------------------------------------
    def _push_all(self, *, final: bool) -> None:
        """Read what is new, then connect and send it (a node with nothing new does not connect)."""
        if self._sqlite is None:
            self._sqlite = reader.open_readonly(self.path, timeout=5.0)
            self._sqlite.isolation_level = None
        while True:
            mark = self.mark if self.mark is not None else Mark()
            snap = snapshot(self._sqlite, mark)
            if not snap.news(mark):
                return
            if self._pg is None:
                timeout = self._remaining() if final else None
                self._pg = connect(self.url, timeout=timeout or 5, application="aetherium-hpc sender")
                if not self._schema_ready:
                    schema.ensure(self._pg, self.where)
                    self._schema_ready = True
            try:
                self.mark, pushed = send(snap, self._pg, mark)
            except BaseException:
                self.pending = max(self.pending, 1)
                raise
            self.sent_rows += pushed.rows
            self.pushes += 1
            self.pending = 0
            self.last_ok = time.time()
            if not pushed.more or (final and self._remaining() <= 0) or (not final and self._stop_event.is_set()):
                return

    def _remaining(self) -> float:
        return 5.0 if self._final_deadline is None else self._final_deadline - time.monotonic()

    def _failed(self, text: str) -> str:
        self.errors += 1
        self._failures += 1
        self._first = False
        if self._failures == 1:  # once per outage; the next line says it is back
            print(f"aetherium-hpc: {text}; retrying with back-off (the job goes on, the local store keeps all)",
                  file=sys.stderr, flush=True)  # fmt: skip
        return _FAILED

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
            catalogue.CENTRAL_BUSY: float(self.busy),
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
