"""Hostile strings and file modes: names, kwargs, `run` arguments, the sbatch templates on the
real cluster, the HTML report. No command runs that should not (no `pwned` file anywhere), and
database, socket and key files are not open to other users."""

from __future__ import annotations

import os
import re
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import testenv
from rel_helpers import ROOT, cli, integrity, no_pwned, one_error_line, read

import aetherium_hpc as ah
from aetherium_hpc.store import SourceInfo

HOSTILE = ["it's \"quoted\"", "$(touch pwned)", "`touch pwned`", "a;touch pwned", "x && touch pwned #", "<script>alert(1)</script>"]  # fmt: skip


def _config(tmp_path: Path, label: str, name: str = "hostile") -> Path:
    path = tmp_path / "hostile.yaml"
    import yaml

    path.write_text(
        yaml.safe_dump(
            {
                "name": name,
                "backend": "local",
                "run_dir": str(tmp_path / "runs"),
                "workload": {"callable": "runtime_workloads:log_rows", "kwargs": {"n": 3, "label": label}},
                "resources": {"timeout_min": 5, "cpus_per_task": 1},
                "monitoring": {"interval_s": 5.0, "flush_interval_s": 0.5},
            }
        )
    )
    return path


def test_hostile_kwargs_reach_the_workload_literally(tmp_path: Path) -> None:
    cwd = Path.cwd()
    label = " ".join(HOSTILE)
    proc = cli(["submit", str(_config(tmp_path, label)), "--wait"], tmp_path,
               PYTHONPATH=testenv.PYTHONPATH)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (db,) = sorted((tmp_path / "runs").glob("*/db/*/*.db"))
    assert read(db, "SELECT DISTINCT metric_name FROM training_metrics") == [(label,)]
    no_pwned(tmp_path, cwd)


@pytest.mark.parametrize(
    "name",
    ["$(touch pwned)", "a;touch pwned", "`touch pwned`", "new\nline", "it's", "../../escape", "x" * 300],
    ids=["dollar-paren", "semicolon", "backticks", "newline", "quote", "dotdot", "huge"],
)
def test_hostile_job_name_through_submit_is_refused_or_harmless(tmp_path: Path, name: str) -> None:
    cwd = Path.cwd()
    proc = cli(["submit", str(_config(tmp_path, "loss", name=name)), "--dry-run"], tmp_path)
    if proc.returncode == 2:  # refused: one line naming the key
        assert "name" in one_error_line(proc)
    else:
        assert proc.returncode == 0, proc.stderr
        script = proc.stdout.split("# sbatch script", 1)[1]
        for line in script.splitlines():
            if line.startswith("#SBATCH --job-name"):
                assert "$(" not in line and "`" not in line and ";" not in line, line
    assert not (tmp_path / "escape").exists() and not (tmp_path.parent / "escape").exists()
    no_pwned(tmp_path, cwd)


def test_run_passes_every_hostile_argument_literally(tmp_path: Path) -> None:
    cwd = Path.cwd()
    check = "import sys, json; print(json.dumps(sys.argv[1:]))"
    args = [*HOSTILE, "line1\nline2", "", "-- --db-dir /etc", "%s %n"]
    proc = cli(["run", "--db-dir", str(tmp_path / "db"), "--", sys.executable, "-c", check, *args], tmp_path)
    assert proc.returncode == 0, proc.stderr
    import json

    assert json.loads(proc.stdout.strip().splitlines()[-1]) == args
    (db,) = (tmp_path / "db").glob("*.db")
    assert integrity(db) == "ok"
    no_pwned(tmp_path, cwd)


def test_html_report_escapes_hostile_names(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    ah.init_db(str(db), source=SourceInfo(job_id="<script>alert('job')</script>", node="<img src=x onerror=alert(1)>"),
               listen=False)  # fmt: skip
    for i in range(5):
        ah.log_training_epoch_metric("<script>alert('loss')</script>", float(i), 0, i)
        t = ah.log_data_generation_start("</title><script>alert(2)</script>", 0, i)
        ah.log_data_generation_complete(t, "</title><script>alert(2)</script>", 1, 0, i)
        ah.log_resource_metric("cpu", "system_total", 10.0, "%")
    ah.log_job(job_id="1", status="<b>done</b>", exit_code=0, start_time=1.0, end_time=2.0)
    ah.shutdown_db()
    html = tmp_path / "r.html"
    proc = cli(["report", str(db), "--html", str(html), "-q"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = html.read_text()
    assert "alert" in text, "the names are in the report, escaped"
    assert not re.search(r"<script>alert|<img src=x|<b>done", text), "a hostile name reached the HTML unescaped"


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_database_socket_and_key_files_are_private(tmp_path: Path) -> None:
    store = ah.init_db(str(tmp_path / "node.db"), socket_dir=str(tmp_path))
    assert store.address is not None
    sock, key = Path(store.address.path), Path(store.address.path + ".key")
    assert _mode(sock) == 0o600 and _mode(key) == 0o600
    assert _mode(sock.parent) & 0o077 == 0, oct(_mode(sock.parent))
    for p in tmp_path.glob("node.db*"):
        assert _mode(p) & 0o007 == 0, f"{p} is open to other users: {oct(_mode(p))}"
    ah.shutdown_db()
    # The node database copied back to the run directory, and a merged database.
    proc = cli(["run", "--db-dir", str(tmp_path / "copy"), "--", sys.executable, "-c", "pass"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    (copy,) = (tmp_path / "copy").glob("*.db")
    assert _mode(copy) & 0o007 == 0, f"node DB copy {copy} is {oct(_mode(copy))}"
    merged = tmp_path / "merged.db"
    assert cli(["merge", str(copy), "-o", str(merged), "--no-progress"], tmp_path).returncode == 0
    # One rule for every database file (docs/SECURITY.md): 0640, whatever the umask leaves of it.
    umask = os.umask(0)
    os.umask(umask)
    assert _mode(merged) == _mode(copy) == 0o640 & ~umask, (oct(_mode(merged)), oct(_mode(copy)))


def test_an_export_that_fails_leaves_no_partial_file(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    ah.init_db(str(db), listen=False)
    for i in range(3000):
        ah.log_resource_samples([("cpu", "a", 1.0, "%", ""), ("cpu", "b", 2.0, "%", "")], timestamp=1e9 + i)
    ah.shutdown_db()
    conn = sqlite3.connect(db)
    conn.execute("UPDATE sample_chunks SET vals = '[1, 2, oops' WHERE rowid = (SELECT max(rowid) FROM sample_chunks)")
    conn.commit()
    conn.close()
    out = tmp_path / "out"
    out.mkdir()
    for fmt, target in (("csv", out / "r.csv"), ("json", out / "r.json")):
        proc = cli(["export", str(db), "--format", fmt, "--table", "resource_metrics", "-o", str(target)], tmp_path)
        assert proc.returncode != 0, proc.stdout[-300:]
        assert list(out.iterdir()) == [], [p.name for p in out.iterdir()]  # no partial file, no leftover part


# -- the sbatch templates on the real cluster ---------------------------------------------------
@pytest.mark.slurm
@pytest.mark.usefixtures("slurm_conf")
def test_job_template_passes_a_hostile_command_argument_literally(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_JOB", "SLURM_ARRAY", "AETHERIUM_"))}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = str(ROOT)
    env["AETHERIUM_RUN_DIR"] = str(run_dir)
    code = (
        "import sys, aetherium_hpc as ah\n"
        "assert sys.argv[1:] == ['$(touch pwned)', '`touch pwned`', 'a;touch pwned'], sys.argv\n"
        "ah.log_training_epoch_metric(sys.argv[1], 1.0, 0, 0)\n"
    )
    proc = subprocess.run(
        ["sbatch", "--parsable", "--wait", "--mem=500M", f"--output={tmp_path}/out-%j.txt",
         str(ROOT / "slurm" / "templates" / "job.sbatch"), sys.executable, "-c", code,
         "$(touch pwned)", "`touch pwned`", "a;touch pwned"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    outs = "".join(p.read_text() for p in tmp_path.glob("out-*.txt"))
    assert proc.returncode == 0, proc.stderr + outs
    (db,) = sorted((run_dir / "db").glob("*/*.db"))
    assert read(db, "SELECT metric_name FROM training_metrics") == [("$(touch pwned)",)]
    assert read(db, "SELECT status, exit_code FROM jobs") == [("completed", 0)]
    no_pwned(tmp_path, Path.cwd())


# -- hostile configs (tests/data/hostile: kept, so they never come back) -------------------------
HOSTILE_DATA = ROOT / "tests" / "data" / "hostile"


@pytest.mark.parametrize(
    ("name", "said"),
    [
        ("alias_bomb.yaml", "more than 1,000,000 values with its aliases expanded"),
        ("deep_400.yaml", "nested more than 100 levels deep"),
        ("deep_150.yaml", "nested more than 100 levels deep"),
        ("newline_partition.yaml", "slurm.partition: 'debug\\ntouch /tmp/pwned-by-partition': contains a line break"),
        ("newline_additional.yaml", "slurm.additional_parameters.comment: 'ok\\n#SBATCH --uid=0\\ntouch /tmp/pwned'"),
    ],
)
def test_a_hostile_config_file_is_one_line_and_exit_2(tmp_path: Path, name: str, said: str) -> None:
    # (The 60 s are the hang guard: before the bound, the alias bomb ran past 120 s and 2 GB.)
    proc = cli(["submit", str(HOSTILE_DATA / name), "--dry-run"], tmp_path, timeout=60)
    assert proc.returncode == 2, proc.stdout[-500:] + proc.stderr[-2000:]
    line = one_error_line(proc)
    assert str(HOSTILE_DATA / name) in line and said in line, line
    no_pwned(tmp_path)


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ((HOSTILE_DATA / "alias_bomb_set.txt").read_text().strip(), "more than 1,000,000 values"),
        ("[" * 400 + "]" * 400, "nested more than 100 levels deep"),
        ("[" * 150 + "]" * 150, "nested more than 100 levels deep"),
    ],
    ids=["alias-bomb", "deep-400", "deep-150"],
)
def test_a_hostile_set_value_is_one_line_and_exit_2(tmp_path: Path, value: str, said: str) -> None:
    config = ROOT / "configs" / "train.yaml"
    proc = cli(["submit", str(config), "--dry-run", "--set", f"workload.kwargs.x={value}"], tmp_path, timeout=60)
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = one_error_line(proc)
    assert "--set workload.kwargs.x=" in line and said in line, line


def test_escape_sequences_from_a_database_never_reach_the_terminal(tmp_path: Path) -> None:
    # Python escapes, one per line: retitle and clear the screen; CSI as one C1 character; overwrite a line.
    escapes = [ln.encode().decode("unicode_escape") for ln in (HOSTILE_DATA / "escapes.txt").read_text().splitlines()]
    hostile = "".join(escapes)
    run = tmp_path / "run"
    db = run / "db" / "5_0" / "n1.db"
    db.parent.mkdir(parents=True)
    (run / "jobs.json").write_text('{"cluster": "local", "job_ids": ["5"], "array_job_ids": []}')
    ah.init_db(str(db), source=SourceInfo(job_id="5" + hostile, node="n1" + hostile), listen=False)
    for i in range(5):
        ah.log_training_epoch_metric("loss" + hostile, float(i), 0, i)
        ah.log_resource_metric("cpu", "system_total" + hostile, 10.0, "%" + hostile)
    ah.log_job(status="completed" + hostile, exit_code=0, start_time=1.0, end_time=2.0)
    ah.shutdown_db()
    merged = tmp_path / "merged.db"
    outputs = [
        cli(["report", str(db)], tmp_path),
        cli(["watch", str(db), "--once"], tmp_path),
        cli(["status", str(run)], tmp_path),
        cli(["merge", str(run), "-o", str(merged)], tmp_path),
        cli(["report", str(merged)], tmp_path),
    ]
    for proc in outputs:
        both = proc.stdout + proc.stderr
        assert not re.search("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]", both), (proc.args, both[:3000])
    assert "loss\\x1b]0;OWNED\\x07\\x1b[2J\\x9b31mred" in outputs[0].stdout  # shown, escaped
