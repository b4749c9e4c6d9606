"""`python -m bench`: see bench/__init__.py for the method."""

from __future__ import annotations

import sys

from bench.sweep import main

sys.exit(main())
