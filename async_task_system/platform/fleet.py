"""The platform's fleet: which agents there are, which one a REST task may run on, and the REST
tasks' ``platform_script`` target that picks the agent of each attempt and sends it the script."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..core.manager import get_current_task_id
from ..core.targets import Target
from ..core.tasks import TaskKind
from ..remote.bridge import RemoteExecutionManager
from .interface import SCRIPT_TARGET, NoAgentAvailable, PlatformError, iso_time, labels_match
from .recorder import TaskRecorder
from .store import Store

__all__ = ["Fleet"]

_SCRIPT_INPUTS: dict[str, dict[str, Any]] = {
    "type": {"type": "string", "description": "'shell' or 'python'."},
    "script": {"type": "string", "description": "The script to run on the agent."},
    "timeout": {"type": "number", "description": "Seconds the script may run.", "nullable": True},
    "agent_id": {"type": "string", "description": "The agent to run on.", "nullable": True},
    "labels": {
        "type": "object",
        "description": "Run on an online agent with these labels.",
        "nullable": True,
    },
    "env": {"type": "object", "description": "Environment variables of the script.", "nullable": True},
}


class Fleet:
    """Agent choice over the router's connected workers (``workers()``) and the store's agents table.

    ``recorder`` is told the agent each attempt of a REST task goes to; ``bridge`` sends the script.
    """

    def __init__(
        self,
        workers: Callable[[], list[dict[str, Any]]],
        store: Store,
        recorder: TaskRecorder,
        bridge: RemoteExecutionManager,
    ) -> None:
        self.workers = workers
        self.store = store
        self.recorder = recorder
        self.bridge = bridge

    def agents(self) -> list[dict[str, Any]]:
        """Connected agents (from the router) then offline ones (from the store)."""
        store = self.store
        out = []
        connected = set()
        for info in self.workers():
            connected.add(info["name"])
            out.append(
                {
                    "agent_id": info["name"],
                    "state": "online",
                    "labels": info.get("labels", {}),
                    "capabilities": info.get("capabilities", []),
                    "capacity": info.get("max_concurrent"),
                    "running": info.get("running", 0),
                    "in_flight": info.get("in_flight", 0),
                    "version": info.get("version"),
                    "transport": info.get("transport", "ws"),
                    "connected_at": iso_time(info.get("connected_at")),
                    "last_seen": iso_time(info.get("last_seen")),
                }  # fmt: skip
            )
        for row in store.agents.list():
            if row.agent_id in connected:
                continue
            out.append(
                {
                    "agent_id": row.agent_id,
                    "state": "offline",
                    "labels": row.labels,
                    "capabilities": row.capabilities,
                    "capacity": row.capacity,
                    "running": 0,
                    "in_flight": 0,
                    "version": row.version,
                    "transport": row.transport,
                    "connected_at": row.connected_at.isoformat() if row.connected_at else None,
                    "last_seen": row.last_seen.isoformat(),
                    "disconnected_at": row.disconnected_at.isoformat() if row.disconnected_at else None,
                    "last_reason": row.last_reason,
                }  # fmt: skip
            )
        return out

    def is_online(self, agent_id: str, language: str) -> bool:
        """Whether ``agent_id`` is connected (no look into the store); PlatformError 409 if it is but
        cannot run ``language``. When False, :meth:`check_agent` says why (404 or 409)."""
        for info in self.workers():
            if info["name"] == agent_id:
                self._check_language(info, agent_id, language)
                return True
        return False

    @staticmethod
    def _check_language(info: Mapping[str, Any], agent_id: str, language: str) -> None:
        if language not in info.get("capabilities", [language]):
            raise PlatformError(
                409, f"agent cannot run {language} scripts",
                {"agent_id": agent_id, "capabilities": info.get("capabilities")},
            )  # fmt: skip

    def check_agent(self, agent_id: str, language: str) -> None:
        """PlatformError 404 for an agent never seen, 409 for one offline or that cannot run ``language``."""
        if self.is_online(agent_id, language):
            return
        row = self.store.agents.get(agent_id)
        if row is None:
            raise PlatformError(404, "agent not found", {"agent_id": agent_id})
        raise PlatformError(
            409, "agent offline",
            {"agent_id": agent_id, "last_seen": row.last_seen.isoformat(), "last_reason": row.last_reason},
        )  # fmt: skip

    def candidates(
        self, selector: Mapping[str, str], language: str, raise_if_none: bool
    ) -> list[dict[str, Any]]:
        """The connected agents matching ``selector`` that run ``language`` (PlatformError 409 if none
        and ``raise_if_none``)."""
        found = [
            info
            for info in self.workers()
            if labels_match(info.get("labels", {}), selector)
            and language in info.get("capabilities", [language])
        ]
        if not found and raise_if_none:
            raise PlatformError(
                409, "no online agent matches the labels", {"labels": dict(selector), "type": language}
            )
        return found

    # ------------------------------------------------------------------ the REST tasks' target

    def script_target(self) -> Target:
        """The ``platform_script`` target (kind ``remote``) that REST tasks run as."""

        def run(arguments: dict[str, Any]) -> None:
            task_id = get_current_task_id()
            if task_id is None:
                raise RuntimeError("platform_script runs only as a task")
            language = arguments["type"]
            agent = arguments.get("agent_id")
            if agent is None:
                found = self.candidates(arguments.get("labels") or {}, language, raise_if_none=False)
                if not found:
                    raise NoAgentAvailable(
                        f"no online agent matches the labels {arguments.get('labels') or {}} for a {language} script"
                    )
                agent = min(
                    found, key=lambda w: (w["in_flight"] / max(1, w["max_concurrent"]), w["assigned"])
                )["name"]
            self.recorder.choose(task_id, agent)  # the listener may not have seen this task yet
            self.bridge.suspend(
                task_id, arguments["script"], arguments.get("timeout"), language=language, worker=agent,
                env=arguments.get("env"),
            )  # fmt: skip

        return Target(
            kind=TaskKind.REMOTE,
            name=SCRIPT_TARGET,
            description="Runs a REST task's script on the agent it names, or on an online agent matching its "
            "labels (chosen per attempt); the result is a dict with exit_code, stdout and stderr.",
            inputs=dict(_SCRIPT_INPUTS),
            call=run,
            runs_inline=True,
        )
