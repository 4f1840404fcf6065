"""Attempts to break the leader's receive of plain APPENDs decoded in one parse
(``_protocol/_receive_appends.decode_plain_appends``, ``_connections._read_requests``) and the
applied run settled as numbers (``_pending.PendingGroup.set_appended``): the one parse must
never accept a frame the per-frame decoder refuses or reads differently, and a receive it does
not take (authentication, the memory budget, the in-flight limit, a frame cut short or too
large) must be read exactly as frame by frame; answers keep each connection's order, and each
appended number is the one its value was stored under."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import orjson
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.test_poller_connections import (
    DEADLINE,
    Decisions,
    _append,
    _connect,
    _exchange,
    _server,
    _serving,
    _until,
    pytestmark,  # noqa: F401  (skipped where there is no epoll)
)
from tests.wire import RawConnection, create_queue
from trio_broker._protocol import encode_frame
from trio_broker._protocol._codec import ProtocolError, decode_client_request
from trio_broker._protocol._receive_appends import decode_plain_appends
from trio_broker._runtime import open_broker
from trio_broker._runtime._config import BrokerConfig
from trio_broker._runtime._security import Security

_HEAD = b'{"operation":"APPEND","queue_name":'


def _payload(queue: Any, data: Any) -> bytes:
    return orjson.dumps({"operation": "APPEND", "queue_name": queue, "data": data})


def _alone(payloads: list[bytes]) -> list[Any] | None:
    """Each frame decoded by itself; None when any is refused."""
    try:
        return [decode_client_request(payload) for payload in payloads]
    except ProtocolError:
        return None


def _check_same(payloads: list[bytes]) -> list[Any] | None:
    """The one parse takes the frames only as the per-frame decoder reads them (a frame it
    refuses, or reads as another request, must leave the receive to the loop)."""
    together = decode_plain_appends(payloads)
    if together is not None:
        alone = _alone(payloads)
        assert alone is not None and together == alone, payloads
        for request in together:  # (the same types too: str queue, bytes, str value)
            assert type(request) is tuple and type(request[1]) is bytes
    return together


# -- The one parse against the per-frame decoder ------------------------------------------------

_texts = st.text(
    alphabet=st.characters(codec="utf-8"),  # (any character: controls, quotes, astral)
    max_size=20,
)


_plain_texts = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters='"\\'),
    max_size=20,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(_plain_texts, _plain_texts), min_size=1, max_size=6))
def test_orjson_written_plain_appends_are_taken_and_decode_as_each_alone(
    pairs: list[tuple[str, str]],
) -> None:
    """Frames orjson writes of APPENDs whose queue and value are ASCII that JSON does not
    escape (the pipelined clients' frames): the one parse takes them (the path the change
    exists for) and each request is the per-frame decoder's. Would catch a one-parse path
    that slices the value's bytes wrongly or refuses what it is meant to take."""
    payloads = [_payload(queue, data) for queue, data in pairs]
    assert _check_same(payloads) is not None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(_texts, _texts), min_size=1, max_size=6))
def test_orjson_written_appends_of_any_text_decode_as_each_alone(
    pairs: list[tuple[str, str]],
) -> None:
    """Any text (controls, quotes, backslashes, non-ASCII, astral characters): the one parse
    leaves the receive to the loop or reads each frame as alone. Would catch a value's bytes
    sliced wrongly when escaped or multi-byte characters shift the lengths."""
    _check_same([_payload(queue, data) for queue, data in pairs])


_pieces = st.sampled_from(
    [
        b"}",
        b"{",
        b",",
        b"]",
        b"[",
        b'"',
        b"\\",
        b" ",
        b"\n",
        b"},{",
        b'},{"operation":"APPEND","queue_name":"q","data":"',
        b'"data":"z"',
        b'"data":1',
        b'"x":"',
        b"\xc3\xa9",
        b"\xff",
        b"\\u0041",
        b"\\ud83d\\ude00",
        b"null",
        b"1e5",
        b'"operation":"APPEND"',
    ]
)


@st.composite
def _mutated_receives(draw: st.DrawFn) -> list[bytes]:
    """Frames of APPENDs orjson wrote, then mutated (a piece inserted, bytes deleted or
    replaced), or the whole receive cut again at other places, each piece given the
    APPEND's start so that the one parse is tried on it."""
    pairs = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["q", "Q-1", "é", "a\\b", 'a"b', "x" * 127, "x" * 129]),
                st.one_of(
                    _texts,
                    st.integers(-(2**63), 2**64 - 1),
                    st.none(),
                    st.lists(st.integers(0, 9), max_size=2),
                ),
            ),
            min_size=1,
            max_size=5,
        )
    )
    payloads = [_payload(queue, data) for queue, data in pairs]
    for _ in range(draw(st.integers(0, 3))):
        index = draw(st.integers(0, len(payloads) - 1))
        payload = payloads[index]
        at = draw(st.integers(len(_HEAD), len(payload)))
        kind = draw(st.sampled_from(["insert", "delete", "replace"]))
        piece = draw(_pieces)
        if kind == "insert":
            payload = payload[:at] + piece + payload[at:]
        elif kind == "delete":
            payload = payload[:at] + payload[at + draw(st.integers(1, 4)) :]
        else:
            payload = payload[:at] + piece + payload[at + len(piece) :]
        payloads[index] = payload
    if draw(st.booleans()):  # (the receive cut again: frames that split elsewhere)
        text = b",".join(payload[len(_HEAD) :] for payload in payloads)
        cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=4)))
        bounds = [0, *cuts, len(text)]
        payloads = [_HEAD + text[a:b] for a, b in pairwise(bounds)]
    return payloads


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutated_receives())
def test_mutated_receives_are_taken_only_as_each_frame_decodes_alone(
    payloads: list[bytes],
) -> None:
    """The differential property: whatever the frames (duplicate keys, escapes, spaces,
    other value types, a fourth key, frames whose text splits into elements elsewhere), the
    one parse returns None or exactly the per-frame requests. Would catch a hole in the
    length proof (an element spanning two frames, a frame of two elements) or a check of the
    per-frame decoder that the one parse lacks."""
    _check_same(payloads)


@pytest.mark.parametrize(
    "payloads",
    [
        # duplicate keys, each in a frame orjson could not have written
        [_payload("q", "a"), _HEAD + b'"q","queue_name":"q","data":"b"}'],
        [_payload("q", "a"), _HEAD + b'"q","data":"b","operation":"APPEND"}'],
        [_payload("q", "a"), b'{"operation":"APPEND","operation":"APPEND","queue_name":"q"}'],
        # keys in another order (not starting with the APPEND's start) and spaces
        [_payload("q", "a"), b'{"queue_name":"q","operation":"APPEND","data":"b"}'],
        [_payload("q", "a"), _HEAD + b'"q" ,"data":"b"}'],
        [_payload("q", "a"), _HEAD + b'"q","data":"b"}\n'],
        # escapes where orjson writes none, nested and non-string values
        [_payload("q", "a"), _HEAD + b'"\\u0071","data":"b"}'],
        [_payload("q", "a"), _HEAD + b'"q","data":"\\/"}'],
        [_payload("q", "a"), _payload("q", {"x": "y"})],
        [_payload("q", "a"), _payload("q", 1.5)],
        [_payload("q", "a"), _payload("q", None)],
        [_payload("q", "a"), _payload(5, "b")],
        # invalid UTF-8, an over-long queue name (by one character), an empty frame
        [_payload("q", "a"), _HEAD + b'"q","data":"\xff"}'],
        [_payload("q", "a"), _payload("q" * 129, "b")],
        [_payload("q", "a"), b""],
        [_payload("q", "a"), _HEAD],
        # one frame holding two objects, the next closing nothing: as many elements as frames
        [_HEAD + b'"q","data":"a"},{"operation":"APPEND","queue_name":"q","data":"b"', _HEAD],
        [_HEAD + b'"q","data":"a"},' + _payload("q", "b")[:-1], _HEAD + b'"q","data":"c"}'],
        [_HEAD + b'"q","data":"a"}]', b"[" + _payload("q", "b")],
    ],
)
def test_crafted_frames_are_left_to_the_loop(payloads: list[bytes]) -> None:
    """Frames that the per-frame decoder refuses or reads through its general path: the one
    parse must not take them (nor the receive they are in). Would catch a one-parse path that
    accepts duplicate keys, whitespace, escapes, non-string values or a queue name too long,
    or that lets an element straddle two frames."""
    assert decode_plain_appends(payloads) is None
    assert decode_plain_appends(list(reversed(payloads))) is None


def test_the_longest_queue_name_is_taken_and_one_more_is_not() -> None:
    """The queue-name limit at its edge: 128 characters are taken, 129 are left to the
    loop, which refuses the frame. Would catch a limit off by one."""
    longest = [_payload("q" * 128, "v"), _payload("q", "w")]
    assert _check_same(longest) == [decode_client_request(p) for p in longest]
    assert decode_plain_appends([_payload("q" * 129, "v"), _payload("q", "w")]) is None


# -- The read loop with the one parse: stand-in decisions -------------------------------------


def _recording(decisions: Decisions) -> list[int]:
    """Record the size of every run given to ``handle_many``."""
    sizes: list[int] = []
    handle_many = decisions.handle_many

    async def recorded(run: list[Any], session: Any, answered: Any) -> None:
        sizes.append(len(run))
        await handle_many(run, session, answered)

    decisions.handle_many = recorded  # type: ignore[method-assign]
    return sizes


async def test_appends_before_auth_in_one_receive_are_each_refused() -> None:
    """With client tokens, a receive of APPENDs before AUTH, then AUTH, then APPENDs, all in
    one write: those before are refused one by one as before, none decided; those after are
    decided. Would catch the one parse deciding a receive of a session not let through (the
    check asked once per receive), or deciding the APPENDs after AUTH before it."""
    decisions = Decisions()
    server = _server(decisions)
    server.security = Security(tokens=frozenset({"sesame"}))
    auth = encode_frame(orjson.dumps({"operation": "AUTH", "token": "sesame"}))
    before = b"".join(_append("Q-WAIT", f"b{i}") for i in range(4))
    after = b"".join(_append("Q-WAIT", f"a{i}") for i in range(3))
    server_frames = before + auth + after
    with trio.fail_after(DEADLINE):
        async with _serving(server) as port:
            client = await _connect(port)
            await client.stream.send_all(server_frames)
            got: list[dict[str, Any]] = []
            while len(got) < 8:
                while (frame := client.decoder.next_frame()) is not None:
                    got.append(orjson.loads(frame))
                if len(got) < 8:
                    data = await client.stream.receive_some(1 << 16)
                    assert data, f"closed after {len(got)} answers"
                    client.decoder.feed(data)
            await client.stream.aclose()
    assert [answer["status"] for answer in got[:4]] == ["error"] * 4
    assert not any("many:" in answer["message"] for answer in got[:4])
    assert got[4]["status"] == "success"
    assert [answer["message"] for answer in got[5:]] == ["many:a0", "many:a1", "many:a2"]
    assert decisions.many == 3


async def test_a_receive_of_appends_before_auth_alone_decides_nothing() -> None:
    """A receive of only APPENDs (the one parse's shape) before AUTH: every one refused, none
    decided. Would catch the one-parse path skipping the authentication check."""
    decisions = Decisions()
    server = _server(decisions)
    server.security = Security(tokens=frozenset({"sesame"}))
    frames = b"".join(_append("Q-WAIT", f"m{i}") for i in range(6))
    got = await _exchange(server, frames, 6)
    assert all("many:" not in message for message in got)
    assert decisions.many == 0


async def test_a_receive_over_the_in_flight_limit_is_decided_in_runs_within_it() -> None:
    """A receive of 20 APPENDs at an in-flight limit of 4: every answer, in order, and no run
    handed to ``handle_many`` larger than the limit. Would catch the one parse taking a
    receive past the limit (the check of ``outbox.in_flight + len(frames)``)."""
    decisions = Decisions()
    sizes = _recording(decisions)
    server = _server(decisions, max_in_flight=4)
    values = [f"v{i}" for i in range(20)]
    got = await _exchange(server, b"".join(_append("Q-WAIT", v) for v in values), 20)
    assert got == [f"many:{v}" for v in values]
    assert sizes and max(sizes) <= 4
    assert sum(sizes) == 20


async def test_a_receive_over_the_memory_budget_is_read_frame_by_frame_and_answered() -> None:
    """A receive of APPENDs whose bytes pass the memory budget (each frame fits): not taken
    in one charge, read frame by frame, waiting for the budget, every answer in order, the
    budget given back. Would catch the one parse charging a whole receive past the budget
    (``Account.take`` lets a connection that holds nothing take any amount: meant for one
    frame), or losing or reordering the frames given back to the decoder (mark and rewind)."""
    decisions = Decisions()
    sizes = _recording(decisions)
    frames = [_append("Q-WAIT", f"m{i:02d}" + "y" * 60) for i in range(12)]
    server = _server(decisions, max_buffered_bytes=3 * len(frames[0]))
    with trio.fail_after(DEADLINE):
        async with _serving(server) as port:
            client = await _connect(port)
            await client.stream.send_all(b"".join(frames))
            got = await client.answers(12)
            await client.stream.aclose()
            await _until(lambda: server.connections == 0)
    assert [message[:8] for message in got] == [f"many:m{i:02d}" for i in range(12)]
    # The budget's bound (``BufferBudget``): the limit, plus one frame for a connection that
    # holds nothing; never the whole receive taken at once past it.
    assert server.budget.peak <= server.budget.limit + len(frames[0])
    assert max(sizes) < 12
    assert server.budget.used == 0


async def test_a_partial_frame_at_the_end_of_a_receive_is_kept_for_the_next() -> None:
    """Whole APPENDs then the first bytes of one more in one receive, the rest later: the
    whole ones are answered, then the last, in order. Would catch the one parse dropping or
    taking the buffered partial frame, or rewinding past it."""
    decisions = Decisions()
    server = _server(decisions)
    whole = b"".join(_append("Q-WAIT", f"w{i}") for i in range(5))
    last = _append("Q-WAIT", "last" + "z" * 50)
    with trio.fail_after(DEADLINE):
        async with _serving(server) as port:
            client = await _connect(port)
            await client.stream.send_all(whole + last[:30])
            got = await client.answers(5)
            await client.stream.send_all(last[30:])
            got += await client.answers(1)
            await client.stream.aclose()
    assert got == [f"many:w{i}" for i in range(5)] + ["many:last" + "z" * 50]


async def test_a_frame_too_large_in_the_middle_answers_those_before_then_closes() -> None:
    """APPENDs, a length over ``max_frame``, then more APPENDs, in one receive: those before
    are answered, then the refusal, and the connection is closed (the APPENDs after it never
    decided). Would catch the one parse reading past a frame too large."""
    decisions = Decisions()
    server = _server(decisions, max_frame=1000)
    before = b"".join(_append("Q-WAIT", f"b{i}") for i in range(3))
    after = b"".join(_append("Q-WAIT", f"a{i}") for i in range(3))
    with trio.fail_after(DEADLINE):
        async with _serving(server) as port:
            client = await _connect(port)
            await client.stream.send_all(before + (5000).to_bytes(4, "big") + after)
            got = await client.answers(4)
            assert await client.stream.receive_some(100) == b""
            await client.stream.aclose()
    assert got[:3] == ["many:b0", "many:b1", "many:b2"]
    assert "larger than the maximum" in got[3]
    assert decisions.many == 3


async def test_a_duplicate_key_in_a_receive_of_appends_is_refused_in_its_place() -> None:
    """A receive of APPEND frames, one with a key twice (the same length as an orjson frame
    of other values would not have): it is refused in its place, the others decided in
    order. Would catch the one parse taking a frame the per-frame decoder refuses."""
    decisions = Decisions()
    server = _server(decisions)
    frames = [
        _append("Q-WAIT", "a"),
        encode_frame(_HEAD + b'"Q-WAIT","data":"x","data":"b"}'),
        _append("Q-WAIT", "c"),
    ]
    got = await _exchange(server, b"".join(frames), 3)
    assert got[0] == "many:a" and got[2] == "many:c"
    assert "many:" not in got[1]


# -- A real broker: the numbers answered are the numbers stored --------------------------------


def _raw(queue: str, data: str) -> bytes:
    return encode_frame(_payload(queue, data))


async def test_a_real_broker_answers_each_append_of_a_run_with_its_stored_number(
    ram_path: Any,
) -> None:
    """Two connections pipelining receives of plain APPENDs (some to a queue that does not
    exist, some too large) to one queue at once: each connection's answers come in its order,
    refusals in their places, and the number answered for each value is the number the value
    is read back under. Would catch a stretch of an applied entry settled with another
    receive's numbers (``_settle_run``'s ends), numbers shifted past a refused append, or
    answers of one connection framed from another's run."""
    config = BrokerConfig(data_dir=ram_path / "b", port=0, max_frame=2048)
    async with open_broker(config) as broker:
        queue = await create_queue(broker.port)
        sent: dict[str, list[tuple[str, str]]] = {"x": [], "y": []}

        async def one(name: str) -> list[dict[str, Any]]:
            conn = await RawConnection.open(broker.port)
            answers: list[dict[str, Any]] = []
            for step in range(6):
                frames = []
                for index in range(8):
                    value = f"{name}-{step}-{index}"
                    target = queue
                    if index == 3 and step % 2:
                        target = "no-such-queue"
                    if index == 5 and step % 3 == 0:
                        value = value + "z" * 1900  # (too large for max_frame's budget)
                    sent[name].append((target, value))
                    frames.append(_raw(target, value))
                await conn.send_raw(b"".join(frames))
                for _ in frames:
                    answer = await conn.receive()
                    assert answer is not None
                    answers.append(answer)
            await conn.aclose()
            return answers

        results: dict[str, list[dict[str, Any]]] = {}

        async def run(name: str) -> None:
            results[name] = await one(name)

        with trio.fail_after(DEADLINE):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run, "x")
                nursery.start_soon(run, "y")
            stored: dict[int, str] = {}
            conn = await RawConnection.open(broker.port)
            numbers = sorted(
                a["sequence_num"]
                for name in results
                for a in results[name]
                if a["status"] == "success"
            )
            for _ in numbers:
                read = await conn.call(  # (one client's READs: the next message each)
                    {"operation": "READ", "queue_name": queue, "client_id": "C"}
                )
                assert read["status"] == "success", read
                stored[read["sequence_num"]] = read["data"]
            await conn.aclose()
        for name, answers in results.items():
            mine = []
            for (target, value), answer in zip(sent[name], answers, strict=True):
                if target != queue:
                    assert answer["code"] == "QUEUE_NOT_FOUND", answer
                elif len(value) > 1000:
                    assert answer["code"] == "TOO_LARGE", answer
                else:
                    assert answer["status"] == "success", answer
                    assert stored[answer["sequence_num"]] == value
                    mine.append(answer["sequence_num"])
            assert mine == sorted(mine)  # (a connection's appends stored in its order)
        assert numbers == list(range(1, len(numbers) + 1))


async def test_idempotent_retries_among_plain_appends_keep_their_numbers(ram_path: Any) -> None:
    """A receive mixing plain APPENDs with a producer's APPENDs and a retry of one (the same
    producer sequence number), a receive of plain APPENDs with a retry among them, then one
    of plain APPENDs only (the one parse): each plain APPEND gets the next number, each retry
    its first append's number marked a duplicate, in request order. Would catch a run
    settled as numbers counting a duplicate as an appended message (every later number
    shifted), or a retry decoded as a plain APPEND."""
    config = BrokerConfig(data_dir=ram_path / "b", port=0)
    async with open_broker(config) as broker:
        queue = await create_queue(broker.port)

        def producer(seq: int, data: str) -> dict[str, Any]:
            return {
                "operation": "APPEND",
                "queue_name": queue,
                "data": data,
                "producer_id": "P-1",
                "producer_seq": seq,
            }

        def plain(data: str) -> dict[str, Any]:
            return {"operation": "APPEND", "queue_name": queue, "data": data}

        first = [plain("a"), producer(1, "i1"), producer(1, "i1"), plain("b"), producer(2, "i2")]
        second = [plain("c"), plain("d"), producer(1, "i1"), plain("e"), plain("f")]
        third = [plain("g"), plain("h"), plain("i")]  # (only plain: the one parse)
        conn = await RawConnection.open(broker.port)
        answers = []
        with trio.fail_after(DEADLINE):
            for receive in (first, second, third):
                await conn.send(*receive)
                for _ in receive:
                    answer = await conn.receive()
                    assert answer is not None
                    answers.append(answer)
        await conn.aclose()
    numbers = [(a["status"], a["sequence_num"], a.get("duplicate", False)) for a in answers]
    assert numbers == [
        ("success", 1, False),
        ("success", 2, False),
        ("success", 2, True),
        ("success", 3, False),
        ("success", 4, False),
        ("success", 5, False),
        ("success", 6, False),
        ("success", 2, True),
        ("success", 7, False),
        ("success", 8, False),
        ("success", 9, False),
        ("success", 10, False),
        ("success", 11, False),
    ]
