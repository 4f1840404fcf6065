"""The clients: their requests and answers, their operations, and the loop that retries them.

:class:`ClientsMixin` is the clients' part of :class:`~trio_broker.testing.sim.Simulation`: it
draws operations, sends them to a broker, follows NOT_LEADER redirects and retries until the
deadline, and reports every outcome to the checker.
"""

from __future__ import annotations

from typing import Any

import attrs

from ..._core._commands import (
    Ack,
    AppendBatch,
    AppendMessage,
    CreateQueue,
    ReadBatch,
    ReadNext,
)
from ._client_wire import check_answer, through_wire


@attrs.frozen
class ClientRequest:
    src: str | None
    """None for the operator's (and the leader's own) commands: proposed, never answered."""
    dst: Any
    req_id: int
    command: Any
    group: int = 0
    """The replication group of the command's queue (its leader serves it)."""


@attrs.frozen
class Receive:
    """A connection's receive of several plain APPENDs to one queue (a pipeliner's, ``P-<k>``):
    what the runtime's ``Runs._plain_commands`` holds as columns. Each value is answered on
    its own, its request id ``(req_id, k)``."""

    queue: str
    datas: tuple[bytes, ...]


@attrs.frozen
class ClientResponse:
    """``kind``: "ok" (with ``result``), "not_leader" (with ``leader_id``) or "dropped" (the
    proposal's index was committed with another entry: definitely not applied)."""

    src: Any
    dst: str
    req_id: int
    kind: str
    result: Any = None
    leader_id: Any = None
    group: int = 0
    """The replication group that answers (``leader_id`` is that group's leader)."""


QUEUES = ("Q-SIM0A", "Q-SIM0B")


@attrs.define
class SimClient:
    """A client with one operation outstanding at a time, retried until its deadline.

    Operations are ``(kind, queue, arg)``: ``("create", q, None)``, ``("append", q, value)``,
    ``("pappend", q, (value, producer_seq))`` (idempotent producer ``id``), ``("batch", q,
    (values, producer_seq or None))``, ``("read", q, None)`` (ReadNext), ``("rbatch", q, n)``
    (ReadBatch of up to n, moving), and, as the at-least-once consumer :attr:`consumer`,
    ``("peek", q, n)`` then ``("ack", q, sequence_num)``.
    """

    id: str
    to_create: list[str]
    counter: int = 0
    req_id: int = 0
    op: tuple | None = None
    target: Any = None
    deadline: int = 0
    sent_at: int = 0
    next_at: int = 0
    resend_at: int | None = None
    leader_hints: dict[int, Any] = attrs.field(factory=dict)
    """Replication group -> the broker last seen leading it."""
    last_read: dict[str, int] = attrs.field(factory=dict)
    skippable: dict[str, int] = attrs.field(factory=dict)
    read_floor: int = 0
    ok_after_heal: int = 0
    producer_seq: dict[str, int] = attrs.field(factory=dict)
    """The last producer_seq used per queue (the producer id is the client id)."""
    acked_at_least: dict[str, int] = attrs.field(factory=dict)
    """The consumer's position per queue as last answered (positions never move back)."""
    unknown_acks: dict[str, list[int]] = attrs.field(factory=dict)
    """The consumer's Acks of unknown outcome: each may still be applied, at any time."""
    to_ack: tuple[str, int] | None = None
    """The consumer's next operation: acknowledge what it peeked."""
    appender: bool = False
    """Only plain appends, one step apart (``A-<k>``, ``FaultParams.appenders``): with
    others, what a leader groups into a group of plain appends, which a group whose every
    member reads it stores as ``APPEND_RUNS`` (``_wire``)."""

    pipeliner: bool = False
    """Only receives of several plain appends to one queue (``P-<k>``,
    ``FaultParams.pipeliners``), which a leader queues as columns: the op ``("pipe", q,
    values)``, its values not yet answered in :attr:`pipe_left` (k -> value) and those
    refused (not the leader, or dropped: never applied) in :attr:`pipe_refused`, sent again
    once every value of the receive is answered."""
    pipe_left: dict[int, bytes] = attrs.field(factory=dict)
    pipe_refused: list[bytes] = attrs.field(factory=list)

    def ack_bounds(self, q: str) -> tuple[int, int]:
        """[lo, hi]: where the consumer's acknowledged position in ``q`` can be."""
        lo = self.acked_at_least.get(q, 0)
        return lo, max([lo, *self.unknown_acks.get(q, ())])

    def ack_known(self, q: str, position: int) -> None:
        self.acked_at_least[q] = position
        self.unknown_acks[q] = [s for s in self.unknown_acks.get(q, ()) if s > position]

    @property
    def consumer(self) -> str:
        """The client id of this client's at-least-once consumer (its own position)."""
        return f"{self.id}/a"

    @property
    def op_is_idempotent(self) -> bool:
        """An idempotent producer's append: re-issued (same seq) past its deadline."""
        return self.op is not None and (
            self.op[0] == "pappend" or (self.op[0] == "batch" and self.op[2][1] is not None)
        )


class ClientsMixin:
    """The clients' steps, on the simulation's state (see :class:`Simulation`)."""

    def _clients_step(self) -> None:
        now = self.now
        for c in self.clients:
            if c.op is not None:
                # (most steps nothing is due: no switch of group then, no call)
                resend = c.resend_at
                if now >= c.deadline or (resend is not None and now >= resend):
                    with self.in_group(self._op_group(c)):
                        self._client_waits(c)
            elif now >= c.next_at:
                self._client_next(c)

    def _op_group(self, c: SimClient) -> int:
        """The replication group of ``c``'s operation: its queue's (the workloads' own
        queues are group 0's)."""
        if c.id in self.workers:
            return 0
        return self.group_of_queue(c.op[1])

    def _client_waits(self, c: SimClient) -> None:
        """``c``'s operation is outstanding: re-issue it, give up on it or resend it."""
        if self.now >= c.deadline and c.op_is_idempotent:
            # An idempotent producer does not give up on an append of unknown outcome:
            # it re-issues it with the same producer_seq (applied at most once).
            self.stats["client_unknown"] += 1
            self.stats["producer_reissued"] += 1
            c.deadline = self.now + self.p.client_timeout
            c.resend_at = None
            self._send_op(c)
        elif self.now >= c.deadline:
            self.checker.on_unknown(c)
            self.stats["client_unknown"] += 1
            c.op, c.resend_at = None, None
            c.next_at = self.now + self.p.client_think
        elif c.resend_at is not None and self.now >= c.resend_at:
            c.resend_at = None
            self._send_op(c)

    def _client_next(self, c: SimClient) -> None:
        """``c`` has no operation outstanding: maybe draw and send its next one."""
        worker = c.id in self.workers
        if self.now < c.next_at or (self._worker_idle(c) if worker else self.quiescing):
            return
        c.counter += 1
        if worker:
            c.op = self._worker_op(c)
            if c.op is None:
                return
        elif c.to_create:
            c.op = ("create", c.to_create[0], None)
        elif c.to_ack is not None:
            c.op = ("ack", *c.to_ack)
            c.to_ack = None
        else:
            known = [q for group in self.groups for q in group.queues if q in group.checker.created]
            if not known:
                c.next_at = self.now + 10
                return
            q = self.client_rng[c.id].choice(known)
            with self.in_group(self.group_of_queue(q)):
                c.op = self._new_op(c, q)
        c.deadline = self.now + self.p.client_timeout
        c.sent_at = self.now
        with self.in_group(self._op_group(c)):
            self._send_op(c)

    def _new_op(self, c: SimClient, q: str) -> tuple:
        """Draw the next operation on ``q``: appends (plain, idempotent, batches) and reads
        (ReadNext, ReadBatch, at-least-once peek)."""
        rng = self.client_rng[c.id]
        # A JSON string, as every stored value is JSON (the brokers' messages carry it as is).
        value = f'"{c.id}:{c.counter}"'.encode()
        if c.appender:
            self.checker.on_append_sent(value)
            return ("append", q, value)
        if c.pipeliner:
            # A receive of 2 to max_group appends (the runtime's longest held as columns).
            count = rng.randint(2, max(2, min(self.p.max_group, 9)))
            values = tuple(f'"{c.id}:{c.counter}.{k}"'.encode() for k in range(count))
            for v in values:
                self.checker.on_append_sent(v)
            return ("pipe", q, values)
        if rng.random() < 0.55:
            kind = rng.random()
            if kind < 0.4:
                self.checker.on_append_sent(value)
                return ("append", q, value)
            producer = kind < 0.7 or rng.random() < 0.5
            seq = None
            if producer:
                seq = c.producer_seq.get(q, 0) + 1
                c.producer_seq[q] = seq
            if kind < 0.7:
                self.checker.on_append_sent(value, producer=True, queue=q)
                return ("pappend", q, (value, seq))
            values = tuple(f'"{c.id}:{c.counter}.{k}"'.encode() for k in range(rng.randint(2, 3)))
            for v in values:
                self.checker.on_append_sent(v, producer=producer, queue=q)
            return ("batch", q, (values, seq))
        c.read_floor = self.checker.max_acked.get(q, 0)
        kind = rng.random()
        if kind < 0.5:
            return ("read", q, None)
        if kind < 0.75:
            return ("rbatch", q, rng.randint(1, 3))
        return ("peek", q, 2)

    def _send_op(self, c: SimClient) -> None:
        kind, q, data = c.op
        if c.id in self.workers:
            command: Any = self._group_command(c)
        elif kind == "create":
            command = CreateQueue(q)
        elif kind == "pipe":
            datas = data
            if self.p.wire:  # (each APPEND of the receive as the broker reads its frame)
                datas = tuple(through_wire(AppendMessage(q, v)).data for v in data)
            command = Receive(q, datas)
            c.pipe_left = dict(enumerate(data))
            c.pipe_refused = []
        elif kind == "append":
            command = AppendMessage(q, data)
        elif kind == "pappend":
            command = AppendMessage(q, data[0], c.id, data[1])
        elif kind == "batch":
            values, seq = data
            command = AppendBatch(q, values, None if seq is None else c.id, seq)
        elif kind == "rbatch":
            command = ReadBatch(c.id, q, data)
        elif kind == "peek":
            command = ReadBatch(c.consumer, q, data, peek=True)
        elif kind == "ack":
            command = Ack(c.consumer, q, data)
        else:
            command = ReadNext(c.id, q)
        if self.p.wire and c.id not in self.workers and kind != "pipe":
            command = through_wire(command)  # (as the broker reads the client's frame)
        c.req_id += 1
        rng = self.client_rng[c.id]
        group = self.g.index
        hint = c.leader_hints.get(group)
        if hint is None or rng.random() < 0.1:
            c.target = rng.choice(self.ids)
        else:
            c.target = hint
        self.post(ClientRequest(c.id, c.target, c.req_id, command, group), client=True)

    def _client_response(self, r: ClientResponse) -> None:
        c = next(c for c in self.clients if c.id == r.dst)
        if type(r.req_id) is tuple:
            self._pipe_response(c, r)
            return
        if c.op is None or r.req_id != c.req_id:
            return  # a late answer to a request already given up on
        self._trace(f"client {c.id} {r.kind}")
        if r.kind == "not_leader":
            self.stats["client_redirects"] += 1
            c.leader_hints[r.group] = r.leader_id
            c.resend_at = self.now + (1 if r.leader_id is not None else 20)
            return
        if r.kind == "dropped":
            c.leader_hints[r.group] = None
            c.resend_at = self.now + 5
            return
        c.leader_hints[r.group] = r.src
        if self.p.wire and c.id not in self.workers:
            check_answer(r.result)  # (the client reads the frame the broker wrote)
        self.checker.on_result(c, c.op, r.result, r.src)
        self.stats["client_ok"] += 1
        if self.now >= self.heal_step and not self.faults_on:
            c.ok_after_heal += 1
        c.op, c.resend_at = None, None
        c.next_at = self.now + (1 if c.appender else self.p.client_think)

    def _pipe_response(self, c: SimClient, r: ClientResponse) -> None:
        """The answer to one value of a pipeliner's receive: acknowledged (checked as a plain
        append's), or refused (sent again, with the others refused, once every value of the
        receive is answered). A late answer, to a receive given up on, is ignored."""
        req_id, k = r.req_id
        if c.op is None or c.op[0] != "pipe" or req_id != c.req_id or k not in c.pipe_left:
            return
        value = c.pipe_left.pop(k)
        q = c.op[1]
        self._trace(f"client {c.id} {r.kind} {k}")
        stats = self.stats
        if r.kind == "ok":
            c.leader_hints[r.group] = r.src
            if self.p.wire:
                check_answer(r.result)
            self.checker.on_result(c, ("append", q, value), r.result, r.src)
            stats["columns_acked"] += 1
        else:
            stats["columns_refused"] += 1
            c.leader_hints[r.group] = r.leader_id if r.kind == "not_leader" else None
            c.pipe_refused.append(value)
        if c.pipe_left:
            return
        if c.pipe_refused:
            # The refused values (never applied) as the next receive, to the leader hinted.
            c.op = ("pipe", q, tuple(c.pipe_refused))
            c.pipe_refused = []
            c.resend_at = self.now + (1 if c.leader_hints.get(r.group) is not None else 20)
            return
        stats["client_ok"] += 1
        if self.now >= self.heal_step and not self.faults_on:
            c.ok_after_heal += 1
        c.op, c.resend_at = None, None
        c.next_at = self.now + 1
