"""Scale-out on Dask distributed: run a manager's tool, function and agent tasks on a cluster.

The manager stays where it is (its records, slots, timeouts, retries, dependencies and waiters
are local); only each attempt's work goes to the cluster, through the executor seam: a picklable
:class:`~async_task_system.core._attempt.AttemptCall` submitted with ``pure=False`` (Dask's default,
``pure=True``, would merge two identical calls into one). The attempt carries a W3C trace
carrier and the task's id, so spans opened on a worker join the submitter's trace and
``get_current_task_id()`` works there.

    with dask_executor() as executor, TaskManager(max_workers=executor.total_threads(),
                                                  executor=executor) as manager:
        ...

``dask_executor()`` starts an embedded ``LocalCluster`` (worker processes) for a one-machine
try-out; ``dask_executor("tcp://scheduler:8786")`` connects to a real cluster, and
``dask_executor(client=client)`` uses a client you already have. It closes what it created
(cluster, client) when it is shut down; a client you passed stays open. ``close_with(manager)``
shuts it down with a manager instead.

What each task control means on Dask (a task running on a worker cannot be interrupted: Python
cannot stop a thread, and Dask does not try):

* **cancel** and **timeout** mark the task at once (CANCELLED, or FAILED with ``timeout``), free
  its slot and cancel its Dask future. A future still queued on the cluster never runs; one
  already running runs to its end on the worker and its result is discarded.
* **retry** submits a new attempt (a new Dask key); Dask's own ``retries`` are not used, so the
  retry rule, back-off and the attempt count stay the manager's.
* **managed agents** cannot be pickled: register a module-level *factory* (``register_agent(
  make_researcher, name="researcher")``), and each run rebuilds the agent on the worker.

This module imports ``distributed`` only when an executor is made: the core never loads it.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from distributed import Client

    from ..core.manager import TaskManager

__all__ = ["DaskExecutor", "dask_executor"]


class DaskExecutor(Executor):
    """A ``concurrent.futures.Executor`` that runs attempts on a Dask cluster (``pure=False``).

    Built by :func:`dask_executor`. ``shutdown()`` closes the client and the ``LocalCluster``
    when this executor created them; a client passed in is left open.
    """

    def __init__(self, client: Client, cluster: Any = None, owns_client: bool = False) -> None:
        self.client = client
        self.cluster = cluster  # the LocalCluster this executor started, if any
        self._owns_client = owns_client
        self._executor = client.get_executor(pure=False)
        self._closed = False

    @property
    def dashboard_link(self) -> str | None:
        """Dask's own dashboard for this cluster (needs ``bokeh`` on the scheduler), if any."""
        return getattr(self.client, "dashboard_link", None)

    def total_threads(self) -> int:
        """Threads across the cluster's workers now: a good ``max_workers`` for the manager."""
        return sum(self.client.nthreads().values()) or 1

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Run ``fn(*args, **kwargs)`` on the cluster; the returned future's ``cancel()`` cancels it there."""
        if self._closed:
            raise RuntimeError("the Dask executor is shut down")
        return self._executor.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking work; close the client and cluster this executor created (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._executor.shutdown(wait=wait and not cancel_futures)
        if self._owns_client:
            self.client.close()
            if self.cluster is not None:
                self.cluster.close()

    def close_with(self, manager: TaskManager) -> TaskManager:
        """Shut this executor down when ``manager`` shuts down (after its tasks); returns the manager."""
        manager.add_shutdown_callback(self.shutdown)
        return manager

    def __repr__(self) -> str:
        where = "LocalCluster" if self.cluster is not None else getattr(self.client.scheduler, "address", "?")
        return f"<DaskExecutor {where} closed={self._closed}>"


def dask_executor(
    address: str | None = None,
    *,
    client: Client | None = None,
    **local_cluster_kwargs: Any,
) -> DaskExecutor:
    """An executor on a Dask cluster, for ``TaskManager(executor=...)`` / ``create_async_agent(executor=...)``.

    Args:
        address: a scheduler's address (``tcp://host:8786``) for a real cluster. ``None`` starts an
            embedded ``LocalCluster`` with worker *processes* (defaults: 2 workers, 1 thread each,
            its HTTP server on a free port; ``local_cluster_kwargs`` override them).
        client: an existing ``distributed.Client`` to use instead (not closed by the executor).
        **local_cluster_kwargs: passed to ``LocalCluster`` (``n_workers``, ``threads_per_worker``,
            ``memory_limit``, ...).

    Needs the ``dask`` extra (``pip install 'async_task_system[dask]'``).
    """
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise ImportError(
            "the Dask backend needs the dask extra: pip install 'async_task_system[dask]'"
        ) from exc
    if client is not None:
        if address is not None or local_cluster_kwargs:
            raise ValueError("pass either client= or an address / LocalCluster options, not both")
        return DaskExecutor(client)
    if address is not None:
        if local_cluster_kwargs:
            raise ValueError("LocalCluster options apply only when no scheduler address is given")
        return DaskExecutor(Client(address), owns_client=True)
    options: dict[str, Any] = {
        "n_workers": 2,
        "threads_per_worker": 1,
        "processes": True,
        "dashboard_address": ":0",  # a free port: several clusters on one machine never clash
    }
    options.update(local_cluster_kwargs)
    cluster = LocalCluster(**options)
    try:
        dask_client = Client(cluster)
    except BaseException:
        cluster.close()
        raise
    return DaskExecutor(dask_client, cluster, owns_client=True)
