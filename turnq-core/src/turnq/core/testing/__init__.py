"""Test kit for backend authors: the contract suite every backend runs unchanged.

``from turnq.core.testing import BackendContract`` and subclass it; see :mod:`turnq.core.testing.contract`.
"""

from .contract import BackendContract, Harness, ManualClock, Recorder

__all__ = ["BackendContract", "Harness", "ManualClock", "Recorder"]
