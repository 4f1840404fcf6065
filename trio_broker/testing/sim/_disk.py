"""The simulated disks lie: storage faults, after TigerBeetle's storage fault model and the
protocol-aware recovery of Alagappan et al. (FAST 2018).

A broker's durable state is its :class:`~trio_broker.testing._sim_cluster.MemoryStorage`. At
a crash its disk may also, each from the seed's ``disk-faults`` stream:

- **flip bits** in one stored entry (a latent sector error, a misdirected write): the entry's
  checksum no longer matches, so the broker's recovery read reports the first damaged index
  and the last index the log had, and the core gets the log cut before the damage (the entry
  is *lost from that index*, with every one after it; its first Ready deletes them from the
  disk, with the recovering state that remembers the loss). The bytes stay altered on the disk
  until then, so a broker that applied them would deliver a value no client appended;
- **lose synced writes** at a reboot (power loss; a disk or controller that acknowledged a
  flush it did not do, then lost its volatile cache): the
  log's tail after the crash is shorter than what was synced, and the commit index written
  with it may be gone too. Nothing on the broker's own disk tells; the leader, which saw it
  acknowledge those entries, is the witness;
- **tear the write in progress**: its last WAL frame only half written. The broker writes
  each Ready in one SQLite transaction, and SQLite's recovery drops a commit whose frames
  fail their checksums, whole: the disk keeps what the previous commits left, as after an
  honest power cut. (A prefix of the Ready kept with its last entry damaged is a fault this
  storage cannot produce; modelled, it made a broker recover until an entry it never
  acknowledged, held by no quorum: seed 945 elected no leader.)

- **flip bits in a stored value** (a message of the applied state, the SQLite store's
  ``queue_data``; here a value of the snapshot the broker restarts from): its checksum no
  longer matches. The broker finds it at start (its scrub; the runtime's scrub also runs
  periodically, which the model needs not: values are damaged only at a crash here) or when a
  command reads it, never serves it, and repairs it from a peer that holds it intact
  (``_runtime/_repair.py``): a transaction that reads a damaged value is held (the Ready is
  not completed, as the runtime rolls the transaction back) until the value is repaired,
  unless nobody waits for its answers and its reads need no bytes (then it goes ahead, its
  answer reaching nobody: a READ or a READ_BATCH does not read the value at all, and so does
  not find the damage; a work read goes over it and has it repaired in the background). The value
  keeps its bytes here and
  is marked by its type, :class:`DamagedValue`: the states still compare equal, and any
  DamagedValue in a command's result is a damaged value delivered (:meth:`Disks.check_result`).

The faults are placed as TigerBeetle's VOPR places them (its ``ClusterFaultAtlas``): never
where the cluster could not recover. At most ``f`` brokers (a minority of the voters) are
damaged at a time (from the fault until the broker's log is back where it was); synced
writes are lost only at a machine reboot (a power cut: a process crash leaves them in the
kernel and the disk), and only where ``quorum - 1`` other voters hold an intact copy of
every lost entry (what a commit counting the broker's acknowledgement leaves when only that
broker loses it: a rebooted broker learns what it may have acknowledged from ``voters -
quorum + 1`` others before it votes, one of whom then holds it; a broker that voted at once
would be safe only with a full quorum of other copies, and the core that does,
``trust_log_after_reboot``, elects leaders without committed entries here); an
entry is damaged (the start cuts the log there) only
where another voter holds it and every entry after it intact, to give them back. With that
placement the usual invariants must hold: nothing acknowledged is lost, and no damaged value
is ever delivered.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs

from ..._core._commands import AppendMessage, CommandGroup, ReadBatch, ReadNext
from ..._core._raft import Ready
from ..._core._raft_messages import Entry
from ..._core._work_commands import ExpireLeases, GroupNack, GroupRead, ReadRecords
from ._entries import read_back
from ._params import SimulationFailure, stream

if TYPE_CHECKING:
    from ._run import Simulation

TAIL = 12
"""How far back from a log's end the faults strike: where entries are still being
replicated and committed, the part of the log that elections decide about."""


def derive_disk_faults(draw: Callable[[str], random.Random]) -> dict[str, float]:
    """The disk fault mix of one seed (``FaultParams.derive``'s streams): each fault is off
    on some seeds, frequent on others."""
    return {
        "disk_corruption": draw("disk_corruption").choice([0.0, 0.0, 0.3, 0.6]),
        "disk_lost_writes": draw("disk_lost_writes").choice([0.0, 0.0, 0.3, 0.6]),
        "disk_torn_writes": draw("disk_torn_writes").choice([0.0, 0.5, 1.0]),
    }


VALUE_CORRUPTION = (0.0, 0.0, 0.3, 0.6)
"""Per crash, the chance that one stored value reads back damaged (a mix per seed, drawn from
the seed's ``disk-values`` stream, so the other faults' draws are unchanged)."""


HARD_STATE_LOSS = (0.0, 0.0, 0.3, 0.6)
"""Per crash, the chance that the disk loses the term and the vote (a mix per seed, from the
seed's ``disk-hard-state`` stream, so the other faults' draws are unchanged)."""


SCRUB_STEPS = 400
"""At most this many steps after a start, the scrub has found the damaged values."""

ASK_STEPS = 50
"""A held broker asks the leader for its snapshot at most once per this many steps."""


class DamagedValue(bytes):
    """A stored message whose checksum fails: the broker must never deliver it (its bytes
    are the original's, so that states and histories still compare)."""


def _value_at(app: Any, queue: str, seq: int) -> bytes | None:
    messages = app.messages.get(queue)
    if messages is None:
        return None
    pos = seq - app.deleted.get(queue, 0) - 1
    return messages[pos] if 0 <= pos < len(messages) else None


def _set_value(app: Any, queue: str, seq: int, value: bytes) -> None:
    app.messages[queue][seq - app.deleted.get(queue, 0) - 1] = value


def damaged_in(obj: Any, depth: int = 0) -> bool:
    """Whether ``obj`` (a command's result) carries a :class:`DamagedValue`."""
    if isinstance(obj, DamagedValue):
        return True
    if depth > 6 or isinstance(obj, bytes | str | int | float | bool | type(None)):
        return False
    if isinstance(obj, tuple | list):
        return any(damaged_in(x, depth + 1) for x in obj)
    if isinstance(obj, dict):
        return any(damaged_in(x, depth + 1) for x in obj.values())
    if attrs.has(type(obj)):
        return any(damaged_in(getattr(obj, a.name), depth + 1) for a in attrs.fields(type(obj)))
    return False


def _needs_no_bytes(command: Any) -> bool:
    """A read whose effect is the same whatever the values' bytes (``_queue_sql``'s
    ``unchecked_read``): every command of the entry is one, or reads no value."""
    if isinstance(command, CommandGroup):
        return all(_needs_no_bytes(c) for c in command.commands)
    if isinstance(command, ReadNext):
        return True
    if isinstance(command, ReadBatch | ReadRecords | GroupRead):
        return command.max_bytes >= 1 << 62
    return not isinstance(command, GroupNack | ExpireLeases)


def _reads_values_for_nobody(command: Any) -> bool:
    """Whether a command applied for nobody still reads its values (a work read, which notes
    the damage it goes over): a READ or a READ_BATCH applied for nobody reads none."""
    if isinstance(command, CommandGroup):
        return any(_reads_values_for_nobody(c) for c in command.commands)
    return isinstance(command, ReadRecords | GroupRead)


def _count_damaged(app: Any) -> int:
    return sum(isinstance(v, DamagedValue) for msgs in app.messages.values() for v in msgs)


@attrs.frozen
class DamagedPayload:
    """An entry whose stored bytes fail their checksum, as a broker that ignored the checksum
    would decode it: applying it is delivering a damaged value (:meth:`Disks.check_applied`)."""

    original: str


def _flip(entry: Entry, rng: random.Random) -> Entry:
    payload = entry.payload
    if isinstance(payload, AppendMessage) and payload.data:
        data = bytearray(payload.data)
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        payload = attrs.evolve(payload, data=bytes(data))
    return Entry(entry.term, entry.index, DamagedPayload(repr(payload)))


class Disks:
    """Every broker's disk faults, drawn from the ``disk-faults`` stream of the seed."""

    trust_values = False
    never_repair = False
    """Deliberately broken brokers (tests/sim/test_sim_disks.py): one that applies without
    checking the values' checksums, one that finds the damage and never repairs it."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim
        self.rng = stream(sim.seed, "disk-faults")
        self.repair_to: dict[int, int] = {}
        """Broker -> where its log ended before the fault: damaged until its log is back."""
        self.value_corruption = stream(sim.seed, "disk-values").choice(VALUE_CORRUPTION)
        self.values_rng = stream(sim.seed, "disk-values:flips")
        self.damaged_values: dict[int, set[tuple[str, int]]] = {}
        self.unchecked: dict[int, set[int]] = {}
        """Broker -> entries it may apply over a damaged value (read for nobody)."""
        self.scrub_at: dict[int, int] = {}
        """Broker -> when its start-up scrub has reached its damaged values."""
        """Broker -> (queue, seq) of the values its disk damaged and it has not repaired."""
        self.hard_state_loss = stream(sim.seed, "disk-hard-state").choice(HARD_STATE_LOSS)
        self.hard_state_rng = stream(sim.seed, "disk-hard-state:draws")
        self.asked_at: dict[int, int] = {}
        """Broker -> when it last asked the leader for its snapshot (a value nobody holds)."""
        for key in (
            "hard_states_lost",
            "snapshots_asked",
            "snapshots_stood_in",
            "disk_corruptions",
            "disk_lost_writes",
            "disk_torn_writes",
            "recoveries",
            "value_corruptions",
            "values_repaired",
            "applies_held",
            "applies_unchecked",
        ):
            sim.stats.setdefault(key, 0)

    # -- placement -----------------------------------------------------------------------------

    def _may_damage(self, i: int) -> bool:
        """Whether broker ``i`` may be damaged now: at most ``f`` brokers are at a time (a
        damaged log or damaged values)."""
        f = (self.sim.p.node_count - 1) // 2
        return len(set(self.repair_to) | set(self.damaged_values) | {i}) <= f

    def _intact(self, o: int, e: Entry) -> bool:
        """Whether broker ``o``'s disk holds ``e`` (same index, same term), readable."""
        st = self.sim.storage[o]
        if e.index <= st.snapshot.index:
            # In its snapshot: committed, so there only if ``e`` is the committed entry.
            return self.sim.checker.committed.get(e.index, (None,))[0] == e.term
        pos = e.index - st.snapshot.index - 1
        if pos >= len(st.entries) or st.entries[pos].term != e.term:
            return False
        # A damaged entry at or before it: the next start cuts the log there.
        return not any(isinstance(x.payload, DamagedPayload) for x in st.entries[: pos + 1])

    def _voters_everywhere(self) -> frozenset:
        """The brokers that vote in every configuration a broker uses."""
        configs = [n.config for n in self.sim.nodes.values() if n is not None and n.config.voters]
        return frozenset.intersection(*(c.voters for c in configs)) if configs else frozenset()

    def _held_by_another_voter(self, i: int, entries: list[Entry]) -> bool:
        """Whether every one of ``entries`` has an intact copy on another broker that votes in
        every configuration: a damaged broker knows its loss and votes for nobody short of it,
        so a candidate holding them must be able to lead."""
        voters = self._voters_everywhere() - {i}
        return all(any(self._intact(o, e) for o in voters) for e in entries)

    def _held_by_the_rest_of_a_quorum(self, i: int, entries: list[Entry]) -> bool:
        """Whether every one of ``entries`` keeps ``quorum - 1`` intact copies besides
        ``i``'s (at least one): what a commit that counted ``i``'s acknowledgement leaves when
        ``i`` loses it and nobody else does. Counting only brokers that vote in every
        configuration a broker uses, against the largest quorum among those configurations
        (membership may be changing)."""
        configs = [n.config for n in self.sim.nodes.values() if n is not None and n.config.voters]
        if not configs:
            return False
        voters = frozenset.intersection(*(c.voters for c in configs)) - {i}
        needed = max(1, max(c.quorum() for c in configs) - 1)
        return all(sum(self._intact(o, e) for o in voters) >= needed for e in entries)

    # -- the faults, at a crash ------------------------------------------------------------------

    def on_crash(self, i: int, write: tuple[int, Ready] | None, reboot: bool = True) -> None:
        """Broker ``i`` crashes with ``write`` in progress (or None): what its disk keeps.
        Synced writes are lost only with ``reboot`` (its machine lost power)."""
        p, rng, st = self.sim.p, self.rng, self.sim.storage[i]
        if write is not None and rng.random() < p.disk_torn_writes:
            self._tear(i, write[1])
        if reboot and st.entries and rng.random() < p.disk_lost_writes and self._may_damage(i):
            self._lose_tail(i)
        if st.entries and rng.random() < p.disk_corruption and self._may_damage(i):
            pos = len(st.entries) - 1 - rng.randrange(min(TAIL, len(st.entries)))
            e = st.entries[pos]
            # The start cuts the log before it, with its tail: only where another voter holds
            # them to give back (else the broker recovers until entries only it held, or a
            # removed broker, and votes for no candidate: seed 1757, a leader's last entries).
            if not self._held_by_another_voter(i, st.entries[pos:]):
                return
            if set(self.repair_to) - {i} and not self._held_by_the_rest_of_a_quorum(
                i, st.entries[pos:]
            ):
                # Another broker is still missing entries (perhaps without a trace: a
                # rebooted one relies on quorum - 1 other copies): one loss of the same
                # entries at a time (seed 2337: a damage on one of the two copies a loss at a
                # reboot relied on elected a leader without a committed entry).
                return
            self._damage(i, e.index)
            self.sim.stats["disk_corruptions"] += 1
            self.sim._trace(f"disk {i}: entry {e.index} damaged")
        if self.value_corruption and self.values_rng.random() < self.value_corruption:
            self._damage_a_value(i)
        if self.hard_state_loss and self.hard_state_rng.random() < self._hard_state_odds(i):
            self._lose_hard_state(i)

    def _hard_state_odds(self, i: int) -> float:
        """The seed's chance of a lost term and vote, raised where a lost vote matters most
        (swarm steering, as the ``votes`` mix crashes voters right after their vote): a vote
        given in a term of which its log holds no entry yet, which the log cannot recall."""
        st = self.sim.storage[i]
        hs, last = st.hard_state, st.entries[-1].term if st.entries else st.snapshot.term
        if hs.voted_for not in (None, i) and hs.term > last:
            return max(self.hard_state_loss, 0.9)
        return self.hard_state_loss

    def _lose_hard_state(self, i: int) -> None:
        """Broker ``i``'s term and vote lost (a misdirected or lost write, found by their
        checksum: ``Store.hard_state_loss``): it restarts on the term of its log's last entry,
        its vote gone and marked lost, as ``_runtime/_recovery.make_node`` builds the core.
        One broker's at a time: the others' terms are what it learns its bound from."""
        sim, st = self.sim, self.sim.storage[i]
        if not (st.entries or st.snapshot.index):
            return
        for o in sim.ids:
            node = sim.nodes.get(o)
            if o != i and (
                node.vote_lost if node is not None else sim.storage[o].hard_state.vote_lost
            ):
                return
        term = st.entries[-1].term if st.entries else st.snapshot.term
        st.hard_state = attrs.evolve(st.hard_state, term=term, voted_for=None, vote_lost=True)
        sim.stats["hard_states_lost"] += 1
        sim._trace(f"disk {i}: term and vote lost (restarts in term {term})")

    def _damage_a_value(self, i: int) -> None:
        """One value of broker ``i``'s stored state flipped, where another broker holds it
        intact (its live state or its disk's) and at most ``f`` brokers are damaged."""
        if not self._may_damage(i):
            return
        data = self.sim.storage[i].snapshot_data
        held = [(q, len(m)) for q, m in sorted(data.messages.items()) if m]
        if not held:
            return
        q, n = self.values_rng.choice(held)
        seq = data.deleted.get(q, 0) + 1 + self.values_rng.randrange(n)
        value = _value_at(data, q, seq)
        if value is None or isinstance(value, DamagedValue) or not self._held_elsewhere(i, q, seq):
            return
        _set_value(data, q, seq, DamagedValue(value))
        self.damaged_values.setdefault(i, set()).add((q, seq))
        self.sim.stats["value_corruptions"] += 1
        self.sim._trace(f"disk {i}: value {q}#{seq} damaged")

    def _copies(self, i: int) -> list[tuple[int, Any]]:
        """Where another broker holds values: (broker, its live state, or its disk's)."""
        out = []
        for o in self.sim.ids:
            if o != i:
                app = self.sim.apps.get(o) if self.sim.nodes.get(o) is not None else None
                out.append((o, app if app is not None else self.sim.storage[o].snapshot_data))
        return out

    def _held_elsewhere(self, i: int, q: str, seq: int) -> bool:
        return any(
            (v := _value_at(app, q, seq)) is not None and not isinstance(v, DamagedValue)
            for _, app in self._copies(i)
        )

    def _damage(self, i: int, index: int) -> None:
        st = self.sim.storage[i]
        pos = index - st.snapshot.index - 1
        st.entries[pos] = _flip(st.entries[pos], self.rng)
        self.repair_to[i] = max(self.repair_to.get(i, 0), st.entries[-1].index)

    def _tear(self, i: int, rd: Ready) -> None:
        """The last frame of ``rd``'s transaction torn: SQLite drops the whole commit, so the
        disk keeps nothing of it (the crash already lost the write in progress)."""
        if not rd.entries:
            return
        self.sim.stats["disk_torn_writes"] += 1
        self.sim._trace(f"disk {i}: write torn at {rd.entries[-1].index}, its commit dropped")

    def _lose_tail(self, i: int) -> None:
        st = self.sim.storage[i]
        lost = st.entries[-1 - self.rng.randrange(min(TAIL, len(st.entries))) :]
        if not self._held_by_the_rest_of_a_quorum(i, lost):
            return
        last = st.entries[-1].index
        first = lost[0].index
        del st.entries[len(st.entries) - len(lost) :]
        if self.rng.random() < 0.5:
            # The hard state written with the lost entries is gone too: nothing on this disk
            # shows the loss (otherwise its commit index, beyond the log, does).
            st.hard_state = attrs.evolve(st.hard_state, commit=min(st.hard_state.commit, first - 1))
        self.repair_to[i] = max(self.repair_to.get(i, 0), last)
        self.sim.stats["disk_lost_writes"] += 1
        self.sim._trace(f"disk {i}: synced entries {first}..{last} lost")

    # -- the broker's side -------------------------------------------------------------------

    def recovery_read(self, i: int) -> tuple[list[Entry], tuple[int, int] | None]:
        """What broker ``i``'s start-up read finds: the readable log (cut before the first
        entry whose checksum fails) and, when there is one, ``(first_damaged, last_index)``.
        Each entry is decoded from the bytes its record holds (``_entries.read_back``, as
        the store's ``read_log``). The disk is left as it is: the core deletes the rest in
        its first Ready."""
        entries = self.sim.storage[i].entries
        for pos, e in enumerate(entries):
            if isinstance(e.payload, DamagedPayload):
                self.sim.stats["recoveries"] += 1
                self.sim._trace(f"disk {i}: damaged from {e.index}, log had {entries[-1].index}")
                self.sim.stats["log_read_back"] += pos
                return list(map(read_back, entries[:pos])), (e.index, entries[-1].index)
        self.sim.stats["log_read_back"] += len(entries)
        return list(map(read_back, entries)), None

    def after_write(self, i: int, node: Any) -> None:
        """Broker ``i`` is repaired once its log is back where it was, trusted again."""
        to = self.repair_to.get(i)
        if to is not None and node.log.last_index >= to and not node.recovering:
            del self.repair_to[i]

    def check_applied(self, i: int, e: Entry) -> None:
        if isinstance(e.payload, DamagedPayload):
            raise SimulationFailure(f"node {i} applied damaged entry {e.index}: {e.payload}")

    # -- damaged values: the broker's side (_runtime/_repair.py) ------------------------------

    def check_result(self, i: int, e: Entry, result: Any) -> None:
        """No damaged value is ever delivered (nor copied: a dead-letter move's answer), but
        in the answer of a read applied for nobody (the runtime reads it as empty bytes)."""
        unchecked = self.unchecked.get(i)
        if unchecked and e.index in unchecked:
            unchecked.discard(e.index)
            if not self.sim.ledgers[i].waiting(e.index):
                return
        if damaged_in(result):
            raise SimulationFailure(f"node {i} delivered a damaged value at {e.index}: {result}")

    def on_start(self, i: int) -> None:
        """The start-up scrub reads every value the broker starts from, and finds the damaged
        ones after a while (in the background): meanwhile a command may read one
        (``before_apply``)."""
        if not self.value_corruption:
            return
        app = self.sim.apps[i]
        found = {
            (q, app.deleted.get(q, 0) + 1 + k)
            for q, messages in app.messages.items()
            for k, v in enumerate(messages)
            if isinstance(v, DamagedValue)
        }
        if found:
            self.damaged_values[i] = found
            self.scrub_at[i] = self.sim.now + self.values_rng.randint(0, SCRUB_STEPS)
        else:
            self.damaged_values.pop(i, None)

    def repair(self, i: int, asked: bool = False) -> None:
        """Broker ``i`` replaces each damaged value with the copy of a live broker it can
        reach (both ways) that holds it intact: in its state and on its disk at once. Once
        its scrub found them, or at once when a held transaction ``asked``."""
        places = self.damaged_values.get(i)
        if not places or self.sim.nodes.get(i) is None:
            return
        if not asked and self.sim.now < self.scrub_at.get(i, 0):
            return
        app, disk = self.sim.apps[i], self.sim.storage[i].snapshot_data
        for q, seq in sorted(places):
            if not isinstance(_value_at(app, q, seq), DamagedValue):
                # Deleted meanwhile (retention), or replaced: the state no longer holds it (an
                # older snapshot on the disk may, until the next compaction; a restart's scrub
                # finds it there again).
                places.discard((q, seq))
                continue
            if self.never_repair:
                continue
            for o in self.sim.live():
                if o == i or self.sim._is_blocked(i, o) or self.sim._is_blocked(o, i):
                    continue
                good = _value_at(self.sim.apps[o], q, seq)
                if good is None or isinstance(good, DamagedValue):
                    continue
                for x in (app, disk):
                    if isinstance(_value_at(x, q, seq), DamagedValue):
                        _set_value(x, q, seq, bytes(good))
                places.discard((q, seq))
                self.sim.stats["values_repaired"] += 1
                self.sim._trace(f"disk {i}: value {q}#{seq} repaired from {o}")
                break
        if not places:
            del self.damaged_values[i]

    def before_apply(self, i: int, rd: Ready) -> bool:
        """Whether broker ``i`` may complete ``rd`` now (``_runtime/_repair.py``'s rules).

        A command that would read (or copy) a damaged value holds the transaction (the Ready is
        not completed, as the runtime rolls it back) and asks a peer, and it is tried again.
        When nobody waits for the results and every such command is a read whose effect needs
        no bytes (a ReadNext, a batch without a byte budget), it goes ahead over the damage
        (its answer reaches nobody; :meth:`check_result` knows). A round that repaired nothing
        answers the requests waiting on these entries "outcome unknown" (no answer here)."""
        if not self.damaged_values.get(i) or self.trust_values:
            return True
        if not rd.committed_entries or rd.snapshot is not None:
            return True
        from ._nodes import apply_entry  # (it imports this module's users)

        trial = copy.deepcopy(self.sim.apps[i])
        before = _count_damaged(trial)
        met = [e for e in rd.committed_entries if damaged_in(apply_entry(trial, e))]
        copied = _count_damaged(trial) > before
        if not met and not copied:
            return True
        ledger = self.sim.ledgers[i]
        waiting = any(ledger.waiting(e.index) for e in rd.committed_entries)
        if not copied and not waiting and all(_needs_no_bytes(e.payload) for e in met):
            # For nobody: a READ or a READ_BATCH reads no value (the damage stays until the
            # scrub finds it); a work read goes over it and notes it, repaired in the
            # background (here at once).
            self.unchecked.setdefault(i, set()).update(e.index for e in met)
            self.sim.stats["applies_unchecked"] += 1
            if any(_reads_values_for_nobody(e.payload) for e in met):
                self.repair(i, asked=True)
            return True
        self.repair(i, asked=True)  # (the held transaction asks its peers)
        if self.damaged_values.get(i):
            if waiting:
                ledger.take_through(rd.committed_entries[-1].index)
            if self._nobody_holds(i):
                self._without_a_copy(i)  # (held, and no copy left: the leader's snapshot)
        self.sim.stats["applies_held"] += 1
        return False

    def _nobody_holds(self, i: int) -> bool:
        """Whether the live brokers ``i`` reaches (at least one) hold none of its damaged
        values: deleted since (FETCH_VALUES answered without them)."""
        sim = self.sim
        reached = [
            o
            for o in sim.live()
            if o != i and not sim._is_blocked(i, o) and not sim._is_blocked(o, i)
        ]
        places = self.damaged_values.get(i, ())
        return bool(reached) and not any(
            (v := _value_at(sim.apps[o], q, seq)) is not None and not isinstance(v, DamagedValue)
            for o in reached
            for q, seq in places
        )

    def _without_a_copy(self, i: int) -> None:
        """``_runtime/_repair.py``'s way out when no member holds the value any more: a
        follower asks the leader for its snapshot (the leader offers it at once, with its live
        state), which the core installs although its commit index is past it
        (``RaftNode.want_snapshot``); ``_nodes`` then completes the held Ready without applying
        it (``RaftNode.snapshot_stands_in``). (A leader here sends nothing while its Ready is
        held, so the others elect another, as the runtime's leader hands its leadership over.)"""
        sim, node = self.sim, self.sim.nodes[i]
        if node.is_leader or sim.now - self.asked_at.get(i, -ASK_STEPS) < ASK_STEPS:
            return
        leader = node.leader_id
        lead = sim.nodes.get(leader) if leader is not None else None
        if (
            lead is None
            or not lead.is_leader
            or sim._is_blocked(i, leader)
            or sim._is_blocked(leader, i)
            or self.damaged_values.get(leader)
        ):
            return
        self.asked_at[i] = sim.now
        node.want_snapshot()
        sim.post(lead.make_data_sync(i, sim.app_index[leader], copy.deepcopy(sim.apps[leader])))
        sim.stats["snapshots_asked"] += 1
        sim._trace(f"disk {i}: no copy of its damaged values left, asks {leader}'s snapshot")

    def values_intact(self, members: frozenset[int] | None = None) -> bool:
        """Liveness: every live broker of ``members`` (default: every live broker) repaired
        its damaged values. A broker the group removed is left out: nobody replicates to it,
        so a value deleted everywhere else meanwhile (retention) has no copy to repair it
        from, and it serves nothing; added again, it catches up first (seed 1110)."""
        for i in list(self.damaged_values):
            self.repair(i)
        return not any(
            i in self.damaged_values for i in self.sim.live() if members is None or i in members
        )
