"""export: TensorBoard event files read back with TensorBoard's own reader, Parquet read back with
pyarrow, the missing-package lines in a child whose import of the package fails, and bad input."""

from __future__ import annotations

import datetime
import json
import math
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from testenv import ROOT

import aetherium_hpc
from aetherium_hpc.analysis.export import export, parquet
from aetherium_hpc.analysis.merge import merge
from aetherium_hpc.cli import main
from aetherium_hpc.errors import AetheriumError
from aetherium_hpc.store import SourceInfo

SWEEP = [{"learning_rate": 0.001, "seed": 0}, {"learning_rate": 0.01, "seed": 0}, {"learning_rate": 0.01, "seed": 1}]


def write_task_db(path: Path, task: int | None, *, job: str = "900", node: str = "n1", params: dict[str, Any] | None = None,
                  rounds: int = 2, epochs: range = range(3), seconds: int = 40) -> None:  # fmt: skip
    """A task's node database: CPU/RAM and two GPUs each second, training epochs over ``rounds``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if task is None:
        src = SourceInfo(job_id=job, node=node, hostname=node)
    else:
        src = SourceInfo(job_id=f"{job}_{task}", array_job_id=job, array_task_id=task, node=node, hostname=node)
    aetherium_hpc.init_db(path, source=src, listen=False)
    t0 = time.time() - seconds
    k0 = task or 0
    for k in range(seconds):
        samples = [("cpu", "system_total", 40.0 + k + 0.25 * k0, "%", ""),
                   ("ram", "process_tree_rss", 1500.5 + 8 * k, "MB", "")]  # fmt: skip
        samples += [("gpu", "utilization", 50.0 + g + k0, "%", str(g)) for g in range(2)]
        aetherium_hpc.log_resource_samples(samples, timestamp=t0 + k + 0.123)
    for rnd in range(rounds):
        for epoch in epochs:
            loss = 1.0 / (2 + epoch + 3 * rnd) + 0.01 * k0
            aetherium_hpc.log_training_epoch_metric("loss", loss, round_number=rnd, epoch_number=epoch, phase="train")
            aetherium_hpc.log_training_epoch_metric("loss", loss * 1.1, round_number=rnd, epoch_number=epoch,
                                                    phase="val")  # fmt: skip
            aetherium_hpc.log_training_epoch_metric("lr", 1e-3 * 0.5**epoch, round_number=rnd, epoch_number=epoch)
    config = {"name": "sweep", "task_params": params} if params else {"name": "one"}
    aetherium_hpc.log_job(status="completed", exit_code=0, start_time=t0, end_time=t0 + seconds, config=config)
    aetherium_hpc.shutdown_db()


@pytest.fixture
def sweep_db(tmp_path: Path) -> Path:
    """A merged database of a 3-task sweep."""
    for task, params in enumerate(SWEEP):
        write_task_db(tmp_path / "run" / "db" / f"900_{task}" / "n1.db", task, params=params)
    out = tmp_path / "merged.db"
    assert merge([tmp_path / "run"], out).exit_code == 0
    return out


def read_runs(logdir: Path) -> dict[str, dict[str, list[tuple[int, float, float]]]]:
    """{run: {tag: [(step, value, wall_time)]}} as TensorBoard's own event reader sees ``logdir``."""
    from tensorboard.backend.event_processing import event_accumulator, event_multiplexer

    mux = event_multiplexer.EventMultiplexer(size_guidance={event_accumulator.SCALARS: 0})
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    return {
        run: {tag: [(e.step, e.value, e.wall_time) for e in mux.Scalars(run, tag)] for tag in tags["scalars"]}
        for run, tags in mux.Runs().items()
    }


def rows(db: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def expected_training(db: Path, task: int | None, epochs_per_round: int, first_epoch: int = 0) -> dict[str, list]:
    """{tag: [(step, value)]} of a task's training rows, step = epochs of the earlier rounds + epoch."""
    out: dict[str, list[tuple[int, float]]] = {}
    cond = "array_task_id IS NULL" if task is None else f"array_task_id = {task}"
    for name, phase, value, rnd, epoch in rows(
        db,
        f"SELECT metric_name, phase, metric_value, round_number, epoch_number FROM training_metrics WHERE {cond}"
        " ORDER BY round_number, epoch_number, timestamp",
    ):
        tag = f"{phase}/{name}" if phase else name
        out.setdefault(tag, []).append((rnd * epochs_per_round + epoch - first_epoch * (rnd > 0), value))
    return out


def check_resources(db: Path, task: int | None, got: dict[str, list[tuple[int, float, float]]]) -> None:
    """Every resource series of the task, sample by sample: step = index, value, wall time = timestamp."""
    cond = "array_task_id IS NULL" if task is None else f"array_task_id = {task}"
    series = rows(db, f"SELECT DISTINCT metric_type, metric_name, device FROM resource_metrics WHERE {cond}")
    tags = {"/".join(["resource", t, n] + ([d] if d else [])) for t, n, d in series}
    assert {t for t in got if t.startswith("resource/")} == tags  # the store's own telemetry (store/...) too
    assert {"resource/cpu/system_total", "resource/ram/process_tree_rss", "resource/gpu/utilization/0",
            "resource/gpu/utilization/1"} <= tags  # fmt: skip
    for mtype, mname, device in series:
        tag = "/".join(["resource", mtype, mname] + ([device] if device else []))
        want = rows(db, f"SELECT timestamp, value FROM resource_metrics WHERE {cond} AND metric_type = ?"
                        " AND metric_name = ? AND device = ? ORDER BY timestamp", mtype, mname, device)  # fmt: skip
        assert [s for s, _, _ in got[tag]] == list(range(len(want))), tag
        assert [v for _, v, _ in got[tag]] == pytest.approx([v for _, v in want], rel=1e-6), tag
        assert [w for _, _, w in got[tag]] == pytest.approx([t for t, _ in want], abs=1e-3), tag


def test_tensorboard_of_a_merged_sweep_one_run_per_task_named_by_its_parameters(sweep_db: Path, tmp_path: Path) -> None:
    out = tmp_path / "tb"
    written = export(str(sweep_db), fmt="tensorboard", output=str(out))
    names = ["learning_rate=0.001,seed=0", "learning_rate=0.01,seed=0", "learning_rate=0.01,seed=1"]
    assert written == [str(out / n) for n in names]
    got = read_runs(out)
    assert sorted(got) == names
    for task, name in enumerate(names):
        tags = got[name]
        assert {"train/loss", "val/loss", "train/lr"} <= set(tags)
        for tag, want in expected_training(sweep_db, task, epochs_per_round=3).items():
            # round 1 follows round 0
            assert [s for s, _, _ in tags[tag]] == [s for s, _ in want] == list(range(6)), tag
            assert [v for _, v, _ in tags[tag]] == pytest.approx([v for _, v in want], rel=1e-6), tag
        check_resources(sweep_db, task, tags)


def test_tensorboard_of_a_node_database_run_named_by_its_job(tmp_path: Path) -> None:
    """A plain job, one round, epochs counted from 1: step = epoch_number as logged."""
    db = tmp_path / "job" / "n1.db"
    write_task_db(db, None, job="4242", rounds=1, epochs=range(1, 5))
    assert main(["export", str(db), "--format", "tensorboard", "-o", str(tmp_path / "tb")]) == 0
    got = read_runs(tmp_path / "tb")
    assert list(got) == ["4242"]
    for tag, want in expected_training(db, None, epochs_per_round=4).items():
        assert [(s, pytest.approx(v, rel=1e-6)) for s, v, _ in got["4242"][tag]] == want
        assert [s for s, _, _ in got["4242"][tag]] == [1, 2, 3, 4]
    check_resources(db, None, got["4242"])


def test_tensorboard_rounds_counted_from_one_follow_each_other(tmp_path: Path) -> None:
    db = tmp_path / "n1.db"
    write_task_db(db, None, job="7", rounds=3, epochs=range(1, 4), seconds=2)
    export(str(db), fmt="tensorboard", output=str(tmp_path / "tb"))
    steps = [s for s, _, _ in read_runs(tmp_path / "tb")["7"]["train/loss"]]
    assert steps == [1, 2, 3, 4, 5, 6, 7, 8, 9]


def test_tensorboard_task_on_two_nodes_one_run_per_node(tmp_path: Path) -> None:
    for node in ("n1", "n2"):
        write_task_db(tmp_path / "run" / "db" / "900_0" / f"{node}.db", 0, node=node, rounds=1, seconds=5)
    merged = tmp_path / "merged.db"
    assert merge([tmp_path / "run"], merged).exit_code == 0
    export(str(merged), fmt="tensorboard", output=str(tmp_path / "tb"))
    got = read_runs(tmp_path / "tb")
    assert sorted(got) == ["900_0/n1", "900_0/n2"]
    assert all(len(got[r]["resource/cpu/system_total"]) == 5 for r in got)


def test_tensorboard_refuses_to_write_over_an_earlier_export(sweep_db: Path, tmp_path: Path) -> None:
    out = tmp_path / "tb"
    export(str(sweep_db), fmt="tensorboard", output=str(out))
    before = sorted(p.name for p in out.rglob("*"))
    with pytest.raises(AetheriumError, match="holds event files already"):
        export(str(sweep_db), fmt="tensorboard", output=str(out))
    assert sorted(p.name for p in out.rglob("*")) == before
    with pytest.raises(AetheriumError, match="--table does not apply"):
        export(str(sweep_db), fmt="tensorboard", tables=["jobs"], output=str(tmp_path / "other"))


def test_parquet_round_trip_typed_columns_in_batches(
    sweep_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.setattr(parquet, "BATCH_ROWS", 100)  # several record batches per table
    out = tmp_path / "pq"
    assert main(["export", str(sweep_db), "--format", "parquet", "-o", str(out)]) == 0
    names = ("sources", "jobs", "resource_metrics", "generation_metrics", "training_metrics")
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{n}.parquet" for n in names)
    for name in names:
        table = pq.read_table(out / f"{name}.parquet")
        conn = sqlite3.connect(sweep_db)
        cur = conn.execute(f"SELECT * FROM {name}")
        want = cur.fetchall()
        assert table.column_names == [d[0] for d in cur.description]
        conn.close()
        got = list(zip(*(_seconds(table.column(c)) for c in table.column_names), strict=True))
        assert len(got) == len(want), name
        for g, w in zip(got, want, strict=True):  # a time to the microsecond, another number as it was
            assert list(g) == [pytest.approx(x, abs=1e-6) if isinstance(x, float) else x for x in w]
    res = pq.ParquetFile(out / "resource_metrics.parquet")
    assert res.metadata.num_rows >= 3 * 40 * 4 and res.metadata.num_row_groups > 1
    schema = res.schema_arrow
    utc_us = pa.timestamp("us", tz="UTC")
    assert schema.field("timestamp").type == utc_us and schema.field("value").type == pa.float64()
    assert schema.field("chunk_t0").type == schema.field("chunk_t1").type == utc_us
    assert schema.field("metric_name").type == pa.string() and schema.field("array_task_id").type == pa.int64()
    training = pq.read_table(out / "training_metrics.parquet")
    assert training.schema.field("timestamp").type == utc_us
    assert training.schema.field("epoch_number").type == pa.int64()
    jobs_schema = pq.read_schema(out / "jobs.parquet")
    assert jobs_schema.field("start_time").type == jobs_schema.field("end_time").type == utc_us
    assert training.schema.field("metric_value").type == pa.float64()
    jobs = pq.read_table(out / "jobs.parquet").to_pylist()
    assert [json.loads(j["config"])["task_params"] for j in jobs] == SWEEP
    # --table: just that one
    only = tmp_path / "only"
    export(str(sweep_db), fmt="parquet", tables=["jobs"], output=str(only))
    assert [p.name for p in only.iterdir()] == ["jobs.parquet"]


def _seconds(column: Any) -> list[Any]:
    """The values of an Arrow column; a timestamp as epoch seconds."""
    import pyarrow as pa

    if pa.types.is_timestamp(column.type):
        return [None if v is None else v / 1e6 for v in column.cast(pa.int64()).to_pylist()]
    return column.to_pylist()


def test_parquet_times_are_utc_timestamps_for_pyarrow_and_duckdb(sweep_db: Path, tmp_path: Path) -> None:
    """Each exported time is the database's epoch seconds to the microsecond, read as a time in UTC."""
    import pyarrow.parquet as pq

    out = tmp_path / "pq"
    export(str(sweep_db), fmt="parquet", output=str(out))
    want = rows(sweep_db, "SELECT timestamp FROM training_metrics")
    got = pq.read_table(out / "training_metrics.parquet").column("timestamp").to_pylist()
    assert {(str(g.tzinfo), g.utcoffset()) for g in got} == {("UTC", datetime.timedelta(0))} and len(got) == len(want)
    assert [g.timestamp() for g in got] == pytest.approx([w for (w,) in want], abs=1e-6)
    jobs = pq.read_table(out / "jobs.parquet", columns=["start_time", "end_time"]).to_pylist()
    started = rows(sweep_db, "SELECT start_time, end_time FROM jobs")
    assert [(j["start_time"].timestamp(), j["end_time"].timestamp()) for j in jobs] == [
        pytest.approx(s, abs=1e-6) for s in started
    ]
    duckdb = pytest.importorskip("duckdb")
    con = duckdb.connect()
    try:
        kind, first, last = con.execute(
            f"SELECT typeof(timestamp), epoch(min(timestamp)), epoch(max(timestamp))"
            f" FROM '{out / 'resource_metrics.parquet'}' GROUP BY 1"
        ).fetchone()
        span = rows(sweep_db, "SELECT min(timestamp), max(timestamp) FROM resource_metrics")[0]
        assert kind == "TIMESTAMP WITH TIME ZONE"
        assert (first, last) == pytest.approx(span, abs=1e-6)
        (hours,) = con.execute(
            f"SELECT max(end_time - start_time) < INTERVAL 1 HOUR FROM '{out / 'jobs.parquet'}'"
        ).fetchone()
        assert hours is True
    finally:
        con.close()


def test_parquet_value_of_another_type_is_one_line(tmp_path: Path) -> None:
    """SQLite keeps a text in an INTEGER column; Parquet cannot: the table and column are named."""
    db = tmp_path / "n1.db"
    write_task_db(db, None, job="5", rounds=1, seconds=2)
    conn = sqlite3.connect(db)
    conn.execute("UPDATE training_rows SET epoch_number = 'x' WHERE id = 1")
    conn.commit()
    conn.close()
    with pytest.raises(AetheriumError, match=r"training_metrics\.epoch_number: .*--format csv"):
        export(str(db), fmt="parquet", tables=["training_metrics"], output=str(tmp_path / "pq"))
    assert not list((tmp_path / "pq").iterdir())  # no half-written file


@pytest.mark.parametrize(("fmt", "package", "extra"), [("parquet", "pyarrow", "parquet"),
                                                        ("tensorboard", "tensorboardX", "tensorboard")])  # fmt: skip
def test_missing_optional_package_is_one_line(
    sweep_db: Path, tmp_path: Path, fmt: str, package: str, extra: str
) -> None:
    """In a child process where importing the package fails (a package of that name first on PYTHONPATH raises)."""
    blocker = tmp_path / "blocked" / package
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text(f"raise ImportError('no {package} in this test')\n")
    proc = subprocess.run([sys.executable, "-m", "aetherium_hpc", "export", str(sweep_db), "--format", fmt, "-o",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={"PYTHONPATH": f"{blocker.parent}:{ROOT}", "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1
    assert f"--format {fmt} needs {package}" in proc.stderr and f"pip install 'aetherium-hpc[{extra}]'" in proc.stderr
    assert not (tmp_path / "out").exists()


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("aetherium-hpc: error: "), err
    return err


def test_bad_input_is_one_line_and_exit_code_2(
    sweep_db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "out")
    err = _one_line_error(capsys, ["export", str(tmp_path / "missing.db"), "--format", "parquet", "-o", out])
    assert "missing.db: no such database file" in err
    foreign = tmp_path / "foreign.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE t (x)")
    conn.close()
    err = _one_line_error(capsys, ["export", str(foreign), "--format", "tensorboard", "-o", out])
    assert "not one written by aetherium-hpc" in err and "merge" in err
    err = _one_line_error(capsys, ["export", str(tmp_path), "--format", "csv"])
    assert "a folder, not a database" in err and "aetherium-hpc merge" in err
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    for fmt in ("parquet", "tensorboard"):
        err = _one_line_error(capsys, ["export", str(sweep_db), "--format", fmt, "-o", str(a_file)])
        assert f"-o {a_file}: a file, but --format {fmt} writes a folder" in err
        err = _one_line_error(capsys, ["export", str(sweep_db), "--format", fmt])
        assert "add -o OUT_DIR" in err
    err = _one_line_error(capsys, ["export", str(sweep_db), "--format", "xlsx", "-o", out])
    assert "--format xlsx: unknown format; use one of csv, json, parquet, tensorboard" in err
    err = _one_line_error(capsys, ["export", str(sweep_db), "--table", "jobs", "-o", str(tmp_path)])
    assert "a folder; name a file" in err
    assert not (tmp_path / "out").exists()
    assert math.isfinite(sweep_db.stat().st_size)


def test_csv_of_several_tables_creates_its_folder_and_replaces_a_planted_link(
    sweep_db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`export DB --format csv -o out_dir/` as in --help: the folder is made; a link planted at a
    NAME.csv is replaced by the file, the file it pointed to is left alone; a link planted as the
    folder itself, pointing nowhere, is refused, not followed."""
    out = tmp_path / "new" / "out_dir"
    assert main(["export", str(sweep_db), "--format", "csv", "-o", f"{out}/"]) == 0
    names = ("sources", "jobs", "resource_metrics", "generation_metrics", "training_metrics")
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{n}.csv" for n in names)
    assert out.joinpath("jobs.csv").read_text().splitlines()[0].startswith("source_id,job_id,")
    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    (out / "jobs.csv").unlink()
    (out / "jobs.csv").symlink_to(victim)
    export(str(sweep_db), fmt="csv", output=str(out))
    assert not (out / "jobs.csv").is_symlink() and victim.read_text() == "keep me\n"
    assert len((out / "jobs.csv").read_text().splitlines()) == 1 + len(SWEEP)
    capsys.readouterr()
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "elsewhere")
    err = _one_line_error(capsys, ["export", str(sweep_db), "--format", "csv", "-o", str(dangling)])
    assert f"-o {dangling}: cannot create the folder" in err
    assert not (tmp_path / "elsewhere").exists()
    err = _one_line_error(capsys, ["export", str(sweep_db), "--table", "jobs", "-o", f"{tmp_path}/none/"])
    assert "a folder; name a file" in err and not (tmp_path / "none").exists()
    err = _one_line_error(capsys, ["export", str(sweep_db), "--format", "csv"])
    assert "add -o OUT_DIR (created if missing), or name one --table" in err


def test_tensorboard_run_names_are_folder_names_and_unique(tmp_path: Path) -> None:
    """Parameters with a path separator stay one folder; tasks with the same parameters get their task added."""
    for task in range(2):
        write_task_db(tmp_path / "run" / "db" / f"900_{task}" / "n1.db", task, params={"data": "../a/b"}, seconds=2)
    merged = tmp_path / "merged.db"
    assert merge([tmp_path / "run"], merged).exit_code == 0
    export(str(merged), fmt="tensorboard", output=str(tmp_path / "tb"))
    assert sorted(read_runs(tmp_path / "tb")) == ["data=.._a_b,task=900_0", "data=.._a_b,task=900_1"]
    assert sorted(p.name for p in (tmp_path / "tb").iterdir()) == ["data=.._a_b,task=900_0", "data=.._a_b,task=900_1"]
