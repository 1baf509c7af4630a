"""``python -m bench``: run every benchmark and write docs/PERFORMANCE.md (see bench/suite.py)."""

from bench.suite import main

raise SystemExit(main())
