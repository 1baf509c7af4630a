"""The ``aetherium-hpc`` command: submit | run | status | log | templates, and analysis's merge | report |
watch | export.

Library errors (:class:`~aetherium_hpc.errors.AetheriumError`) become one line on
stderr and exit code 2 here, at the boundary; nothing below prints. Everything the command
writes passes :class:`~.analysis.formatting.EscapedStream`: a metric name, job id or status stored in a database never
drives the terminal (an escape sequence shows as ``\x1b``).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypeAlias

from . import __version__, envvars
from .errors import AetheriumError, StoreNotReachableError

Handler = Callable[[argparse.Namespace], int]
SubParsers: TypeAlias = "argparse._SubParsersAction[Any]"


class HelpFormatter(argparse.HelpFormatter):
    """argparse's, except that a text written on several lines keeps them (an epilog: ``exit codes:``,
    then ``examples:`` one per line); a one-line text is wrapped to the terminal as usual."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" not in text.strip("\n"):
            return super()._fill_text(text, width, indent)
        return "".join(indent + line for line in text.splitlines(keepends=True))


class Parser(argparse.ArgumentParser):
    """The parser of the command and of each subcommand: :class:`HelpFormatter` unless one is named."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(**kwargs)


class CommandText(NamedTuple):
    """What a command's ``--help`` says besides its arguments."""

    #: its line in ``aetherium-hpc --help``
    help: str
    #: what it does
    description: str
    #: ``exit codes:`` (a paragraph), then ``examples:`` (one per line, indented two spaces)
    epilog: str


def add_command(sub: SubParsers, name: str, handler: Handler, text: CommandText) -> argparse.ArgumentParser:
    """Subcommand ``name``, run by ``handler``."""
    p: argparse.ArgumentParser = sub.add_parser(name, help=text.help, description=text.description, epilog=text.epilog)
    p.set_defaults(handler=handler)
    return p


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


# -- log ---------------------------------------------------------------------------------------
def cmd_log(args: argparse.Namespace) -> int:
    """Send one record to the node's metrics store through its socket."""
    from .store import StoreAddress, send_one_record

    address = StoreAddress.from_environ()
    if address is None:
        raise StoreNotReachableError(
            f"no metrics store to log to: {envvars.METRICS_ADDR} is not set; run this inside "
            "`aetherium-hpc run -- ...` or a job submitted by aetherium-hpc"
        )
    sent = send_one_record(address, args.kind, vars(args))
    if not sent:
        raise StoreNotReachableError(
            f"the metrics store at {address.path} did not take the record; is the job still running?"
        )
    return 0


_LOG_EXIT_CODES = f"""\
exit codes: 0 the store took the record; 2 no store to log to ({envvars.METRICS_ADDR} is not set:
not inside a job or `aetherium-hpc run`), the store did not take it (the job has ended), or an
invalid value.
"""
_LOG_TRAINING = "aetherium-hpc log training val/loss 0.231 --round 0 --epoch 3 --phase val"
_LOG_RESOURCE = "aetherium-hpc log resource disk scratch_used 412 --unit GB --device /scratch"
_LOG_GENERATION = "aetherium-hpc log generation signal_injection --duration 12.5 --samples 10000 --round 0 --chunk 3"


_LOG = CommandText(
    help="send one metric from a shell script to the job's metrics store",
    description="Send one record to the metrics store of the node, from any process of the job "
    f"(found through {envvars.METRICS_ADDR}, set by `aetherium-hpc run` and submitted jobs).",
    epilog=f"{_LOG_EXIT_CODES}examples:\n  {_LOG_TRAINING}\n  {_LOG_RESOURCE}\n  {_LOG_GENERATION}\n",
)


def _add_log(sub: SubParsers) -> None:
    p = add_command(sub, "log", cmd_log, _LOG)
    kinds = p.add_subparsers(dest="kind", required=True, metavar="{training,resource,generation}")

    def kind(name: str, example: str, summary: str) -> argparse.ArgumentParser:
        return kinds.add_parser(name, help=summary, epilog=f"{_LOG_EXIT_CODES}examples:\n  {example}\n")

    t = kind("training", _LOG_TRAINING, "a training metric: NAME VALUE [--round R] [--epoch E] [--phase P]")
    t.add_argument("name", help="metric name, e.g. loss")
    t.add_argument("value", type=_number, help="the metric's value, a number, e.g. 0.231")
    t.add_argument("--round", type=int, default=None, help="training round the value belongs to (an integer)")
    t.add_argument("--epoch", type=int, default=None, help="epoch within the round (an integer)")
    t.add_argument("--phase", default="train", help="train or val [train]")
    r = kind("resource", _LOG_RESOURCE, "a resource sample: TYPE NAME VALUE [--unit U] [--device D]")
    r.add_argument("type", help="metric type, e.g. disk")
    r.add_argument("name", help="metric name, e.g. scratch_used")
    r.add_argument("value", type=_number, help="the sample's value, a number")
    r.add_argument("--unit", default="", help="unit of the value, e.g. GB or %%")
    r.add_argument("--device", default="", help="device the sample is about, e.g. a GPU index or a mount point")
    g = kind("generation", _LOG_GENERATION, "a finished data-generation chunk: OPERATION --duration S ...")
    g.add_argument("operation", help="what the chunk did, e.g. signal_injection")
    g.add_argument("--duration", type=_number, required=True, help="seconds the chunk took")
    g.add_argument("--samples", type=int, default=None, help="samples the chunk generated")
    g.add_argument("--round", type=int, default=None, help="round the chunk belongs to")
    g.add_argument("--chunk", type=int, default=None, help="chunk number within the round")
    g.add_argument("--memory-mb", type=_number, default=None, help="memory the chunk used, in MB")


# -- submit ------------------------------------------------------------------------------------
def cmd_submit(args: argparse.Namespace) -> int:
    """Validate the config, submit the job (or array), print the run directory and job ids."""
    from . import launch
    from .config import load_config, snapshot_yaml
    from .paths import RunLayout

    config = load_config(args.config, args.set or ())
    if args.dry_run:
        reasons: list[str] = []  # why auto chose the local backend: said in the header, not as a warning
        cluster = launch.resolve_cluster(config.backend, warn=reasons.append)
        layout = RunLayout(Path(config.run_dir).absolute() / f"{config.name}-<timestamp>-<hex>")
        launch.check_submission(config, cluster, layout.root)  # what submit would refuse, the dry run refuses
        reason = f" ({reasons[0].removeprefix('aetherium-hpc: ')})" if reasons else ""
        print(f"# resolved configuration ({args.config}); backend {config.backend} -> {cluster}{reason}")
        print(snapshot_yaml(config), end="")
        print("# sbatch script" + ("" if cluster == "slurm" else f" (what Slurm would get; this backend is {cluster})"))
        print(launch.render_sbatch(config, layout))
        print("# dry run: nothing was submitted")
        return 0
    sub = launch.submit(config, progress=lambda line: print(line, file=sys.stderr, flush=True))
    print(f"run directory: {sub.layout.root}")
    if sub.array_job_ids and sub.cluster == "slurm":
        print(f"submitted {len(sub.jobs)} task(s) to slurm: array job id(s) {' '.join(sub.array_job_ids)}")
    elif sub.array_job_ids:  # a local array: status names its tasks <array>_<task>, as Slurm would
        array = sub.array_job_ids[0]
        tasks = f"{array}_0" if len(sub.jobs) == 1 else f"{array}_0 … {array}_{len(sub.jobs) - 1}"
        print(f"submitted {len(sub.jobs)} task(s) to {sub.cluster}: array job id {array} (tasks {tasks}; "
              f"process ids {' '.join(sub.job_ids)})")  # fmt: skip
    else:
        print(f"submitted {len(sub.jobs)} task(s) to {sub.cluster}: job id(s) {' '.join(sub.job_ids)}")
    if sub.report_job is not None:
        print(
            f"report job {sub.report_job.job_id}: merges and reports into {sub.layout.root} "
            "(merged.db, report.html) once every task has ended"
        )
    if not (args.wait or sub.cluster == "debug"):
        print(f"follow it with: aetherium-hpc status {sub.layout.root}")
        return 0
    tty = sys.stderr.isatty()

    def progress(line: str) -> None:
        print(("\r" + line) if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)

    outcome = launch.wait(sub, progress, poll_s=0.5, progress_every_s=1.0 if tty else 30.0)
    if tty:
        print(file=sys.stderr)
    failed = {job: why for job, why in outcome.items() if why != "ok"}
    for job, why in failed.items():
        print(f"job {job}: {why}", file=sys.stderr)
    dbs = RunLayout(sub.layout.root).databases()
    print(
        f"{len(outcome) - len(failed)}/{len(outcome)} task(s) completed; {len(dbs)} database(s) under {sub.layout.db_dir}"
    )
    for db in dbs:
        print(f"  {db}")
    return 1 if failed else 0


_SUBMIT = CommandText(
    help="submit a YAML config as a Slurm job or array (or run it locally)",
    description="Validate CONFIG, make a run directory, and submit the job (Slurm when available, "
    "else a local process). Prints the run directory and the job ids.",
    epilog="""\
exit codes: 0 submitted (a dry run: it would be; with --wait: every task completed); 1 with --wait:
a task did not complete; 2 an invalid config or a refused submission (one line on stderr).
examples:
  aetherium-hpc submit configs/train.yaml
  aetherium-hpc submit configs/train.yaml --dry-run   (the resolved config and the sbatch script)
  aetherium-hpc submit configs/array.yaml --set slurm.partition=gpu --set resources.mem_gb=8 --wait
""",
)


def _add_submit(sub: SubParsers) -> None:
    p = add_command(sub, "submit", cmd_submit, _SUBMIT)
    p.add_argument("config", help="YAML config file, e.g. configs/train.yaml")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a key, e.g. --set resources.nodes=2")
    p.add_argument("--wait", action="store_true", help="wait for the job(s) to finish, with a progress line")
    p.add_argument(
        "--dry-run", action="store_true", help="print the resolved config and the sbatch script; submit nothing"
    )


# -- run ---------------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    """Run a command with the node's store and monitors; exit with the command's exit code."""
    from .config import Monitoring, load_config
    from .errors import LaunchError
    from .paths import RunLayout
    from .runtime import detect_job
    from .runtime.requested import requested_from_slurm
    from .runtime.session import NodeSession, run_command, run_task

    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise LaunchError("no command to run; write it after --, e.g. aetherium-hpc run -- python train.py")
    monitoring = load_config(args.config).monitoring if args.config else Monitoring()
    if args.no_gpu:
        monitoring = dataclasses.replace(monitoring, gpu=False)
    textfile, origin = monitoring.prometheus_textfile, args.config
    if args.prometheus_textfile is not None:
        textfile, origin = args.prometheus_textfile, "--prometheus-textfile"
    elif os.environ.get(envvars.PROMETHEUS_TEXTFILE):
        textfile, origin = os.environ[envvars.PROMETHEUS_TEXTFILE], f"${envvars.PROMETHEUS_TEXTFILE}"
    if textfile and monitoring.enabled:
        from .monitors.prometheus import require_textfile_folder

        require_textfile_folder(textfile, origin)  # before anything starts: one line, exit code 2
        monitoring = dataclasses.replace(monitoring, prometheus_textfile=textfile)
    ctx = detect_job()
    dest = RunLayout.command_db_path(ctx, db_dir=args.db_dir, run_dir=os.environ.get(envvars.RUN_DIR))
    sessions: list[NodeSession] = []

    def workload(session: NodeSession | None) -> int:
        if session is not None:
            sessions.append(session)
        return run_command(command, session)

    # A hand-written sbatch script: what it asked for comes from the Slurm environment (or scontrol),
    # so the report can compare use against it as it does for jobs submitted from YAML.
    requested = requested_from_slurm() if ctx.is_node_leader else {}
    code: int = run_task(
        ctx,
        workload,
        dest.absolute(),
        monitoring,
        config=command_snapshot(command, os.environ.get(envvars.RUN_DIR)),
        requested=requested or None,
        exit_code_of=lambda result: int(result),
    )
    if ctx.is_node_leader and not any(s.copy_error for s in sessions):  # (a failed copy said where the data is)
        print(f"aetherium-hpc: metrics of {ctx.job_id} on {ctx.node}: {dest}", file=sys.stderr)
    return code


def command_snapshot(command: list[str], run_dir: str | None) -> dict[str, Any]:
    """The config snapshot of an ``aetherium-hpc run`` job: its command, and its run directory when
    ``$AETHERIUM_RUN_DIR`` names one (so ``report --run`` finds it in a central store)."""
    from .paths import SNAPSHOT_RUN_KEY

    snapshot: dict[str, Any] = {"command": command}
    if run_dir:
        snapshot[SNAPSHOT_RUN_KEY] = os.path.abspath(run_dir)
    return snapshot


_RUN = CommandText(
    help="run a command with the metrics store and monitors (inside an sbatch script: srun aetherium-hpc run -- ...)",
    description="Run COMMAND (no shell) with the node's metrics store, socket and resource monitor "
    "started on local rank 0; the command logs through the socket. Exits with the command's exit code "
    "and copies the database to --db-dir.",
    epilog="""\
signals: the metrics are saved before the job is stopped.
  USR2     what `#SBATCH --signal=USR2@120` asks Slurm to send 120 s before the time limit. The
           job's row gets status timeout; COMMAND gets USR2 and up to 10 s to exit (the row records
           its exit code); the store is closed and the database copied to --db-dir; then run ends
           by USR2 itself (exit code 140). The node's other tasks (local ranks > 0) send what they
           hold to the store first, then end too.
  SIGTERM  (scancel, the time limit) the same, with status cancelled (timeout at the time limit).
exit codes: COMMAND's own (128+N when signal N ended it); 2 when there is nothing to run (no command,
one that cannot be started, a bad --config or --prometheus-textfile).
examples:
  srun aetherium-hpc run -- python train.py --epochs 10   (a line of an sbatch script)
  aetherium-hpc run --config configs/train.yaml --db-dir out/ -- python train.py
  aetherium-hpc run --no-gpu --prometheus-textfile /var/lib/node_exporter/textfile_collector -- ./generate.sh
""",
)


def _add_run(sub: SubParsers) -> None:
    p = add_command(sub, "run", cmd_run, _RUN)
    p.add_argument("--config", help="YAML config whose monitoring: section to use")
    p.add_argument("--no-gpu", action="store_true", help="do not look for GPUs (no NVML, no GPU notice)")
    p.add_argument(
        "--prometheus-textfile",
        metavar="PATH",
        help="write the node's latest values for node_exporter's textfile collector into this folder "
        f"(as aetherium_<job>_<node>.prom; or a *.prom file), removed at the end [${envvars.PROMETHEUS_TEXTFILE}]",
    )
    p.add_argument(
        "--db-dir",
        help=f"where the database goes as <node>.db [${envvars.RUN_DIR}/db/<job>_<task>/, else ./aetherium-runs/<jobid>/]",
    )
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARG ...]")


# -- status ------------------------------------------------------------------------------------
def cmd_status(args: argparse.Namespace) -> int:
    """State of every task of a run: sacct, else squeue, else the databases' jobs rows."""
    from .launch.status import run_status, status_table

    rows, source = run_status(Path(args.run_dir))
    print(f"# {args.run_dir} (from {source})")
    print("\n".join(status_table(rows)))
    return 0


_STATUS = CommandText(
    help="show the state of every task of a run directory",
    description="State of every task of RUN_DIR: from sacct, else squeue, else the jobs rows of its databases.",
    epilog="""\
exit codes: 0 the states were printed (whatever they are); 2 no such run directory.
examples:
  aetherium-hpc status runs/demo-train-20240501-093000-1a2b
  aetherium-hpc status runs/demo-array-20240501-093000-1a2b   (a row per array task)
""",
)


def _add_status(sub: SubParsers) -> None:
    p = add_command(sub, "status", cmd_status, _STATUS)
    p.add_argument("run_dir", help="a run directory printed by `aetherium-hpc submit`")


# -- parser --------------------------------------------------------------------------------------
_EXTENSIONS: list[Callable[[SubParsers], None]] = [_add_log]
_EXTENSIONS += [_add_submit, _add_run, _add_status]


def _add_analysis(sub: SubParsers) -> None:
    from .analysis.commands import register

    register(sub)


_EXTENSIONS.append(_add_analysis)


# -- init --------------------------------------------------------------------------------------
def cmd_init(args: argparse.Namespace) -> int:
    """Write a commented starter config for the demo pipeline (a job, or an array with a sweep)."""
    from . import templates

    kind = "array" if args.array else "train"
    target = Path(args.path or templates.STARTERS[kind])
    if target.is_dir():
        target = target / templates.STARTERS[kind]
    shown = str(target)
    if target.is_symlink() or (target.exists() and not target.is_file()):
        raise AetheriumError(f"{shown}: a link or not a regular file; choose another PATH")
    if target.exists() and not args.force:
        raise AetheriumError(f"{shown} exists; choose another PATH, or pass --force to overwrite it")
    if not target.parent.is_dir():
        raise AetheriumError(f"{target.parent}: no such folder; create it first, or choose another PATH")
    if target.exists():
        target.unlink()
    with open(target, "x", encoding="utf-8") as fh:  # never through a link planted meanwhile
        fh.write(templates.starter_config(kind, shown))
    print(f"wrote {shown}; submit it with: aetherium-hpc submit {shown} --wait", file=sys.stderr)
    return 0


_INIT = CommandText(
    help="write a commented starter config (the demo pipeline; --array: an array with a sweep)",
    description="Write a starter config to PATH (default train.yaml, or array.yaml with --array): the demo "
    "pipeline that comes with the package, every key commented. Edit workload.callable to run your own "
    "code, then submit it.",
    epilog="""exit codes: 0 written; 2 PATH exists (add --force), is a link or not a file, or its folder is missing.
examples:
  aetherium-hpc init && aetherium-hpc submit train.yaml --wait
  aetherium-hpc init --array sweep.yaml && aetherium-hpc submit sweep.yaml
  aetherium-hpc init --force configs/
""",
)


def _add_init(sub: SubParsers) -> None:
    p = add_command(sub, "init", cmd_init, _INIT)
    p.add_argument("path", nargs="?", metavar="PATH", help="file to write, or a folder to write it in")
    p.add_argument("--array", action="store_true", help="a job array with a 2 x 2 sweep instead of one job")
    p.add_argument("--force", action="store_true", help="overwrite PATH if it exists")


_EXTENSIONS.append(_add_init)


# -- templates ---------------------------------------------------------------------------------
def cmd_templates(args: argparse.Namespace) -> int:
    """List, print or copy the sbatch templates shipped with the package."""
    from . import templates

    if args.copy:
        folder = Path(args.copy)
        folder.mkdir(parents=True, exist_ok=True)
        chosen = [args.name] if args.name else templates.names()
        clashes = [n for n in chosen if (folder / n).exists()]
        if clashes and not args.force:
            raise AetheriumError(f"{folder}: {', '.join(clashes)} exist(s); pass --force to overwrite")
        for name in chosen:
            _known_template(name)
            target = folder / name
            target.write_text(templates.text(name), encoding="utf-8")
            if name.endswith(".sh") and name != "aetherium-include.sh":  # run, not sourced
                target.chmod(0o755)
            print(f"wrote {target}", file=sys.stderr)
        return 0
    if args.name:
        _known_template(args.name)
        sys.stdout.write(templates.text(args.name))
        return 0
    for name in templates.names():
        print(f"{name:22} {templates.DESCRIPTIONS.get(name, '')}")
    print("\nprint one: aetherium-hpc templates job.sbatch > job.sbatch; copy all: aetherium-hpc templates --copy DIR")
    return 0


def _known_template(name: str) -> None:
    from . import templates

    if name not in templates.names():
        raise AetheriumError(f"no template {name!r}; choose one of: {', '.join(templates.names())}")


_TEMPLATES = CommandText(
    help="list, print or copy the sbatch templates for hand-written job scripts",
    description="The sbatch templates shipped with aetherium-hpc (a job, an array, a merge job, a chain "
    "script, shell functions to source). Without arguments: the list.",
    epilog="""\
exit codes: 0 listed, printed or copied; 2 no such template, or --copy would overwrite files (add --force).
examples:
  aetherium-hpc templates
  aetherium-hpc templates job.sbatch > my-job.sbatch
  aetherium-hpc templates --copy slurm/
""",
)


def _add_templates(sub: SubParsers) -> None:
    p = add_command(sub, "templates", cmd_templates, _TEMPLATES)
    p.add_argument("name", nargs="?", help="the template to print (or, with --copy, the only one to copy)")
    p.add_argument("--copy", metavar="DIR", help="copy the templates into DIR (created if missing)")
    p.add_argument("--force", action="store_true", help="with --copy: overwrite files that exist")


_EXTENSIONS.append(_add_templates)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="aetherium-hpc",
        description="Run ML pipelines on Slurm (or locally) with a per-node SQLite metrics store, "
        "resource monitors, and merged reports across job arrays.",
    )
    parser.add_argument("--version", action="version", version=f"aetherium-hpc {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _EXTENSIONS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .analysis.formatting import EscapedStream

    if not isinstance(sys.stdout, EscapedStream):
        sys.stdout, sys.stderr = EscapedStream(sys.stdout), EscapedStream(sys.stderr)
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    handler: Handler = args.handler
    try:
        return handler(args)
    except AetheriumError as exc:
        print(f"aetherium-hpc: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except (TypeError, ValueError) as exc:  # validation errors of the log calls
        print(f"aetherium-hpc: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
