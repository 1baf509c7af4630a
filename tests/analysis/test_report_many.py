"""report of a large array: distributions across tasks instead of a line, a legend entry and a row per task."""

from __future__ import annotations

import json
import math
import re
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

import aetherium_hpc
from aetherium_hpc.analysis.merge import merge
from aetherium_hpc.analysis.report import build_report, load, plots
from aetherium_hpc.analysis.report.across import MANY_TASKS, TOP_N
from aetherium_hpc.store import SourceInfo, chunks

HOSTILE = "<script>alert(1)</script>"
N_TASKS = 60


def write_task(path: Path, task: int, array: str, seconds: int = 30) -> None:
    """One small task database: CPU, memory and GPU samples at a level of its own, a val loss, a job row."""
    path.parent.mkdir(parents=True, exist_ok=True)
    src = SourceInfo(job_id=f"{array}_{task}", array_job_id=array, array_task_id=task, node="n1", hostname="n1")
    aetherium_hpc.init_db(path, source=src, listen=False)
    t0 = time.time() - 600
    for k in range(seconds):
        aetherium_hpc.log_resource_samples([
            ("cpu", "process_tree", 50.0 + 10 * task + math.sin(k), "%", ""),
            ("ram", "process_tree_rss", 100.0 + 20 * task + k, "MB", ""),
            ("gpu", "utilization", (3 * task + k) % 100, "%", "GPU-0"),
            ("gpu", "temperature", 40.0 + task, "C", "GPU-0"),
        ], timestamp=t0 + k)  # fmt: skip
    for epoch in range(3):
        aetherium_hpc.log_training_epoch_metric("loss", 1.0 + task / 100 - 0.1 * epoch, round_number=0,
                                                epoch_number=epoch, phase="val")  # fmt: skip
    aetherium_hpc.log_job(status="failed" if task == 7 else "completed", exit_code=1 if task == 7 else 0,
                          start_time=t0, end_time=t0 + seconds + task,
                          requested={"mem_gb": 4, "cpus": 4, "timeout_min": 10})  # fmt: skip
    aetherium_hpc.shutdown_db()


@pytest.fixture(scope="module")
def many_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("many")
    for task in range(N_TASKS):
        write_task(root / "run" / "db" / f"{HOSTILE}_{task}" / "n1.db", task, HOSTILE)
    out = root / "merged.db"
    assert merge([root / "run"], out).exit_code == 0
    return out


def _drawn(d: dict, loaded: load.Loaded) -> dict[str, object]:
    """Every panel drawn on its own axes (matplotlib's Agg), by name."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    out = {}
    for name, (_title, draw) in plots.panels(d, loaded).items():
        ax = Figure().add_subplot(1, 1, 1)
        draw(ax)
        out[name] = ax
    return out


def test_many_tasks_show_distributions_and_both_ends(many_db: Path) -> None:
    rep = build_report(many_db)
    d = rep.data
    assert N_TASKS > MANY_TASKS and d["array"]["summarised"] is True
    measures = {m["key"]: m for m in d["across"]["measures"]}
    assert {"peak_memory_mb", "runtime_s", "memory_efficiency", "cpu_efficiency", "gpu_util_pct",
            "objective_value"} <= set(measures)  # fmt: skip
    peak = measures["peak_memory_mb"]
    assert sum(peak["histogram"]["counts"]) == peak["n"] == N_TASKS
    assert len(peak["histogram"]["edges"]) == len(peak["histogram"]["counts"]) + 1
    # The top and bottom tasks: the task with the largest level of memory is task 59, the smallest task 0.
    assert [e["task"] for e in peak["highest"]][:2] == [f"{HOSTILE}_59/n1", f"{HOSTILE}_58/n1"]
    assert peak["lowest"][0]["task"] == f"{HOSTILE}_0/n1" and len(peak["lowest"]) == TOP_N
    assert peak["highest"][0]["value"] == peak["max"] == pytest.approx(100 + 20 * 59 + 29)
    assert measures["memory_efficiency"]["max"] == pytest.approx(peak["max"] / 1024 / 4)
    obj = measures["objective_value"]
    assert obj["label"] == "final val/loss (min is best)" and obj["lowest"][0]["task"] == f"{HOSTILE}_0"
    # Every task is still in the JSON.
    back = json.loads(rep.to_json())
    assert len(back["tasks"]) == len(back["sweep"]["tasks"]) == len(back["jobs"]) == N_TASKS
    spread = {(r["metric_type"], r["metric_name"]): r for r in d["across"]["resources"]}
    assert spread[("gpu", "temperature")]["series"] == N_TASKS
    assert spread[("gpu", "temperature")]["max"]["max"] == pytest.approx(40.0 + N_TASKS - 1)


def test_many_tasks_text_is_short(many_db: Path) -> None:
    text = build_report(many_db).text
    lines = text.splitlines()
    assert len(lines) < 100, text
    assert "  highest: " in text and "  lowest:  " in text
    assert "... 40 more tasks: see --html or --json" in text
    assert "60 rows (every one in --json" in text and "59 completed, 1 failed" in text
    assert not any(line.startswith(f"{HOSTILE}_3/n1 ") for line in lines)  # no per-task job rows


def test_many_tasks_plots_are_bands_and_histograms_not_legends(many_db: Path) -> None:
    rep = build_report(many_db)
    axes = _drawn(rep.data, rep.loaded)
    assert {"cpu", "memory", "gpu_utilization", "histogram_peak_memory_mb", "histogram_runtime_s",
            "histogram_memory_efficiency", "histogram_cpu_efficiency", "histogram_objective_value"} <= set(axes)  # fmt: skip
    for name, ax in axes.items():
        legend = ax.get_legend()  # type: ignore[attr-defined]
        entries = [t.get_text() for t in legend.get_texts()] if legend else []
        others = [e for e in entries if not e.startswith("winner: ")]  # the one task named: the sweep's winner
        assert len(others) <= 3 and len(entries) - len(others) <= 1, (name, entries)
        assert not any(HOSTILE in e for e in others)
        assert len(ax.get_lines()) <= 4, name  # type: ignore[attr-defined]
    legend = axes["memory"].get_legend()  # type: ignore[attr-defined]
    assert [t.get_text() for t in legend.get_texts()] == ["min–max", "p5–p95", "median", f"winner: {HOSTILE}_0"]
    # The histogram of peak memory holds every task.
    patches = axes["histogram_peak_memory_mb"].patches  # type: ignore[attr-defined]
    assert len(patches) == 1  # one filled staircase


def test_many_tasks_html_has_summaries_and_escapes_task_names(many_db: Path) -> None:
    page = build_report(many_db).to_html()
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;_59/n1" in page
    assert "Top and bottom 5 tasks" in page and "Resources across 60 sources" in page
    assert page.count("<img ") >= 10  # timelines, generation/training where present, histograms
    assert len(re.findall(r"<tr[ >]", page)) < 200  # not 60 job rows + 60 ranked rows + every series
    assert "59 completed, 1 failed" in page  # the status counts; the failed task listed
    assert page.count("<td class='st-failed'>") == 1


def test_a_small_array_keeps_a_line_per_task(tmp_path: Path) -> None:
    for task in range(4):
        write_task(tmp_path / "run" / "db" / f"5_{task}" / "n1.db", task, "5")
    out = tmp_path / "merged.db"
    assert merge([tmp_path / "run"], out).exit_code == 0
    rep = build_report(out)
    assert rep.data["array"]["summarised"] is False and "across" not in rep.data
    axes = _drawn(rep.data, rep.loaded)
    assert not any(name.startswith("histogram_") for name in axes)
    legend = axes["memory"].get_legend()  # type: ignore[attr-defined]
    assert [t.get_text() for t in legend.get_texts()] == ["5_0 (winner)"] + [f"5_{t}" for t in range(1, 4)]
    assert "tasks:\ntask " in rep.text  # the per-task job table


def test_bulk_decode_matches_the_chunk_codec(tmp_path: Path) -> None:
    db = tmp_path / "codec.db"
    src = SourceInfo(job_id="1", node="n")
    aetherium_hpc.init_db(db, source=src, listen=False)
    t0 = 1_700_000_000.0
    for k in range(500):  # several chunks, jitter, NaN and infinities
        v = float("nan") if k % 37 == 0 else float("inf") if k == 5 else k * 0.1
        aetherium_hpc.log_resource_samples([("cpu", "process_tree", v, "%", ""), ("gpu", "power", -v, "W", "G")],
                                           timestamp=t0 + k + (0.003 if k % 7 == 0 else 0.0))  # fmt: skip
    aetherium_hpc.shutdown_db()
    conn = sqlite3.connect(db)
    want: dict[int, tuple[list[np.ndarray], list[np.ndarray]]] = {}
    for sid, t, n, dt, jit, vals in conn.execute(
        "SELECT c.series_id, c.t0, c.n, c.dt_ms, c.jit, c.vals FROM sample_chunks c JOIN series s USING (series_id)"
        " WHERE s.metric_type IN ('cpu', 'ram', 'gpu') ORDER BY c.series_id, c.t0"
    ):
        ts, vs = chunks.decode(t, n, dt, jit, vals)
        want.setdefault(sid, ([], []))[0].append(ts)
        want[sid][1].append(vs)
    assert all(len(ts) > 1 for ts, _ in want.values())
    expected = [(np.concatenate(ts), np.concatenate(vs)) for ts, vs in want.values()]
    exact = load._load_series(conn, load.RESOURCE_TYPES)
    for s, (ts, vs) in zip(exact, expected, strict=True):
        np.testing.assert_array_equal(s.t, ts)
        np.testing.assert_array_equal(s.v, vs)
    coarse = load._load_series(conn, load.RESOURCE_TYPES, exact_times=False, timed=load.DRAWN)
    for s, (ts, vs) in zip(coarse, expected, strict=True):
        assert s.count == vs.size
        if s.mname == "process_tree":
            np.testing.assert_array_equal(s.v, vs)
            assert np.max(np.abs(s.t - ts)) < 0.01  # the grid: the jitter (ms) left out
        else:  # not drawn: the chunks' statistics, no samples decoded -- the same mean and peak
            assert s.t.size == 0 and s.v.size == 0 and s.stats is not None
            mean, peak = load.nanstat(vs)
            assert s.mean_max() == (pytest.approx(mean, rel=1e-6), pytest.approx(peak, rel=1e-6))
    conn.close()


def test_every_symbol_the_plots_write_is_in_matplotlibs_font(many_db: Path, tmp_path: Path) -> None:
    """Titles, axis labels, legends and notes of a large array's bands and of a small array's
    lines: every character has a glyph in DejaVu Sans, so no "Glyph missing" comes from the report's own text."""
    from matplotlib import font_manager, ft2font
    from matplotlib.text import Text

    glyphs = set(ft2font.FT2Font(font_manager.findfont("DejaVu Sans", fallback_to_default=False)).get_charmap())
    for task in range(4):
        write_task(tmp_path / "run" / "db" / f"5_{task}" / "n1.db", task, "5")
    assert merge([tmp_path / "run"], tmp_path / "small.db").exit_code == 0
    seen = set()
    for db in (many_db, tmp_path / "small.db"):
        rep = build_report(db)
        for ax in _drawn(rep.data, rep.loaded).values():
            ticks = {id(t) for axis in (ax.xaxis, ax.yaxis) for t in axis.findobj(Text)}  # type: ignore[attr-defined]
            seen |= {t.get_text() for t in ax.findobj(Text) if id(t) not in ticks}  # type: ignore[attr-defined]
        seen.add(plots.dashboard_title(rep.data))
    assert any("–" in s for s in seen) and any(s.startswith("winner: ") for s in seen)  # the en dash is drawn
    missing = {c for s in seen for c in s if ord(c) not in glyphs and c != "\n"}
    assert not missing, missing
