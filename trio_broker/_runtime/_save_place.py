"""Where a Ready's transaction runs: on the event loop's own thread, or on the storage thread.

A hand-off to the storage thread and back costs two cross-thread wake-ups, more than a short
transaction, and the loop has little to do meanwhile; a long one, or one whose fsync may be
slow, goes to the thread so that the loop keeps serving reads and heartbeat answers
(docs/performance-history.md, "Cycles per sequential append"). The driver (:mod:`._driver`) asks
these rules for each Ready, in its one order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

from .._core import _commands as cmd
from .._core import _metadata_commands as mc
from .._core import _raft as raft
from .._core import _raft_messages as raft_messages
from .._core import _work_commands as wc
from .._core._append_columns import AppendColumns
from .._core._commands import CommandGroup
from .._core._work_commands import MAX_IN_FLIGHT

SHORT_ENTRIES = 8
SHORT_COMMANDS = 640
"""At most this many entries and commands (written and applied) in a transaction run on the
event loop's thread; a larger one goes to the storage thread. Commands are counted one each:
what a command reads or writes is bounded apart (SHORT_WEIGHT). A replica's save of a new
entry of 512 appends with the apply of the one before takes 2.5-2.7 ms (median; p90 3.2-3.7;
its fsync included; 256: 1.1-1.5; ``benchmarks/short_save.py``), so 640 holds the loop about
3.5 ms on a quiet disk, one slow fsync at worst (SLOW_FSYNC), far below the heartbeat
interval (0.2 s), and keeps the groups of a full pipeline of 512 requests (and a
few more) off the hand-off to the storage thread (docs/performance-history.md, "Per-Ready passes and
the collector")."""
SHORT_WEIGHT = 4096
"""At most this many messages read or written by the commands applied (:func:`apply_weight`)
in a transaction run on the event loop's thread or in a stepping task (:func:`light`): a
READ_BATCH or READ_RECORDS reads and checks up to 1,000 values, 2 to 3 µs each (measured on
a 2-core machine under load 1.7-2.6: one entry of 4 such READs, weight 4,000, applied in 8-9
ms; one of 64, weight 64,000, in 0.19 s), so this bound holds the loop about 10 ms at most,
far below the failure timeout its heartbeat answers guard."""
SENDING_COMMANDS = 8
"""A durable transaction of a Ready that sends messages first (a leader's entries) runs on the
event loop's thread only with at most this many commands: a larger one means load, and the
loop then serves connections while the storage thread waits on the fsync."""
APPLY_AHEAD = 256
"""A replica whose Ready persists new entries and applies committed ones that may read or
write more messages than this (:func:`apply_weight`) acknowledges the new entries before it
applies (``RaftDriver._persist_after_frames``): the leader's commit of the next entries then
waits for the replica's fsync only, not for its apply of the entries before them (batched
READs: 1,000 values read per READ on every broker; docs/performance-history.md, "Batched READs:
where a request's time goes")."""
SLOW_FSYNC = 0.02
"""A durable transaction runs on the event loop's thread only while the last one took less than
this (seconds): a slow or stalled disk never holds the loop (reads, heartbeat answers) more
than once."""


def saving_durably(rd: raft.Ready, saved_term_vote: tuple[int, Any]) -> bool:
    """Whether the Ready's transaction fsyncs (as Store.save decides): new or removed log
    entries, a snapshot, or a term or vote other than ``saved_term_vote`` (the last saved)."""
    hs = rd.hard_state
    return bool(
        rd.entries
        or rd.truncate_from is not None
        or rd.snapshot is not None
        or (hs is not None and (hs.term, hs.voted_for) != saved_term_vote)
    )


def runs_in_place(
    rd: raft.Ready, durable: bool, *, fsync_fast: bool, committed: tuple[Any, ...] | None = None
) -> bool:
    """Whether the Ready's transaction may run on the event loop's thread (when the storage
    thread is idle).

    An apply-only one (no fsync) when it is short. A durable one only when, besides, it
    installs no snapshot and cuts no log, the last fsync was quick (``fsync_fast``: a slow
    disk sends the next one to the thread, so the loop's reads and heartbeat answers wait
    behind at most one), and, if it sends messages before it persists (a leader's entries),
    it holds at most SENDING_COMMANDS commands: under load the leader's loop serves its
    connections while the thread waits on the fsync. The links send what they were handed
    before the loop is held (:func:`let_links_send`). ``committed``: the entries this
    transaction applies, when not the Ready's own (none, in the first of an apply ahead).
    """
    if committed is None:
        committed = rd.committed_entries
    if not durable:
        return light(committed)
    limit = SENDING_COMMANDS if rd.messages else SHORT_COMMANDS
    return (
        rd.snapshot is None
        and rd.truncate_from is None
        and fsync_fast
        and short(rd.entries, limit)
        and light(committed)
    )


def applies_only(rd: raft.Ready, saved_term_vote: tuple[int, Any]) -> bool:
    """Whether the Ready only applies committed entries, few enough to run on the event
    loop's thread: nothing to write to the log, to send or to fsync (what a task that
    stepped an acknowledgement may run itself: ``RaftDriver._apply_here``)."""
    return not (
        rd.entries
        or rd.truncate_from is not None
        or rd.snapshot is not None
        or rd.messages
        or rd.persisted_messages
        or rd.snapshots_to_send
        or not rd.committed_entries
        or saving_durably(rd, saved_term_vote)
        or not light(rd.committed_entries)
    )


async def let_links_send() -> None:
    """Let the peer links' tasks write what the calling task handed them (the leader's
    REPLICATEs, the previous Ready's acknowledgement) before it holds the loop for an fsync.
    Only needed for what the driver could not write itself (a link busy, TLS:
    ``GroupLinks.send_at_once``).

    Trio runs every task that was runnable when a batch began before it starts the next
    batch, in either order: after two yields, each link task woken before the first has run
    one step, and the first step of a link that was waiting for messages writes them to the
    socket (a link still busy with an earlier write may take longer: then a message leaves
    after the fsync, later but never unsafely). Shielded: a Ready is never abandoned halfway.
    """
    await trio.lowlevel.cancel_shielded_checkpoint()
    await trio.lowlevel.cancel_shielded_checkpoint()


def apply_weight(entries: tuple[Any, ...]) -> int:
    """How many messages applying ``entries`` may read or write, at most, in units of a value
    read (2 to 3 µs): each command as its type's rule in ``_WEIGHTS`` says. A READ's
    ``max_messages``, a batch's values; a group READ's own cost (GROUP_READ_WEIGHT) and its
    ``max_messages`` leases at LEASE_WEIGHT each; a group ACK's messages (at most
    MAX_IN_FLIGHT), a NACK's or EXTEND's sequence numbers, at LEASE_CHANGE_WEIGHT each; a
    sweep (EXPIRE_LEASES, FORGET_IDLE_POSITIONS) its bound per apply; a deletion
    (DELETE_QUEUE, DELETE_GROUP, APPLY_RETENTION) more than SHORT_WEIGHT, always the storage
    thread's; one for any other command. Commands count 1 each in :func:`short`.

    A Ready asks it twice of the same tuple (``APPLY_AHEAD``, then :func:`light`): the last
    tuple's weight is kept (with the tuple itself, so its identity cannot be reused) and
    answered again. A tuple of frozen entries cannot change, so its weight cannot either. The
    empty tuple (nothing applied) weighs 0 and is not kept: it would evict the one asked
    again."""
    if not entries:
        return 0
    last = _last_weighed[0]
    if entries is last[0]:
        return last[1]
    weight = 0
    for entry in entries:
        payload = entry.payload
        if isinstance(payload, CommandGroup):
            commands = payload.commands
            if type(commands) is AppendColumns or set(map(type, commands)) <= _ONE_EACH:
                weight += len(commands)
                continue
        else:
            commands = (payload,)
        for command in commands:
            rule = _WEIGHTS.get(type(command))
            weight += _HEAVY if rule is None else rule(command)
    if type(entries) is tuple:
        _last_weighed[0] = (entries, weight)  # (one store: a reader sees both or neither)
    return weight


LEASE_WEIGHT = 6
"""A lease a GROUP_READ hands out, in value reads: 640 GROUP_READs of 1,000 messages each
(640,000 leases) applied in 9-10 s, about 15 µs a lease against 2.5 µs a value read."""
GROUP_READ_WEIGHT = 40
"""A GROUP_READ's own cost, besides its leases, in value reads: about 100 µs of CPU each (its
group's expiry and cursor lookups; 640 GROUP_READs of one message each, 68 ms;
``benchmarks/group_command_cost.py``)."""
LEASE_CHANGE_WEIGHT = 3
"""A lease a GROUP_NACK, GROUP_EXTEND or GROUP_ACK ends or moves, in value reads: 640 EXTENDs
of 1,000 sequence numbers each applied in 4.7 s, about 7 µs a lease."""
_HEAVY = SHORT_WEIGHT + 1
"""The weight of a command whose work is bounded only by a queue's or a group's size (a
deletion, a retention pass) or of a type without a rule: always the storage thread's."""


def _one(command: Any) -> int:
    return 1


def _heavy(command: Any) -> int:
    return _HEAVY


def _acked(command: Any) -> int:
    span = 0
    for first, last in command.ranges:
        span += max(last - first + 1, 0)
    return LEASE_CHANGE_WEIGHT * min(span, MAX_IN_FLIGHT)


_WEIGHTS: dict[type, Callable[[Any], int]] = {
    # queue commands
    cmd.CreateQueue: _one,
    cmd.AppendMessage: _one,
    cmd.AppendBatch: lambda c: len(c.data),
    cmd.ReadNext: _one,
    cmd.ReadBatch: lambda c: c.max_messages,
    cmd.Ack: _one,
    cmd.Seek: _one,
    cmd.SetBrokerAddress: _one,
    cmd.SetRetention: _one,
    cmd.ApplyRetention: _heavy,
    cmd.SetGroups: _one,
    # work-queue commands
    wc.CreateNamedQueue: _one,
    wc.DeleteQueue: _heavy,
    wc.Publish: lambda c: len(c.records),
    wc.ReadRecords: lambda c: c.max_messages,
    wc.JoinGroup: _one,
    wc.DeleteGroup: _heavy,
    wc.GroupRead: lambda c: GROUP_READ_WEIGHT + LEASE_WEIGHT * c.max_messages,
    wc.GroupAck: _acked,
    wc.GroupNack: lambda c: LEASE_CHANGE_WEIGHT * len(c.sequence_nums),
    wc.GroupExtend: lambda c: LEASE_CHANGE_WEIGHT * len(c.sequence_nums),
    wc.ExpireLeases: lambda c: wc.EXPIRIES_PER_APPLY,
    wc.ForgetPosition: _one,
    wc.ForgetIdlePositions: lambda c: wc.FORGETS_PER_APPLY,
    # the log's own entries: a leader's first entry, a membership change
    raft_messages.NoOp: _one,
    raft_messages.ConfigEntry: _one,
    # the metadata group's commands: a few records of the cluster map each
    mc.FoundCluster: _one,
    mc.RegisterBroker: _one,
    mc.SetBrokerAlive: _one,
    mc.SetBrokerDraining: _one,
    mc.UnregisterBroker: _one,
    mc.SetPreferredLeader: _one,
    mc.StartReplicaMove: _one,
    mc.AbandonReplicaMove: _one,
    mc.SetGroupReplicas: _one,
    mc.PlaceQueue: _one,
    mc.DropQueue: _one,
    mc.SetReplicationFactor: _one,
    mc.SetMetadataVoters: _one,
    mc.AddGroups: _one,
    mc.SetQueueCount: _one,
}
"""Each command type's weight (:func:`apply_weight`), by exact type (and the log's entries
that are no command): a type without a rule weighs more than SHORT_WEIGHT
(``tests/test_ready_passes.py`` checks that every command type the core defines has one)."""

_ONE_EACH = frozenset((cmd.AppendMessage, cmd.ReadNext))
"""Commands of weight one that a group usually holds (an APPEND_MESSAGE, a single READ)."""

_last_weighed: list[tuple[Any, int]] = [(None, 0)]
"""The tuple :func:`apply_weight` weighed last, and its weight."""


def short(entries: tuple[Any, ...], limit: int = SHORT_COMMANDS) -> bool:
    """A bound on the work of a transaction run on the event loop's thread: at most
    SHORT_ENTRIES entries and ``limit`` commands."""
    if len(entries) > SHORT_ENTRIES:
        return False
    commands = 0
    for entry in entries:
        payload = entry.payload
        commands += len(payload.commands) if isinstance(payload, CommandGroup) else 1
    return commands <= limit


def light(committed: tuple[Any, ...]) -> bool:
    """A bound on the apply of a transaction run on the event loop's thread or in a stepping
    task: :func:`short`, and at most SHORT_WEIGHT messages read or written."""
    return short(committed) and apply_weight(committed) <= SHORT_WEIGHT


__all__ = [
    "APPLY_AHEAD",
    "SENDING_COMMANDS",
    "SHORT_COMMANDS",
    "SHORT_ENTRIES",
    "SHORT_WEIGHT",
    "SLOW_FSYNC",
    "applies_only",
    "apply_weight",
    "let_links_send",
    "light",
    "runs_in_place",
    "saving_durably",
    "short",
]
