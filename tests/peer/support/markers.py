"""Skip markers the smolagents test files import from ``tests/utils/markers.py``.

The source distribution ships the test files but not this helper; these are written for the
peer suite: ``require_torch`` skips without torch, ``require_run_all`` unless ``RUN_ALL`` is set.
"""

from __future__ import annotations

import importlib.util
import os

import pytest

require_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs torch")
require_run_all = pytest.mark.skipif(not os.environ.get("RUN_ALL"), reason="set RUN_ALL=1 to run")
