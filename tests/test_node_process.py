"""``python -m trio_broker node`` as a process: startup, signals, crash durability, refusals."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio

from .processes import NodeProcess, Nodes, free_port, open_nodes, value_for
from .wire import RawConnection, call, create_queue

READER = "C-RDR01"


@pytest.fixture
async def nodes(tmp_path: Path):
    async with open_nodes(tmp_path) as nodes:
        yield nodes


def same(a: Any, b: Any) -> bool:
    """Equal as JSON, types included (1 is not 1.0, "7" is not 7)."""
    return orjson.dumps(a) == orjson.dumps(b)


async def read_all(port: int, queue_id: str, client_id: str, *, batch: int = 256) -> list[Any]:
    """Every message of the queue for a client starting at its current position, in order,
    checking the sequence numbers are consecutive; pipelined so it takes well under a second."""
    conn = await RawConnection.open(port)
    messages: list[tuple[int, Any]] = []
    try:
        with trio.fail_after(20):
            while True:
                request = {"operation": "READ", "queue_name": queue_id, "client_id": client_id}
                await conn.send(*[request] * batch)
                exhausted = False
                for _ in range(batch):
                    response = await conn.receive()
                    assert response is not None, "broker closed the connection"
                    assert response["status"] == "success", response
                    if "sequence_num" in response:
                        assert not exhausted, f"a message after no_messages: {response}"
                        messages.append((response["sequence_num"], response["data"]))
                    else:
                        assert response.get("message") == "no_messages", response
                        exhausted = True
                if exhausted:
                    break
    finally:
        await conn.aclose()
    seqs = [seq for seq, _ in messages]
    if seqs:
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "sequence numbers not consecutive"
    return messages


# -- 1. start, answer, stop, restart ----------------------------------------------------------


async def test_node_starts_answers_stops_on_sigterm_and_keeps_its_identity(nodes: Nodes, tmp_path):
    data_dir = tmp_path / "data"
    port = free_port()
    # Only --port and --data-dir: everything else is defaulted (host 127.0.0.1, fresh ids).
    node = await nodes.spawn(
        ["--port", str(port), "--data-dir", str(data_dir)], port=port, data_dir=data_dir
    )
    await node.wait_ready()
    assert node.broker_id is not None and node.broker_id.startswith("B-")
    assert node.cluster_id is not None and node.cluster_id.startswith("G-")
    assert node.host == "127.0.0.1"
    assert node.port == port
    assert Path(node.reported_data_dir) == data_dir.resolve()
    assert data_dir.is_dir()

    topology = await call(port, {"operation": "CLUSTER_QUERY", "client_id": "C-AAAAA"})
    assert topology["status"] == "success", topology
    assert topology["cluster_id"] == node.cluster_id
    assert topology["self_role"] == "leader"
    assert isinstance(topology["cluster_version"], int)
    [me] = topology["brokers"]
    assert me["broker_id"] == node.broker_id
    assert (me["host"], me["port"]) == ("127.0.0.1", port)
    assert (me["role"], me["status"]) == ("leader", "active")

    # Something to find again after the restart.
    queue_id = await create_queue(port)
    assert queue_id == f"Q-{node.cluster_id[2:]}" + queue_id[-5:]
    appended = await call(port, {"operation": "APPEND", "queue_name": queue_id, "data": 1.5})
    assert appended == {"status": "success", "sequence_num": 1}

    node.terminate()
    with trio.fail_after(5):
        status = await node.wait()
    assert status == 0, node.describe()

    again = await nodes.spawn(
        ["--port", str(port), "--data-dir", str(data_dir)], port=port, data_dir=data_dir
    )
    await again.wait_ready()
    assert (again.broker_id, again.cluster_id) == (node.broker_id, node.cluster_id)
    topology = await call(port, {"operation": "CLUSTER_QUERY"})
    assert topology["cluster_id"] == node.cluster_id
    assert [b["broker_id"] for b in topology["brokers"]] == [node.broker_id]
    assert await read_all(port, queue_id, "C-AAAAA") == [(1, 1.5)]

    again.interrupt()  # SIGINT is a graceful stop too
    with trio.fail_after(5):
        assert await again.wait() == 0, again.describe()


@pytest.mark.parametrize(
    ("first", "second"), [(signal.SIGINT, signal.SIGTERM), (signal.SIGTERM, signal.SIGINT)]
)
async def test_a_second_signal_while_stopping_is_noted_and_the_stop_goes_on(
    nodes: Nodes, tmp_path, first, second
):
    """Two signals back to back (a supervisor's SIGTERM after the terminal's SIGINT, or the
    other way round): the stop goes on and ends with status 0, the second signal noted in the
    log, not raised at the end as a traceback (SIGINT) or a death by signal (SIGTERM). (Two of
    the same signal back to back are one: the kernel and trio both coalesce them.)"""
    data_dir = tmp_path / "data"
    port = free_port()
    node = await nodes.spawn(
        ["--port", str(port), "--data-dir", str(data_dir)], port=port, data_dir=data_dir
    )
    await node.wait_ready()
    node.send_signal(first)
    node.send_signal(second)
    with trio.fail_after(10):
        status = await node.wait()
    assert status == 0, node.describe()
    stderr = node.stderr_text()
    assert "Traceback" not in stderr, node.describe()
    assert stderr.count("broker.signal ") == 2, node.describe()
    assert "broker.stopped" in stderr, node.describe()


# -- 2. durability under SIGKILL ---------------------------------------------------------------


class Stream:
    """What one pipelined client task sent and what it got acknowledged."""

    def __init__(self) -> None:
        self.sent = 0
        self.values: list[Any] = []  # appender: the value of each request, in send order
        self.acked: list[tuple[int, Any]] = []  # (sequence_num, data) acknowledged, in order
        self.answers = 0  # every answer, no_messages included
        self.errors: list[dict[str, Any]] = []
        self.finished = False  # stopped by its own bound rather than by losing the connection
        self.connection_lost = False

    @property
    def in_flight(self) -> int:
        return self.sent - self.answers


async def _pipeline(
    port: int,
    stream: Stream,
    next_request,
    on_answer,
    *,
    depth: int,
    duration: float,
    max_total: int,
) -> None:
    """Keep up to ``depth`` requests in flight on one connection until ``max_total`` requests,
    ``duration`` seconds, or the connection breaks (the broker was killed)."""
    conn = await RawConnection.open(port)
    slots = trio.Semaphore(depth)
    deadline = trio.current_time() + duration
    try:
        async with trio.open_nursery() as nursery:

            async def sender() -> None:
                try:
                    while stream.sent < max_total and trio.current_time() < deadline:
                        await slots.acquire()
                        request = next_request(stream.sent)
                        stream.sent += 1
                        await conn.send(request)
                    for _ in range(depth):  # wait for every answer
                        await slots.acquire()
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    return  # the receiver notices and ends the stream
                stream.finished = True
                nursery.cancel_scope.cancel()

            async def receiver() -> None:
                while True:
                    try:
                        response = await conn.receive()
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                        response = None
                    if response is None:
                        stream.connection_lost = True
                        nursery.cancel_scope.cancel()
                        return
                    index = stream.answers
                    stream.answers += 1
                    if response.get("status") != "success":
                        stream.errors.append(response)
                    else:
                        on_answer(index, response)
                    slots.release()

            nursery.start_soon(sender)
            nursery.start_soon(receiver)
    finally:
        await trio.aclose_forcefully(conn.stream)


async def append_stream(port: int, queue_id: str, stream: Stream) -> None:
    def next_request(i: int) -> dict[str, Any]:
        value = value_for(i)
        stream.values.append(value)
        return {
            "operation": "APPEND",
            "queue_name": queue_id,
            "data": value,
            "client_id": "C-WR001",
        }

    def on_answer(i: int, response: dict[str, Any]) -> None:
        stream.acked.append((response["sequence_num"], stream.values[i]))

    await _pipeline(
        port, stream, next_request, on_answer, depth=64, duration=3.0, max_total=200_000
    )


async def read_stream(port: int, queue_id: str, stream: Stream) -> None:
    request = {"operation": "READ", "queue_name": queue_id, "client_id": READER}

    def on_answer(i: int, response: dict[str, Any]) -> None:
        if "sequence_num" in response:
            stream.acked.append((response["sequence_num"], response["data"]))

    await _pipeline(
        port, stream, lambda i: request, on_answer, depth=16, duration=3.0, max_total=1_000_000
    )


@pytest.mark.parametrize("kill_after", [0.3, 1.0])
async def test_acknowledged_work_survives_sigkill(nodes: Nodes, tmp_path, kill_after):
    node = await nodes.start(tmp_path / "data")
    queue_id = await create_queue(node.port)
    appender, reader = Stream(), Stream()

    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(append_stream, node.port, queue_id, appender)
            nursery.start_soon(read_stream, node.port, queue_id, reader)
            await trio.sleep(kill_after)
            assert not appender.finished, "the appender finished before the kill: nothing tested"
            node.kill()
    assert await node.wait() == -signal.SIGKILL
    assert appender.connection_lost and reader.connection_lost

    assert appender.errors == [] and reader.errors == [], (appender.errors[:3], reader.errors[:3])
    acked_count = len(appender.acked)
    assert acked_count > 0 and reader.acked, "nothing was acknowledged before the kill"
    # One appender, answers in request order: the acknowledged appends are messages 1..N.
    assert [seq for seq, _ in appender.acked] == list(range(1, acked_count + 1))
    # The reader read every message once, in order, and each is what was appended.
    read_seqs = [seq for seq, _ in reader.acked]
    last_read = read_seqs[-1]
    assert read_seqs == list(range(1, last_read + 1))
    bad = [(s, d) for s, d in reader.acked if not same(d, appender.values[s - 1])]
    assert not bad, f"reader got wrong data: {bad[:5]}"

    print(
        f"killed after {kill_after} s: {appender.sent} appends sent, {acked_count} acknowledged; "
        f"{reader.sent} READs sent, {len(reader.acked)} messages read, {reader.in_flight} in flight"
    )
    restarted = await nodes.restart(node)
    assert (restarted.broker_id, restarted.cluster_id) == (node.broker_id, node.cluster_id)

    stored = await read_all(restarted.port, queue_id, "C-CHK01")
    total = len(stored)
    print(f"after restart: {total} messages stored")
    # Every acknowledged append is there, at its sequence number, with its value.
    assert total >= acked_count, (
        f"{acked_count} appends were acknowledged but only {total} messages survived"
    )
    assert stored[0][0] == 1
    lost = [(s, v) for s, v in appender.acked if not same(stored[s - 1][1], v)]
    assert not lost, f"{len(lost)} acknowledged appends lost or changed, first {lost[:5]}"
    # Unacknowledged appends may or may not have survived, but only as a prefix of what was
    # sent, never as anything else.
    assert total <= appender.sent
    garbage = [(s, d) for s, d in stored if not same(d, appender.values[s - 1])]
    assert not garbage, f"stored messages that were never sent: {garbage[:5]}"

    # The reader's position survived: not earlier (nothing read twice), and later only by READs
    # that were in flight when the node died (applied, but their answers lost).
    in_flight = reader.in_flight
    next_read = await call(
        restarted.port, {"operation": "READ", "queue_name": queue_id, "client_id": READER}
    )
    assert next_read["status"] == "success", next_read
    if "sequence_num" in next_read:
        seq = next_read["sequence_num"]
        assert seq > last_read, (
            f"reader position went back: last acknowledged read was {last_read}, "
            f"next READ returned {seq}"
        )
        assert seq <= last_read + 1 + in_flight, (
            f"reader position jumped: last acknowledged read {last_read}, {in_flight} READs "
            f"in flight, next READ returned {seq}"
        )
        assert same(next_read["data"], appender.values[seq - 1])
    else:
        assert next_read == {"status": "success", "message": "no_messages"}
        assert last_read <= total <= last_read + in_flight, (
            f"reader has read everything ({total} messages) after acknowledged read {last_read} "
            f"with only {in_flight} READs in flight"
        )

    # And the restarted node takes new work where the queue left off.
    appended = await call(
        restarted.port, {"operation": "APPEND", "queue_name": queue_id, "data": "after"}
    )
    assert appended == {"status": "success", "sequence_num": total + 1}


# -- 3. one data dir, one node -----------------------------------------------------------------


async def test_second_node_on_a_data_dir_in_use_exits_1(nodes: Nodes, tmp_path):
    data_dir = tmp_path / "data"
    first = await nodes.start(data_dir)
    queue_id = await create_queue(first.port)

    second = await nodes.start(data_dir, wait_ready=False)
    status = await second.wait()
    stderr = second.stderr_text()
    assert status == 1, second.describe()
    assert "in use" in stderr, stderr
    assert str(data_dir) in stderr, stderr
    assert "Traceback" not in stderr, stderr
    assert second.stdout_text() == "", "the second node claimed to be ready"
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", second.port)

    assert first.running, first.describe()
    topology = await call(first.port, {"operation": "CLUSTER_QUERY"})
    assert topology["status"] == "success" and topology["cluster_id"] == first.cluster_id
    appended = await call(first.port, {"operation": "APPEND", "queue_name": queue_id, "data": 7})
    assert appended == {"status": "success", "sequence_num": 1}
    assert await read_all(first.port, queue_id, "C-AAAAA") == [(1, 7)]


# -- 4. bad flags ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--broker-id", "nope"], ["broker", "nope"]),
        (["--cluster-id", "B-AAAAA"], ["cluster", "B-AAAAA"]),
        (["--port", "70000"], ["port", "70000"]),
        (["--port", "abc"], ["--port", "abc"]),
        (["--max-frame", "0"], ["max_frame", "0"]),
        (["--log-level", "LOUD"], ["--log-level", "LOUD"]),
    ],
)
async def test_bad_flags_exit_64_with_a_message(nodes: Nodes, tmp_path, flags, expected):
    data_dir = tmp_path / "data"
    node = await nodes.run(["--port", str(free_port()), "--data-dir", str(data_dir), *flags])
    stderr = node.stderr_text()
    assert node.returncode == 64, node.describe()  # a usage error (EX_USAGE); 2 is unreachable
    assert "error" in stderr, stderr
    for word in expected:
        assert word in stderr, f"{word!r} not in {stderr!r}"
    assert "Traceback" not in stderr, stderr
    assert node.stdout_text() == ""
    assert not data_dir.exists(), "a refused configuration created the data dir"


# -- 5. identity mismatch ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "stored", "asked"),
    [("--cluster-id", "G-BBBBB", "G-AAAAA"), ("--broker-id", "B-BBBBB", "B-AAAAA")],
)
async def test_identity_mismatch_exits_1_naming_both(nodes: Nodes, tmp_path, flag, stored, asked):
    data_dir = tmp_path / "data"
    first = await nodes.start(data_dir, extra_args=[flag, stored])
    assert stored in (first.broker_id, first.cluster_id)
    first.terminate()
    assert await first.wait() == 0, first.describe()

    wrong = await nodes.start(data_dir, extra_args=[flag, asked], wait_ready=False)
    status = await wrong.wait()
    stderr = wrong.stderr_text()
    assert status == 1, wrong.describe()
    assert asked in stderr and stored in stderr, stderr
    assert "Traceback" not in stderr, stderr
    assert wrong.stdout_text() == ""

    # The refused start changed nothing: the directory still has its own identity.
    again: NodeProcess = await nodes.start(data_dir)
    assert (again.broker_id, again.cluster_id) == (first.broker_id, first.cluster_id)
