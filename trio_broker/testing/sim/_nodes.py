"""The brokers and their disks: start, crash and restart from durable state; a Ready durable only
when its write completes; applying committed entries; the leader's proposal grouping and its
answers to clients.
"""

from __future__ import annotations

import copy
import random
from typing import Any

import attrs

from ..._core._commands import AppendBatch, AppendMessage, CommandGroup, GroupApplied
from ..._core._raft import NotLeader, RaftNode
from ..._core._raft_messages import Entry
from ..._core._work_commands import (
    WORK_COMMANDS,
    ExpireLeases,
    GroupExtend,
    GroupNack,
    GroupRead,
)
from .._sim_cluster import COMMANDS as APPLIED
from ._clients import ClientRequest, ClientResponse
from ._params import SimulationFailure

TIMED = (GroupRead, GroupNack, GroupExtend, ExpireLeases)
"""Group commands stamped with the proposing leader's clock (``now_ms``)."""


def apply_entry(app: Any, entry: Entry) -> Any:
    """Apply a committed entry; the core's own entries (no-op, config) change no queue."""
    if isinstance(entry.payload, (*APPLIED, *WORK_COMMANDS)):
        return app.apply(entry.payload)
    return None


class NodesMixin:
    """The brokers' and disks' steps, on the simulation's state (see :class:`Simulation`)."""

    def _start(self, i: int) -> None:
        st = self.storage[i]
        self.nodes[i] = self.node_cls(
            i,
            hard_state=st.hard_state,
            snapshot=st.snapshot,
            entries=list(st.entries),
            rng=random.Random(self.node_rng[i].getrandbits(64)),
            election_ticks=self.p.election_ticks,
            heartbeat_ticks=self.p.heartbeat_ticks,
            max_batch=self.p.max_batch,
        )
        self.apps[i] = copy.deepcopy(st.snapshot_data)
        self.app_index[i] = st.snapshot.index
        self.checker.on_start(i)
        self.dirty.add(i)
        self._trace(f"start {i}")

    def crash(self, i: int, quick: bool = False) -> None:
        """Power loss: volatile state and the disk write in progress are gone."""
        if self.nodes.get(i) is None:
            return
        self.nodes[i] = None
        self.disk[i] = None  # the write in progress is lost
        for key in [k for k in self.pending if k[0] == i]:
            del self.pending[key]
        self.proposals.pop(i, None)
        lo, hi = self.p.restart_steps
        self.restart_at[i] = self.now + self.restart_rng.randint(1, lo if quick else hi)
        self.stats["crashes"] += 1
        self._trace(f"crash {i}")

    def live(self) -> list[int]:
        """Brokers that are up (not crashed)."""
        return [i for i in self.ids if self.nodes[i] is not None]

    # -- disks ---------------------------------------------------------------------------------

    def _drive(self, i: int) -> None:
        if self.disk[i] is None:
            # Requests that arrived while the disk was busy share one entry, as in the runtime.
            self._propose_group(i)
        for _ in range(64):
            node = self.nodes[i]
            if node is None or self.disk[i] is not None or not node.has_ready():
                return
            rd = node.ready()
            for m in rd.messages:
                self.post(m)
            delay = self.disk_rng.randint(0, slow) if (slow := self.p.disk_delays[i - 1]) else 0
            if delay:
                self.disk[i] = (self.now + delay, rd)
                return
            self._complete(i, rd)

    def _complete(self, i: int, rd: Any) -> None:
        node = self.nodes[i]
        assert node is not None
        self.storage[i].persist(rd)
        for m in rd.persisted_messages:
            self.post(m)
        if rd.snapshot is not None:
            self.apps[i] = copy.deepcopy(rd.snapshot.data)
            self.app_index[i] = rd.snapshot.snapshot.index
            self.checker.on_snapshot(i, rd.snapshot.snapshot.index, self.apps[i])
            self.stats["snapshots_installed"] += 1
        for e in rd.committed_entries:
            self._apply(i, e)
        if node.is_leader:
            for peer in rd.snapshots_to_send:
                data = copy.deepcopy(self.apps[i])
                self.post(node.make_data_sync(peer, self.app_index[i], data))
        node.advance()
        self.checker.after_step(i)
        applied = self.app_index[i]
        if (
            applied - node.log.snapshot_index >= self.p.compact_every
            and applied <= node.log.persisted_index
            and applied <= node.applied
        ):
            meta = node.compact(applied)
            self.storage[i].compact(meta, self.apps[i])
            self.checker.on_snapshot(i, applied, self.apps[i])
        if self.faults_on:
            # Crash at the worst moments: right after a sync, and (VOPR/buggify style) right
            # after a vote became durable, coming back quickly while the election still runs.
            voted = rd.hard_state is not None and rd.hard_state.voted_for not in (None, i)
            if voted and self.crash_point_rng.random() < self.p.crash_after_vote:
                self.crash(i, quick=True)
            elif self.crash_point_rng.random() < self.p.crash_after_sync:
                self.crash(i)

    def _complete_disks(self) -> None:
        for i in self.ids:
            job = self.disk[i]
            if job is not None and job[0] <= self.now:
                self.disk[i] = None
                self.dirty.add(i)
                self._complete(i, job[1])

    def _apply(self, i: int, e: Entry) -> None:
        if e.index != self.app_index[i] + 1:
            raise SimulationFailure(f"node {i} applied {e.index} after {self.app_index[i]}")
        before = self.checker.group.view(self.apps[i]) if self.workers else None
        result = apply_entry(self.apps[i], e)
        self.app_index[i] = e.index
        self.checker.on_apply(i, e, result)
        if self.workers:
            self.checker.group.on_entry(i, e, result, before)
        self._trace(f"apply {i} {e.index} t{e.term}")
        waiting = self.pending.pop((i, e.index), None)
        if waiting is not None:
            term, requests = waiting
            if term != e.term:  # another leader's entry took this index
                for client, req_id in requests:
                    self._answer(i, client, req_id, "dropped")
                return
            results = result.results if isinstance(result, GroupApplied) else [result]
            for (client, req_id), one in zip(requests, results, strict=True):
                self._answer(i, client, req_id, "ok", one)

    def _answer(self, i: int, client: str | None, req_id: int, status: str, result=None) -> None:
        if client is not None:  # the operator's commands are not answered
            self.post(ClientResponse(i, client, req_id, status, result), client=True)

    # -- the broker side of client traffic -----------------------------------------------------

    def _serve(self, i: int, node: RaftNode, m: ClientRequest) -> None:
        if not node.is_leader:
            if m.src is not None:
                response = ClientResponse(i, m.src, m.req_id, "not_leader", None, node.leader_id)
                self.post(response, True)
            return
        self.proposals.setdefault(i, (self.now, []))[1].append(m)

    def _propose_group(self, i: int) -> None:
        waiting = self.proposals.get(i)
        node = self.nodes.get(i)
        if waiting is None or node is None or self.now < waiting[0] + self.p.linger:
            return
        del self.proposals[i]
        requests = waiting[1]
        # The leader stamps appends with its wall clock when it proposes them (retention), and
        # the group commands whose outcome depends on time (leases expire on its clock).
        commands = [
            attrs.evolve(m.command, appended_ms=self.wall_ms(i))
            if isinstance(m.command, AppendMessage | AppendBatch)
            else attrs.evolve(m.command, now_ms=self.wall_ms(i))
            if isinstance(m.command, TIMED)
            else m.command
            for m in requests
        ]
        payload = commands[0] if len(commands) == 1 else CommandGroup(tuple(commands))
        try:
            term, index = node.propose(payload)
        except NotLeader as exc:
            for m in requests:
                if m.src is not None:
                    response = ClientResponse(i, m.src, m.req_id, "not_leader", None, exc.leader_id)
                    self.post(response, True)
            return
        self.stats["groups"] += len(requests) > 1
        replaced = self.pending.pop((i, index), None)
        if replaced is not None:
            # An earlier term's entry at this index was replaced in this leader's log: it was
            # never committed (leader completeness), as the runtime's driver answers.
            for client, req_id in replaced[1]:
                self._answer(i, client, req_id, "dropped")
        self.pending[(i, index)] = (term, [(m.src, m.req_id) for m in requests])
