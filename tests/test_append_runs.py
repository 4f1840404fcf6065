"""A group of plain appends in runs, ``APPEND_RUNS`` (docs/replication.md, "A group of appends
in runs"): the same group as its COMMAND_GROUP in fewer bytes, every field checked as before,
and never sent to a peer that did not say it reads it (an older broker gets the
COMMAND_GROUP, encoded again with its own checksum)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import trio

from trio_broker._core import _commands as cmd
from trio_broker._core import _raft_messages as rm
from trio_broker._errors import RemoteProtocolError
from trio_broker._protocol._consensus import encode_message, message_from_payload
from trio_broker._protocol._entries import (
    decode_payload,
    encode_payload,
    entry_checksum,
    payload_bytes,
)
from trio_broker._storage import Store

from .test_peer_mux import WELCOME, FakePeer, book, connected, open_mux, until

Q1, Q2 = "Q-AAAAABBBBB", 'Q-"é,}'
VALUES = [b'"x"', b'{"a":[1,2],"b":"c,d"}', b"12.5", b'"\xc3\xa9\\"]"', b"null", b"[[],{}]"]


def _group(count: int = 12, queues: tuple[str, ...] = (Q1,)) -> cmd.CommandGroup:
    return cmd.CommandGroup(
        tuple(
            cmd.AppendMessage(
                queues[(i // 3) % len(queues)], VALUES[i % len(VALUES)], None, None, 1_700 + i // 4
            )
            for i in range(count)
        )
    )


def _replicate(*entries: rm.Entry) -> rm.Replicate:
    return rm.Replicate(
        src="B-1",
        dst="B-2",
        term=2,
        cluster_version=1,
        prev_log_index=entries[0].index - 1,
        prev_log_term=2,
        entries=entries,
        leader_commit=0,
    )


def _compact_entry(group: cmd.CommandGroup, index: int = 5) -> rm.Entry:
    entry = rm.Entry(2, index, group)
    assert payload_bytes(entry, True).startswith(b'{"type":"APPEND_RUNS"')
    return entry


# -- the form ---------------------------------------------------------------------------------


@pytest.mark.parametrize("queues", [(Q1,), (Q1, Q2)])
@pytest.mark.parametrize("count", [1, 5, 200])
def test_runs_decode_to_the_group_in_fewer_bytes_exactly_as_orjson_writes_them(queues, count):
    group = _group(count, queues)
    runs = encode_payload(group, True)
    assert orjson.loads(runs)["type"] == "APPEND_RUNS"
    assert orjson.dumps(orjson.loads(runs)) == runs  # (a replica's log holds these bytes)
    assert decode_payload(runs) == group
    assert decode_payload(encode_payload(group)) == group
    if count > 1:
        assert len(runs) < len(encode_payload(group)) * 3 // 4


def test_a_run_is_one_queue_and_one_stamp():
    group = _group(12, (Q1, Q2))
    runs = orjson.loads(encode_payload(group, True))["runs"]
    assert [(q, s, len(v)) for q, s, v in runs] == [
        (Q1, 1700, 3),
        (Q2, 1700, 1),
        (Q2, 1701, 2),
        (Q1, 1701, 2),
        (Q1, 1702, 1),
        (Q2, 1702, 3),
    ]


@pytest.mark.parametrize(
    "group",
    [
        cmd.CommandGroup((cmd.AppendMessage(Q1, b"1", "P-1", 3, 1_700),)),  # a producer
        cmd.CommandGroup((cmd.AppendMessage(Q1, b"1"),)),  # no stamp (older entries)
        cmd.CommandGroup((cmd.AppendMessage(Q1, b"1", None, None, 1), cmd.ReadNext("C-1", Q1))),
        cmd.CommandGroup((cmd.ReadNext("C-1", Q1), cmd.ReadNext("C-1", Q1))),
    ],
)
def test_any_other_group_keeps_its_command_group_form(group):
    assert encode_payload(group, True) == encode_payload(group)
    assert decode_payload(encode_payload(group, True)) == group


@pytest.mark.parametrize("depth", [250, 251])
def test_a_value_nested_as_deep_as_a_command_group_holds_is_replicated(depth):
    """A value sits one level deeper in a run than in a COMMAND_GROUP: a group with one that
    would nest beyond what orjson writes keeps its COMMAND_GROUP form, which replicates."""
    value = b"[" * depth + b"]" * depth
    group = cmd.CommandGroup(
        (cmd.AppendMessage(Q1, value, None, None, 5), cmd.AppendMessage(Q1, b"1", None, None, 5))
    )
    entry = rm.Entry(2, 5, group)
    written = payload_bytes(entry, True)
    assert written.startswith(b'{"type":"APPEND_RUNS"' if depth <= 250 else b'{"type":"COMMAND')
    _, message = message_from_payload(encode_message(_replicate(entry), append_runs=True))
    assert message.entries == (entry,)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b'{"type":"APPEND_RUNS","runs":[]}', "non-empty list"),
        (b'{"type":"APPEND_RUNS","runs":{"a":1}}', "non-empty list"),
        (b'{"type":"APPEND_RUNS"}', "runs"),
        (b'{"type":"APPEND_RUNS","runs":[["Q-1",1]]}', "a run must be"),
        (b'{"type":"APPEND_RUNS","runs":[["Q-1",1,["x"],4]]}', "a run must be"),
        (b'{"type":"APPEND_RUNS","runs":[[7,1,["x"]]]}', "queue_id must be a string"),
        (b'{"type":"APPEND_RUNS","runs":[["Q-1",true,["x"]]]}', "appended_ms must be an integer"),
        (b'{"type":"APPEND_RUNS","runs":[["Q-1",1.5,["x"]]]}', "appended_ms must be an integer"),
        (b'{"type":"APPEND_RUNS","runs":[["Q-1",1,[]]]}', "values must be a non-empty list"),
        (b'{"type":"APPEND_RUNS","runs":[["Q-1",1,"x"]]}', "values must be a non-empty list"),
        (b'{"type":"APPEND_RUNS","runs":[["Q-1",1,[' + b"[" * 300 + b"]" * 300 + b"]]]}", "nests"),
        (b'{"type":"APPEND_RUNS","runs":[["Q-1",1,[1,2,]]]}', "not valid JSON"),
    ],
)
def test_a_malformed_runs_payload_is_the_peers_error(payload, why):
    with pytest.raises(RemoteProtocolError, match=why):
        decode_payload(payload)


def test_a_command_group_does_not_nest_runs():
    inner = encode_payload(_group(2), True)
    nested = b'{"type":"COMMAND_GROUP","commands":[' + inner + b"]}"
    with pytest.raises(RemoteProtocolError, match="queue commands only"):
        decode_payload(nested)


# -- on the wire ------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [3, 200])  # (a small frame, and one decoded written once)
def test_a_replica_takes_runs_from_a_replicate_with_their_bytes_and_checksum(count):
    entry = _compact_entry(_group(count, (Q1, Q2)))
    frame = encode_message(_replicate(entry), append_runs=True)
    _, message = message_from_payload(frame)
    (received,) = message.entries
    assert received == entry
    assert (received.encoded, received.checksum) == (entry.encoded, entry.checksum)


def test_runs_that_changed_on_the_way_are_refused():
    entry = _compact_entry(_group(200))
    frame = encode_message(_replicate(entry), append_runs=True)
    damaged = frame.replace(b'"x"', b'"y"', 1)
    with pytest.raises(RemoteProtocolError, match="arrived damaged"):
        message_from_payload(damaged)


@pytest.mark.parametrize("cached", [True, False])
def test_a_peer_that_did_not_say_it_reads_runs_gets_the_command_group(cached):
    """Bytes held in runs leave as a COMMAND_GROUP with that form's checksum to a peer that did
    not say it reads runs: what an older broker reads and stores. An entry whose bytes the
    apply forgot is encoded again as a COMMAND_GROUP for every peer (whether the group may
    write runs is the leader's rule, not the link's)."""
    group = _group(40, (Q1, Q2))
    entry = _compact_entry(group)
    if not cached:
        entry.remember_encoded(None)
    for runs in (False, True):
        obj = orjson.loads(encode_message(_replicate(entry), append_runs=runs))
        (sent,) = obj["entries"]
        written = orjson.dumps(sent["payload"])
        assert sent["payload"]["type"] == ("APPEND_RUNS" if runs and cached else "COMMAND_GROUP")
        assert sent["checksum"] == entry_checksum(2, 5, written)
        assert decode_payload(written) == group
    assert orjson.loads(encode_message(_replicate(entry)))["entries"][0]["payload"]["type"] == (
        "COMMAND_GROUP"  # (the default: what every encoder wrote before)
    )


def test_a_log_of_runs_reads_back_and_its_damage_is_found(tmp_path):
    entries = (_compact_entry(_group(50), 1), _compact_entry(_group(7, (Q2,)), 2))
    store = Store(tmp_path)
    try:
        store.save(hard_state=rm.HardState(2, "B-1", 0), entries=entries)
    finally:
        store.close()
    store = Store(tmp_path)
    try:
        assert store.raft_state().entries == list(entries)
        assert store.log_damage() is None
        ((payload,),) = store._db.execute("SELECT payload FROM raft_log WHERE log_index = 2")
        flipped = bytes(payload).replace(b'"x"', b'"y"', 1)  # (still runs, still JSON)
        store._db.execute("UPDATE raft_log SET payload = ? WHERE log_index = 2", (flipped,))
    finally:
        store.close()
    store = Store(tmp_path)
    try:
        damage = store.log_damage()
        assert damage is not None and damage.first_damaged == 2
    finally:
        store.close()


# -- the links --------------------------------------------------------------------------------


class TwoVersions(FakePeer):
    """Answers PEER_HELLO as this version does, except to ``old``: as the version before."""

    def __init__(self, old: str) -> None:
        super().__init__()
        self.old = old

    @property  # type: ignore[override]
    def answer(self) -> bytes:
        if self.hellos[-1]["to"] == self.old:
            return WELCOME  # {"status":"success","multiplexed":true}: no append_runs
        return b'{"status":"success","multiplexed":true,"append_runs":true}'

    @answer.setter
    def answer(self, _value: bytes) -> None:
        pass


async def test_each_link_writes_the_form_its_peer_said_it_reads(autojump_clock):
    peers = TwoVersions(old="B-3")
    async with trio.open_nursery() as nursery:
        mux = open_mux(nursery, peers)
        links = mux.register("G-HOME0", book)
        links.ensure({"B-2", "B-3"})
        await connected(mux, "B-2")
        await connected(mux, "B-3")
        assert (mux._links["B-2"].append_runs, mux._links["B-3"].append_runs) == (True, False)
        assert not links.reads_append_runs({"B-2", "B-3"})
        group = _group(30)
        for dst in ("B-2", "B-3"):
            entry = _compact_entry(group)  # (as a leader holds it, whatever the peer)
            message = _replicate(entry)
            links.send(rm.Replicate(**{**_fields(message), "dst": dst}))
        await until(lambda: len(peers.frames) == 2)
        forms = {m.dst: orjson.loads(m.entries[0].encoded)["type"] for _, _, m in peers.frames}  # type: ignore[union-attr]
        assert forms == {"B-2": "APPEND_RUNS", "B-3": "COMMAND_GROUP"}
        for _, _, m in peers.frames:
            assert m.entries[0] == rm.Entry(2, 5, group)  # type: ignore[union-attr]
        links.forget({"B-2"})  # (B-3 leaves the group: every member left reads runs)
        assert links.reads_append_runs({"B-2"})
        nursery.cancel_scope.cancel()


def _fields(message: rm.Replicate) -> dict[str, Any]:
    import attrs

    return attrs.asdict(message, recurse=False)


async def test_a_peer_back_answering_as_the_version_before_is_no_longer_counted(autojump_clock):
    peers = TwoVersions(old="nobody")
    async with trio.open_nursery() as nursery:
        mux = open_mux(nursery, peers)
        links = mux.register("G-HOME0", book)
        links.ensure({"B-2"})
        await connected(mux, "B-2")
        assert links.reads_append_runs({"B-2"})
        peers.old = "B-2"  # (the peer restarts as the version before)
        await peers.streams[-1].aclose()
        await until(lambda: len(peers.streams) == 2 and mux._links["B-2"].connected)
        assert not links.reads_append_runs({"B-2"})
        assert not links.reads_append_runs({"B-4"})  # (a member without a link)
        nursery.cancel_scope.cancel()
