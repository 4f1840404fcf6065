"""A peer frame decoded by ``message_from_payload`` (``_protocol/_consensus.py``: a REPLICATE's
payloads written back once, for the frame's check and for the log) gives what
``message_from_frame(loads_object(payload))`` gives: the same message, each entry's stored
bytes and checksum the leader's, and for a frame that is malformed, not written as brokers
write it, or damaged, the same refusal."""

from __future__ import annotations

import pytest

from trio_broker._core import _commands as cmd
from trio_broker._core import _raft_messages as rm
from trio_broker._errors import ProtocolError
from trio_broker._protocol import _consensus
from trio_broker._protocol._codec import dumps_value, loads_object
from trio_broker._protocol._consensus import (
    encode_message,
    message_from_frame,
    message_from_payload,
)
from trio_broker._protocol._entries import stored_entry


def _entry(index, payload):
    entry = rm.Entry(3, index, payload)
    stored_entry(entry)  # (the leader's bytes and checksum, cached as the driver caches them)
    return entry


def _reads(readers, count):
    return cmd.CommandGroup(
        tuple(cmd.ReadNext(f"C-{r}", f"Q-{r % 2}") for r in range(readers) for _ in range(count))
    )


def _appends(count):
    return cmd.CommandGroup(
        tuple(
            cmd.AppendMessage('Q-é"\\', dumps_value({"i": i, "s": "x" * i}), None, None, 2**64 - 1)
            for i in range(count)
        )
    )


def _replicate(*payloads, cls=rm.Replicate, **extra):
    return cls(
        src="B-1",
        dst="B-2",
        term=3,
        cluster_version=1,
        prev_log_index=9,
        prev_log_term=3,
        leader_commit=9,
        entries=tuple(_entry(10 + i, p) for i, p in enumerate(payloads)),
        **extra,
    )


MESSAGES = [
    _replicate(_reads(4, 16)),
    _replicate(_appends(20), rm.NoOp(), cmd.Ack("C-1", "Q-1", 2), _reads(1, 1)),
    _replicate(),
    _replicate(_appends(2), acknowledged=7, start_id=5, log_end=11, probe=1),
    _replicate(rm.NoOp(), cls=rm.PromoteToLeader),
    rm.Heartbeat(src="B-1", dst="B-2", term=2, cluster_version=1, commit=3),
]


@pytest.fixture(autouse=True)
def _every_size(monkeypatch):
    """Every REPLICATE as large ones are decoded (small ones take ``loads_object``)."""
    monkeypatch.setattr(_consensus, "WRITTEN_ONCE_FROM", 0)


def _old(payload):
    return message_from_frame(loads_object(payload))


def _same(new, old):
    assert new == old
    _, message = new
    for got, want in zip(
        getattr(message, "entries", ()), getattr(old[1], "entries", ()), strict=True
    ):
        assert (got.encoded, got.checksum) == (want.encoded, want.checksum)


@pytest.mark.parametrize("group_id", [None, "G-00001"])
@pytest.mark.parametrize("message", MESSAGES)
def test_a_brokers_frame_decodes_as_before_storing_the_leaders_bytes(message, group_id):
    frame = encode_message(message, group_id)
    new = message_from_payload(frame)
    _same(new, _old(frame))
    assert new == (group_id, message)
    for got, sent in zip(
        getattr(new[1], "entries", ()), getattr(message, "entries", ()), strict=True
    ):
        assert (got.encoded, got.checksum) == (sent.encoded, sent.checksum)
        assert type(got.encoded) is bytes and got.encoded in frame


@pytest.mark.parametrize("message", MESSAGES[:5])
def test_a_brokers_replicate_is_parsed_and_written_once(message, monkeypatch):
    frame = encode_message(message, "G-00001")

    def not_again(payload):
        raise AssertionError("parsed again")

    monkeypatch.setattr(_consensus, "loads_object", not_again)
    assert message_from_payload(frame) == ("G-00001", message)


def _frames():
    """REPLICATE frames that are not as brokers write them, each with what it is."""
    good = encode_message(_replicate(_appends(3), _reads(2, 2)), "G-00001")
    entry_start = good.index(b'"payload":') + len(b'"payload":')
    payload_end = good.index(b',{"index":', entry_start) - 1  # (the entry's "}" follows)
    frames = {
        "not JSON": good[:-1],
        "not an object": b'{"operation":"REPLICATE",' + b"]",
        "spaces (accepted by the exact checks)": good.replace(b'"term":3,', b'"term": 3,', 1),
        "a duplicate key at the top": good[:-1] + b',"term":4}',
        "a duplicate key in a payload": good[:entry_start]
        + b'{"type":"NOOP","type":"NOOP"}'
        + good[payload_end:],
        "an integer beyond 64 bits": good.replace(
            b'"leader_commit":9', b'"leader_commit":' + b"9" * 30
        ),
        "a long integer in a payload": good.replace(
            b'"appended_ms":18446744073709551615', b'"appended_ms":' + b"1" * 25, 1
        ),
        "entries not a list": good.replace(b'"entries":[', b'"entries":{"x":[', 1).replace(
            b'],"group_id"', b']},"group_id"'
        ),
        "an entry without its payload": good.replace(b'"payload":', b'"pay_load":', 1),
        "a payload changed on the way": good.replace(b'"i":1', b'"i":7', 1),
        "a checksum that is not the bytes'": good.replace(b'"checksum":', b'"checksum":1', 1),
        "a malformed group id": good.replace(b'"G-00001"', b'"G-1"'),
        "not UTF-8": good.replace(b"C-0", b"C-\xff", 1),
    }
    for name, frame in frames.items():
        assert frame != good, name
    return frames


FRAMES = _frames()


@pytest.mark.parametrize("name", list(FRAMES))
def test_a_frame_not_as_brokers_write_it_gets_the_same_answer_or_refusal(name):
    frame = FRAMES[name]
    try:
        old = _old(frame)
    except ProtocolError as exc:
        with pytest.raises(type(exc)) as refused:
            message_from_payload(frame)
        assert refused.value.message == exc.message
        assert exc.message  # (a clear error, not an empty one)
    else:
        _same(message_from_payload(frame), old)


def test_the_refusals_are_the_ones_expected():
    refused = set()
    for name, frame in FRAMES.items():
        try:
            message_from_payload(frame)
        except ProtocolError:
            refused.add(name)
    assert refused == set(FRAMES) - {"spaces (accepted by the exact checks)"}


def test_only_frames_from_the_size_bound_are_written_once(monkeypatch):
    monkeypatch.setattr(_consensus, "WRITTEN_ONCE_FROM", 2048)
    small = encode_message(_replicate(_appends(2)))
    large = encode_message(_replicate(_reads(8, 16)))
    assert len(small) < 2048 <= len(large)
    parsed: list[bytes] = []

    def recorded(payload):
        parsed.append(payload)
        return loads_object(payload)

    monkeypatch.setattr(_consensus, "loads_object", recorded)
    assert message_from_payload(small)[1] == _old(small)[1]
    assert message_from_payload(large)[1] == _old(large)[1]
    assert parsed == [small]
