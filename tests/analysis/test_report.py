"""report: text, JSON, PNG and HTML of one job and of a merged array; export; the HTML in Chromium."""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from testenv import ROOT

import aetherium_hpc
from aetherium_hpc.analysis import commands
from aetherium_hpc.analysis.export import export
from aetherium_hpc.analysis.formatting import num, slurm_time
from aetherium_hpc.analysis.merge import merge
from aetherium_hpc.analysis.report import EmptyDatabaseError, build_report
from aetherium_hpc.errors import AetheriumError
from aetherium_hpc.store import SourceInfo

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HOSTILE = "<script>alert(1)</script>"


def write_job_db(path: Path, task: int = 0, *, job: str = "900", seconds: int = 120, hostile: bool = False,
                 status: str = "completed", mem_scale: float = 1.0) -> None:  # fmt: skip
    """A small but complete job database: resources, generation chunks, training epochs, job row."""
    path.parent.mkdir(parents=True, exist_ok=True)
    node = f"node{task % 2}"
    src = SourceInfo(job_id=f"{job}_{task}", array_job_id=job, array_task_id=task, node=node, hostname=node)
    aetherium_hpc.init_db(path, source=src, listen=False)
    t0 = time.time() - seconds
    for k in range(seconds):
        wave = math.sin(k / 10.0)
        samples = [
            ("cpu", "system_total", 40 + 20 * wave, "%", ""),
            ("cpu", "process_tree", 350 + 100 * wave, "%", ""),
            ("ram", "system_used", 20000 + 10 * k, "MB", ""),
            ("ram", "process_tree_rss", (1500 + 8 * k + 50 * task) * mem_scale, "MB", ""),
        ]
        for g in range(2):
            samples += [("gpu", "utilization", 60 + 30 * wave - 10 * g, "%", f"GPU-{task}-{g}"),
                        ("gpu", "memory_used", 8000 + 20 * k + 1000 * g, "MB", f"GPU-{task}-{g}")]  # fmt: skip
        if hostile:
            samples.append(("custom", HOSTILE, 1.0, "u", ""))
        aetherium_hpc.log_resource_samples(samples, timestamp=t0 + k)
    for rnd in range(2):
        for chunk in range(5):
            aetherium_hpc.log_data_generation_complete(
                time.time() - (2.0 + chunk + rnd), operation="signal_injection", samples_generated=1000,
                round_number=rnd, chunk_number=chunk, memory_used_mb=300.0 + 10 * chunk,
            )  # fmt: skip
        for epoch in range(5):
            loss = 1.0 / (1 + epoch + 5 * rnd) + 0.01 * task
            aetherium_hpc.log_training_epoch_metric("loss", loss, round_number=rnd, epoch_number=epoch, phase="train")
            aetherium_hpc.log_training_epoch_metric(
                "loss", loss * 1.1, round_number=rnd, epoch_number=epoch, phase="val"
            )
            aetherium_hpc.log_training_epoch_metric("lr", 1e-3 * 0.5**epoch, round_number=rnd, epoch_number=epoch)
            aetherium_hpc.log_training_epoch_metric("val_accuracy", 0.5 + 0.05 * epoch, round_number=rnd,
                                                    epoch_number=epoch, phase="val")  # fmt: skip
            if hostile:
                aetherium_hpc.log_training_epoch_metric(HOSTILE, 0.5, round_number=rnd, epoch_number=epoch)
    aetherium_hpc.log_job(status=status, exit_code=0 if status == "completed" else 1, start_time=t0,
                          end_time=t0 + seconds + 10 * task,
                          requested={"mem_gb": 16, "cpus": 8, "timeout_min": 60, "gpus": 2})  # fmt: skip
    aetherium_hpc.shutdown_db()


@pytest.fixture
def job_db(tmp_path: Path) -> Path:
    p = tmp_path / "job" / "node0.db"
    write_job_db(p, hostile=True)
    return p


@pytest.fixture
def array_db(tmp_path: Path) -> Path:
    for task in range(6):
        write_job_db(tmp_path / "run" / "db" / f"900_{task}" / f"node{task % 2}.db", task, seconds=60,
                     status="timeout" if task == 5 else "completed", mem_scale=1.0 + task)  # fmt: skip
    out = tmp_path / "merged.db"
    assert merge([tmp_path / "run"], out).exit_code == 0
    return out


def test_empty_database_clear_message(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    aetherium_hpc.init_db(empty, source=SourceInfo(job_id="1", node="n"), listen=False)
    aetherium_hpc.shutdown_db()
    with pytest.raises(EmptyDatabaseError, match="no metrics to report") as exc:
        build_report(empty)
    assert exc.value.exit_code == 2
    zero = tmp_path / "zero.db"
    zero.write_bytes(b"")
    with pytest.raises(EmptyDatabaseError, match="empty file"):
        build_report(zero)
    with pytest.raises(AetheriumError, match="no such file"):
        build_report(tmp_path / "missing.db")
    # Through the command line of python -m aetherium_hpc.analyze: one line, exit code 2.
    proc = subprocess.run([sys.executable, "-m", "aetherium_hpc.analyze", str(empty)], capture_output=True, text=True,
                          cwd=ROOT)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "no metrics to report" in proc.stderr


def test_report_of_one_job(job_db: Path, tmp_path: Path) -> None:
    rep = build_report(job_db)
    text = rep.text
    assert "run:" in text and "2m" in text  # about two minutes
    assert "cpu/process_tree" in text and "gpu/utilization" in text
    assert "signal_injection" in text and "samples/s" in text
    d = rep.data
    assert d["samples"]["generation"] == 10 and d["samples"]["training"] == 50
    loss = next(t for t in d["training"] if t["metric_name"] == "loss" and t["phase"] == "train")
    assert loss["goal"] == "min" and loss["best"] == pytest.approx(1 / 10) and loss["final_round"] == 1
    acc = next(t for t in d["training"] if t["metric_name"] == "val_accuracy")
    assert acc["goal"] == "max" and acc["best"] == pytest.approx(0.7)
    gen = d["generation"]
    assert [g["round"] for g in gen] == [0, 1] and gen[0]["chunks"] == 5 and gen[0]["memory_max_mb"] == 340.0
    gpu_rows = [r for r in d["resources"] if r["metric_type"] == "gpu" and r["metric_name"] == "utilization"]
    assert len(gpu_rows) == 2  # one per GPU
    assert d["jobs"][0]["status"] == "completed"
    assert any("--mem=" in a for a in d["efficiency"]["advice"])
    assert any("--time=" in a for a in d["efficiency"]["advice"])
    json.loads(rep.to_json())
    plots = rep.plots()
    assert {"cpu", "memory", "gpu_utilization", "gpu_memory", "generation_duration", "training_loss",
            "learning_rate"} <= set(plots)  # fmt: skip
    import io

    import matplotlib.image as mpimg

    for png in [*plots.values(), rep.dashboard_png()]:
        assert png.startswith(PNG_MAGIC) and len(png) > 5000
        img = mpimg.imread(io.BytesIO(png), format="png")  # decodes: a valid PNG
        assert img.ndim == 3 and img.shape[0] >= 300 and img.shape[1] >= 600


def test_report_of_array_has_distribution_and_advice(array_db: Path) -> None:
    rep = build_report(array_db)
    arr = rep.data["array"]
    assert arr["tasks"] == 6
    for key in ("peak_memory_mb", "runtime_s", "gpu_utilization_pct"):
        assert set(arr[key]) >= {"p50", "p95", "max"}
        assert arr[key]["p50"] <= arr[key]["p95"] <= arr[key]["max"]
    assert arr["peak_memory_mb"]["max"] == pytest.approx((1500 + 8 * 59 + 250) * 6)
    assert "across 6 tasks (p50 / p95 / max)" in rep.text
    advice = rep.data["efficiency"]["advice"]
    assert any(a.startswith("time: 1 task(s) hit") and "--time=01:30:00" in a for a in advice)
    assert any(a.startswith("memory: peak 13.0 GB") for a in advice)
    assert "1 timeout" in rep.text and "5 completed" in rep.text
    assert slurm_time(90) == "01:30:00" and slurm_time(60 * 25) == "1-01:00:00"


@pytest.mark.parametrize(
    ("value", "text"),
    [(999.6, "1000"), (-999.6, "-1000"), (999.4, "999"), (0.9996, "1"), (12345.6, "12346"), (0.0001234, "0.000123")],
)
def test_numbers_near_a_power_of_ten_are_not_written_in_e_notation(value: float, text: str) -> None:
    """num() rounds to 3 digits; a value that rounds up to 1000 is written whole, not as "1e+03" (watch's chunk rate)."""
    assert num(value) == text


def test_html_escapes_and_embeds_png(job_db: Path, tmp_path: Path) -> None:
    page = build_report(job_db).to_html()
    assert HOSTILE not in page
    assert html_escaped(HOSTILE) in page
    assert page.count("data:image/png;base64,") >= 6
    assert "<script" not in page.lower()


def test_lab_view_of_a_merged_file_escapes_what_jobs_recorded(tmp_path: Path) -> None:
    """Two jobs in one merged database: the lab view (a row each), their user and name shown as text."""
    paths = []
    for job, user in (("61", HOSTILE), ("62", "dora")):
        paths.append(tmp_path / f"{job}.db")
        aetherium_hpc.init_db(paths[-1], source=SourceInfo(job_id=job, node="n1"), listen=False)
        aetherium_hpc.log_job(status="completed", start_time=1.0e9, end_time=1.0e9 + 3600, user_name=user,
                              config={"name": f"{HOSTILE}-{job}"}, requested={"cpus": 4, "mem_gb": 2})  # fmt: skip
        for k in range(3):
            aetherium_hpc.log_resource_samples([("cpu", "process_tree", 100.0, "%", ""),
                                                ("ram", "process_tree_rss", 512.0 * int(job[1]), "MB", "")],
                                               timestamp=1.0e9 + 1800 * k)  # fmt: skip
        aetherium_hpc.shutdown_db()
    merge([str(p) for p in paths], str(tmp_path / "m.db"), progress=False)
    rep = build_report(tmp_path / "m.db")
    jobs = rep.data["lab"]["jobs"]
    # 3 of 4 cores idle for an hour each; 2 GB - 0.5 GB (job 61) and 2 GB - 1 GB (job 62) unused for an hour
    assert [(j["job"], j["wasted_core_hours"], j["wasted_gb_hours"]) for j in jobs] == [("61", 3.0, 1.5),
                                                                                        ("62", 3.0, 1.0)]  # fmt: skip
    assert jobs[0]["user"] == HOSTILE and "61" in rep.text and "dora" in rep.text
    page = rep.to_html()
    assert HOSTILE not in page and "<script" not in page.lower()
    assert page.count(html_escaped(HOSTILE)) >= 4  # user and name in the table and in the job's section


@pytest.mark.parametrize(("util", "said"), [
    (10.0, "gpu: median utilisation 10%; the GPU waits on data (more data-loader workers) or is not needed; "
           "--gres=gpu:1 would do"),  # 4 GPUs at 10%: 0.4 busy, 0.48 with headroom
    (22.0, "gpu: median utilisation 22%; the GPU waits on data (more data-loader workers) or is not needed; "
           "--gres=gpu:2 would do"),  # 0.88 busy, 1.06 with headroom
    (None, "gpu: 4 GPU(s) requested but no GPU samples recorded; drop --gres=gpu:4 (--gpus) if unused"),
])  # fmt: skip
def test_gpu_advice_names_the_gres_to_ask_for(util: float | None, said: str) -> None:
    from aetherium_hpc.analysis.report.compute import efficiency

    task = {"requested": {"gpus": 4}, "gpu_util_pct": util, "peak_memory_mb": None, "runtime_s": None,
            "cpu_cores": None}  # fmt: skip
    assert efficiency([task], [])["advice"] == [said]


def html_escaped(s: str) -> str:
    import html

    return html.escape(s, quote=True)


def test_report_command_writes_files(job_db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers(dest="command"))
    out_png, out_html, plots = tmp_path / "r.png", tmp_path / "r.html", tmp_path / "plots"
    args = parser.parse_args(["report", str(job_db), "--plot", str(out_png), "--html", str(out_html),
                              "--plot-dir", str(plots), "--json"])  # fmt: skip
    assert args.handler(args) == 0
    assert json.loads(capsys.readouterr().out)["samples"]["training"] == 50
    assert out_png.read_bytes().startswith(PNG_MAGIC)
    assert (
        all(p.read_bytes().startswith(PNG_MAGIC) for p in plots.glob("*.png")) and len(list(plots.glob("*.png"))) >= 7
    )
    assert out_html.read_text().startswith("<!DOCTYPE html>")


def test_export_csv_and_json(job_db: Path, tmp_path: Path) -> None:
    out = tmp_path / "jobs.csv"
    export(str(job_db), fmt="csv", tables=["training_metrics"], output=str(out))
    lines = out.read_text().splitlines()
    assert lines[0].startswith("timestamp,metric_name,metric_value") and len(lines) == 51
    js = tmp_path / "all.json"
    export(str(job_db), fmt="json", output=str(js))
    data = json.loads(js.read_text())
    assert set(data) == {"sources", "jobs", "resource_metrics", "generation_metrics", "training_metrics"}
    assert data["jobs"][0]["status"] == "completed"
    folder = tmp_path / "csvs"
    folder.mkdir()
    assert len(export(str(job_db), fmt="csv", output=str(folder))) == 5
    with pytest.raises(AetheriumError, match="unknown table"):
        export(str(job_db), fmt="csv", tables=["nope; DROP TABLE jobs"], output=str(out))
    with pytest.raises(AetheriumError, match="writes a folder .*add -o OUT_DIR"):
        export(str(job_db), fmt="csv")


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot(html_path: Path, png_path: Path, profile: Path, height: int = 2000) -> None:
    """Render ``html_path`` in headless Chromium to ``png_path``."""
    chromium = _chromium()
    assert chromium is not None
    subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
         f"--screenshot={png_path}", f"--window-size=1200,{height}", "--hide-scrollbars",
         html_path.resolve().as_uri()],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip


@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_html_renders_in_headless_chromium(array_db: Path, tmp_path: Path) -> None:
    import matplotlib.image as mpimg
    import numpy as np

    page = tmp_path / "report.html"
    page.write_text(build_report(array_db).to_html(), encoding="utf-8")
    shot = tmp_path / "shot.png"
    screenshot(page, shot, tmp_path / "profile")
    img = mpimg.imread(shot)
    assert img.shape[0] >= 1000 and img.shape[1] >= 1000
    rgb = img[..., :3]
    non_white = np.any(rgb < 0.95, axis=-1)
    # Text alone covers a few percent of the page; the plots (lines, axes, colour) much more.
    assert non_white.mean() > 0.05
    coloured = (rgb.max(axis=-1) - rgb.min(axis=-1)) > 0.25  # plot lines are coloured, text is grey
    assert coloured.sum() > 2000
    if os.environ.get("AETHERIUM_SAVE_SCREENSHOT"):
        shutil.copy(shot, os.environ["AETHERIUM_SAVE_SCREENSHOT"])


def _attempt(path: Path, attempt: int, loss: float, end: str | None) -> None:
    """One attempt of job 950 on n1: 2 rounds of 3 chunks, 4 epochs, 30 s of CPU samples."""
    src = SourceInfo(job_id="950", node="n1", hostname="n1", attempt=attempt)
    aetherium_hpc.init_db(path, source=src, listen=False)
    t0 = time.time() - 600 + 300 * attempt  # a gap between the attempts, as Slurm holds a requeued job
    aetherium_hpc.log_job(status="running", start_time=t0, requested={"mem_gb": 4, "timeout_min": 30})
    aetherium_hpc.log_resource_samples([("cpu", "system_total", 10.0 + attempt, "%", "")], timestamp=t0)
    for k in range(1, 30):
        aetherium_hpc.log_resource_samples([("cpu", "system_total", 10.0 + attempt, "%", "")], timestamp=t0 + k)
    for rnd in range(2):
        for chunk in range(3):
            aetherium_hpc.log_data_generation_complete(t0 + chunk, operation="gen", samples_generated=10,
                                                       round_number=rnd, chunk_number=chunk)  # fmt: skip
    for epoch in range(4):
        aetherium_hpc.log_training_epoch_metric("val_loss", loss - 0.1 * epoch, round_number=0, epoch_number=epoch)
    if end is not None:
        aetherium_hpc.log_job(status=end, end_time=t0 + 30, exit_code=0 if end == "completed" else None)
    aetherium_hpc.shutdown_db()


@pytest.mark.parametrize("first_end", ["cancelled", None], ids=["cancelled", "killed"])
def test_a_requeued_job_is_reported_from_its_last_attempt(tmp_path: Path, first_end: str | None) -> None:
    db = tmp_path / "db" / "950_0" / "n1.db"
    db.parent.mkdir(parents=True)
    _attempt(db, 0, loss=5.0, end=first_end)  # killed: its row still says running
    _attempt(db, 1, loss=1.0, end="completed")
    rep = build_report(db)
    d = rep.data
    assert [(j["source"], j["status"], j["superseded"]) for j in d["jobs"]] == [
        ("950/n1#1", first_end or "requeued", True), ("950/n1#2", "completed", False)
    ]  # fmt: skip
    assert d["requeues"] == [{"task": "950", "requeues": 1, "last_attempt": 2, "status": "completed",
                              "text": "requeued once (attempt 2 completed)"}]  # fmt: skip
    # counts, final values and winners are those of the last attempt
    assert [(g["round"], g["chunks"]) for g in d["generation"]] == [(0, 3), (1, 3)]
    assert d["samples"]["generation"] == 6 and d["samples"]["training"] == 4
    (val,) = d["training"]
    assert (val["final"], val["best"], val["count"]) == (pytest.approx(0.7), pytest.approx(0.7), 4)
    assert [t["source"] for t in d["tasks"]] == ["950/n1#2"]
    assert "requeued once (attempt 2 completed)" in rep.text
    assert "1 completed (+ 1 earlier attempt, requeued)" in rep.text
    assert "requeued once (attempt 2 completed)" in rep.to_html()
    # every attempt's resources are kept, each its own series (no line drawn across the gap)
    assert sorted(r["source"] for r in d["resources"]) == ["950/n1#1", "950/n1#2"]


@pytest.mark.parametrize(("layout", "run_line", "spread"), [
    ({0: ["n1", "n2"]}, "1 task on 2 nodes (2 databases)", "the 2 nodes of 1 task"),
    ({0: ["n1", "n2"], 1: ["n1", "n2"]}, "2 tasks on 2 nodes (4 databases)", "4 task-nodes of 2 tasks on 2 nodes"),
    ({0: ["n1"], 1: ["n2"], 2: ["n1"]}, "3 tasks on 2 nodes", "3 tasks"),
])  # fmt: skip
def test_tasks_on_several_nodes_are_counted_as_tasks_on_nodes(
    tmp_path: Path, layout: dict[int, list[str]], run_line: str, spread: str
) -> None:
    """A task on two nodes is one task (a database per node): the run line, the spread and the advice say so."""
    from task_dbs import write_task_db

    for task, nodes in layout.items():
        for node in nodes:
            write_task_db(tmp_path / "run" / "db" / f"77_{task}" / f"{node}.db", task, job="77", node=node)
    merged = tmp_path / "merged.db"
    assert merge([tmp_path / "run"], merged).exit_code == 0
    rep = build_report(merged)
    assert rep.data["array"]["over"] == spread
    run = rep.text.splitlines()[1]
    assert run.startswith("run: ") and run.endswith(f" UTC, {rep.data['run']['duration_s']:.1f} s; {run_line}"), run
    assert f"\nacross {spread} (p50 / p95 / max):\n" in rep.text
    assert "job(s)" not in rep.text and "source(s)" not in rep.text
    page = rep.to_html()
    assert f"<li>{run_line}</li>" in page and f"<h2>Across {spread}</h2>" in page
    from aetherium_hpc.analysis.report.compute import efficiency

    rows = [{**t, "requested": {"mem_gb": 1, "timeout_min": 60}} for t in rep.data["tasks"]]
    advice = efficiency(rows, rep.loaded.jobs)["advice"]
    assert advice[0].startswith("memory: peak ") and f" MB (max over {spread}) is 10% of the 1 GB" in advice[0], advice
    assert advice[1].startswith(f"time: longest task ran 12.0 s (max over {spread}), <1% of the 60 min"), advice


def test_report_plot_of_names_with_any_character_writes_no_glyph_warning(tmp_path: Path) -> None:
    """Names from the data with control characters, CJK, emoji and mathtext: the plots are drawn,
    stderr has no matplotlib warning (every symbol the report itself writes is in DejaVu Sans:
    tests/analysis/test_report_many.py checks that)."""
    odd = "tab\there esc\x1b[31m 日本 🚀 $\\nocommand$ cost=$5"
    for task in range(2):
        db = tmp_path / "run" / "db" / f"31_{task}" / "n1.db"
        db.parent.mkdir(parents=True)
        src = SourceInfo(job_id=f"31_{task}", array_job_id="31", array_task_id=task, node=f"n{odd}", hostname="n1")
        aetherium_hpc.init_db(db, source=src, listen=False)
        t0 = time.time() - 20
        for k in range(5):
            aetherium_hpc.log_resource_samples([("cpu", "process_tree", 50.0 + k, "%", ""),
                                                ("gpu", "utilization", 10.0 * k, "%", odd)], timestamp=t0 + k)  # fmt: skip
        for epoch in range(3):
            aetherium_hpc.log_training_epoch_metric("loss", 1.0 / (1 + epoch + task), round_number=0,
                                                    epoch_number=epoch, phase=odd)  # fmt: skip
        aetherium_hpc.log_job(status="completed", exit_code=0, start_time=t0, end_time=t0 + 5,
                              config={"name": odd, "task_params": {odd: task, "lr": f"{odd}{task}"}})  # fmt: skip
        aetherium_hpc.shutdown_db()
    assert merge([tmp_path / "run"], tmp_path / "merged.db").exit_code == 0
    out = tmp_path / "out"
    out.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "MPLCONFIGDIR": str(tmp_path / "mpl"),
    }  # a first run: a new font cache
    proc = subprocess.run([sys.executable, "-m", "aetherium_hpc", "report", str(tmp_path / "merged.db"), "--plot",
                           str(out / "all.png"), "--plot-dir", str(out / "plots"), "--html", str(out / "r.html")],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Glyph" not in proc.stderr and "missing from font" not in proc.stderr, proc.stderr
    assert "Warning" not in proc.stderr and "fontManager" not in proc.stderr, proc.stderr
    assert (out / "all.png").read_bytes().startswith(PNG_MAGIC)
    assert {p.name for p in (out / "plots").iterdir()} >= {"cpu.png", "gpu_utilization.png", "training_loss.png"}
