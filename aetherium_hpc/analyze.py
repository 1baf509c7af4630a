"""``python -m aetherium_hpc.analyze DB [--plot out.png] [--html report.html] [--json]``: the report.

The original pipeline's entry point, kept as a route into ``aetherium-hpc report`` (same
arguments, same output, same exit codes).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from .cli import main as cli_main

    return cli_main(["report", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
