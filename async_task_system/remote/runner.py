"""The worker's script runner: it lives in :mod:`async_task_system.sandbox.process`, shared with the tool runtimes.

Kept as an import path so code written against ``async_task_system.remote.runner`` keeps working.
"""

from __future__ import annotations

from ..sandbox.process import DEFAULT_ALLOW_ENV, RunLimits, RunOutcome, ScriptRunner, run_script

__all__ = ["DEFAULT_ALLOW_ENV", "RunLimits", "RunOutcome", "ScriptRunner", "run_script"]
