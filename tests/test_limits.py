"""Limits that hold (docs/reliability.md, "Resource limits"): descriptors, stalled frames, the
buffer budget, AUTH guessing, and tokens without a cluster secret.

Real brokers on 127.0.0.1; the descriptor test runs a broker process with a lowered open-file
limit. Every loop is bounded in count and time.
"""

from __future__ import annotations

import logging
import resource
import socket
import sys

import pytest
import trio
import trio.testing

from trio_broker._cli._node_options import SettingsError, add_arguments, resolve
from trio_broker._runtime import BrokerConfig, open_broker
from trio_broker._runtime._limits import (
    OWN_DESCRIPTORS,
    BufferBudget,
    check_descriptor_limit,
    descriptors_needed,
)
from trio_broker._runtime._security import AuthThrottle, SecurityConfigError, load_security

from . import processes
from .processes import open_nodes
from .wire import RawConnection, create_queue, request

DEADLINE = 20


def events(caplog, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == name]


# -- descriptors ------------------------------------------------------------------------------


def test_a_low_open_file_limit_is_reported_with_what_to_set(caplog):
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    caplog.set_level(logging.WARNING, logger="trio_broker")
    assert check_descriptor_limit(max(soft - OWN_DESCRIPTORS, 1)) == soft
    assert events(caplog, "broker.descriptor_limit_low") == []
    check_descriptor_limit(soft)  # soft connections + the broker's own descriptors > soft
    (record,) = events(caplog, "broker.descriptor_limit_low")
    needed = descriptors_needed(soft)
    assert record.fields["needed"] == needed and record.fields["open_file_limit"] == soft
    assert f"ulimit -n {needed}" in record.fields["fix"]
    assert f"--max-connections to {soft - OWN_DESCRIPTORS}" in record.fields["fix"]


LIMITED_NODE = """
import resource, runpy, sys
resource.setrlimit(resource.RLIMIT_NOFILE, ({limit}, {limit}))  # the node raises soft to hard
sys.argv = ["trio_broker", "node", *sys.argv[1:]]
runpy.run_module("trio_broker", run_name="__main__", alter_sys=True)
"""


async def _query(port: int) -> tuple[RawConnection, dict | None]:
    """A connection and its answer to CLUSTER_QUERY (None: closed without one)."""
    conn = await RawConnection.open(port)
    with trio.fail_after(10):  # a refused client is answered, never left hanging
        await conn.send({"operation": "CLUSTER_QUERY"})
        return conn, await conn.receive()


async def test_out_of_descriptors_new_clients_are_refused_not_left_hanging(tmp_path, monkeypatch):
    limit = 64
    monkeypatch.setattr(
        processes,
        "node_command",
        lambda *args: [sys.executable, "-c", LIMITED_NODE.format(limit=limit), *args],
    )
    async with open_nodes(tmp_path) as nodes:
        node = await nodes.start(tmp_path / "data", extra_args=["--max-connections", "1000"])
        assert "broker.descriptor_limit_low" in node.stderr_text()
        assert f"ulimit -n {descriptors_needed(1000)}" in node.stderr_text()
        held: list[RawConnection] = []
        refusals = []
        try:
            for _ in range(limit + 20):  # bounded: the limit is hit well before
                conn, answer = await _query(node.port)
                if answer is not None and answer["status"] == "success":
                    held.append(conn)
                    continue
                await conn.aclose()
                refusals.append(answer)
                if len(refusals) == 3:  # the spare descriptor came back each time
                    break
            assert len(refusals) == 3, f"{len(held)} connections, no refusal"
            for answer in refusals:
                assert answer is not None, "closed without the UNAVAILABLE answer"
                assert answer["status"] == "error" and answer["code"] == "UNAVAILABLE", answer
                assert "out of file descriptors" in answer["message"]
        finally:
            for conn in held:
                await conn.aclose()
        # Descriptors freed: new clients are served again (the accept loop backs off at most
        # half a second between attempts).
        with trio.fail_after(DEADLINE):
            while True:
                conn, answer = await _query(node.port)
                await conn.aclose()
                if answer is not None and answer["status"] == "success":
                    break
                await trio.sleep(0.1)
        stderr = node.stderr_text()
        # Logged once per burst, not once per attempt; and the end of the burst too.
        assert 1 <= stderr.count("connection.descriptors_exhausted") <= 3, stderr
        assert "connection.descriptors_recovered" in stderr
        assert node.running


# -- a connection stalled inside a frame ------------------------------------------------------


async def test_a_connection_stalled_inside_a_frame_is_closed_an_idle_one_is_not(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="trio_broker")
    config = BrokerConfig(data_dir=tmp_path / "b", port=0, frame_timeout=0.5)
    async with open_broker(config) as broker:
        idle = await RawConnection.open(broker.port)
        stalled = await RawConnection.open(broker.port)
        dripping = await RawConnection.open(broker.port)
        whole = request({"operation": "CLUSTER_QUERY"})
        await stalled.send_raw(whole[:7])  # the length and three bytes, then nothing
        with trio.fail_after(DEADLINE):
            # One byte every 0.1 s: progress, but the frame never arrives within 0.5 s.
            for byte in whole[:8]:
                await dripping.send_raw(bytes([byte]))
                await trio.sleep(0.1)
            assert await dripping.receive() is None
            assert await stalled.receive() is None
        # Idle between frames for longer than frame_timeout: still served, as are frames that
        # arrive in pieces within it.
        await trio.sleep(0.6)
        answer = await idle.call({"operation": "CLUSTER_QUERY"})
        assert answer["status"] == "success"
        await idle.send_raw(whole[:5])
        await trio.sleep(0.1)
        await idle.send_raw(whole[5:])
        assert (await idle.receive())["status"] == "success"
        for conn in (idle, stalled, dripping):
            await conn.aclose()
    timeouts = events(caplog, "connection.frame_timeout")
    assert len(timeouts) == 2
    buffered = sorted(r.fields["buffered"] for r in timeouts)
    # The stalled one: the length prefix and 3 bytes; the dripping one: what came in 0.5 s.
    assert 7 in buffered and all(1 <= b <= 8 for b in buffered), buffered


# -- one budget for buffered bytes ------------------------------------------------------------


async def test_connections_that_pipeline_and_never_read_share_one_budget(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="trio_broker")
    budget = 2 * 1024 * 1024
    value = "v" * (64 * 1024)
    hogs, per_hog = 8, 100  # 8 x 100 x 64 KB = 51 MB offered at once
    config = BrokerConfig(data_dir=tmp_path / "b", port=0, max_buffered_bytes=budget)
    async with open_broker(config) as broker:
        server = broker.connections
        queue_id = await create_queue(broker.port)
        append = {"operation": "APPEND", "queue_name": queue_id, "data": value}
        frame_size = len(request(append))
        conns = [await RawConnection.open(broker.port) for _ in range(hogs)]

        async def pipeline(conn: RawConnection) -> None:
            with trio.move_on_after(DEADLINE):
                await conn.send(*([append] * per_hog))  # never reads an answer

        async with trio.open_nursery() as nursery:
            for conn in conns:
                nursery.start_soon(pipeline, conn)
            # Meanwhile a client that reads its answers is served, one request at a time.
            with trio.fail_after(DEADLINE):
                polite = await RawConnection.open(broker.port)
                for i in range(5):
                    answer = await polite.call(
                        {"operation": "APPEND", "queue_name": queue_id, "data": i}
                    )
                    assert answer["status"] == "success", answer
                    assert server.budget.used <= budget + (hogs + 1) * (frame_size + 4096)
                await polite.aclose()
            nursery.cancel_scope.cancel()
        for conn in conns:
            await conn.aclose()
        assert server.budget.paused > 0, "the budget was never reached: the test proves nothing"
        # Over the limit only by one frame per connection that held nothing (and an answer).
        assert server.budget.peak <= budget + (hogs + 1) * (frame_size + 4096)
        with trio.fail_after(DEADLINE):
            while server.connections:  # noqa: ASYNC110 (bounded wait for the hogs to end)
                await trio.sleep(0.05)
        assert server.budget.used == 0  # every byte charged was given back
    assert events(caplog, "connection.paused_for_memory")


async def _small_window(port: int) -> RawConnection:
    """A connection whose receive buffer is small: answers it does not read stay with the
    broker rather than in the kernel's buffers."""
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    await sock.connect(("127.0.0.1", port))
    return RawConnection(trio.SocketStream(sock))


async def _settled(budget: BufferBudget) -> None:
    """Until the budget's total stops moving for a moment (bounded)."""
    with trio.move_on_after(5):
        last = -1
        while budget.used != last:
            last = budget.used
            await trio.sleep(0.1)


async def test_answers_a_client_never_reads_count_against_the_budget(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="trio_broker")
    budget, in_flight, hogs = 4 * 1024 * 1024, 16, 16
    value = "r" * (256 * 1024)
    config = BrokerConfig(
        data_dir=tmp_path / "b", port=0, max_buffered_bytes=budget, max_in_flight=in_flight
    )
    async with open_broker(config) as broker:
        server = broker.connections
        queue_id = await create_queue(broker.port)
        writer = await RawConnection.open(broker.port)
        with trio.fail_after(DEADLINE):
            for _ in range(48):
                answer = await writer.call(
                    {"operation": "APPEND", "queue_name": queue_id, "data": value}
                )
                assert answer["status"] == "success"
        answer_size = len(request({"status": "success", "sequence_num": 48, "data": value}))
        conns = []
        # Each reads the 48 values (12 MB) and never reads an answer: without the budget,
        # max_in_flight answers (4 MB) would stay buffered for each, 64 MB in all.
        for i in range(hogs):
            conn = await _small_window(broker.port)
            conns.append(conn)
            reads = [{"operation": "READ", "queue_name": queue_id, "client_id": f"c{i}"}] * 48
            with trio.move_on_after(1):
                await conn.send(*reads)
            await _settled(server.budget)
        with trio.fail_after(DEADLINE):  # a client that reads its answers is still served
            answer = await writer.call(
                {"operation": "READ", "queue_name": queue_id, "client_id": "polite"}
            )
        assert answer["data"] == value
        paused = len(events(caplog, "connection.paused_for_memory"))
        # Once the budget was full, every new reader stopped at its first answer.
        assert paused >= hogs - 4, paused
        # Over the budget by at most the answers of the connection that filled it, of one
        # more that began before they were known, and one answer for each connection.
        slack = 2 * in_flight * answer_size + (hogs + 1) * answer_size
        assert server.budget.peak <= budget + slack, (server.budget.peak, budget + slack)
        assert budget + slack < hogs * in_flight * answer_size  # the bound means something
        for conn in [*conns, writer]:
            await conn.aclose()
        with trio.fail_after(DEADLINE):
            while server.connections:  # noqa: ASYNC110 (bounded wait for the hogs to end)
                await trio.sleep(0.05)
        assert server.budget.used == 0


async def test_an_account_waits_for_room_unless_it_holds_nothing():
    budget = BufferBudget(100)
    a, b = budget.account(), budget.account()
    assert not await a.acquire(80)
    assert not await b.acquire(80)  # holds nothing: may always take one
    assert budget.used == budget.peak == 160
    got = []

    async def more() -> None:
        got.append(await a.acquire(10))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(more)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []  # a holds 80 and the total is over the limit: it waits
        b.release(80)
    assert got == [True] and budget.paused == 1 and budget.used == 90
    a.close()
    assert budget.used == 0 and a.held == 0


# -- AUTH guessing ------------------------------------------------------------------------------


def test_auth_failures_wait_longer_each_time_capped_and_per_address():
    throttle = AuthThrottle(first=0.1, cap=1.0)
    delays = [throttle.failed("10.0.0.1", n, now=100.0 + 10 * n) for n in range(1, 7)]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    # A fresh connection from the same address starts where the address is, not at 0.1.
    assert throttle.failed("10.0.0.1", 1, now=200.0) == pytest.approx(1.0)
    # Another address is not slowed by this one.
    assert throttle.failed("10.0.0.2", 1, now=200.0) == pytest.approx(0.1)
    # Parallel connections from one address are answered one after another...
    now = 300.0
    waits = [throttle.failed("10.0.0.1", 1, now=now) for _ in range(5)]
    assert waits[:4] == pytest.approx([1.0, 2.0, 3.0, 4.0])
    assert waits[4] is None  # ... and beyond four caps of waiting, closed unanswered
    # An address's failures are forgotten after the window.
    assert throttle.failed("10.0.0.1", 1, now=now + throttle.window + 10) == pytest.approx(0.1)


def test_the_address_table_is_bounded():
    throttle = AuthThrottle(max_addresses=100)
    for i in range(1000):
        throttle.failed(f"10.0.{i // 256}.{i % 256}", 1, now=float(i))
    assert len(throttle) == 100
    assert throttle.failures("10.0.3.231") == 1  # the newest (i = 999) is kept
    assert throttle.failures("10.0.0.0") == 0  # the oldest went


async def test_guessing_tokens_is_slowed_and_the_connection_closed(tmp_path, secret_file):
    tokens = tmp_path / "tokens"
    tokens.write_text("sesame\n")
    config = BrokerConfig(
        data_dir=tmp_path / "b",
        port=0,
        client_tokens_file=tokens,
        cluster_secret_file=secret_file,
    )
    async with open_broker(config) as broker:
        throttle = broker.connections.auth_throttle = AuthThrottle(first=0.05, cap=0.2)
        conn = await RawConnection.open(broker.port)
        guesses = [{"operation": "AUTH", "token": f"guess-{i}"} for i in range(1000)]
        started = trio.current_time()
        with trio.fail_after(DEADLINE):
            await conn.send(*guesses)
            answers = []
            while (answer := await conn.receive()) is not None:
                answers.append(answer)
        elapsed = trio.current_time() - started
        assert [a["code"] for a in answers] == ["UNAUTHORIZED"] * throttle.per_connection
        assert elapsed >= 0.05 + 0.1 + 0.2 + 0.2 + 0.2  # each failure waited
        assert throttle.failures("127.0.0.1") == throttle.per_connection
        # The next connection from this address waits the cap from its first failure; a right
        # token is not slowed, and the connection stays usable.
        conn = await RawConnection.open(broker.port)
        started = trio.current_time()
        answer = await conn.call({"operation": "AUTH", "token": "wrong"})
        assert answer["code"] == "UNAUTHORIZED" and trio.current_time() - started >= 0.2
        assert (await conn.call({"operation": "AUTH", "token": "sesame"}))["status"] == "success"
        assert (await conn.call({"operation": "CREATE_QUEUE"}))["status"] == "success"
        await conn.aclose()


@pytest.fixture
def secret_file(tmp_path) -> str:
    path = tmp_path / "cluster.secret"
    path.write_text("0123456789abcdef0123456789abcdef\n")
    return str(path)


# -- tokens without a cluster secret ------------------------------------------------------------


def parse(*argv: str):
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


async def test_tokens_without_a_secret_are_refused_unless_allowed(tmp_path, secret_file):
    tokens = tmp_path / "tokens"
    tokens.write_text("sesame\n")
    refused = BrokerConfig(data_dir=tmp_path / "b", port=0, client_tokens_file=tokens)
    with pytest.raises(SecurityConfigError, match="--allow-open-peers"):
        load_security(refused)
    with pytest.raises(SecurityConfigError, match="without a cluster secret"):
        async with open_broker(refused):
            pytest.fail("started")  # pragma: no cover
    assert not (tmp_path / "b").exists() or not any((tmp_path / "b").iterdir())
    with pytest.raises(SettingsError, match="--allow-open-peers"):
        resolve(parse("--client-tokens-file", str(tokens)), environ={})
    config, _, sources = resolve(
        parse("--client-tokens-file", str(tokens), "--allow-open-peers"), environ={}
    )
    assert config.allow_open_peers and sources["allow_open_peers"] == "flag"
    config, _, _ = resolve(
        parse("--client-tokens-file", str(tokens), "--cluster-secret-file", secret_file),
        environ={},
    )
    assert not config.allow_open_peers
    load_security(config)  # with a secret: fine


def test_the_new_settings_have_flags():
    config, _, sources = resolve(
        parse("--frame-timeout", "2.5", "--max-buffered-bytes", "1048576"), environ={}
    )
    assert config.frame_timeout == 2.5 and config.max_buffered_bytes == 1048576
    assert sources["frame_timeout"] == sources["max_buffered_bytes"] == "flag"
    defaults, _, _ = resolve(parse(), environ={})
    assert defaults.frame_timeout == 30.0 and defaults.max_buffered_bytes == 256 * 1024 * 1024
    for bad in (("--frame-timeout", "0"), ("--max-buffered-bytes", "-1")):
        with pytest.raises(SettingsError, match="must be positive"):
            resolve(parse(*bad), environ={})
