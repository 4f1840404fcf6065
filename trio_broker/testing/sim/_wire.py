"""The wire: consensus messages travel as the bytes the runtime writes, and are read back
as a broker reads them, in every seed that draws ``wire`` (most do).

A broker's message is encoded when it is posted, by the runtime's own functions: a leader's
new entries are encoded once for its log and every REPLICATE, in ``APPEND_RUNS`` form only
while every member it replicates to said it reads that form, as the driver does
(``_runtime/_driver.py``, ``_handle_ready``: :func:`~trio_broker._protocol._entries.payload_bytes`);
each message is then written in its link's form (``_runtime/_peer_mux.py``, ``_Link._encode``:
:func:`~trio_broker._protocol._consensus.encode_message`, with the group's id on a link that
carries several). It is decoded on arrival (``_runtime/_peers.py``:
:func:`~trio_broker._protocol._consensus.message_from_payload`), so each replica's entries
carry the bytes they arrived as, and an applied entry forgets them, as the driver's do (a
later send to a lagging member encodes it again, as a ``COMMAND_GROUP``). There is no second
codec here: only what the simulator's small ints for broker ids need (the wire's broker ids
are strings: ``B-00001`` for broker 1) and a snapshot's state, which the runtime fetches
apart from its DATA_SYNC (the frame carries the runtime's ``snapshot_id`` form; the state
rides beside it, as the file the receiver would fetch).

**Versions.** Each seed draws which brokers run "the version before" ``APPEND_RUNS``
(``old_brokers``), how many of them come back upgraded at a restart (``upgrade_at_restart``:
a rolling upgrade), and how many brokers of this version whose logs never held that form come
back as the version before (``downgrade_at_restart``). A broker of the version before never
encodes runs, never says it reads them, and must never be sent one: a frame that reaches it
with an ``APPEND_RUNS`` entry is a failure, as is any frame that does not decode, or decodes
to another message than the one sent. Which form a link writes follows the runtime's rule: a
link (``(src, dst)``, shared by the groups) writes what its peer reads once connected (the
answer to its PEER_HELLO), keeps it while it is down, and forgets everything when its own
broker restarts. The operator's rolling upgrade (:meth:`WireMixin._rolling_upgrade`) and its
rollback (:meth:`WireMixin._roll_back`) make a leader's entries held in runs meet a peer of
the version before.

**Links are connections** (``Simulation.links``, on with the wire): a message is written
only on a connected link (:meth:`WireMixin._connected`: its receiver up and reconnected
since its start, :data:`RELINK_STEPS`, neither direction cut), as ``_Link.queue`` drops
what it cannot send; one in flight when its link goes down (a cut, a flapping link's down
phase, its receiver restarted, its sender's machine rebooted) is lost
(:meth:`WireMixin._lost`), as a connection that dies loses what it had not delivered. The
receiver checks what it steps came on a live connection (:meth:`WireMixin._check_connection`).
A link that connects tells its sender's core (:meth:`WireMixin._note_links_up`), as the
runtime's does.
"""

from __future__ import annotations

import operator
from typing import Any

import attrs

from ..._core import _raft_messages as rm
from ..._core._raft_messages import Config, ConfigChange, ConfigEntry, Entry
from ..._errors import RemoteProtocolError
from ..._protocol._consensus import CONSENSUS_OPERATIONS, encode_message, message_from_payload
from ..._protocol._entries import payload_bytes
from ._params import SimulationFailure

RUNS_HEAD = b'{"type":"APPEND_RUNS"'
"""How an entry's bytes start in the ``APPEND_RUNS`` form (what the version before refuses)."""


@attrs.frozen
class Frame:
    """A consensus message on the wire: its frame's bytes, on the link from ``src`` to
    ``dst`` (the connection, not the frame, names them: the receiver checks the frame's own),
    and the replication group the sender meant (the frame names it, checked on arrival)."""

    group: int
    src: int
    dst: int
    payload: bytes
    runs: bool
    """The form it was written in: ``APPEND_RUNS`` where an entry is held so."""
    connection: int
    """The start of ``dst`` its link was connected to (frames are written only on a
    connected link: :meth:`WireMixin._connected`)."""
    sent_at: int
    """The step it was written at: a link down since then lost it (:meth:`WireMixin._lost`)."""
    sent: Any = attrs.field(eq=False, repr=False)
    """The message as the sender's core made it."""
    wire: Any = attrs.field(eq=False, repr=False)
    """The same with the wire's broker ids (what was encoded): the decoded one must equal it."""
    attachment: Any = attrs.field(default=None, eq=False, repr=False)
    """A DATA_SYNC's state (the snapshot file the runtime's receiver fetches by its id)."""


def broker_name(i: int) -> str:
    """Broker ``i``'s id on the wire (``B-00001`` for 1: strings, as the runtime's)."""
    return f"B-{i:05d}"


def broker_of(name: Any) -> int:
    if type(name) is not str or not name.startswith("B-") or not name[2:].isdigit():
        raise SimulationFailure(f"a frame names broker {name!r}, which no broker is")
    return int(name[2:])


_NAMES = {i: broker_name(i) for i in range(1, 100)}


def group_name(k: int) -> str | None:
    """The ``group_id`` group ``k``'s frames carry: none for group 0 (the link's home group,
    which its PEER_HELLO names), ``G-0000k`` for the others."""
    return None if k == 0 else f"G-{k:05d}"


def _config(config: Config, f: Any) -> Config:
    voters, learners = frozenset(map(f, config.voters)), frozenset(map(f, config.learners))
    return Config(voters, learners, config.version)


def _entry(e: Entry, f: Any) -> Entry:
    payload = e.payload
    if type(payload) is not ConfigEntry:
        return e
    change = payload.change
    if change is not None:
        change = ConfigChange(change.action, f(change.node_id))
    return Entry(e.term, e.index, ConfigEntry(_config(payload.config, f), change))


def _entries(entries: tuple[Entry, ...], f: Any) -> tuple[Entry, ...]:
    """``entries`` with every broker id ``f(id)`` (a membership entry renamed is a new one,
    uncached; the others are the same objects)."""
    for e in entries:
        if type(e.payload) is ConfigEntry:
            return tuple(_entry(e, f) for e in entries)
    return entries


_FIELDS: dict[type, tuple[tuple[str, ...], Any]] = {
    cls: (names, operator.attrgetter(*names))
    for cls in (*CONSENSUS_OPERATIONS.values(), rm.PromoteToLeader)
    for names in [tuple(a.name for a in attrs.fields(cls))]
}


def _copy(m: Any, changes: dict[str, Any]) -> Any:
    """``attrs.evolve(m, **changes)`` for a message (no converter, no validator: a message's
    fields are set as they are), in a third of its time: the simulator copies every one."""
    cls = type(m)
    new = object.__new__(cls)
    put = object.__setattr__
    names, values = _FIELDS[cls]
    for name, value in zip(names, values(m), strict=True):
        put(new, name, value)
    for name, value in changes.items():
        put(new, name, value)
    return new


def to_wire(m: Any) -> Any:
    """``m`` with the wire's broker ids: the sender, the receiver, and those inside a
    snapshot's configuration, a membership entry or a CLUSTER_UPDATE's view (the
    simulator's brokers are small ints, the runtime's strings)."""
    cls = type(m)
    names = _NAMES
    changes: dict[str, Any] = {"src": names[m.src], "dst": names[m.dst]}
    if cls is rm.Replicate or cls is rm.PromoteToLeader:
        changes["entries"] = _entries(m.entries, broker_name)
    elif cls is rm.DataSync:
        changes["snapshot"] = attrs.evolve(
            m.snapshot, config=_config(m.snapshot.config, broker_name)
        )
    elif cls is rm.ClusterUpdate:
        changes["members"] = tuple(
            rm.MemberView(broker_name(v.node_id), v.role, v.status) for v in m.members
        )
    return _copy(m, changes)


RELINK_STEPS = (5, 60)
"""How long after a broker's start its peers' links to it reconnect (the runtime's backoff
of 0.05-1 s): until then they keep what it said before (its answer to their last PEER_HELLO),
which the leaders of its groups encode new entries by."""


class WireMixin:
    """Encoding on send, decoding on arrival, the brokers' versions and their links' forms,
    on the simulation's state (see :class:`Simulation`)."""

    def _wire_start(self, i: int) -> None:
        """Broker ``i`` starts: its own links know no peer yet, and its peers' links to it
        reconnect a little later. A broker of the version before may come back upgraded; one
        of this version whose logs never held an ``APPEND_RUNS`` entry may come back as the
        version before (docs/operations.md: the version before does not start on a log that
        holds one)."""
        for key in [k for k in self.said if k[0] == i]:
            del self.said[key]
        rng, p = self.version_rng, self.p
        if i in self.upgrading:  # (_rolling_upgrade)
            self.upgrading.discard(i)
            self.reads_runs[i] = True
            self.stats["wire_upgrades"] += 1
        elif i in self.rolling_back:  # (_roll_back: it holds no APPEND_RUNS entry)
            self.rolling_back.discard(i)
            self.reads_runs[i] = False
            self.stats["wire_downgrades"] += 1
        elif self.starts[i]:
            if not self.reads_runs[i]:
                if p.upgrade_at_restart and rng.random() < p.upgrade_at_restart:
                    self.reads_runs[i] = True
                    self.stats["wire_upgrades"] += 1
            elif (
                p.downgrade_at_restart
                and rng.random() < p.downgrade_at_restart
                and i not in self.stored_runs
            ):
                self.reads_runs[i] = False
                self.stats["wire_downgrades"] += 1
        self.starts[i] += 1
        self.relink_at[i] = self.now + rng.randint(*RELINK_STEPS)

    def _connected(self, src: int, dst: int) -> bool:
        """Whether the link from ``src`` to ``dst`` is connected: ``dst`` is up, it
        reconnected since ``dst`` started (:data:`RELINK_STEPS`), and neither direction is
        cut (a TCP connection needs both: its data one way, its acknowledgements the other;
        a link cut one way fails, ``_peer_mux``'s ``_fail_when_unacknowledged``). The
        runtime queues nothing on a link that is not connected (``_Link.queue`` drops it)."""
        return (
            self.nodes.get(dst) is not None
            and self.now >= self.relink_at[dst]
            and not self._is_blocked(src, dst)
            and not self._is_blocked(dst, src)
        )

    def _link_reads_runs(self, src: int, dst: int) -> bool:
        """The form of the link from ``src`` to ``dst``, connected: what ``dst`` reads (its
        answer to this connection's PEER_HELLO), which the link remembers (what the group's
        leaders encode new entries by) while it is down."""
        form = self.said[(src, dst)] = self.reads_runs[dst]
        return form

    def _links_down(self) -> None:
        """Note every link that is down now (cut either way, or flapping down): a frame
        written on it before now is lost (:meth:`_lost`), as a connection that dies loses
        what it had not delivered. (Crashes need no note: a frame names the start of its
        receiver it was written for.)"""
        now, down = self.now, self.down_at
        for a, b in self.blocked:
            down[(a, b)] = down[(b, a)] = now
        flap = self.flap
        if flap is not None:
            a, b, until, period = flap
            if now < until and (now // period) % 2 == 0:
                down[(a, b)] = down[(b, a)] = now

    def _note_links_up(self) -> None:
        """Each link that connected since the last look tells its sender's core, in every
        group, as the runtime's link does when it connects (``_peer_mux``'s
        ``PeerMux.reconnected``: ``RaftNode.peer_reconnected``): what it sends from now on
        may reach a new start of its peer."""
        up = self.links_up
        for src in self.ids:
            live = self.nodes.get(src) is not None
            for dst in self.ids:
                if dst == src:
                    continue
                link = (src, dst)
                if not (live and self._connected(src, dst)):
                    up.discard(link)
                elif link not in up:
                    up.add(link)
                    self.stats["links_established"] += 1
                    for _ in self.each_group():
                        node = self.nodes[src]
                        if node is not None:
                            node.peer_reconnected(dst)

    def _reboot_links(self, i: int) -> None:
        """Broker ``i``'s machine rebooted: what its kernel had not yet delivered of its
        links' frames is gone with it (a process that dies leaves the kernel to finish its
        writes, a machine does not)."""
        for j in self.ids:
            self.down_at[(i, j)] = self.now

    def _lost(self, src: int, dst: int, connection: int, sent_at: int) -> bool:
        """Whether a message written at ``sent_at`` on the link from ``src`` to the start
        ``connection`` of ``dst`` never arrives: that start ended (its connection died with
        the process), or the link was down at some step since (the runtime's link then
        failed, and discarded what it held: ``_Link.run``). A connection that lives delivers
        everything written on it."""
        if connection != self.starts[dst] or self.down_at.get((src, dst), -1) >= sent_at:
            self.stats["link_lost"] += 1
            return True
        return False

    def _stored(self, i: int, rd: Any) -> None:
        """Broker ``i`` persists ``rd``: whether its log may now hold an ``APPEND_RUNS``."""
        if i not in self.stored_runs:
            for e in rd.entries:
                if e.encoded is not None and e.encoded.startswith(RUNS_HEAD):
                    self.stored_runs.add(i)
                    return

    def _encode_entries(self, i: int, rd: Any) -> None:
        """A Ready's new entries encoded once (for the log and every REPLICATE), as the driver
        does: in ``APPEND_RUNS`` form only if this broker's version writes it and every other
        member, and every peer the group sent to, said it reads it."""
        runs = None
        for e in rd.entries:
            if e.encoded is None:
                if runs is None:
                    # (without the wire, no link learns a version: runs once every broker
                    # reads them, which none of the version before does there)
                    runs = (
                        self._group_reads_runs(i) if self.p.wire else all(self.reads_runs.values())
                    )
                payload_bytes(e, runs)
                if (
                    runs
                    and self.p.rollback_at_runs
                    and self.faults_on
                    and e.encoded.startswith(RUNS_HEAD)  # type: ignore[union-attr]
                ):
                    self._roll_back(i)

    def _rolling_upgrade(self) -> None:
        """The operator's rolling upgrade (stream ``operator:upgrade``): every 100-400 steps
        while every broker is up, one broker of the version before restarts, upgraded."""
        if self.now < self.upgrade_at:
            return
        old = [i for i in self.ids if not self.reads_runs[i] and i not in self.rolling_back]
        if not old:
            return
        if any(self.nodes[i] is None for i in self.ids):
            self.upgrade_at = self.now + 10  # (one at a time: wait for the others)
            return
        rng = self.upgrade_rng
        i = rng.choice(old)
        self.upgrading.add(i)
        self._trace(f"upgrade {i}")
        self.crash(i, quick=True, reboot=False)
        self.upgrade_at = self.now + rng.randint(100, 400)
        self.stats["wire_rolling_restarts"] += 1

    def _roll_back(self, leader: int) -> None:
        """A rolling upgrade rolled back (stream ``faults:versions``): the first time ``leader``
        writes entries in runs in its term, with the seed's chance, one of its group's
        followers that holds no such entry yet (the version before may start on its folder:
        docs/operations.md) stops at once, before this Ready's messages leave, and comes
        back within a few steps as the version before; meanwhile the leader is cut off with
        it from every other broker until a little after their link reconnected. The leader
        keeps encoding by what the follower said before (runs), and its entries commit only
        once the follower holds them: so they are still held in runs when the link writes
        them to it, as ``COMMAND_GROUP``s (``_peer_mux``'s ``_Link._encode``: the rewrite
        which seeds 0-399 met once before the rolling upgrades)."""
        node = self.nodes[leader]
        key = (self.g.index, leader, node.term)
        if key in self.rolled_back:
            return
        self.rolled_back.add(key)
        rng = self.rollback_rng
        if rng.random() >= self.p.rollback_at_runs:
            return
        followers = [
            j
            for j in sorted(node.config.members - {leader})
            if self.nodes[j] is not None and self.reads_runs[j] and j not in self.stored_runs
        ]
        if not followers:
            return
        j = rng.choice(followers)
        self.rolling_back.add(j)
        self.crash(j, quick=True, reboot=False)
        side = {leader, j}
        self.blocked = {(a, b) for a in self.ids for b in self.ids if (a in side) != (b in side)}
        self.partition_until = self.restart_at[j] + RELINK_STEPS[1] + rng.randint(10, 60)
        self.upgrade_at = max(self.upgrade_at, self.partition_until + 100)  # (it waits)
        self.stats["partitions"] += 1
        self.stats["wire_rollbacks"] += 1
        self._trace(f"roll back {j}, cut off with leader {leader}")

    def _group_reads_runs(self, i: int) -> bool:
        if not self.reads_runs[i]:
            return False
        peers = (self.nodes[i].config.members | self.g.sent_to.setdefault(i, set())) - {i}
        return all(self.said.get((i, p), False) for p in peers)

    def _check_connection(self, m: Any, connection: int, sent_at: int) -> None:
        """What a broker reads came on its link's live connection: written for this start of
        the receiver, on a link not down since (the receiver's side of :meth:`_lost`: a
        network that delivers what a dead connection held fails here)."""
        down = self.down_at.get((m.src, m.dst), -1)
        if connection != self.starts[m.dst] or down >= sent_at:
            raise SimulationFailure(
                f"{type(m).__name__} {m.src}>{m.dst} written at step {sent_at} for start "
                f"{connection} of {m.dst} (now {self.starts[m.dst]}) delivered, its link down "
                f"at step {down}: a dead connection's frames never arrive"
            )

    def _frame(self, m: Any) -> Frame:
        """``m`` as its link writes it (``_peer_mux``'s ``_Link._encode``)."""
        self.g.sent_to.setdefault(m.src, set()).add(m.dst)
        runs = self._link_reads_runs(m.src, m.dst)
        attachment = None
        wire = to_wire(m)
        if type(m) is rm.DataSync:
            self.snapshot_ids += 1
            attachment = m.data
            wire = _copy(wire, {"data": {"snapshot_id": f"S-{self.snapshot_ids}"}})
        payload = encode_message(wire, group_name(self.g.index), append_runs=runs)
        stats = self.stats
        stats["wire_frames"] += 1
        stats["wire_bytes"] += len(payload)
        if runs:
            if b'"APPEND_RUNS"' in payload:
                stats["wire_runs_frames"] += 1
        elif type(m) is rm.Replicate or type(m) is rm.PromoteToLeader:
            for e in m.entries:  # (held as runs, written again as a COMMAND_GROUP for dst)
                if e.encoded is not None and e.encoded.startswith(RUNS_HEAD):
                    stats["wire_runs_rewritten"] += 1
        return Frame(
            self.g.index,
            m.src,
            m.dst,
            payload,
            runs,
            self.starts[m.dst],
            self.now,
            m,
            wire,
            attachment,
        )

    def _unframe(self, frame: Frame) -> Any:
        """The frame's message as its receiver reads it (``_peers``' ``message_from_payload``),
        checked: it decodes, names its group and link, equals what was sent, and carries no
        ``APPEND_RUNS`` to a broker of the version before. What the receiver steps is the
        decoded message with the simulator's broker ids: the sent one (equal to it, but for
        the ids) with the decoded entries, which carry the bytes they arrived as."""
        where = f"frame {frame.src}>{frame.dst} of {type(frame.sent).__name__}"
        try:
            group_id, wire = message_from_payload(frame.payload)
        except RemoteProtocolError as exc:
            raise SimulationFailure(f"{where} refused by the receiver: {exc}") from None
        if group_id != group_name(frame.group):
            raise SimulationFailure(f"{where} names group {group_id!r}")
        if wire != frame.wire:  # (the sender, the receiver and every field)
            raise SimulationFailure(f"{where} changed on the wire: {frame.wire!r} -> {wire!r}")
        cls = type(wire)
        if cls is rm.Replicate or cls is rm.PromoteToLeader:
            if not self.reads_runs[frame.dst]:
                for e in wire.entries:
                    if e.encoded is not None and e.encoded.startswith(RUNS_HEAD):
                        raise SimulationFailure(
                            f"{where}: entry {e.index} sent as APPEND_RUNS to broker "
                            f"{frame.dst}, of the version before (it reads no runs)"
                        )
            return _copy(frame.sent, {"entries": _entries(wire.entries, broker_of)})
        if cls is rm.DataSync and wire.data != frame.wire.data:  # (not in a DataSync's ==)
            raise SimulationFailure(f"{where} names snapshot {wire.data!r}")
        return frame.sent  # (a DATA_SYNC's state with it: what the receiver fetches)
