"""Repairing damaged stored values from the other brokers (docs/reliability.md, "Repairing
damaged values").

A stored message is the same row on every broker that holds it: applying is deterministic and a
row never changes once written, until retention deletes it on every broker at the same log
position. So a broker whose copy fails its checksum (or lost its row) needs no snapshot and no
new rule of the consensus core to repair it: any other broker's intact copy is the value, and
the row's own checksum proves it.

Found when applied. A command that reads a damaged value (a READ, a group read, a move to a
dead-letter queue) must give the same result here as on the brokers whose copy is intact, or
this broker's state (a read position, say) would differ from theirs. So while its group has
other members, the store lets the damage fail the whole transaction (``Store.hold_damage``:
nothing of it is kept, as after a failed write on a full disk), and this room, instead of the
driver crashing on it: logs one ``storage.damaged`` ERROR line per damaged row (file, table,
queue, sequence number), fetches the rows from the other members one after the other
(FETCH_VALUES, each row checked against its checksum on both sides), writes the good copies,
and runs the same transaction again. The damaged bytes are never served: the read is answered
with the repaired value, or, if this broker stops leading meanwhile, as any request whose
leader changed. A leader that cannot repair at once hands its leadership to the most caught-up
voter, so the group goes on serving while it waits for a copy (asked again after each failed
round; rounds are spaced from 0.2 s doubling to 5 s).

Found by the scrub. After each start, the scrub reads every stored value once (a few hundred
rows per storage job, between the driver's transactions) and repairs what it finds the same
way, so damage that no read meets is repaired too. Then it goes on for the broker's lifetime
at a low rate: a pass over every value spread over ``BrokerConfig.scrub_period`` (a few
hundred rows and at most 1 MiB per job, at most 20 jobs a second), repairing in the
background what it finds. A running broker needs it: a READ that nobody waits for (every READ
a replica applies) moves the position from the sequence numbers alone and reads no value
(``_storage/_queue_sql.py``), so it no longer finds the damage it passes.

Found where no member holds the value any more. A broker that was behind may need a value
that every other member has deleted since (retention deletes a message at the same log
position everywhere, and they are past it): a byte-bounded read or a dead-letter move cannot be
applied without its bytes. Once members answered without the value, the broker asks the
leader for its snapshot (FETCH_VALUES with ``snapshot_for``; ``RaftNode.want_snapshot``): the
leader's applied state holds that transaction's effect, so once the snapshot is fetched and
covers the held transaction's entries, the transaction is completed without applying them
(its log writes kept) and the next one installs the snapshot, which replaces the whole state,
damaged value included (docs/reliability.md, "A value nobody holds any more").

A broker alone in its group has no copy to repair from and nobody whose state it could differ
from: the read that meets the damage answers ``UNAVAILABLE``, the reader's position stays
(``_storage/_integrity.py``).
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import attrs
import orjson
import trio

from .._core import _raft as raft
from .._errors import BrokerError, ErrorCode
from .._protocol import FetchValues, StoredValues
from .._storage import DB_FILE, StorageWorker, Store
from .._storage._integrity import StorageDamaged, StoredRow
from ._dial import UNREACHABLE, Dialed, dial
from ._log import log_event
from ._network import Network

T = TypeVar("T")

FETCH_DEADLINE = 5.0
"""Connecting to a peer, proving the secret, and each FETCH_VALUES answer."""
FETCH_ROWS = 256
FETCH_BYTES = 1 << 20
"""One FETCH_VALUES answer holds at most this many rows and bytes of values (at least one
row, whatever its size)."""
MAX_FRAME = 64 << 20
"""The largest answer a repair accepts (a single value may be as large as a frame allows)."""
RETRY_FIRST = 0.2
RETRY_MAX = 5.0
SCRUB_ROWS = 500
"""Values the start-up scrub checks per storage job."""
SCRUB_PERIOD = 6 * 3600.0
"""The default period of the periodic scrub (``BrokerConfig.scrub_period``)."""
PERIODIC_ROWS = 200
PERIODIC_BYTES = 1 << 20
"""A periodic scrub job checks at most this many values and bytes of values (one at least)."""
SCRUB_BYTES = PERIODIC_BYTES * SCRUB_ROWS // PERIODIC_ROWS
"""The start-up scrub's jobs check at most this many bytes of values (one value at least):
its two bounds are the periodic job's times one factor, so that its count of jobs times that
factor is the first periodic pass's, which it paces (about that count with values of one
size, within a factor of two whatever their sizes: docs/reliability.md)."""
PERIODIC_MIN_PAUSE = 0.05
"""At least this long between two periodic scrub jobs: at most 20 jobs, 4,000 values a
second, whatever the store's size (a large store's pass then takes longer than the period)."""
SCRUB_ATTEMPTS = 8
"""Rounds the scrub tries for a damaged value no peer could give yet (then a read of it, or
the next start, tries again)."""
ASK_INTERVAL = 5.0
"""A held transaction asks the leader for its snapshot at most once per this many seconds."""


class StoodIn:
    """What :meth:`Repair.saving` returns when the leader's snapshot stands in for the held
    transaction's committed entries: they were not applied (the next Ready installs it)."""


STOOD_IN = StoodIn()


class RepairHost(Protocol):
    """What the repair room reads of the driver that owns it."""

    broker_id: str
    cluster_id: str
    node: raft.RaftNode
    network: Network
    secret: bytes | None

    def address_of(self, broker_id: str) -> tuple[str, int] | None: ...

    def start_soon(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None: ...


@attrs.define
class RepairStatistics:
    damaged: int = 0
    """Damaged stored values found (each row counted once until it is repaired)."""
    repaired: int = 0
    """Damaged or missing rows replaced by a peer's intact copy."""
    waiting: int = 0
    """Damaged rows found and not repaired yet."""


class Repair:
    """The driver's room for damaged stored values: the hold-and-repair of a transaction that
    met one, and the start-up scrub."""

    def __init__(self, host: RepairHost, store: Store, worker: StorageWorker) -> None:
        config = getattr(host, "config", None)
        self.scrub_period: float | None = getattr(config, "scrub_period", SCRUB_PERIOD)
        """Seconds a periodic scrub pass is spread over (None: the start-up pass only)."""
        self._host = host
        self._store = store
        self._worker = worker
        self._waiting: set[tuple[str, int]] = set()
        self._reported: set[tuple[str, int]] = set()
        self._in_background: set[tuple[str, int]] = set()
        """Values a background repair is already after (one task per value at a time)."""
        self.stats = RepairStatistics()
        self.nobody_holds = False
        """Whether, in the last :meth:`repair`, members answered and none held the value."""
        self._asked_at = -ASK_INTERVAL

    def statistics(self) -> RepairStatistics:
        return attrs.evolve(self.stats, waiting=len(self._waiting))

    def _has_others(self) -> bool:
        """Whether the group has another member (cheap: asked before every transaction)."""
        config = self._host.node.config
        me = self._host.broker_id
        return len(config.voters) + len(config.learners) > (
            me in config.voters or me in config.learners
        )

    def _others(self) -> list[str]:
        config = self._host.node.config
        return sorted((config.voters | config.learners) - {self._host.broker_id})

    # -- a transaction that met damage ------------------------------------------------------

    async def saving(
        self,
        attempt: Callable[[], Awaitable[T]],
        on_hold: Callable[[], None] | None = None,
        *,
        unwaited: Callable[[], bool] = lambda: False,
        without_apply: Callable[[], Awaitable[Any]] | None = None,
        through: int = 0,
    ) -> T | StoodIn:
        """``await attempt()`` (one transaction, run again as it was while it fails): a
        damaged value it reads fails it whole while the group has other members, and is
        repaired from them before the next attempt. ``on_hold`` is called after each round
        that repaired nothing (the driver hands its leadership over and answers the requests
        waiting on the transaction). While ``unwaited()`` (nobody waits for its results), a
        read whose effect does not depend on the values' bytes goes ahead over the damage (its
        answer reaches nobody), and the value is repaired in the background.

        With ``without_apply`` (the same transaction without its committed entries, whose
        last index is ``through``): while the members that answer hold the value no more,
        the leader is asked for its snapshot; once one waits to be installed that covers
        ``through``, ``without_apply()`` runs instead and :data:`STOOD_IN` is returned.
        Either way the wish ends with the transaction (``RaftNode.drop_snapshot_wish``): left
        set, it would install a later snapshot that nothing asked for. Cancellable."""
        try:
            return await self._saving(attempt, on_hold, unwaited, without_apply, through)
        finally:
            if without_apply is not None:
                self._host.node.drop_snapshot_wish()

    async def _saving(
        self,
        attempt: Callable[[], Awaitable[T]],
        on_hold: Callable[[], None] | None,
        unwaited: Callable[[], bool],
        without_apply: Callable[[], Awaitable[Any]] | None,
        through: int,
    ) -> T | StoodIn:
        delay = RETRY_FIRST
        store = self._store
        place: tuple[str, int] | None = None
        while True:
            if (
                place is not None
                and without_apply is not None
                and self._host.node.snapshot_stands_in(through)
            ):
                await without_apply()
                # The install replaces every stored value: this one too.
                self._waiting.discard(place)
                log_event(
                    logging.WARNING,
                    "storage.snapshot_stands_in",
                    queue=place[0],
                    seq=place[1],
                    through=through,
                    detail="no member holds the value any more: the leader's snapshot, "
                    "installed next, holds the effect of the entries that read it",
                )
                return STOOD_IN
            store.hold_damage = hold = self._has_others()
            store.unchecked_reads = unchecked = hold and unwaited()
            try:
                result = await attempt()
            except StorageDamaged as exc:
                if exc.queue_id is None or not self._store.hold_damage:
                    raise
                place = (exc.queue_id, exc.seq if exc.seq is not None else 1)
                self._report(exc, place)
                if await self.repair(*place):
                    delay = RETRY_FIRST
                    continue
                if on_hold is not None:
                    on_hold()
                if without_apply is not None and self.nobody_holds:
                    await self._ask_snapshot(place)
                await trio.sleep(delay)
                delay = min(2 * delay, RETRY_MAX)
                continue
            if unchecked and not unwaited():
                # Reads applied for nobody hold empty bytes for the values they did not read:
                # their results must reach nobody. No request can start waiting on these
                # entries meanwhile (a proposal waits on an index past the log's end), but if
                # one did, it is answered "outcome unknown" (on_hold), never with them.
                log_event(
                    logging.ERROR,
                    "storage.unchecked_waited",
                    through=through,
                    detail="a request waits on entries applied for nobody: answered as unknown",
                )
                if on_hold is not None:
                    on_hold()
            self.take_unchecked_met()
            return result

    def take_unchecked_met(self) -> None:
        """Note the damaged values the last transaction's reads applied for nobody went past
        (``Store.unchecked_met``) and repair them in the background: after every transaction
        run with ``unchecked_reads`` (here, and a replica's in-step persist: ``_in_step``)."""
        store = self._store
        met = getattr(store, "unchecked_met", None)
        if met:
            store.unchecked_met = []
            for place in met:
                self._note(
                    place,
                    str(store.data_dir / DB_FILE),
                    "the value does not match its checksum, or its row is missing (a read "
                    "applied for nobody)",
                    "repairing from a peer in the background: never served",
                )
            fresh = sorted(set(met) - self._in_background)
            if fresh:
                self._in_background.update(fresh)
                self._host.start_soon(self._repair_later, fresh)

    def _report(self, exc: StorageDamaged, place: tuple[str, int]) -> None:
        self._note(place, exc.file, exc.found, "held until repaired from a peer: never served")

    def _note(self, place: tuple[str, int], file: str, found: str, action: str) -> None:
        """One ``storage.damaged`` ERROR line per damaged value and broker run."""
        if place in self._reported:
            return
        self._reported.add(place)
        self._waiting.add(place)
        self.stats.damaged += 1
        log_event(
            logging.ERROR,
            "storage.damaged",
            file=file,
            table="queue_data",
            queue=place[0],
            seq=place[1],
            found=found,
            action=action,
        )

    async def _repair_later(self, places: list[tuple[str, int]]) -> None:
        """Repair values a read went past: from a peer, or never needed again once this
        broker deleted them too (retention deletes a message at the same log position
        everywhere); the rounds spaced as a held transaction's."""
        try:
            await self._repair_rounds(places)
        finally:
            self._in_background.difference_update(places)

    async def _repair_rounds(self, places: list[tuple[str, int]]) -> None:
        delay = RETRY_FIRST
        for _ in range(SCRUB_ATTEMPTS):
            left = []
            for place in places:
                if place not in self._waiting:
                    continue
                if await self.repair(*place):
                    continue
                if await self._worker.run(self._store.needs_repair, *place):
                    left.append(place)
                else:  # (deleted here too meanwhile: never to be read again)
                    self._waiting.discard(place)
            places = left
            if not places:
                return
            await trio.sleep(delay)
            delay = min(2 * delay, RETRY_MAX)

    # -- fetching good copies ---------------------------------------------------------------

    async def repair(self, queue_id: str, seq: int) -> bool:
        """Ask the other members, one after the other, for the intact rows from ``seq`` on and
        write those this broker holds damaged or not at all; True once ``seq`` is repaired
        (:attr:`nobody_holds` says whether members answered without it)."""
        self.nobody_holds = False
        answered = False
        for peer in self._others():
            rows = await self._fetch(peer, queue_id, seq)
            answered = answered or rows is not None
            if not rows:
                continue
            repaired = await self._worker.run(self._store.repair_rows, queue_id, rows)
            if repaired:
                self.stats.repaired += len(repaired)
                for n in repaired:
                    self._waiting.discard((queue_id, n))
                    self._reported.discard((queue_id, n))  # (damaged again: found again)
                log_event(
                    logging.WARNING,
                    "storage.repaired",
                    queue=queue_id,
                    seqs=_ranges(repaired),
                    peer=peer,
                )
            if seq in repaired:
                return True
        self.nobody_holds = answered
        return False

    async def _ask_snapshot(self, place: tuple[str, int]) -> None:
        """Ask the leader for its snapshot (at most once per ``ASK_INTERVAL``); the core
        installs the next one past what is applied (``RaftNode.want_snapshot``). Not while
        this broker leads (its held transaction hands the leadership over first)."""
        host = self._host
        leader = host.node.leader_id
        now = trio.current_time()
        if leader is None or leader == host.broker_id or now - self._asked_at < ASK_INTERVAL:
            return
        self._asked_at = now
        host.node.want_snapshot()
        log_event(
            logging.WARNING,
            "storage.snapshot_asked",
            queue=place[0],
            seq=place[1],
            leader=leader,
            reason="no member that answered holds the value any more",
        )
        await self._fetch(leader, *place, snapshot=True)

    async def _fetch(
        self, peer: str, queue_id: str, seq: int, *, snapshot: bool = False
    ) -> list[StoredRow] | None:
        """The rows ``peer`` gives (None when it gave no answer); with ``snapshot``, the
        leader is asked for its snapshot instead."""
        host = self._host
        address = host.address_of(peer)
        if address is None:
            return None
        request = FetchValues(
            queue_id,
            seq,
            cluster_id=host.cluster_id,
            snapshot_for=host.broker_id if snapshot else None,
        )
        try:
            async with dial(
                host.network,
                address,
                secret=host.secret,
                deadline=FETCH_DEADLINE,
                max_frame=MAX_FRAME,
            ) as dialed:
                if not isinstance(dialed, Dialed):
                    answer: Any = dialed
                else:
                    with trio.fail_after(FETCH_DEADLINE):
                        answer = await dialed.ask(request, StoredValues)
        except UNREACHABLE as exc:
            log_event(logging.INFO, "storage.repair_unreachable", peer=peer, error=repr(exc))
            return None
        if isinstance(answer, BrokerError):
            log_event(logging.INFO, "storage.repair_refused", peer=peer, error=answer.message)
            return None
        rows = decode_rows(answer.rows)
        if rows is None:
            log_event(logging.WARNING, "storage.repair_bad_answer", peer=peer)
            return None
        return rows

    # -- the scrub ---------------------------------------------------------------------------

    async def scrub(self) -> None:
        """Check every stored value once, and repair the damaged ones from the other members;
        then check them again, pass after pass, each spread over :attr:`scrub_period` (run
        for the broker's lifetime, in the driver's nursery; cancellable at every wait)."""
        scan = getattr(self._store, "damaged_values", None)
        if scan is None:
            return  # (a test's store that keeps no values)
        jobs = await self._scrub_at_start(scan)
        if self.scrub_period is None:
            return
        # The first periodic pass's jobs, from the start-up pass's (SCRUB_ROWS and SCRUB_BYTES
        # each: the periodic job's bounds, both times the same factor).
        jobs = -(-jobs * SCRUB_ROWS // PERIODIC_ROWS)
        while True:
            jobs = await self._scrub_pass(scan, self.scrub_period, jobs)

    async def _scrub_pass(self, scan: Callable[..., Any], period: float, jobs: int) -> int:
        """One periodic pass: a job every ``period / jobs`` seconds (``jobs``: the previous
        pass's count), each of a few hundred values, never less than
        :data:`PERIODIC_MIN_PAUSE` apart (however short the period); returns this pass's count
        of jobs."""
        pause = max(period / max(jobs, 1), PERIODIC_MIN_PAUSE)
        after: tuple[str, int] | None = ("", 0)
        count = found = 0
        while after is not None:
            await trio.sleep(pause)
            damaged, after = await self._worker.run(scan, after, PERIODIC_ROWS, PERIODIC_BYTES)
            count += 1
            for place in damaged:
                if place in self._reported:
                    continue  # (a held transaction or a background repair is after it)
                found += 1
                self._note(
                    place,
                    str(self._store.data_dir / DB_FILE),
                    "the value does not match its checksum, or its row is missing (periodic scrub)",
                    "repairing from a peer in the background: never served",
                )
            fresh = [p for p in damaged if p in self._waiting and p not in self._in_background]
            if fresh and self._others():
                self._in_background.update(fresh)
                self._host.start_soon(self._repair_later, fresh)
        log_event(logging.INFO, "storage.scrubbed", scrub="periodic", damaged=found, jobs=count)
        return count

    async def _scrub_at_start(self, scan: Callable[..., Any]) -> int:
        """The start-up pass, as fast as the storage thread takes it, then its repairs;
        returns its count of jobs."""
        after: tuple[str, int] | None = ("", 0)
        found: list[tuple[str, int]] = []
        jobs = 0
        while after is not None:
            damaged, after = await self._worker.run(scan, after, SCRUB_ROWS, SCRUB_BYTES)
            jobs += 1
            for place in damaged:
                self._note(
                    place,
                    str(self._store.data_dir / DB_FILE),
                    "the value does not match its checksum, or its row is missing (start-up scrub)",
                    "repaired from a peer: never served",
                )
                found.append(place)
            await trio.lowlevel.checkpoint()
        log_event(logging.INFO, "storage.scrubbed", scrub="start", damaged=len(found))
        delay = RETRY_FIRST
        for _ in range(SCRUB_ATTEMPTS):
            if not found or not self._others():
                return jobs
            left = []
            for place in found:
                if place in self._waiting and not await self.repair(*place):
                    left.append(place)
            found = left
            if found:
                await trio.sleep(delay)
                delay = min(2 * delay, RETRY_MAX)
        if found:
            log_event(
                logging.WARNING,
                "storage.repair_pending",
                values=len(found),
                first=f"{found[0][0]} seq {found[0][1]}",
                reason="no peer gave an intact copy yet: a read that meets it, or the next "
                "pass of the periodic scrub, tries again",
            )
        return jobs


# -- the serving side -----------------------------------------------------------------------


async def serve_fetch_values(
    store: Store, worker: StorageWorker, request: FetchValues
) -> StoredValues | BrokerError:
    """The rows this broker holds intact, for a peer repairing its copy (FETCH_VALUES)."""
    if isinstance(request.first, bool) or not 1 <= request.first <= MAX_INT64:
        return BrokerError(
            ErrorCode.BAD_REQUEST, "first must be a sequence number (1 to 2**63 - 1)"
        )
    rows = await worker.run(
        store.intact_rows, request.queue_name, request.first, FETCH_ROWS, FETCH_BYTES
    )
    return StoredValues(request.queue_name, encode_rows(rows))


def encode_rows(rows: list[StoredRow]) -> str:
    return orjson.dumps(
        [[seq, base64.b64encode(data).decode(), h, stamp, crc] for seq, data, h, stamp, crc in rows]
    ).decode()


def decode_rows(text: str) -> list[StoredRow] | None:
    """The rows of a FETCH_VALUES answer (None if they are not well formed; each row's
    checksum is checked when it is written)."""
    try:
        raw = orjson.loads(text)
        if not isinstance(raw, list):
            return None
        rows = []
        for seq, data, headers, stamp, checksum in raw:
            if not (
                _is_int64(seq)
                and isinstance(data, str)
                and (headers is None or isinstance(headers, str))
                and (stamp is None or _is_int64(stamp))
                and _is_int64(checksum)
            ):
                return None
            rows.append((seq, base64.b64decode(data, validate=True), headers, stamp, checksum))
    except (ValueError, TypeError):
        return None
    return rows


MAX_INT64 = 2**63 - 1
"""The largest integer SQLite stores (what a row's numbers must fit)."""


def _is_int64(value: object) -> bool:
    return type(value) is int and -MAX_INT64 - 1 <= value <= MAX_INT64


def _ranges(seqs: list[int]) -> str:
    return f"{seqs[0]}" if len(seqs) == 1 else f"{seqs[0]}..{seqs[-1]} ({len(seqs)})"


__all__ = [
    "STOOD_IN",
    "Repair",
    "RepairStatistics",
    "StoodIn",
    "decode_rows",
    "encode_rows",
    "serve_fetch_values",
]
