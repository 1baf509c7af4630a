"""``python -m aetherium_hpc.analyze DB [--plot out.png] [--html report.html] [--json]``: the report."""

from .analysis.report import main

if __name__ == "__main__":
    raise SystemExit(main())
