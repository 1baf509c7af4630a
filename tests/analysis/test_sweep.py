"""Which setting won: the per-task table of an array, its objective, the winner and the tasks that did not complete."""

from __future__ import annotations

from pathlib import Path

import pytest
from task_dbs import TASKS, write_task

from aetherium_hpc.analysis.commands import run_report
from aetherium_hpc.analysis.merge import merge
from aetherium_hpc.analysis.report import Report, build_report
from aetherium_hpc.analysis.sweep import is_schedule, parse_objective
from aetherium_hpc.errors import AetheriumError


@pytest.fixture
def sweep_db(tmp_path: Path) -> Path:
    for task in range(len(TASKS)):
        write_task(tmp_path / "run" / "db" / f"77_{task}" / "n1.db", task)
    out = tmp_path / "merged.db"
    assert merge([tmp_path / "run"], out).exit_code == 0
    return out


def test_tasks_ranked_by_default_objective_val_loss(sweep_db: Path) -> None:
    sweep = build_report(sweep_db).data["sweep"]
    assert sweep["objective"] == {"metric": "val/loss", "goal": "min", "value": "final", "chosen": "default"}
    assert sweep["parameters"] == ["learning_rate", "seed"]
    assert [t["task"] for t in sweep["tasks"]] == ["77_2", "77_1", "77_0", "77_3", "77_4"]
    assert [t["rank"] for t in sweep["tasks"]] == [1, 2, 3, 4, None]  # the failed task has no value
    first = sweep["tasks"][0]
    assert first["params"] == {"learning_rate": 0.05, "seed": 0} and first["status"] == "cancelled"
    assert first["metrics"]["val/loss"]["final"] == pytest.approx(0.10)
    assert first["metrics"]["val/loss"]["best"] == pytest.approx(0.10)
    assert first["metrics"]["train/learning_rate"]["best"] is None  # a schedule
    assert first["peak_memory_mb"] == pytest.approx(102.0) and first["runtime_s"] == pytest.approx(12.0)
    # The winner completed: the cancelled task's lower loss is ranked but does not win.
    assert sweep["winner"] == "77_1"
    assert sweep["median"] == pytest.approx(0.25)  # of 0.1, 0.2, 0.3, 0.4


def test_text_names_winner_and_tasks_that_did_not_complete(sweep_db: Path) -> None:
    text = build_report(sweep_db).text
    head = text.split("\n\n")[0]  # the summary at the top, before any table
    assert "winner: task 77_1 (learning_rate=0.01, seed=1): final val/loss 0.2 (lowest of 4 tasks; median 0.25)" in head
    assert "did not complete: 2 of 5 tasks: 77_2 (learning_rate=0.05, seed=0) cancelled; " in head
    assert "77_4 (learning_rate=0.1, seed=0) failed" in head
    assert "tasks, ranked by the final val/loss (min):" in text
    # The pooled training table shows the median of the tasks' finals, and no best learning rate.
    assert "median final" in text
    lr_line = next(line for line in text.splitlines() if line.startswith("learning_rate"))
    assert "(schedule)" in lr_line


def test_objective_given(sweep_db: Path) -> None:
    sweep = build_report(sweep_db, objective="val/accuracy:max").data["sweep"]
    assert sweep["objective"]["metric"] == "val/accuracy" and sweep["objective"]["goal"] == "max"
    assert sweep["winner"] == "77_3"
    # A bare name finds the metric in any phase; the goal defaults from the name.
    assert build_report(sweep_db, objective="accuracy").data["sweep"]["objective"]["goal"] == "max"
    with pytest.raises(AetheriumError, match=r"no training metric 'val/f1'.*choose one of: .*val/loss"):
        build_report(sweep_db, objective="val/f1:max")


def test_html_has_the_task_table(sweep_db: Path, tmp_path: Path) -> None:
    html = tmp_path / "r.html"
    assert run_report(str(sweep_db), html=str(html), quiet=True, objective="train/loss:min") == 0
    page = html.read_text()
    assert "Tasks, ranked by the final train/loss (min)" in page
    assert "<b>winner: task 77_1" in page and "did not complete: 2 of 5 tasks" in page


def test_objective_rules() -> None:
    assert is_schedule("learning_rate") and is_schedule("lr") and is_schedule("optim/lr") and not is_schedule("loss")
    keys = ["train/learning_rate", "train/loss", "val/accuracy", "val/loss"]
    assert parse_objective(None, keys).key == "val/loss"  # type: ignore[union-attr]
    assert parse_objective(None, ["train/learning_rate", "train/loss"]).key == "train/loss"  # type: ignore[union-attr]
    assert parse_objective(None, ["train/learning_rate"]) is None


def _axes(rep: Report, name: str) -> object:
    """Draw one panel of ``rep`` on a fresh Agg figure and return its axes."""
    from matplotlib.figure import Figure

    from aetherium_hpc.analysis.report.plots import panels

    title, draw = panels(rep.data, rep.loaded)[name]
    ax = Figure().add_subplot()
    ax.set_title(title)
    draw(ax)
    return ax


def test_plots_one_colour_per_task_and_style_per_phase(sweep_db: Path) -> None:
    rep = build_report(sweep_db)
    ax = _axes(rep, "training_loss")
    drawn = ax.get_lines()  # type: ignore[attr-defined]
    lines = [line for line in drawn if line.get_marker() != "*"]  # (the star: the winner's final val/loss)
    assert len(drawn) - len(lines) == 1
    # Per task, never a median: 4 tasks with loss x (train, val) x 1 round.
    assert len(lines) == 8
    by_colour: dict[object, set[str]] = {}
    for line in lines:
        by_colour.setdefault(tuple(line.get_color()), set()).add(line.get_linestyle())
    assert len(by_colour) == 4 and all(styles == {"-", "--"} for styles in by_colour.values())
    assert "solid: train, dashed: val" in ax.get_title()  # type: ignore[attr-defined]
    # The same task has the same colour in another panel (learning rate, memory).
    lr_colours = {tuple(line.get_color()) for line in _axes(rep, "learning_rate").get_lines()}  # type: ignore[attr-defined]
    assert lr_colours <= set(by_colour)
    mem = _axes(rep, "memory")
    assert all(line.get_marker() == "o" for line in mem.get_lines())  # type: ignore[attr-defined]  # 1 sample each
    # Integer epoch ticks.
    ticks = ax.xaxis.get_major_locator().tick_values(0, 2)  # type: ignore[attr-defined]
    assert all(float(t).is_integer() for t in ticks)


def test_log_axis_has_plain_labels_and_time_axis_unit(sweep_db: Path) -> None:
    rep = build_report(sweep_db)
    ax = _axes(rep, "training_loss")
    assert ax.get_yscale() == "linear"  # type: ignore[attr-defined]  # 0.1 .. 0.6: less than a decade
    from matplotlib.figure import Figure

    from aetherium_hpc.analysis.report.plots import plain_log_axis

    log_ax = Figure().add_subplot()
    log_ax.plot([0, 1], [0.01, 1.0])
    plain_log_axis(log_ax, 2.0)
    fmt = log_ax.yaxis.get_major_formatter()
    assert log_ax.get_yscale() == "log" and fmt(0.05, 0) == "0.05" and fmt(2.0, 0) == "2"
    assert _axes(rep, "memory").get_xlabel() == "time since the run started, s"  # type: ignore[attr-defined]


def test_html_requested_as_columns_and_unique_headers(sweep_db: Path, tmp_path: Path) -> None:
    import re

    rep = build_report(sweep_db)
    page = rep.to_html()
    for head in re.findall(r"<thead><tr>(.*?)</tr></thead>", page):
        names = re.findall(r"<th>(.*?)</th>", head)
        assert len(names) == len(set(names)), names
    assert "requested CPUs" in page and "time limit" in page and "{&quot;" not in page
    title = rep.data["run"]
    assert title["name"] == "sweep" and title["job_ids"] == ["77"]
    from aetherium_hpc.analysis.report.plots import dashboard_title

    assert dashboard_title(rep.data).startswith("sweep: job 77, 5 tasks, ")


def _sweep_of(root: Path, n: int) -> Path:
    """A merged sweep of ``n`` tasks (learning rate x seed); task 9 ends with the lowest val/loss."""
    import time

    import aetherium_hpc
    from aetherium_hpc.store import SourceInfo

    for task in range(n):
        path = root / "run" / "db" / f"66_{task}" / "n1.db"
        path.parent.mkdir(parents=True)
        src = SourceInfo(job_id=f"66_{task}", array_job_id="66", array_task_id=task, node="n1", hostname="n1")
        aetherium_hpc.init_db(path, source=src, listen=False)
        t0 = time.time() - 60
        for k in range(10):
            aetherium_hpc.log_resource_samples([("ram", "process_tree_rss", 100.0 + 10 * task + k, "MB", "")],
                                               timestamp=t0 + k)  # fmt: skip
        for epoch in range(4):
            loss = (1.0 + 0.1 * abs(task - 9)) / (1 + epoch)
            aetherium_hpc.log_training_epoch_metric("loss", loss, round_number=0, epoch_number=epoch, phase="val")
        aetherium_hpc.log_job(status="completed", exit_code=0, start_time=t0, end_time=t0 + 10,
                              config={"name": "sweep", "task_params": {"lr": [0.01, 0.1][task % 2], "seed": task}})  # fmt: skip
        aetherium_hpc.shutdown_db()
    out = root / "merged.db"
    assert merge([root / "run"], out).exit_code == 0
    return out


@pytest.mark.parametrize("n", [16, 30], ids=["lines-without-legend", "bands"])
def test_the_winner_is_marked_and_labelled_in_a_sweep_too_large_for_a_legend(tmp_path: Path, n: int) -> None:
    """Above 12 tasks no legend names every task: the winner's lines are drawn over the others
    (thicker, outlined), the legend names it, a star marks its final val/loss."""
    rep = build_report(_sweep_of(tmp_path, n))
    assert rep.data["sweep"]["winner"] == "66_9" and rep.data["array"]["summarised"] is (n > 20)
    label = "winner: 66_9 lr=0.1, seed=9"
    for name in ("memory", "training_loss"):
        ax = _axes(rep, name)
        entries = [t.get_text() for t in ax.get_legend().get_texts()]  # type: ignore[attr-defined]
        assert entries.count(label) == 1 and not any("66_" in e for e in entries if e != label), (name, entries)
        lines = ax.get_lines()  # type: ignore[attr-defined]
        won = [line for line in lines if line.get_path_effects()]
        assert won and {line.get_zorder() for line in won} == {5}, name
        assert min(line.get_linewidth() for line in won) > max(line.get_linewidth() for line in lines
                                                                if line not in won and line.get_marker() != "*")  # fmt: skip
    (star,) = [line for line in _axes(rep, "training_loss").get_lines() if line.get_marker() == "*"]  # type: ignore[attr-defined]
    final = rep.data["sweep"]["tasks"][0]
    assert final["task"] == "66_9"
    assert (list(star.get_xdata()), list(star.get_ydata())) == ([3], [pytest.approx(final["objective_value"])])
    if n > 20:  # the histogram of the objective marks the winner's value
        hist = _axes(rep, "histogram_objective_value")
        entries = [t.get_text() for t in hist.get_legend().get_texts()]  # type: ignore[attr-defined]
        assert f"{label}: {final['objective_value']:.4g}" in entries
    assert rep.dashboard_png().startswith(b"\x89PNG")
