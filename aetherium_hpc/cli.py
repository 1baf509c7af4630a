"""The ``aetherium-hpc`` command: submit | run | status | merge | report | export | log.

Library errors (:class:`~aetherium_hpc.errors.AetheriumError`) become one line on
stderr and exit code 2 here, at the boundary; nothing below prints.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from . import __version__, env
from .errors import AetheriumError, StoreNotReachableError

Handler = Callable[[argparse.Namespace], int]


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


# -- log ---------------------------------------------------------------------------------------
def cmd_log(args: argparse.Namespace) -> int:
    """Send one record to the node's metrics store through its socket."""
    from .metrics import client, records
    from .metrics.transport import SocketSink

    address = env.StoreAddress.from_environ()
    if address is None:
        raise StoreNotReachableError(
            f"no metrics store to log to: {env.METRICS_ADDR} is not set; run this inside "
            "`aetherium-hpc run -- ...` or a job submitted by aetherium-hpc"
        )
    now = client._time()
    if args.kind == "training":
        rec: tuple[object, ...] = (
            records.TRAINING, now, records.name(args.name, "metric name"), args.value,
            args.round, args.epoch, records.name(args.phase, "--phase"),
        )  # fmt: skip
    elif args.kind == "resource":
        rec = (
            records.RESOURCE, now, records.name(args.type, "metric type"), records.name(args.name, "metric name"),
            args.value, records.name(args.unit, "--unit", optional=True), records.name(args.device, "--device", optional=True),
        )  # fmt: skip
    else:
        rec = (
            records.GENERATION, now, records.name(args.operation, "operation"), args.round, args.chunk,
            args.duration, args.samples, args.memory_mb, None,
        )  # fmt: skip
    sink = SocketSink(address)
    sink.put(rec)
    sent = sink.flush()
    sink.close()
    if not sent:
        raise StoreNotReachableError(
            f"the metrics store at {address.path} did not take the record; is the job still running?"
        )
    return 0


def _add_log(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "log",
        help="send one metric from a shell script to the job's metrics store",
        description="Send one record to the metrics store of the node, from any process of the job "
        f"(found through {env.METRICS_ADDR}, set by `aetherium-hpc run` and submitted jobs).",
    )
    kinds = p.add_subparsers(dest="kind", required=True, metavar="{training,resource,generation}")
    t = kinds.add_parser("training", help="a training metric: NAME VALUE [--round R] [--epoch E] [--phase P]")
    t.add_argument("name", help="metric name, e.g. loss")
    t.add_argument("value", type=_number)
    t.add_argument("--round", type=int, default=None)
    t.add_argument("--epoch", type=int, default=None)
    t.add_argument("--phase", default="train", help="train or val [train]")
    r = kinds.add_parser("resource", help="a resource sample: TYPE NAME VALUE [--unit U] [--device D]")
    r.add_argument("type", help="metric type, e.g. disk")
    r.add_argument("name", help="metric name, e.g. scratch_used")
    r.add_argument("value", type=_number)
    r.add_argument("--unit", default="")
    r.add_argument("--device", default="")
    g = kinds.add_parser("generation", help="a finished data-generation chunk: OPERATION --duration S ...")
    g.add_argument("operation")
    g.add_argument("--duration", type=_number, required=True, help="seconds the chunk took")
    g.add_argument("--samples", type=int, default=None)
    g.add_argument("--round", type=int, default=None)
    g.add_argument("--chunk", type=int, default=None)
    g.add_argument("--memory-mb", type=_number, default=None)
    p.set_defaults(handler=cmd_log)


# -- parser --------------------------------------------------------------------------------------
_EXTENSIONS: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = [_add_log]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
