"""``aetherium-hpc merge INPUTS --into postgresql://...``: finished databases into the central store.

Each input is read through :func:`.push.push` from an empty mark, batch after batch, one
PostgreSQL transaction each: loading the same inputs again, or inputs the live sender streamed
already, adds nothing (the keys of :mod:`.schema`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ...errors import CentralStoreError
from .. import reader
from . import schema
from .push import Mark, Pushed, push
from .url import connect, mask, psycopg_module, scrub


@dataclass
class LoadResult:
    """What :func:`load` sent, per input and in all."""

    url: str  # masked
    per_input: list[tuple[str, Pushed]] = field(default_factory=list)
    total: Pushed = field(default_factory=Pushed)
    #: (input, why) of each input the server refused: its transaction rolled back, the rest loaded.
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        t = self.total
        return (
            f"loaded {len(self.per_input)} database(s) into {self.url}: {t.sources} sources, {t.series} series, "
            f"{t.chunks} chunks ({t.samples} samples), {t.generation_rows} generation rows, "
            f"{t.training_rows} training rows, {t.job_rows} job rows, {t.store_stats} store_stats rows new or "
            "updated (what was there already is not stored twice)"
        )


def load(
    paths: Sequence[str | os.PathLike[str]], url: str, *, each: Callable[[str, Pushed], None] | None = None
) -> LoadResult:
    """Push every database of ``paths`` (checked by the caller) into the central store at ``url``."""
    psycopg = psycopg_module()
    where = mask(url)
    result = LoadResult(where)
    pg = connect(url, application="aetherium-hpc merge --into")
    try:
        schema.ensure(pg, where)
        for path in paths:
            conn = reader.open_readonly(path)
            conn.isolation_level = None
            done = Pushed()
            mark: Mark | None = None
            try:
                while True:
                    mark, pushed = push(conn, pg, mark)
                    done.add(pushed)
                    if not pushed.more:
                        break
            except psycopg.Error as exc:
                # No answer, or a connection-class one (08...): the server, not this input.
                if pg.closed or pg.broken or not exc.sqlstate or exc.sqlstate.startswith("08"):
                    raise CentralStoreError(
                        f"central store {where}: loading {path} failed: {scrub(str(exc), url)}"
                    ) from None
                pg.rollback()  # only this input's batch: the batches before it are committed
                result.skipped.append((os.fspath(path), f"refused by the server ({scrub(str(exc), url).strip()})"))
                continue
            except (ValueError, TypeError, ArithmeticError) as exc:  # a value of this input's rows
                if pg.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    pg.rollback()
                result.skipped.append((os.fspath(path), f"bad data ({type(exc).__name__}: {exc})"))
                continue
            finally:
                conn.close()
            result.per_input.append((os.fspath(path), done))
            result.total.add(done)
            if each is not None:
                each(os.fspath(path), done)
    finally:
        pg.close()
    return result
