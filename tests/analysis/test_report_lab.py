"""The lab's view: ``report postgresql://... --since 7d [--user NAME]`` over 50 jobs of 2 users.

Every job is written as real task databases through the store API (its submitter in
SLURM_JOB_USER, as Slurm sets it), loaded with ``merge --into`` into a private schema, and the
report's figures are checked against what the test wrote: each job's unused core-hours and
GB-hours, their order, the jobs per user, the advice of each job.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from central_helpers import private_schema
from launch_helpers import aetherium_cli
from rel_helpers import one_error_line

import aetherium_hpc
from aetherium_hpc.analysis.report.lab import GB_PER_CORE
from aetherium_hpc.analysis.report.load import read
from aetherium_hpc.errors import CentralStoreError
from aetherium_hpc.store import SourceInfo
from aetherium_hpc.store.central.load import load
from aetherium_hpc.store.central.pull import Puller, Selection

pytestmark = pytest.mark.postgres

IN_WINDOW = 50  # jobs of the last 7 days; OLD more ended 10 days ago
OLD = 4
DAY = 86400.0


@dataclass(frozen=True)
class Job:
    """One job as written: what it requested and what each of its tasks used."""

    job: str
    user: str
    tasks: int
    cpus: int
    mem_gb: int
    gpus: int
    limit_min: int
    runtime_s: float
    cores_used: float  # average busy cores of every task
    rss_mb: tuple[float, ...]  # peak memory per task
    gpu_util: float
    status: str
    start: float

    @property
    def wasted_core_hours(self) -> float:
        return self.tasks * max(0.0, self.cpus - self.cores_used) * self.runtime_s / 3600.0

    @property
    def wasted_gb_hours(self) -> float:
        return sum(max(0.0, self.mem_gb - r / 1024.0) * self.runtime_s / 3600.0 for r in self.rss_mb)

    @property
    def waste(self) -> float:
        return self.wasted_core_hours + self.wasted_gb_hours / GB_PER_CORE


def lab_jobs(now: float) -> list[Job]:
    """50 jobs in the window (alice 30, bob 20; 1 or 2 tasks; two timed out) and 4 older ones."""
    out = []
    for i in range(IN_WINDOW + OLD):
        cpus = (2, 4, 8, 16)[i % 4]
        mem = (4, 8, 16, 32)[(i // 4) % 4]
        limit = (30, 60, 120)[i % 3]
        timeout = i in (4, 17)
        runtime = limit * 60.0 if timeout else limit * 60.0 * (0.2 + 0.13 * (i % 5)) + 7.0 * i
        tasks = 2 if i % 3 == 0 else 1
        start = now - (12 * DAY if i >= IN_WINDOW else 6 * DAY - i * 0.1 * DAY)
        out.append(Job(
            job=str(8_800_100 + i), user="alice" if i % 5 in (0, 1, 3) else "bob", tasks=tasks, cpus=cpus,
            mem_gb=mem, gpus=1 if i % 7 == 0 else 0, limit_min=limit, runtime_s=runtime,
            cores_used=cpus * (0.125, 0.25, 0.5, 0.75)[(i // 3) % 4],
            rss_mb=tuple(mem * 1024.0 * (0.15 + 0.2 * ((i + t) % 4)) for t in range(tasks)),
            gpu_util=20.0 + 10 * (i % 6), status="timeout" if timeout else "completed", start=start,
        ))  # fmt: skip
    return out


def write_job(root: Path, job: Job, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each task of ``job``: a node database as the runtime writes it, the submitter in SLURM_JOB_USER."""
    monkeypatch.setenv("SLURM_JOB_USER", job.user)
    for task in range(job.tasks):
        path = root / f"{job.job}_{task}" / "n1.db"
        path.parent.mkdir(parents=True)
        src = SourceInfo(job_id=f"{job.job}_{task}", array_job_id=job.job, array_task_id=task, node="n1",
                         hostname="n1")  # fmt: skip
        aetherium_hpc.init_db(path, source=src, listen=False)
        requested = {"cpus": job.cpus, "mem_gb": job.mem_gb, "timeout_min": job.limit_min}
        if job.gpus:
            requested["gpus"] = job.gpus
        aetherium_hpc.log_job(status="running", start_time=job.start, requested=requested,
                              config={"name": f"exp-{job.job}", "backend": "slurm"})  # fmt: skip
        for k in range(6):  # constant use: the mean and peak are the values written
            ts = job.start + k * job.runtime_s / 5
            samples = [("cpu", "process_tree", job.cores_used * 100.0, "%", ""),
                       ("ram", "process_tree_rss", job.rss_mb[task], "MB", "")]  # fmt: skip
            if job.gpus:
                samples.append(("gpu", "utilization", job.gpu_util, "%", "GPU-0"))
            aetherium_hpc.log_resource_samples(samples, timestamp=ts)
        aetherium_hpc.log_job(status=job.status, exit_code=0 if job.status == "completed" else 1,
                              end_time=job.start + job.runtime_s)  # fmt: skip
        aetherium_hpc.shutdown_db()
    monkeypatch.delenv("SLURM_JOB_USER")


@pytest.fixture(scope="module")
def lab(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list[Job], Path]]:
    """The 54 jobs loaded with ``merge --into`` into a private schema (written once for the module)."""
    root = tmp_path_factory.mktemp("lab")
    jobs = lab_jobs(time.time())
    with pytest.MonkeyPatch.context() as mp:
        for job in jobs:
            write_job(root / "dbs", job, mp)
    with private_schema(pg_url) as url:
        loaded = aetherium_cli(["merge", str(root / "dbs"), "--into", url], root)
        assert loaded.returncode == 0, loaded.stderr
        yield url, jobs, root


def _report(url: str, cwd: Path, *args: str) -> tuple[dict[str, object], str]:
    got = aetherium_cli(["report", url, *args, "--json"], cwd)
    assert got.returncode == 0, got.stderr
    text = aetherium_cli(["report", url, *args], cwd)
    assert text.returncode == 0, text.stderr
    return json.loads(got.stdout), text.stdout


def _table_jobs(text: str) -> list[list[str]]:
    """The rows of the text's table of jobs, split in columns."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("jobs: "))
    assert lines[start + 1].split()[:3] == ["job", "user", "name"] and set(lines[start + 2]) <= {"-", " "}
    rows = []
    for line in lines[start + 3 :]:
        if not line.strip():
            break
        rows.append(line.split())
    return rows


def _mem_advice(job: Job) -> str:
    """How the report's --mem advice ends for the job's peak (20% headroom; whole GB, or 100 MB steps
    below 1 GB): raise it above 90% of the request, lower it when that asks for under 80% of it."""
    peak_mb = max(job.rss_mb)
    want = peak_mb * 1.2
    need_gb = math.ceil(want / 1024.0) if want > 1000 else math.ceil(want / 100.0) * 100 / 1024.0
    flag = f"--mem={need_gb:.0f}G" if want > 1000 else f"--mem={round(need_gb * 1024)}M"
    if peak_mb / 1024.0 > 0.9 * job.mem_gb:
        return f"raise it: {flag}"
    if need_gb < 0.8 * job.mem_gb:
        return f"ask for {flag}"
    return ": --mem is about right"


def _time_advice(job: Job) -> str:
    """How the report's --time advice ends for a job that did not time out (20% headroom, 5-minute steps)."""
    longest = job.runtime_s / 60.0
    need = max(5, 5 * math.ceil(longest * 1.2 / 5))
    if longest > 0.9 * job.limit_min:
        return f"raise it: --time={need // 60:02d}:{need % 60:02d}:00"
    if need < 0.8 * job.limit_min:
        return f"ask for --time={need // 60:02d}:{need % 60:02d}:00 (shorter jobs start sooner)"
    return ": --time is about right"


def test_lab_view_of_a_week_ranks_every_job_by_waste(lab: tuple[str, list[Job], Path]) -> None:
    url, jobs, root = lab
    window = [j for j in jobs if j.start > time.time() - 7 * DAY]
    assert len(window) == IN_WINDOW and len({j.user for j in window}) == 2
    expected = sorted(window, key=lambda j: (-j.waste, j.job))
    wastes = sorted(j.waste for j in window)
    assert (
        min(b - a for a, b in zip(wastes[:-1], wastes[1:], strict=True)) > 1e-3
    )  # the order is not decided by rounding
    data, text = _report(url, root, "--since", "7d")
    rows = data["lab"]["jobs"]  # type: ignore[index]
    assert [r["job"] for r in rows] == [j.job for j in expected]
    for r, j in zip(rows, expected, strict=True):
        assert r["user"] == j.user and r["tasks"] == j.tasks and r["name"] == f"exp-{j.job}"
        assert r["requested"] == {"cpus": j.cpus, "mem_gb": j.mem_gb, "timeout_min": j.limit_min,
                                  **({"gpus": j.gpus} if j.gpus else {})}  # fmt: skip
        assert r["wasted_core_hours"] == pytest.approx(j.wasted_core_hours, rel=1e-9)
        assert r["wasted_gb_hours"] == pytest.approx(j.wasted_gb_hours, rel=1e-9)
        assert r["cpu_efficiency"] == pytest.approx(j.cores_used / j.cpus, rel=1e-9)
        assert r["memory_efficiency"] == pytest.approx(max(j.rss_mb) / 1024.0 / j.mem_gb, rel=1e-9)
        assert r["time_efficiency"] == pytest.approx(j.runtime_s / 60.0 / j.limit_min, rel=1e-9)
        if j.gpus:
            assert r["gpu_util_pct"] == pytest.approx(j.gpu_util, rel=1e-9)
            assert r["idle_gpu_hours"] == pytest.approx(j.tasks * (1 - j.gpu_util / 100) * j.runtime_s / 3600)
        else:
            assert r["gpu_util_pct"] is None and r["idle_gpu_hours"] is None
        assert r["statuses"] == {j.status: j.tasks} and len(r["task_rows"]) == j.tasks
        advice = r["advice"]
        assert any(a.startswith("memory: ") and a.endswith(_mem_advice(j)) for a in advice), advice
        if j.status == "timeout":
            assert any(a.startswith(f"time: {j.tasks} task(s) hit the ") for a in advice), advice
        else:
            assert any(a.startswith("time: ") and a.endswith(_time_advice(j)) for a in advice), advice
        if j.gpus and j.gpu_util < 30:
            assert f"gpu: median utilisation {j.gpu_util:.0f}%; the GPU waits on data" in " ".join(advice), advice
        if j.cores_used < 0.5 * j.cpus:
            assert any(a.startswith("cpu: ") and "--cpus-per-task=" in a for a in advice), advice
    users = data["lab"]["users"]  # type: ignore[index]
    for user in ("alice", "bob"):
        mine = [j for j in window if j.user == user]
        assert users[user]["jobs"] == len(mine) and users[user]["tasks"] == sum(j.tasks for j in mine)
        assert users[user]["wasted_core_hours"] == pytest.approx(sum(j.wasted_core_hours for j in mine))
    assert (users["alice"]["jobs"], users["bob"]["jobs"]) == (30, 20)
    # the text: the same rows in the same order, with the figures the JSON holds
    table = _table_jobs(text)
    assert [r[0] for r in table] == [j.job for j in expected]
    top, top_row = expected[0], table[0]
    assert top_row[1] == top.user and top_row[-3] == f"{top.wasted_core_hours:.1f}"
    assert top_row[-2] == f"{top.wasted_gb_hours:.1f}"
    assert f"alice: 30 jobs ({sum(j.tasks for j in window if j.user == 'alice')} tasks)" in text
    lines = text.splitlines()
    at = lines.index(f"  {top.job} ({top.user}, exp-{top.job}):")  # its advice below it, indented
    advised = lines[at + 1 : at + 1 + len(rows[0]["advice"])]
    assert advised == [f"    {a}" for a in rows[0]["advice"]] and advised[0].endswith(_mem_advice(top))
    assert not lines[at + 1 + len(advised)].startswith("    ")
    assert "winner:" not in text and "against what was requested:" not in text


def test_lab_view_of_one_user(lab: tuple[str, list[Job], Path]) -> None:
    url, jobs, root = lab
    data, text = _report(url, root, "--since", "7d", "--user", "alice")
    mine = sorted((j for j in jobs if j.user == "alice" and j.start > time.time() - 7 * DAY),
                  key=lambda j: (-j.waste, j.job))  # fmt: skip
    assert [r["job"] for r in data["lab"]["jobs"]] == [j.job for j in mine]  # type: ignore[index]
    assert list(data["lab"]["users"]) == ["alice"]  # type: ignore[index]
    assert {r[1] for r in _table_jobs(text)} == {"alice"} and len(_table_jobs(text)) == 30
    # without --since: alice's old jobs too
    every = aetherium_cli(["report", url, "--user", "alice", "--json"], root)
    assert every.returncode == 0, every.stderr
    assert len(json.loads(every.stdout)["lab"]["jobs"]) == sum(1 for j in jobs if j.user == "alice")


def test_lab_view_html_folds_each_jobs_tasks(lab: tuple[str, list[Job], Path]) -> None:
    url, jobs, root = lab
    page = root / "lab.html"
    got = aetherium_cli(["report", url, "--since", "2w", "--user", "bob", "--html", str(page), "-q"], root)
    assert got.returncode == 0, got.stderr
    html = page.read_text(encoding="utf-8")
    bob = [j for j in jobs if j.user == "bob"]  # (2w: the old ones too)
    assert html.count("<details class='job'>") == len(bob) == 21
    assert f"Jobs: {len(bob)} jobs of 1 user, most wasteful first" in html
    for j in bob:  # each job's section holds its advice and a row per task
        section = html[html.index(f"<summary>{j.job} (bob, exp-{j.job}): ") :]
        section = section[: section.index("</details>")]
        assert section.count("<li>") >= 2 and "<li>memory: peak " in section and "--mem" in section
        assert [f"<td>{j.job}_{t}/n1</td>" in section for t in range(j.tasks)] == [True] * j.tasks
        assert f"<td>{j.job}_{j.tasks}/n1</td>" not in section


def test_since_selects_the_jobs_that_overlap_the_window(pg_url: str, tmp_path: Path) -> None:
    """Still running (no end) though started before the window: in; ended before it: out; --user: theirs."""
    now = time.time()
    cases = {"1": ("ann", now - 9 * DAY, None), "2": ("ann", now - 9 * DAY, now - 8 * DAY),
             "3": ("ben", now - 8 * DAY, now - 6 * DAY), "4": ("ben", now - DAY, now - DAY + 60)}  # fmt: skip
    paths = []
    for job, (user, start, end) in cases.items():
        paths.append(str(tmp_path / f"{job}.db"))
        aetherium_hpc.init_db(paths[-1], source=SourceInfo(job_id=job, node="n1"), listen=False)
        aetherium_hpc.log_job(status="running" if end is None else "completed", start_time=start, end_time=end,
                              user_name=user)  # fmt: skip
        aetherium_hpc.log_resource_samples([("cpu", "system_total", 5.0, "%", "")], timestamp=start)
        aetherium_hpc.shutdown_db()
    with private_schema(pg_url) as url:
        load(paths, url)

        def selected(selection: Selection) -> list[str]:
            with Puller(url, selection, tmp_path / f"pulled-{time.monotonic_ns()}.db") as puller:
                puller.pull()
                return sorted(s.job_id for s in read(puller.path).sources.values() if s.job_id)

        assert selected(Selection(since=now - 7 * DAY)) == ["1", "3", "4"]
        assert selected(Selection(since=now - 7 * DAY, user="ben")) == ["3", "4"]
        assert selected(Selection(user="ann")) == ["1", "2"]
        with pytest.raises(CentralStoreError, match=r"nothing matches --since \d{4}-\d\d-\d\dT\d\d:\d\dZ --user zed"):
            selected(Selection(since=now - 7 * DAY, user="zed"))


@pytest.mark.parametrize("bad", ["7x", "yesterday", "2026-02-30", "-3d"])
def test_bad_since_is_one_line_exit_2(lab: tuple[str, list[Job], Path], bad: str) -> None:
    url, _, root = lab
    got = aetherium_cli(["report", url, f"--since={bad}"], root)
    line = one_error_line(got)
    assert got.returncode == 2 and f"--since {bad!r}" in line and "7d" in line and "2026-12-01" in line
