"""The connections' poller (``_runtime/_poller.py``) at its edges: reads that fill exactly,
bursts then silence, the checks a lone APPEND must pass (authentication, the memory budget,
the frame size limit), and a descriptor number reused by the next connection."""

from __future__ import annotations

import socket
from typing import Any

import orjson
import pytest
import trio
import trio.testing

from tests.test_poller_connections import (
    DEADLINE,
    Decisions,
    _append,
    _connect,
    _server,
    _serving,
    _until,
    pytestmark,  # noqa: F401  (skipped where there is no epoll)
)
from trio_broker._protocol import encode_frame
from trio_broker._runtime._security import Security


def _frames_of_exactly(total: int, prefix: str) -> tuple[bytes, int]:
    """Lone APPENDs (``Q-LONE``) whose frames add up to exactly ``total`` bytes; how many."""
    frames: list[bytes] = []
    size = 0
    index = 0
    while total - size > 200:
        frame = _append("Q-LONE", f"{prefix}{index:06d}")
        frames.append(frame)
        size += len(frame)
        index += 1
    last = _append("Q-LONE", "")
    pad = total - size - len(last)
    frames.append(_append("Q-LONE", "x" * pad))
    data = b"".join(frames)
    assert len(data) == total
    return data, len(frames)


async def test_bursts_of_exactly_one_receive_then_silence_are_all_answered():
    """Edge-triggered: a read that fills the 64 KiB asked for must be followed by another,
    though no new event comes; a client that sends bursts of exactly 65536 bytes then waits
    (no more bytes, so no more edges) gets every answer."""
    decisions = Decisions()
    server = _server(decisions)
    with trio.fail_after(DEADLINE):
        async with _serving(server) as port:
            client = await _connect(port)
            for burst in range(4):
                data, count = _frames_of_exactly(65536 * (burst + 1), f"b{burst}-")
                await client.stream.send_all(data)
                got = await client.answers(count)
                assert len(got) == count
                assert all(text.startswith(("lone:", "many:")) for text in got)
            await client.stream.send_all(_append("Q-LONE", "after"))
            assert (await client.answers(1))[0].endswith(":after")
            await client.stream.aclose()


async def test_one_frame_waits_for_its_answer_while_other_connections_pour():
    """A client that sends one frame and waits is answered while other connections keep
    the poller busy with bursts."""
    decisions = Decisions()
    server = _server(decisions)
    with trio.fail_after(DEADLINE):
        async with _serving(server) as port:

            async def pour(name: str) -> None:
                client = await _connect(port)
                for step in range(20):
                    data, count = _frames_of_exactly(65536, f"{name}{step}-")
                    await client.stream.send_all(data)
                    assert len(await client.answers(count)) == count
                await client.stream.aclose()

            async with trio.open_nursery() as nursery:
                for name in "abc":
                    nursery.start_soon(pour, name)
                quiet = await _connect(port)
                for index in range(50):
                    await quiet.stream.send_all(_append("Q-LONE", f"q{index}"))
                    assert (await quiet.answers(1))[0].endswith(f":q{index}")
                await quiet.stream.aclose()


async def test_an_unauthenticated_append_is_never_decided_by_the_poller():
    """With client tokens, an APPEND before AUTH is refused by the read loop's checks; the
    poller must leave it to the task, and decide nothing."""
    decisions = Decisions()
    server = _server(decisions)
    server.security = Security(tokens=frozenset({"a-token-of-some-length"}))
    with trio.fail_after(DEADLINE):
        async with _serving(server) as port:
            client = await _connect(port)
            for index in range(5):
                await client.stream.send_all(_append("Q-LONE", f"m{index}"))
                data = await client.stream.receive_some(1 << 16)
                assert data, "closed"
                client.decoder.feed(data)
                frame = client.decoder.next_frame()
                assert frame is not None
                assert orjson.loads(frame)["status"] == "error"
                assert "lone:" not in orjson.loads(frame)["message"]
            await client.stream.aclose()
    assert decisions.lone == 0 and decisions.many == 0
    assert server.poller is not None and server.poller.served == 0


async def test_after_auth_the_poller_serves_the_sessions_appends():
    """The check is asked per receive, as the read loop asks it: refused before AUTH (the
    task answers), served by the poller once the token is proved."""
    decisions = Decisions()
    server = _server(decisions)
    server.security = Security(tokens=frozenset({"sesame"}))
    with trio.fail_after(DEADLINE):
        async with _serving(server) as port:
            client = await _connect(port)
            await client.stream.send_all(_append("Q-LONE", "before"))
            assert "lone:" not in (await client.answers(1))[0]
            await client.stream.send_all(
                encode_frame(orjson.dumps({"operation": "AUTH", "token": "sesame"}))
            )
            while (frame := client.decoder.next_frame()) is None:
                client.decoder.feed(await client.stream.receive_some(1 << 16))
            assert orjson.loads(frame)["status"] == "success"
            await client.stream.send_all(_append("Q-LONE", "after"))
            assert await client.answers(1) == ["lone:after"]
            await client.stream.aclose()
    assert server.poller is not None and server.poller.served == 1


async def test_a_lone_append_over_the_memory_budget_waits_in_the_task_and_is_answered():
    """The budget the read loop takes per request: the poller takes it too; a connection
    holding a request not yet answered, whose next one would pass the limit, is not decided
    until the first is answered (its task waits for the budget), then is."""
    decisions = Decisions()
    first, second = _append("Q-LATE", "one" + "y" * 80), _append("Q-LATE", "two" + "y" * 80)
    server = _server(decisions, max_buffered_bytes=len(first) + len(first) // 2)
    with trio.fail_after(DEADLINE):
        async with _serving(server) as port:
            client = await _connect(port)
            await client.stream.send_all(first)
            await _until(lambda: decisions.lone == 1)
            await client.stream.send_all(second)
            await trio.testing.wait_all_tasks_blocked(0.02)
            assert decisions.lone == 1  # held back: over the budget
            assert server.budget.paused == 1
            decisions.settle()
            assert (await client.answers(1))[0].startswith("lone:one")
            await _until(lambda: decisions.lone == 2)
            decisions.settle()
            assert (await client.answers(1))[0].startswith("lone:two")
            await client.stream.aclose()
            await _until(lambda: server.connections == 0)
    assert server.budget.used == 0


async def test_a_whole_frame_over_max_frame_is_refused_and_closes():
    decisions = Decisions()
    server = _server(decisions, max_frame=1024)
    with trio.fail_after(DEADLINE):
        async with _serving(server) as port:
            client = await _connect(port)
            await client.stream.send_all(_append("Q-LONE", "ok"))
            assert await client.answers(1) == ["lone:ok"]
            await client.stream.send_all(_append("Q-LONE", "z" * 2000))
            got = b""
            while data := await client.stream.receive_some(1 << 16):
                got += data
            client.decoder.feed(got)
            frame = client.decoder.next_frame()
            assert frame is not None and orjson.loads(frame)["status"] == "error"
            await client.stream.aclose()
    assert decisions.lone == 1


async def test_a_descriptor_number_reused_by_the_next_connection_is_its_own():
    """A connection closes; the next one accepted gets its descriptor number: the epoll and
    the poller's table know only the new one, which is served as itself."""
    decisions = Decisions()
    server = _server(decisions)
    with trio.fail_after(DEADLINE):
        async with _serving(server) as port:
            poller = server.poller
            assert poller is not None
            reused = 0
            last = -1
            for index in range(20):
                client = await _connect(port)
                await client.stream.send_all(_append("Q-LONE", f"m{index}"))
                assert await client.answers(1) == [f"lone:m{index}"]
                (fd,) = poller._polled
                if fd == last:
                    reused += 1
                last = fd
                if index % 2:
                    client.stream.socket.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                    )
                await client.stream.aclose()
                await _until(lambda: server.connections == 0)
                assert not poller._polled
            assert reused > 0
    assert poller.served == 20


async def test_a_peer_hello_hands_the_socket_over_and_every_later_byte_reaches_the_peer():
    """PEER_HELLO: the connection leaves the epoll before the peer stream's reader takes the
    socket (through trio); frames that came with the hello, and every one after, reach it."""
    from trio_broker._protocol import FrameDecoder, encode_frame

    got: list[bytes] = []
    polled_at_handover: list[int] = []
    decisions = Decisions()
    server = _server(decisions)

    async def serve_peer(stream: Any, decoder: FrameDecoder, peer: str, broker_id: str) -> bool:
        polled_at_handover.append(len(server.poller._polled))  # type: ignore[union-attr]
        while len(got) < 6:
            while (frame := decoder.next_frame()) is not None:
                got.append(frame)
            if len(got) >= 6:
                break
            data = await stream.receive_some(1 << 16)
            if not data:
                break
            decoder.feed(data)
        return True

    server._serve_peer = serve_peer  # type: ignore[assignment]
    hello = encode_frame(
        orjson.dumps({"operation": "PEER_HELLO", "broker_id": "B-BBBBB", "cluster_id": "G-AAAAA"})
    )
    peer_frames = [encode_frame(b'{"type":"HEARTBEAT","n":%d}' % n) for n in range(6)]
    with trio.fail_after(DEADLINE):
        async with _serving(server) as port:
            client = await _connect(port)
            await client.stream.send_all(_append("Q-LONE", "first"))
            assert await client.answers(1) == ["lone:first"]
            await client.stream.send_all(hello + peer_frames[0])
            for frame in peer_frames[1:]:
                await trio.sleep(0.01)
                await client.stream.send_all(frame)
            await _until(lambda: len(got) == 6)
            await client.stream.aclose()
            await _until(lambda: server.connections == 0)
    assert got == [frame[4:] for frame in peer_frames]
    assert polled_at_handover == [0]


@pytest.mark.parametrize(("seed", "max_in_flight"), [(0, 1), (1, 3), (2, 64), (3, 256)])
async def test_connections_that_come_go_and_reset_under_load_leave_no_one_hanging(
    seed, max_in_flight
):
    """Many connections at once, each a random life: bursts (some of exactly 64 KiB), lone
    frames, frames cut in two, requests that wait; some reset mid-flight and new ones take
    their descriptor numbers. Every connection that stays gets every answer in order, and
    the epoll holds nothing once all are gone."""
    import random

    rng = random.Random(seed)
    decisions = Decisions()
    server = _server(decisions, max_in_flight=max_in_flight)

    async def life(port: int, name: str, lives: int) -> None:
        for generation in range(lives):
            client = await _connect(port)
            reset = rng.random() < 0.3
            steps = rng.randrange(4, 12)
            for step in range(steps):
                shape = rng.choice(["lone", "lone", "wait", "burst", "full", "cut"])
                tag = f"{name}{generation}-{step}"
                if shape == "full":
                    data, count = _frames_of_exactly(65536, tag + "-")
                elif shape == "burst":
                    count = rng.randrange(2, 30)
                    data = b"".join(_append("Q-LONE", f"{tag}-{i}") for i in range(count))
                else:
                    count = 1
                    data = _append("Q-WAIT" if shape == "wait" else "Q-LONE", tag)
                if shape == "cut":
                    await client.stream.send_all(data[:7])
                    await trio.lowlevel.checkpoint()
                    await client.stream.send_all(data[7:])
                else:
                    await client.stream.send_all(data)
                if reset and step == steps // 2:
                    client.stream.socket.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                    )
                    await client.stream.aclose()  # (an RST, requests in flight)
                    break
                got = await client.answers(count)
                assert len(got) == count
                if count == 1:
                    assert got[0].endswith(":" + tag)
                else:
                    assert got[0].split(":", 1)[1].startswith(tag + "-")
            else:
                await client.stream.aclose()

    with trio.fail_after(DEADLINE):
        async with _serving(server) as port:
            async with trio.open_nursery() as nursery:
                for index in range(8):
                    nursery.start_soon(life, port, f"c{index}-", 2)
            await _until(lambda: server.connections == 0)
            assert server.poller is not None and not server.poller._polled
    assert server.poller.served > 0


async def test_the_rest_of_a_frame_begun_is_never_taken_for_a_frame_of_its_own():
    """A frame begun in one receive, whose rest (the next receive) happens to read as one
    whole APPEND frame: it is the rest of the frame begun, not a request (the poller must not
    take it while the decoder holds the start)."""
    decisions = Decisions()
    server = _server(decisions)
    inner = _append("Q-LONE", "smuggled")
    payload = b"{" + inner  # (not JSON: the frame is refused as a whole)
    outer = len(payload).to_bytes(4, "big") + payload
    with trio.fail_after(DEADLINE):
        async with _serving(server) as port:
            client = await _connect(port)
            await client.stream.send_all(outer[:5])
            await trio.testing.wait_all_tasks_blocked(0.02)
            await client.stream.send_all(outer[5:])
            await trio.testing.wait_all_tasks_blocked(0.02)
            await client.stream.send_all(_append("Q-LONE", "after"))
            while (frame := client.decoder.next_frame()) is None:
                received = await client.stream.receive_some(1 << 16)
                assert received, "closed without an answer"
                client.decoder.feed(received)
            first = orjson.loads(frame)
            assert first["status"] == "error" and "smuggled" not in first["message"]
            await client.stream.aclose()
    assert decisions.lone == 1  # "after" only
