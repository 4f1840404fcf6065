"""READs applied where nobody waits for their answers (a replica; a leader applying entries
nobody waits for): the position moves from the sequence numbers alone, no value is read
(``_storage/_queue_sql.py``, ``unchecked_read``), and the state is the reference's
(:class:`QueueState`) and the leader's, whatever the stored values' bytes."""

from __future__ import annotations

from typing import Any

import apsw
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_broker._core import QueueState
from trio_broker._core._commands import (
    Ack,
    AppendBatch,
    AppendMessage,
    ApplyRetention,
    CommandGroup,
    CreateQueue,
    GroupApplied,
    MessageRead,
    MessagesRead,
    ReadBatch,
    ReadNext,
    RetentionPolicy,
    Seek,
    SetRetention,
)
from trio_broker._core._raft_messages import Entry
from trio_broker._storage import Store
from trio_broker._storage._integrity import StorageDamaged

QUEUES = ["Q-AAAAA00001", "Q-BBBBB00002"]
CLIENTS = ["C-AAAAA", "C-BBBBB", "C-CCCCC"]

_queues = st.sampled_from(QUEUES)
_clients = st.sampled_from(CLIENTS)
_data = st.binary(min_size=1, max_size=8)
_stamps = st.none() | st.integers(min_value=0, max_value=40)
_reads = st.one_of(
    st.builds(ReadNext, client_id=_clients, queue_id=_queues),
    # Batches without a byte budget (the default), moving or peeking, some past the end.
    st.builds(
        ReadBatch,
        client_id=_clients,
        queue_id=_queues,
        max_messages=st.integers(min_value=1, max_value=7),
        peek=st.booleans(),
    ),
)
_single = st.one_of(
    _reads,
    _reads,
    st.builds(CreateQueue, queue_id=_queues),
    st.builds(lambda q, d, t: AppendMessage(q, d, None, None, t), _queues, _data, _stamps),
    st.builds(
        lambda q, d, t: AppendBatch(q, tuple(d), None, None, t),
        _queues,
        st.lists(_data, min_size=1, max_size=5),
        _stamps,
    ),
    # Retention deleting the head: reads then start at the first retained message.
    st.builds(
        SetRetention,
        queue_id=_queues,
        policy=st.builds(
            RetentionPolicy,
            max_messages=st.none() | st.integers(min_value=0, max_value=4),
            max_age_ms=st.none() | st.integers(min_value=0, max_value=30),
            delete_acknowledged=st.booleans(),
        ),
    ),
    st.builds(ApplyRetention, now_ms=st.integers(min_value=0, max_value=60)),
    st.builds(Ack, client_id=_clients, queue_id=_queues, sequence_num=st.integers(-1, 14)),
    st.builds(
        Seek, client_id=_clients, queue_id=_queues, next_sequence_num=st.none() | st.integers(0, 14)
    ),
)
_commands = _single | st.builds(
    lambda cs: CommandGroup(tuple(cs)), st.lists(_single, min_size=1, max_size=4)
)


def _for_nobody(result: Any) -> Any:
    """What a read applied for nobody answers: the same messages, their bytes left empty."""
    if isinstance(result, GroupApplied):
        return GroupApplied(tuple(_for_nobody(r) for r in result.results))
    if isinstance(result, MessageRead) and result.sequence_num is not None:
        return MessageRead(result.sequence_num, b"")
    if isinstance(result, MessagesRead):
        return MessagesRead(tuple((seq, b"") for seq, _ in result.messages))
    return result


def _damage_every_value(store: Store) -> None:
    """Every stored value's bytes changed, their checksums left as they were: a read that
    looked at one would fail."""
    watching = store._db.authorizer
    store._db.authorizer = None
    store._db.execute("UPDATE queue_data SET data = CAST(X'00' || data AS BLOB)")
    store._db.authorizer = watching


def _watch_value_reads(store: Store) -> list[str]:
    seen: list[str] = []

    def authorizer(op: int, a: str | None, b: str | None, *_: Any) -> int:
        if op == apsw.SQLITE_READ and a == "queue_data" and b == "data":
            seen.append(b)
        return apsw.SQLITE_OK

    store._db.authorizer = authorizer
    return seen


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=st.lists(st.lists(_commands, min_size=1, max_size=8), min_size=1, max_size=10))
def test_a_replica_moves_positions_as_the_reference_without_reading_a_value(new_store_dir, steps):
    """The replica's store holds every value damaged; it applies the same entries as the
    leader's (which reads and checks them) and ends in the reference's state, each READ's
    answer the reference's with empty bytes, no value ever read."""
    model = QueueState()
    leader = Store(new_store_dir("leader"))
    replica = Store(new_store_dir("replica"))
    try:
        replica.hold_damage = replica.unchecked_reads = True
        leader.hold_damage = True  # (damage would fail the leader's transaction whole)
        values_read = _watch_value_reads(replica)
        index = 0
        for step in steps:
            entries = [Entry(1, index + k + 1, c) for k, c in enumerate(step)]
            index += len(step)
            expected = [model.apply(c) for c in step]
            assert leader.save(entries=entries, committed=entries) == expected
            got = replica.save(entries=entries, committed=entries)
            assert got == [_for_nobody(r) for r in expected]
            assert replica.unchecked_met == []
            _damage_every_value(replica)
            assert replica.positions() == leader.positions() == model.positions
            assert replica.queue_lengths() == leader.queue_lengths()
            assert replica.first_retained() == leader.first_retained()
        assert values_read == []
    finally:
        leader.close()
        replica.close()


def test_a_leader_waited_for_still_reads_and_refuses_a_damaged_value(tmp_path):
    """Someone waits for the answer (``unchecked_reads`` off): the value is read and checked,
    a damaged one fails the transaction whole (held for a repair from a peer), or, on a broker
    alone, answers UNAVAILABLE and moves nothing; never its bytes."""
    queue = QUEUES[0]
    store = Store(tmp_path)
    try:
        store.apply([CreateQueue(queue), AppendBatch(queue, (b"one", b"two", b"three"))])
        store._db.execute(
            "UPDATE queue_data SET data = CAST(X'00' || data AS BLOB)"
            " WHERE queue_number = (SELECT queue_number"
            " FROM queues WHERE queue_id = ?) AND sequence_num = 2",
            (queue,),
        )
        values_read = _watch_value_reads(store)
        store.hold_damage, store.unchecked_reads = True, False
        reader = CLIENTS[0]
        entries = [Entry(1, 1, ReadNext(reader, queue)), Entry(1, 2, ReadNext(reader, queue))]
        with pytest.raises(StorageDamaged) as found:
            store.save(entries=entries, committed=entries)
        assert (found.value.queue_id, found.value.seq) == (queue, 2)
        assert values_read and store.positions() == {}
        store.hold_damage = False
        first, second = store.save(entries=entries, committed=entries)
        assert first == MessageRead(1, b"one")
        assert second.code == "UNAVAILABLE" and "seq 2" in second.message
        assert store.positions() == {(CLIENTS[0], queue): 1}
    finally:
        store.close()
