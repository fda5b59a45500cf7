"""What tests of real workers need to know about the sandbox their scripts run in.

A worker started without ``--no-isolation`` / ``--allow-network`` adds ``SANDBOX_LABELS`` to its own
labels. An isolated script lives in its own pid namespace, so the ``$$`` it writes (into a directory
the worker binds read-write: ``--workdir``) is not a pid of this host; :func:`host_pid` finds the
host's pid of that process among the worker's descendants.
"""

from __future__ import annotations

import os

SANDBOX_LABELS = {"isolation": "on", "network": "off"}


def _ids(pid: str) -> tuple[int, list[int]] | None:
    """``(PPid, NSpid)`` of a process from ``/proc/PID/status``; ``None`` once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            fields = dict(line.split(":", 1) for line in status if ":" in line)
    except OSError:
        return None
    return int(fields["PPid"]), [int(n) for n in fields["NSpid"].split()]


def host_pid(namespace_pid: int, ancestor: int) -> int:
    """This host's pid of the process that knows itself as ``namespace_pid`` (its ``$$``, the pid in
    its innermost pid namespace; the same number when unisolated) among ``ancestor``'s descendants."""
    processes = {int(name): ids for name in os.listdir("/proc") if name.isdigit() and (ids := _ids(name))}

    def descends(pid: int) -> bool:
        for _hop in range(64):
            parent = processes.get(pid, (0, []))[0]
            if parent == ancestor:
                return True
            if parent <= 1:
                return False
            pid = parent
        return False

    found = [pid for pid, (_, nspid) in processes.items() if nspid[-1] == namespace_pid and descends(pid)]
    assert len(found) == 1, (
        f"not one descendant of {ancestor} is pid {namespace_pid} in its namespace: {found}"
    )
    return found[0]


def require_isolation(what: str):
    """A mark (``pytestmark`` or a decorator) for tests that need namespaces: skip with the reason
    where they are unavailable, but fail under ``CI=true`` (CI must run ``what``)."""
    import sys

    import pytest

    from async_task_system.sandbox.isolation import isolation_status

    status = isolation_status() if sys.platform == "linux" else None
    if status is not None and status.available:
        return pytest.mark.skipif(False, reason="isolation is available")
    reason = status.reason if status is not None else "isolation needs Linux"
    if os.environ.get("CI") == "true":
        raise RuntimeError(f"CI must run {what}, but isolation is unavailable: {reason}")
    return pytest.mark.skip(reason=f"isolation unavailable: {reason}")
