"""Shared setup for the end-to-end tests in this folder: makes ``serverproc`` importable.

Tests run with ``--import-mode=importlib``, which does not put test folders on ``sys.path``; this conftest does
it for this folder, so test modules here can ``import serverproc``.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
