"""The ``merge``, ``report``, ``watch`` and ``export`` subcommands of ``aetherium-hpc``.

``register(sub)`` adds them to the CLI's subparsers; each handler takes the parsed
arguments and returns the exit code. User errors are raised as
:class:`~aetherium_hpc.errors.AetheriumError` (one line on stderr, exit code 2 at the CLI).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from ..store.central.pull import Selection

SubParsers = Any  # argparse._SubParsersAction[argparse.ArgumentParser]


# -- merge --------------------------------------------------------------------------------------
def cmd_merge(args: argparse.Namespace) -> int:
    """Merge run directories / databases into one database; 3 when an input was skipped."""
    if args.into is not None:
        return merge_into_central(args.inputs, args.into)
    output = args.output or default_merge_output(args.inputs)
    progress = None if not args.no_progress else False
    return merge_and_say(args.inputs, output, sys.stdout, progress=progress, lock_timeout=args.wait)


def merge_and_say(inputs: list[str], output: str, summary_to: TextIO, **options: Any) -> int:
    """:func:`.merge.merge` with each skipped input on stderr and the summary on ``summary_to``; its exit code."""
    from .merge import merge

    result = merge(inputs, output, **options)
    for skipped in result.skipped:
        print(f"aetherium-hpc merge: {skipped}", file=sys.stderr)
    print(result.summary(), file=summary_to)
    return result.exit_code


def merge_into_central(inputs: list[str], url: str) -> int:
    """``merge --into postgresql://...``: load the inputs into the central store; 3 when one was skipped."""
    from ..errors import AetheriumError
    from ..store.backup import readable
    from ..store.central import is_central_url, mask
    from ..store.central.load import load
    from .merge import SKIPPED_EXIT_CODE, check_input, collect_inputs

    if not is_central_url(url):
        raise AetheriumError(
            f"merge --into {mask(url)}: not a postgresql:// URL; write --into postgresql://USER@HOST:PORT/DATABASE "
            "(a file: -o MERGED.db)"
        )
    skipped = 0
    with ExitStack() as stack:
        paths: list[str] = []
        for path in collect_inputs(inputs):
            current = stack.enter_context(readable(path))
            why = check_input(current)
            if why is not None:
                print(f"aetherium-hpc merge: skipped {path}: {why}", file=sys.stderr)
                skipped += 1
                continue
            paths.append(current)
        result = load(paths, url)
    for path, why in result.skipped:
        print(f"aetherium-hpc merge: skipped {path}: {why}", file=sys.stderr)
    print(result.summary())
    return SKIPPED_EXIT_CODE if skipped or result.skipped else 0


def default_merge_output(inputs: list[str]) -> str:
    """``RUN_DIR/merged.db`` for one run directory; a usage error for anything else without ``-o``."""
    from ..errors import AetheriumError
    from ..paths import RunLayout

    if len(inputs) == 1 and RunLayout.is_run_dir(inputs[0]):
        return str(RunLayout(Path(inputs[0])).merged_path)
    raise AetheriumError(
        "merge: say where to write with -o MERGED.db (only a single run directory has a default, RUN_DIR/merged.db)"
    )


def report_database(path: str) -> str:
    """The database to report on: ``path`` itself, or for a run directory its ``merged.db``, merged
    first (a merge of what is already in adds nothing; a newer task copy replaces the older one)."""
    from ..errors import AetheriumError
    from ..paths import RunLayout

    if not os.path.isdir(path):
        return path
    if not RunLayout.is_run_dir(path):
        raise AetheriumError(
            f"{path}: a folder but not a run directory; merge it first: aetherium-hpc merge {path} -o merged.db"
        )
    layout = RunLayout(Path(path))
    merge_and_say([path], str(layout.merged_path), sys.stderr, progress=False)
    return str(layout.merged_path)


# -- report -------------------------------------------------------------------------------------
def cmd_report(args: argparse.Namespace) -> int:
    """Print the text report; write PNG / HTML / JSON when asked."""
    options: dict[str, Any] = dict(plot=args.plot, html=args.html, json_out=args.json, json_path=args.json_file,
                                   plot_dir=args.plot_dir, quiet=args.quiet, objective=args.objective)  # fmt: skip
    selection = central_selection(args, "report")
    if selection is None:
        return run_report(report_database(args.db), **options)
    from ..store.central import mask
    from ..store.central.pull import pulled

    with pulled(args.db, selection) as path:  # a temporary SQLite database of the selected sources
        return run_report(path, label=f"{mask(args.db)} {selection.describe()}", **options)


def central_selection(args: argparse.Namespace, command: str) -> Selection | None:
    """The filter of ``report``/``watch`` for a ``postgresql://`` target; None for a file or a run
    directory (which takes no filter: a usage error if one was given)."""
    from ..errors import AetheriumError
    from ..store.central import is_central_url
    from ..store.central.pull import Selection

    target = args.db if command == "report" else args.target
    since = getattr(args, "since", None)
    selection = Selection(tuple(args.job or ()), tuple(t for group in args.task or () for t in group),
                          os.path.basename(os.path.normpath(args.run)) if args.run else None,
                          since=None if since is None else since_time(since, command),
                          user=getattr(args, "user", None) or None)  # fmt: skip
    if is_central_url(target):
        if selection.tasks and not (selection.jobs or selection.run):
            raise AetheriumError(
                f"{command} {selection.describe()}: array task ids need their array: add --job ARRAY_JOB_ID or --run NAME"
            )
        return selection
    if not selection.empty:
        raise AetheriumError(
            f"{command} {selection.describe()}: --job, --task, --run, --since and --user choose sources of a "
            "postgresql:// central "
            f"store; {target} is a file or a run directory (merge the databases you want with `aetherium-hpc merge`)"
        )
    return None


#: ``--since`` durations: a number and its unit.
_SINCE_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def since_time(text: str, command: str = "report", now: float | None = None) -> float:
    """``--since``: a duration back from ``now`` (``30m``, ``12h``, ``7d``, ``2w``) or an ISO date or
    time (``2026-12-01``, ``2026-12-01T08:00``; UTC unless it names its offset) as Unix seconds;
    an :class:`AetheriumError` (exit 2, one line) for anything else."""
    import datetime
    import re
    import time

    from ..errors import AetheriumError

    now = time.time() if now is None else now
    value = text.strip()
    found = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|min|m|h|d|w)", value.lower())
    if found:
        return now - float(found[1]) * _SINCE_UNITS[found[2]]
    try:
        when = datetime.datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value)
    except ValueError:
        when = None
    if when is None or not value[:4].isdigit():
        raise AetheriumError(
            f"{command} --since {text!r}: not a duration or a date; write a duration back from now "
            "(30m, 12h, 7d, 2w) or a UTC date (2026-12-01, 2026-12-01T08:00)"
        )
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    stamp = when.timestamp()
    if stamp > now:
        raise AetheriumError(
            f"{command} --since {text!r}: that is in the future, so no job ran since; give a past date or a "
            "duration back from now (7d)"
        )
    return stamp


def run_report(
    db: str,
    *,
    plot: str | None = None,
    html: str | None = None,
    json_out: bool = False,
    json_path: str | None = None,
    plot_dir: str | None = None,
    quiet: bool = False,
    objective: str | None = None,
    label: str | None = None,
) -> int:
    """What ``aetherium-hpc report`` does with a database; raises :class:`AetheriumError` for user errors.
    ``label``: what the report calls the database (default: its path)."""
    from .report import build_report

    rep = build_report(db, objective=objective, label=label)
    if json_out:
        sys.stdout.write(rep.to_json() + "\n")
    elif not quiet:
        sys.stdout.write(rep.text)
    sys.stdout.flush()
    if json_path:
        _write(json_path, rep.to_json() + "\n")
    if plot:
        _write(plot, rep.dashboard_png())
    if plot_dir:
        os.makedirs(plot_dir, exist_ok=True)
        for name, png in rep.plots().items():
            _write(os.path.join(plot_dir, f"{name}.png"), png)
    if html:
        _write(html, rep.to_html())
    return 0


def _write(path: str, data: bytes | str) -> None:
    """Write one output file and say so on stderr; a missing folder is a usage error."""
    from ..errors import AetheriumError

    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise AetheriumError(f"{path}: folder {folder} does not exist; create it or choose another path")
    if isinstance(data, bytes):
        with open(path, "wb") as fb:
            fb.write(data)
    else:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(data)
    print(f"wrote {path}", file=sys.stderr)


# -- export -------------------------------------------------------------------------------------
def cmd_export(args: argparse.Namespace) -> int:
    """Write tables or views as CSV, JSON or Parquet, or TensorBoard event files."""
    from .export import export

    written = export(args.db, fmt=args.format, tables=args.table or None, output=args.output)
    if args.format == "tensorboard":
        print(f"wrote {len(written)} runs to {args.output}; open them with: tensorboard --logdir {args.output}",
              file=sys.stderr)  # fmt: skip
        return 0
    for path in written:
        print(f"wrote {path}", file=sys.stderr)
    return 0


# -- watch --------------------------------------------------------------------------------------
def cmd_watch(args: argparse.Namespace) -> int:
    """A live view of a run until every task has ended (``--once``: one frame)."""
    from .watch import watch

    return watch(args.target, interval=args.interval, once=args.once, selection=central_selection(args, "watch"))


def add_report_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``report``."""
    p.add_argument("db", metavar="DB|RUN_DIR|postgresql://URL",
                   help="database to report on (a node database or the output of `aetherium-hpc merge`), a "
                   "run directory: its databases are merged into RUN_DIR/merged.db first, or a central "
                   "PostgreSQL store: the sources --job/--task/--run choose are pulled into a temporary "
                   "database first (docs/CENTRAL.md)")  # fmt: skip
    add_central_filter(p, "report on", lab=True)
    p.add_argument("--plot", metavar="OUT.png", help="write all plots as one PNG dashboard to OUT.png")
    p.add_argument("--plot-dir", metavar="DIR", help="write each plot as its own PNG into DIR")
    p.add_argument("--html", metavar="REPORT.html", help="write one self-contained HTML file (plots embedded)")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout instead of text")
    p.add_argument("--json-file", metavar="REPORT.json", help="also write the JSON report to this file")
    p.add_argument("-q", "--quiet", action="store_true", help="do not print the text report")
    p.add_argument("--objective", metavar="METRIC:min|max",
                   help="rank the tasks of an array by the final value of this training metric, as PHASE/NAME "
                   "or NAME, e.g. val/loss:min or val/accuracy:max (default: the first validation loss, "
                   "else the first metric that is not a learning rate)")  # fmt: skip


def add_central_filter(p: argparse.ArgumentParser, verb: str, *, lab: bool = False) -> None:
    """``--job``, ``--task``, ``--run`` (and with ``lab``: ``--since``, ``--user``): which sources of a
    ``postgresql://`` store to read."""
    g = p.add_argument_group(
        "choosing what to read of a postgresql:// central store",
        "All filters given must match. Without one, a store holding more than one job is refused "
        "with its 10 most recent jobs listed."
        + (" With --since or --user every job of the window is read: the report shows one row per job, "
           "sorted by the core-hours and GB-hours requested but unused, with its --mem/--time advice "
           "(docs/REPORT.md, the lab view)." if lab else ""),
    )  # fmt: skip
    g.add_argument("--job", action="append", metavar="ID",
                   help=f"{verb} this job: a job id, or an array job id (every task of the array); repeatable")  # fmt: skip
    g.add_argument("--task", action="append", type=_task_ids, metavar="N[,M-K]",
                   help="only these array task ids (with --job ARRAY_ID or --run), e.g. 3 or 0,2,5-7")  # fmt: skip
    g.add_argument("--run", metavar="NAME",
                   help="the tasks of one run directory, by its name as submit printed it "
                   "(demo-array-20240501-093000-1a2b; a path's last part is taken)")  # fmt: skip
    if lab:
        g.add_argument("--since", metavar="7d|DATE",
                       help="every job that ran in the window from then to now (still running, ended or "
                       "started since): a duration back from now, 30m, 12h, 7d or 2w, or a UTC date "
                       "2026-12-01 (or 2026-12-01T08:00)")  # fmt: skip
        g.add_argument(
            "--user",
            metavar="NAME",
            help="only the jobs this user submitted (SLURM_JOB_USER, else the user the job ran as)",
        )


def _task_ids(text: str) -> list[int]:
    """``3``, ``0,2,5-7``: array task ids."""
    out: list[int] = []
    try:
        for part in text.split(","):
            first, _, last = part.strip().partition("-")
            lo, hi = int(first), int(last or first)
            if lo < 0 or hi < lo or hi - lo > 100_000:
                raise ValueError(part)
            out += range(lo, hi + 1)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a list of array task ids, e.g. --task 3 or 0,2,5-7"
        ) from None
    return out


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds >= 0, e.g. --wait 60")
    return value


def _command(
    sub: SubParsers, name: str, handler: Callable[[argparse.Namespace], int], **texts: Any
) -> argparse.ArgumentParser:
    """The subcommand ``name`` (``texts``: its help, description, epilog ...), run by ``handler``."""
    parser = sub.add_parser(name, **texts)
    parser.set_defaults(handler=handler)
    return parser


def register(sub: SubParsers) -> None:
    """Add ``merge``, ``report``, ``watch`` and ``export`` to the CLI's subparsers."""
    m = _command(
        sub,
        "merge",
        cmd_merge,
        help="merge per-task / per-node databases into one database",
        description=(
            "Merge aetherium-hpc databases -- files, or run directories searched recursively for *.db -- "
            "into one database of the same schema (so it can be reported on, queried with the same views, "
            "and merged again). Inputs are opened read-only. Merging the same input again adds nothing; "
            "a newer copy of a database replaces the older one; every attempt of a requeued task is kept. "
            "Broken inputs (corrupt, truncated, foreign, another schema version) are skipped with a reason; "
            "a copy whose update was killed (a hot journal) is read as of its last complete update, unchanged. "
            "One merge at a time per output: a second one waits for the first, then adds what is new. "
            "A task whose database still says 'running' after its job ended gets what Slurm accounting "
            "says (CANCELLED, OUT_OF_MEMORY, NODE_FAIL ...) or 'lost', with a note."
        ),
        epilog="""\
exit codes: 0 all merged; 3 some inputs skipped (the rest merged); 2 usage error, or the output still
locked by another merge after --wait seconds.
examples:
  aetherium-hpc merge runs/demo-array-20240501-093000-1a2b   (writes its merged.db)
  aetherium-hpc merge runs/a runs/b -o both.db
  aetherium-hpc merge runs/a --into postgresql://lab@db.example/aetherium
""",
    )
    m.add_argument("inputs", nargs="+", metavar="RUN_DIR|DB", help="run directories and/or database files")
    where = m.add_mutually_exclusive_group()
    where.add_argument("-o", "--output", metavar="MERGED.db",
                       help="database to create, or to add to if it exists (default for one run directory: "
                       "RUN_DIR/merged.db)")  # fmt: skip
    where.add_argument("--into", metavar="postgresql://USER@HOST/DB",
                       help="load the inputs into a central PostgreSQL store instead (same tables and views, "
                       "every job of a lab in one place; loading again, or what a job streamed live, adds "
                       "nothing). Put the password in PGPASSWORD or a PGPASSFILE, not in the URL; see "
                       "docs/CENTRAL.md")  # fmt: skip
    m.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
    m.add_argument("--wait", type=_seconds, default=None, metavar="SECONDS",
                   help="how long to wait for another merge into the same output (default: 600)")  # fmt: skip

    r = _command(
        sub,
        "report",
        cmd_report,
        help="summarise a database: text, PNG plots, HTML, JSON",
        description=(
            "Summarise a metrics database: run duration, samples, CPU/RAM/GPU average and maximum per node, "
            "data-generation throughput and memory per round, final and best training metrics, the status of "
            "every task; across an array p50/p95/max of peak memory, runtime and GPU use, and --mem/--time "
            "advice against what was requested."
        ),
        epilog="""\
exit codes: 0 ok; 2 empty or unreadable database.
examples:
  aetherium-hpc report runs/demo-array-20240501-093000-1a2b --html report.html
  aetherium-hpc report merged.db --objective val/accuracy:max --plot report.png
  aetherium-hpc report postgresql://lab@db.example/aetherium --job 123456   (an array: every task)
  aetherium-hpc report postgresql://lab@db.example/aetherium --since 7d --user alice --html lab.html
      (every job of alice's last week, most wasteful first)
""",
    )
    add_report_arguments(r)

    w = _command(
        sub,
        "watch",
        cmd_watch,
        help="a live terminal view of a running job or array",
        description=(
            "Show every task of a run as it runs: status, CPU and memory now with a short history, GPU "
            "utilisation, data-generation chunks done and their rate, the last epoch and its loss. Reads the "
            "live node-local databases on this machine, else the copies in the run directory (at most "
            "checkpoint_interval_s old). Ends by itself when every task has ended."
        ),
        epilog="""\
exit codes: 0 every task has ended (--once: the frame was drawn); 2 nothing to watch (not a run
directory or a database, or a central store that cannot be read); 130 interrupted (Ctrl-C).
examples:
  aetherium-hpc watch runs/demo-array-20240501-093000-1a2b
  aetherium-hpc watch runs/demo-array-20240501-093000-1a2b --once   (one frame, for scripts)
  aetherium-hpc watch postgresql://lab@db.example/aetherium --job 123456   (a central store's tasks)
""",
    )
    w.add_argument(
        "target", metavar="RUN_DIR|DB|postgresql://URL",
        help="a run directory printed by `aetherium-hpc submit`, a database, or a central PostgreSQL store "
        "with --job/--task/--run: each frame pulls what is new of those tasks",
    )  # fmt: skip
    add_central_filter(w, "watch")
    w.add_argument("--interval", type=_seconds, default=2.0, metavar="SECONDS", help="seconds between frames [2]")
    w.add_argument("--once", action="store_true", help="print one frame and exit")

    e = _command(
        sub,
        "export",
        cmd_export,
        help="export to CSV, JSON, Parquet or TensorBoard event files",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="""\
Export a database (a node database or the output of merge) for other tools.
Rows are streamed: a large merged database need not fit in memory.

formats and what -o receives:
  csv          tables or views (resource_metrics, generation_metrics, training_metrics,
               jobs, sources, ...; default: the contract views, jobs and sources).
               One table: -o FILE or stdout; several: -o DIR, one NAME.csv each.
  json         the same tables; one: a list of row objects; several: {name: [rows]}.
  parquet      the same tables, -o DIR: one NAME.parquet each, typed columns.
               Needs pyarrow: pip install 'aetherium-hpc[parquet]'
  tensorboard  -o DIR is TensorBoard's log folder (tensorboard --logdir DIR):
                 DIR/<run>/events.out.tfevents.*  one run per task, named
                   by its parameters in a sweep   learning_rate=0.01,seed=1
                   else by its task               900_3 (array task) or 12345 (job)
                   plus /NODE when the task ran on several nodes
                 tags  PHASE/NAME (val/loss), step = epoch (a later round's epochs
                       follow those of the round before);
                       resource/TYPE/NAME[/DEVICE] (resource/gpu/utilization/0),
                       step = sample index, wall time = the sample's time.
               Needs tensorboardX: pip install 'aetherium-hpc[tensorboard]'
""",
        epilog="""\
exit codes: 0 ok; 2 usage error (unknown format, missing or foreign database,
-o a file where a folder is needed, a missing optional package).
examples:
  aetherium-hpc export merged.db --format csv --table jobs -o jobs.csv
  aetherium-hpc export merged.db --format csv -o out_dir/   (one NAME.csv per table)
  aetherium-hpc export merged.db --format parquet -o parquet/
  aetherium-hpc export merged.db --format tensorboard -o tb/ && tensorboard --logdir tb/
""",
    )
    e.add_argument("db", metavar="DB", help="database to read (a node database or the output of merge)")
    e.add_argument("--format", default="csv", metavar="{csv,json,parquet,tensorboard}",
                   help="output format [csv]")  # fmt: skip
    e.add_argument("--table", action="append", metavar="NAME",
                   help="table or view to export (repeatable; csv, json, parquet); default: all contract views, "
                   "jobs and sources")  # fmt: skip
    e.add_argument("-o", "--output", metavar="FILE|DIR",
                   help="csv/json: file to write (a folder for CSV of several tables, created if missing), default stdout; "
                   "parquet/tensorboard: the folder to write into, created if missing")  # fmt: skip
