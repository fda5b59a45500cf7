"""The worker daemon's configuration: :class:`WorkerConfig` (the CLI flags map one to one)."""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field

from ..._version import __version__
from ...sandbox.process import DEFAULT_ALLOW_ENV, RunLimits
from ..protocol import LANGUAGES

__all__ = ["REMOTE_RUNTIMES", "WorkerConfig"]

REMOTE_RUNTIMES = ("python", "javascript", "native", "wasm")
"""The runtimes a worker can offer; it advertises those whose program is present (see :meth:`WorkerConfig.runtimes`)."""


@dataclass
class WorkerConfig:
    """Everything the worker daemon needs; the CLI flags map one to one."""

    hub: str
    token: str
    name: str
    max_concurrent: int = 5
    capabilities: tuple[str, ...] = LANGUAGES
    max_output_bytes: int = 256 * 1024
    cpu_seconds: float | None = 300.0
    memory_mb: int | None = 1024
    file_size_mb: int | None = 256
    max_processes: int | None = 64
    run_as: str | None = None
    allow_env: tuple[str, ...] = DEFAULT_ALLOW_ENV
    python: str = field(default_factory=lambda: sys.executable or "python3")
    workdir: str | None = None
    default_timeout: float = 60.0
    reconnect_initial: float = 0.25
    reconnect_max: float = 30.0
    once: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    tools_dir: str | None = None
    kill_grace: float = 2.0
    version: str = __version__
    isolation: bool = True
    """Scripts run isolated (no network, read-only file system but a scratch directory, own pids)."""
    allow_network: bool = False
    """Isolated scripts may use the network (``--allow-network``)."""

    def limits(self) -> RunLimits:
        """The runner's share of the configuration."""
        return RunLimits(
            timeout=self.default_timeout,
            max_output_bytes=self.max_output_bytes,
            cpu_seconds=self.cpu_seconds,
            memory_mb=self.memory_mb,
            file_size_mb=self.file_size_mb,
            max_processes=self.max_processes,
            user=self.run_as,
            allow_env=tuple(self.allow_env),
            languages=tuple(self.capabilities),
            python=self.python,
            workdir=self.workdir,
            kill_grace=self.kill_grace,
            isolation=self.isolation,
            network=self.allow_network,
        )

    def sandbox_labels(self) -> dict[str, str]:
        """The labels that tell the hub (and ``GET /agents``) how this worker's scripts are isolated:
        ``isolation=on|off`` and ``network=on|off``; requests select by them like any label."""
        network = "on" if self.allow_network or not self.isolation else "off"
        return {"isolation": "on" if self.isolation else "off", "network": network}

    def runtimes(self) -> list[str]:
        """The runtime tools this worker offers: none without ``tools_dir``; else python and native,
        javascript when ``node`` is on PATH, wasm when ``wasmtime`` is installed (found, not imported)."""
        if not self.tools_dir:
            return []
        import importlib.util

        offered = ["python", "native"]
        if shutil.which("node"):
            offered.append("javascript")
        if importlib.util.find_spec("wasmtime") is not None:
            offered.append("wasm")
        return offered
