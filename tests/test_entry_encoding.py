"""One entry, one encoding: the bytes the leader stores are the bytes every replica receives and
stores, and neither side encodes a payload more than once for them."""

from __future__ import annotations

import orjson
import pytest
import trio

from trio_broker._core._commands import AppendMessage, CommandGroup, CreateQueue
from trio_broker._core._raft_messages import Entry, HardState, Replicate
from trio_broker._errors import RemoteProtocolError
from trio_broker._protocol import _entries, loads_object
from trio_broker._protocol._consensus import encode_message, message_from_obj
from trio_broker._protocol._entries import decode_payload, encode_payload, payload_bytes
from trio_broker._storage import Store
from trio_broker.testing import open_local_cluster

from .wire import append, create_queue

GROUP = CommandGroup(
    tuple(
        AppendMessage("Q-AAAAABBBBB", orjson.dumps({"n": i, "s": 'é}{"'}), "P-1", i, 1_700 + i)
        for i in range(64)
    )
)


def _replicate(dst: str, entries: tuple[Entry, ...], prev: int = 0) -> Replicate:
    return Replicate(
        src="B-AAAAA",
        dst=dst,
        term=2,
        cluster_version=1,
        prev_log_index=prev,
        prev_log_term=2 if prev else 0,
        entries=entries,
        leader_commit=0,
    )


def _stored(store: Store) -> dict[int, bytes]:
    rows = store._db.execute("SELECT log_index, payload FROM raft_log")
    return {index: bytes(payload) for index, payload in rows}


@pytest.fixture
def encodings(monkeypatch) -> list[object]:
    """Every payload encoded by the codec (the group, not its commands, counts once)."""
    seen: list[object] = []
    real = _entries.encode_payload

    def counting(payload: object, *form: bool) -> bytes:
        seen.append(payload)
        return real(payload, *form)

    monkeypatch.setattr(_entries, "encode_payload", counting)
    return seen


def test_a_leader_encodes_an_entry_once_for_its_log_and_every_replica(tmp_path, encodings):
    entries = (Entry(2, 1, CreateQueue("Q-AAAAABBBBB")), Entry(2, 2, GROUP))
    for entry in entries:  # as the driver does with a Ready's new entries
        payload_bytes(entry)
    store = Store(tmp_path)
    try:
        store.save(hard_state=HardState(2, "B-AAAAA", 0), entries=entries)
        frames = [encode_message(_replicate(peer, entries)) for peer in ("B-BBBBB", "B-CCCCC")]
        frames.append(encode_message(_replicate("B-BBBBB", entries[1:], prev=1)))  # a resend
        assert encodings == [CreateQueue("Q-AAAAABBBBB"), GROUP]
        stored = _stored(store)
    finally:
        store.close()
    assert stored == {1: encode_payload(entries[0].payload), 2: encode_payload(GROUP)}
    for frame in frames:  # each carries the stored bytes themselves
        for obj in orjson.loads(frame)["entries"]:
            assert b'"payload":' + stored[obj["index"]] + b"}" in frame


def test_cached_bytes_leave_the_replicate_frame_exactly_as_before():
    """The wire form does not depend on whether an entry's bytes were cached."""
    fresh = _replicate("B-BBBBB", (Entry(2, 1, GROUP),))
    before = encode_message(fresh)
    cached = _replicate("B-BBBBB", (Entry(2, 1, GROUP),))
    payload_bytes(cached.entries[0])
    assert cached.entries[0].encoded is not None
    assert encode_message(cached) == before
    assert cached == fresh  # the cache is no part of the entry's value


def test_a_replica_stores_the_bytes_it_received_without_encoding_again(tmp_path, encodings):
    leader_entry = Entry(2, 1, GROUP)
    frame = encode_message(_replicate("B-BBBBB", (leader_entry,)))
    leader_bytes = payload_bytes(leader_entry)
    encodings.clear()
    message = message_from_obj(loads_object(frame))
    (entry,) = message.entries
    assert entry == leader_entry
    store = Store(tmp_path)
    try:
        store.save(hard_state=HardState(2, "B-AAAAA", 0), entries=message.entries)
        assert _stored(store) == {1: leader_bytes}
        store.close()
        store = Store(tmp_path)
        assert store.raft_state().entries == [leader_entry]  # and read back as the same entry
    finally:
        store.close()
    assert encodings == []


def test_a_replica_stores_what_it_applies_whatever_the_sender_wrote(tmp_path):
    """A frame written by another encoder (spacing, key order, unknown keys): the replica's
    log holds bytes that decode to exactly the payload it decoded from the frame."""
    payload = (
        b'{ "data" : {"b": [1, 2.5, "\\u00e9"]}, "unknown": {"x": null},'
        b' "type" : "APPEND_MESSAGE", "queue_id" : "Q-AAAAABBBBB" }'
    )
    frame = (
        b'{"operation":"REPLICATE","broker_id":"B-AAAAA","to":"B-BBBBB","term":2,'
        b'"cluster_version":1,"prev_log_index":0,"prev_log_term":0,"leader_commit":0,'
        b'"entries":[{"payload":' + payload + b',"term":2,"index":1}]}'
    )
    (entry,) = message_from_obj(loads_object(frame)).entries
    assert entry.payload == AppendMessage("Q-AAAAABBBBB", b'{"b":[1,2.5,"\xc3\xa9"]}')
    store = Store(tmp_path)
    try:
        store.save(hard_state=HardState(2, "B-AAAAA", 0), entries=(entry,))
        assert decode_payload(_stored(store)[1]) == entry.payload
    finally:
        store.close()


def test_a_payload_too_deep_to_store_is_refused_as_a_protocol_error():
    """orjson reads deeper JSON than it writes: an unknown key nested past what can be written
    back is the peer's error, not a crash of the reader."""
    deep = b"[" * 300 + b"]" * 300
    frame = (
        b'{"operation":"REPLICATE","broker_id":"B-AAAAA","to":"B-BBBBB","term":2,'
        b'"cluster_version":1,"prev_log_index":0,"prev_log_term":0,"leader_commit":0,'
        b'"entries":[{"index":1,"term":2,"payload":{"type":"CREATE_QUEUE",'
        b'"queue_id":"Q-AAAAABBBBB","x":' + deep + b"}}]}"
    )
    with pytest.raises(RemoteProtocolError, match="malformed REPLICATE"):
        message_from_obj(loads_object(frame))


async def test_applied_entries_do_not_keep_their_bytes_in_memory(tmp_path):
    """The cache lives from the Ready that creates (or receives) an entry until its apply: the
    in-memory log of every broker does not hold applied payloads twice."""
    async with open_local_cluster(tmp_path, 3) as cluster:
        with trio.fail_after(30):
            leader = await cluster.wait_for_leader()
            queue_id = await create_queue(leader.port)
            for i in range(5):
                assert await append(leader.port, queue_id, {"n": i}) == i + 1
            last = leader.node.log.last_index
            for broker in cluster.brokers.values():
                while broker.applied_index < last:
                    await broker.driver.wait_changed()
        for broker in cluster.brokers.values():
            log = broker.node.log
            held = log.slice(log.snapshot_index + 1, broker.applied_index + 1)
            assert len(held) >= 6
            assert [e.index for e in held if e.encoded is not None] == []
