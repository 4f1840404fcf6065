"""``PolledSocket.decoded`` (the request the poller decoded before it left the receive to the
connection's task) is taken by the task only for that very receive, as one whole frame: not
for equal bytes of another object, not for a receive of several frames; and it never stays
set after the task read its receive, whichever path the request then took (refused by
``handle_lone``, an APPEND with headers, a frame split over receives, a frame that does not
decode, several frames in one receive, the memory budget's wait)."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import orjson
import pytest
import trio

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
from trio_broker._protocol import encode_frame
from trio_broker._runtime._connections import ConnectionServer
from trio_broker._runtime._poller import PolledSocket
from trio_broker._runtime._security import Security

_FORGED = ("Q-WAIT", b'"FORGED"', "FORGED")


@pytest.fixture
def polled(monkeypatch: pytest.MonkeyPatch) -> list[PolledSocket]:
    """Every connection's PolledSocket, and a switch of what its poller's ``fast`` sets."""
    seen: list[PolledSocket] = []
    make = ConnectionServer._fast_lone

    def recorded(self: ConnectionServer, socket: PolledSocket, *args: Any) -> Any:
        seen.append(socket)
        return make(self, socket, *args)

    monkeypatch.setattr(ConnectionServer, "_fast_lone", recorded)
    return seen


def _forging(monkeypatch: pytest.MonkeyPatch, forge: Callable[[bytes], Any]) -> None:
    """The poller's ``fast`` leaves every receive to the task, with ``forge(data)`` as the
    request it says it decoded."""

    def made(self: ConnectionServer, socket: PolledSocket, *args: Any) -> Any:
        def fast(data: bytes) -> bool:
            socket.decoded = forge(data)
            return False

        return fast

    monkeypatch.setattr(ConnectionServer, "_fast_lone", made)


async def test_the_very_receive_takes_the_decoded_request(monkeypatch) -> None:
    """(The control: what the task takes is what ``decoded`` says, for that receive.)"""
    _forging(monkeypatch, lambda data: (data, _FORGED))
    assert await _exchange(_server(Decisions()), _append("Q-WAIT", "real"), 1) == ["many:FORGED"]


async def test_equal_bytes_of_another_receive_do_not_take_it(monkeypatch) -> None:
    _forging(monkeypatch, lambda data: (bytes(bytearray(data)), _FORGED))
    assert await _exchange(_server(Decisions()), _append("Q-WAIT", "real"), 1) == ["many:real"]


async def test_a_receive_of_two_frames_does_not_take_it(monkeypatch) -> None:
    _forging(monkeypatch, lambda data: (data, _FORGED))
    frames = _append("Q-WAIT", "one") + _append("Q-WAIT", "two")
    assert await _exchange(_server(Decisions()), frames, 2) == ["many:one", "many:two"]


async def test_decoded_never_stays_set_whichever_path_the_request_took(polled) -> None:
    rng = random.Random(7)
    decisions = Decisions()
    server = _server(decisions)
    with trio.fail_after(DEADLINE):
        async with _serving(server) as port:
            client = await _connect(port)
            for step in range(120):
                kind = rng.choice(["LONE", "WAIT", "HEADERS", "SPLIT", "BAD", "BURST"])
                name = f"s{step}"
                if kind == "BAD":  # (starts as an APPEND, does not decode)
                    await client.stream.send_all(
                        encode_frame(b'{"operation":"APPEND","queue_name":"Q-WAIT",')
                    )
                    assert "not valid" in (await client.answers(1))[0]
                elif kind == "BURST":
                    await client.stream.send_all(
                        _append("Q-WAIT", name + "a") + _append("Q-LONE", name + "b")
                    )
                    assert await client.answers(2) == [f"many:{name}a", f"many:{name}b"]
                elif kind == "SPLIT":
                    frame = _append("Q-WAIT", name)
                    cut = rng.randrange(1, len(frame))
                    await client.stream.send_all(frame[:cut])
                    await trio.sleep(0.001)
                    await client.stream.send_all(frame[cut:])
                    assert await client.answers(1) == [f"many:{name}"]
                elif kind == "HEADERS":
                    await client.stream.send_all(_append("Q-LONE", name, headers={"k": "v"}))
                    assert await client.answers(1) == [f"many:{name}"]
                else:
                    await client.stream.send_all(_append(f"Q-{kind}", name))
                    path = "lone" if kind == "LONE" else "many"
                    assert await client.answers(1) == [f"{path}:{name}"]
                assert polled and all(
                    socket.decoded is None and not socket.lone_refused for socket in polled
                ), (step, kind)
            await client.stream.aclose()


async def test_an_append_before_auth_decoded_by_the_poller_is_still_refused(
    monkeypatch, polled
) -> None:
    """Even were the poller to decode an APPEND before AUTH and leave it to the task (it
    does not: it asks first whether the session lets clients through), the task's checks
    refuse it: the request taken is checked as a decoded one is."""
    _forging(monkeypatch, lambda data: (data, ("Q-LONE", b'"x"', "x")))
    decisions = Decisions()
    server = _server(decisions)
    server.security = Security(tokens=frozenset({"a-token-of-some-length"}))
    with trio.fail_after(DEADLINE):
        async with _serving(server) as port:
            client = await _connect(port)
            await client.stream.send_all(_append("Q-LONE", "before"))
            while (frame := client.decoder.next_frame()) is None:
                client.decoder.feed(await client.stream.receive_some(1 << 16))
            assert orjson.loads(frame)["status"] == "error"
            await client.stream.aclose()
    assert decisions.lone == 0 and decisions.many == 0


async def test_the_budgets_wait_takes_the_decoded_request_and_leaves_nothing_set(
    polled, decodes
) -> None:
    """The poller decodes a lone APPEND, finds the memory budget spent (the connection's
    first request is not answered yet) and leaves it to the task, which waits for the
    budget, then decides the request the poller decoded: once decoded, answered in order."""
    decisions = Decisions()
    first, second = _append("Q-LATE", "one" + "y" * 80), _append("Q-LATE", "two" + "y" * 80)
    server = _server(decisions, max_buffered_bytes=len(first) + len(first) // 2)
    with trio.fail_after(DEADLINE):
        async with _serving(server) as port:
            client = await _connect(port)
            await client.stream.send_all(first)
            await _until(lambda: decisions.lone == 1)
            await client.stream.send_all(second)
            await _until(lambda: server.budget.paused == 1)
            assert polled[0].decoded is None  # (taken by the task, which waits)
            decisions.settle()
            assert (await client.answers(1))[0].startswith("lone:one")
            await _until(lambda: decisions.lone == 2)
            decisions.settle()
            assert (await client.answers(1))[0].startswith("lone:two")
            await client.stream.aclose()
    assert decodes == [first[4:], second[4:]]
    assert polled[0].decoded is None and not polled[0].lone_refused


@pytest.mark.parametrize("seed", range(4))
async def test_connections_racing_for_a_tight_budget_decode_each_request_once_in_order(
    seed, polled, decodes
) -> None:
    """Several connections at once under a memory budget a few requests wide, each sending
    a few requests one receive at a time before it reads their answers: the poller refuses
    lone APPENDs for the budget (a connection holds an answer not known yet; another
    connection may take the budget between the poller's refusal and the task's own try),
    leaves some to ``handle_many``, serves others; every answer is its request's, in order,
    from a path it may take, and every payload is decoded exactly once."""
    rng = random.Random(seed)
    decisions = Decisions()
    frame_size = len(_append("Q-LATE", "c0-00-0"))
    server = _server(decisions, max_buffered_bytes=frame_size * 3)
    sent = 0

    async def settler() -> None:
        while True:
            await trio.sleep(0.004)
            decisions.settle()

    async def one_connection(port: int, name: str) -> None:
        nonlocal sent
        client = await _connect(port)
        async with client.stream:
            for step in range(25):
                expected = []
                for index in range(rng.randrange(1, 4)):
                    kind = rng.choice(["LONE", "LATE", "LATE", "WAIT", "HEADERS"])
                    data = f"{name}-{step:02d}-{index}"
                    if kind == "HEADERS":
                        frame = _append("Q-LONE", data, headers={"k": "v"})
                    else:
                        frame = _append(f"Q-{kind}", data)
                    paths = ("lone", "many") if kind in ("LONE", "LATE") else ("many",)
                    expected.append((paths, data))
                    sent += 1
                    await client.stream.send_all(frame)
                    await trio.sleep(0.001)  # (mostly a receive of its own)
                got = await client.answers(len(expected))
                for text, (paths, data) in zip(got, expected, strict=True):
                    path, _, value = text.partition(":")
                    assert path in paths and value == data, (text, paths, data)

    with trio.fail_after(DEADLINE):
        async with _serving(server) as port, trio.open_nursery() as nursery:
            nursery.start_soon(settler)
            async with trio.open_nursery() as clients:
                for name in ("c0", "c1", "c2", "c3"):
                    clients.start_soon(one_connection, port, name)
            nursery.cancel_scope.cancel()
    assert len(decodes) == sent
    assert server.budget.paused > 0  # (the budget's refusal was taken)
    assert server.budget.used == 0
    assert all(socket.decoded is None and not socket.lone_refused for socket in polled)
