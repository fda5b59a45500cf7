"""pytest plugin for the peer suite: records outcomes, and installs our executor when asked.

Loaded with ``-p peer_plugin`` by ``run_smolagents_suite.py``. With ``ATS_PEER_EXECUTOR=1``
every ``CodeAgent`` gets our ``ContextPreservingExecutor`` right after its ``__init__``, the way
``create_async_agent`` installs it (keeping the timeout the agent was given). The outcome of
each test is written as JSON to ``ATS_PEER_RESULTS``.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any

import pytest

_outcomes: dict[str, str] = {}
_installed_key = pytest.StashKey[type]()


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("ATS_PEER_EXECUTOR") != "1":
        return
    from smolagents.agents import CodeAgent

    from async_task_system.core.agent_runtime import ContextPreservingExecutor, install_context_executor

    original = CodeAgent.__init__

    @functools.wraps(original)
    def __init__(self: CodeAgent, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        install_context_executor(self)

    CodeAgent.__init__ = __init__
    config.stash[_installed_key] = ContextPreservingExecutor


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" or (report.when == "setup" and not report.passed):
        _outcomes[report.nodeid] = report.outcome
    elif report.when == "teardown" and report.failed:
        _outcomes[report.nodeid] = "failed"


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.failed:
        _outcomes[report.nodeid] = "collection-error"


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = os.environ.get("ATS_PEER_RESULTS")
    if path:
        installed = session.config.stash.get(_installed_key, None)
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"executor": getattr(installed, "__name__", None), "outcomes": _outcomes}, f, indent=1)
