"""A stand-in for the driver under ``Runs``: it takes each run's commands, and every group
it hands back settles at once with no result. The request path's tests
(test_read_leader_path, test_leader_cpu, test_deep_values) drive ``Runs`` with it."""

from __future__ import annotations

from typing import Any

from trio_broker._runtime._pending import Pending, PendingGroup


class _Node:
    is_leader = True


class StandInDriver:
    node = _Node()

    def __init__(self, max_group: int = 1024) -> None:
        self.max_group = max_group
        self.runs: list[list[Any]] = []
        self.groups: list[PendingGroup] = []

    @property
    def commands(self) -> list[Any]:
        """Every command proposed, in order."""
        return [command for run in self.runs for command in run]

    async def propose_many(self, commands: list[Any]) -> PendingGroup:
        self.runs.append(list(commands))
        self.groups.append(PendingGroup(len(commands)))
        return self.groups[-1]

    async def propose_columns(self, columns: Any) -> PendingGroup:
        """A receive of plain appends to one queue, held as columns: its appends, as a run."""
        return await self.propose_many(list(columns))

    async def propose(self, command: Any) -> Pending:
        """A lone command (``Runs._handle_one``): a run of one."""
        return self.propose_now(command)

    def propose_now(self, command: Any) -> Pending:
        """A lone command without waiting (``Runs.lone_append``): a run of one."""
        self.runs.append([command])
        return Pending()
