"""The network and its faults: loss, duplication, random delays, symmetric and one-way
partitions, isolating the leader, flapping links; and the crashes the fault schedule injects,
among them those aimed at the worst moments of a seed's fault mix (a leader's first steps, a
disk write in flight).
"""

from __future__ import annotations

import heapq
from typing import Any

from ..._core._raft import Role
from ..._core._raft_messages import PromoteToLeader, Replicate
from ._clients import ClientRequest, ClientResponse
from ._entries import received
from ._replication import GroupMessage
from ._wire import Frame


class NetworkMixin:
    """The wire and the fault schedule, on the simulation's state (see :class:`Simulation`)."""

    def _is_blocked(self, src: Any, dst: Any) -> bool:
        if (src, dst) in self.blocked:
            return True
        if self.flap is not None:
            a, b, until, period = self.flap
            if self.now < until and {src, dst} == {a, b} and (self.now // period) % 2 == 0:
                return True
        return False

    def post(self, m: Any, client: bool = False) -> None:
        """Put a message on the wire: maybe lost, maybe duplicated, always randomly delayed.
        A consensus message travels with its group, the current one (clients' requests and
        answers name theirs); with ``wire``, as its frame's bytes (``_wire``). With the
        links' connections (``links``, on with the wire), a broker's message on a link that
        is not connected is dropped, as the runtime's link drops it."""
        if not client:
            if self.links:
                if not self._connected(m.src, m.dst):
                    self.stats["link_unconnected"] += 1
                    return
                if self.p.wire:
                    m = self._frame(m)
                else:
                    m = GroupMessage(self.g.index, m, self.starts[m.dst], self.now)
            else:
                m = GroupMessage(self.g.index, m)
        if self.faults_on and self.net_rng.random() < self.p.loss:
            self.stats["dropped"] += 1
            return
        copies = 1
        if not client and self.faults_on and self.net_rng.random() < self.p.duplicate:
            copies = 2  # TCP never duplicates a client request; broker traffic may be replayed
        for _ in range(copies):
            delay = self.net_rng.randint(self.p.delay_min, self.p.delay_max)
            self.seq += 1
            heapq.heappush(self.net, (self.now + delay, self.seq, m))

    def _deliver_due(self) -> None:
        if self.links:
            self._note_links_up()  # (a link connected now carries what is delivered next)
        while self.net and self.net[0][0] <= self.now:
            _, _, m = heapq.heappop(self.net)
            if isinstance(m, ClientResponse):
                with self.in_group(m.group):
                    self._client_response(m)
                continue
            if self.links and type(m) is not ClientRequest:
                sent = m.message if type(m) is GroupMessage else m
                if self._lost(sent.src, sent.dst, m.connection, m.sent_at):
                    continue
                self._check_connection(sent, m.connection, m.sent_at)
            with self.in_group(m.group):
                if isinstance(m, GroupMessage):
                    m = m.message
                    if type(m) is Replicate or type(m) is PromoteToLeader:
                        m = received(m, self.reads_runs[m.dst])  # (decoded, as a replica's)
                elif isinstance(m, Frame):
                    if self.nodes.get(m.dst) is None or self._is_blocked(m.src, m.dst):
                        self.stats["dropped"] += 1  # (never read: as _deliver drops it)
                        continue
                    m = self._unframe(m)
                self._deliver(m)

    def _deliver(self, m: Any) -> None:
        """Deliver ``m`` to its broker's node of the current group (the message's)."""
        node = self.nodes.get(m.dst)
        blocked = not isinstance(m, ClientRequest) and self._is_blocked(m.src, m.dst)
        if node is None or blocked:
            self.stats["dropped"] += 1
            return
        self.stats["delivered"] += 1
        if isinstance(m, ClientRequest):
            self.dirty.add(m.dst)
            self._serve(m.dst, node, m)
            return
        self._trace(f"{type(m).__name__} {m.src}>{m.dst} t{m.term}")
        self.dirty.add(m.dst)
        node.step(m)
        self.checker.after_step(m.dst)

    def _inject_faults(self) -> None:
        rng, p = self.fault_rng, self.p
        if rng.random() < p.crash_rate and self.live():
            victim = rng.choice(self.live())
            if p.crash_leader and self.leader_fault_rng.random() < p.crash_leader:
                with self.in_group(self._aimed_group()):
                    victim = next(iter(self._leaders()), victim)
            self.crash(victim)  # (all its groups)
        if p.crash_new_leader or p.isolate_new_leader or p.isolate_after_commit:
            for _ in self.each_group():
                self._leader_faults()
        if p.crash_in_write:
            for _ in self.each_group():
                self._write_faults()
        if self.now >= self.partition_until and self.blocked:
            self.blocked.clear()
            self._trace("heal")
        if self.now >= self.partition_until and rng.random() < p.partition_rate:
            self._partition()
        if self.flap is None and rng.random() < p.flap_rate:
            a, b = rng.sample(self.ids, 2)
            self.flap = (a, b, self.now + rng.randint(50, 400), rng.randint(3, 30))
        elif self.flap is not None and self.now >= self.flap[2]:
            self.flap = None
        if self.links and (self.blocked or self.flap is not None):
            self._links_down()

    def _aimed_group(self) -> int:
        """The group whose leader a fault aimed at a leader strikes (every group it leads
        goes down or is cut off with it): group 0 with a single group."""
        if len(self.groups) == 1:
            return 0
        return self.leader_fault_rng.randrange(len(self.groups))

    def _leaders(self) -> list[int]:
        return [i for i in self.live() if self.nodes[i].role is Role.LEADER]

    def _leader_faults(self) -> None:
        """Faults aimed at a leader's first steps (stream ``faults:leaders``), while the
        entries it inherited and its first entry of its own are only partly replicated: a new
        leader crashes within a few steps of its election, or is cut off at once, or is cut off
        right after its commit index first moves in its term (before the others hear of it)."""
        p = self.p
        if not (p.crash_new_leader or p.isolate_new_leader or p.isolate_after_commit):
            return
        rng = self.leader_fault_rng
        for i, (at, term) in list(self.g.doomed.items()):
            if self.now >= at:
                del self.g.doomed[i]
                node = self.nodes[i]
                if node is not None and node.term == term:
                    self._trace(f"crash new leader {i}")
                    self.stats["leaders_crashed_new"] += 1
                    self.crash(i, quick=rng.random() < 0.5)
        for i in self._leaders():
            node = self.nodes[i]
            term, commit = self.g.leader_terms.get(i, (None, None))
            if term != node.term:
                self.g.leader_terms[i] = (node.term, node.commit)
                if rng.random() < p.crash_new_leader:
                    self.g.doomed[i] = (self.now + rng.randint(0, 20), node.term)
                elif rng.random() < p.isolate_new_leader:
                    self._isolate(i, "new leader")
            elif commit is not None and node.commit > commit:
                self.g.leader_terms[i] = (term, None)
                if rng.random() < p.isolate_after_commit:
                    self._isolate(i, "leader after its first commit")

    def _isolate(self, i: int, why: str) -> None:
        """Cut broker ``i`` off from every other, whatever was cut off before (so a broker
        isolated earlier, with entries only it holds, meets the others again)."""
        self.blocked = {(a, b) for a in self.ids for b in self.ids if i in (a, b) and a != b}
        lo, hi = self.p.partition_steps
        self.partition_until = self.now + self.leader_fault_rng.randint(lo, hi)
        self.stats["partitions"] += 1
        self.stats["leaders_cut_off"] += 1
        self._trace(f"isolate {why} {i}")

    def _write_faults(self) -> None:
        """Crashes with a disk write in flight (stream ``faults:writes``): the write is lost,
        and with it whatever the broker had not yet made durable."""
        if not self.p.crash_in_write:
            return
        for i in self.ids:
            if self.disk[i] is not None and self.write_fault_rng.random() < self.p.crash_in_write:
                self._trace(f"crash in write {i}")
                self.stats["crashes_in_write"] += 1
                self.crash(i)

    def _partition(self) -> None:
        rng = self.fault_rng
        self.blocked.clear()
        with self.in_group(self._aimed_group()):
            leaders = [i for i in self.live() if self.nodes[i].role is Role.LEADER]
        mode = rng.choice(["isolate_leader", "split", "isolate_one"])
        if mode == "isolate_leader" and leaders:
            side = {leaders[0]}
        elif mode == "isolate_one" or len(self.ids) == 3:
            side = {rng.choice(self.ids)}
        else:
            side = set(rng.sample(self.ids, rng.randint(1, len(self.ids) // 2)))
        one_way = rng.random() < self.p.one_way
        for a in side:
            for b in self.ids:
                if b not in side:
                    self.blocked.add((b, a))
                    if not one_way:
                        self.blocked.add((a, b))
        lo, hi = self.p.partition_steps
        self.partition_until = self.now + rng.randint(lo, hi)
        self.stats["partitions"] += 1
        self._trace(f"partition {sorted(side)} one_way={one_way}")
