"""``python -m aetherium_hpc`` is the ``aetherium-hpc`` command."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
