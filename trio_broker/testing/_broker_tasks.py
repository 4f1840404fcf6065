"""The brokers of a test cluster, each in a task and cancel scope of its own: what
:class:`~trio_broker.testing.LocalCluster` (real disks and sockets) and
:class:`~trio_broker.testing.MockCluster` (memory stores and network) share, so that stopping,
crashing and graceful shutdown mean the same in both."""

from __future__ import annotations

import contextlib

import trio

from .._runtime import Broker


class BrokerTasks:
    """Running brokers by name (:attr:`brokers`), each run by :meth:`_run_broker` until
    :meth:`stop`."""

    def __init__(self) -> None:
        self.brokers: dict[str, Broker] = {}
        """Running brokers by name."""
        self._scopes: dict[str, trio.CancelScope] = {}
        self._stopped: dict[str, trio.Event] = {}
        self._leave: dict[str, trio.Event] = {}

    async def _run_broker(
        self,
        name: str,
        opening: contextlib.AbstractAsyncContextManager[Broker],
        *,
        task_status: trio.TaskStatus[Broker],
    ) -> None:
        """Run the broker ``opening`` opens, as ``name``, until it is cancelled or let go."""
        stopped = self._stopped[name] = trio.Event()
        leave = self._leave[name] = trio.Event()
        try:
            with trio.CancelScope() as scope:
                self._scopes[name] = scope
                async with opening as broker:
                    self.brokers[name] = broker
                    task_status.started(broker)
                    await leave.wait()
        finally:
            self.brokers.pop(name, None)
            stopped.set()

    async def stop(self, name: str, *, graceful: bool = False) -> None:
        """Stop broker ``name``: cancel it, as ``open_broker`` sees a cancelled scope, or with
        ``graceful`` let its body end, as a node does on SIGTERM (a leader hands its leadership
        over and in-flight requests are answered first)."""
        if graceful:
            self._leave[name].set()
        else:
            self._scopes[name].cancel()
        await self._stopped[name].wait()
