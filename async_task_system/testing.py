"""Deprecated path: moved to :mod:`async_task_system.agents.testing` (kept for one release)."""

from ._deprecated import moved

moved(__name__, "async_task_system.agents.testing")
