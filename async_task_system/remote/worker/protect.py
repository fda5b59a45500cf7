"""Keeping the hub token from the worker's scripts (:func:`protect_secret`)."""

from __future__ import annotations

import os
import sys

__all__ = ["protect_secret"]


def protect_secret(secret: str) -> list[str]:
    """Keep ``secret`` (the hub token) from the worker's scripts; returns what could not be done.

    * ``PR_SET_DUMPABLE 0``: a process of another user, or of the same user without
      ``CAP_SYS_PTRACE`` (the runner drops every capability of a root worker's scripts), can no
      longer read this process's ``/proc/PID/environ`` or ``/proc/PID/mem`` nor ``ptrace`` it;
    * the secret is overwritten where the kernel keeps the original command line and environment
      (``/proc/PID/cmdline`` is readable by every user, whatever the dumpable flag), and
      ``ASYNC_AGENT_TOKEN`` leaves ``os.environ``.
    """
    problems = []
    os.environ.pop("ASYNC_AGENT_TOKEN", None)
    if not sys.platform.startswith("linux"):
        return ["not Linux: the token stays readable in this process's environment"]
    import ctypes

    if ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0) != 0:  # PR_SET_DUMPABLE
        problems.append(f"prctl(PR_SET_DUMPABLE, 0) failed: errno {ctypes.get_errno()}")
    needle = secret.encode()
    try:
        with open("/proc/self/stat", "rb") as handle:
            data = handle.read()
        fields = data[data.rfind(b")") + 2 :].split()
        regions = [(int(fields[45]), int(fields[46])), (int(fields[47]), int(fields[48]))]
        with open("/proc/self/mem", "r+b", buffering=0) as memory:
            for start, end in regions:
                memory.seek(start)
                block = memory.read(end - start)
                if needle and needle in block:
                    memory.seek(start)
                    memory.write(block.replace(needle, b"*" * len(needle)))
    except (OSError, ValueError, IndexError) as exc:
        problems.append(f"could not scrub the token from the process's arguments and environment: {exc}")
    return problems
