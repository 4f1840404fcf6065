"""The CLI's work-queue commands: create-queue NAME, delete-queue, append from standard input,
consume (as one worker of a group), ack and nack, and the generated client id printed."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys

import pytest
import trio

from trio_broker._runtime import BrokerConfig, open_broker


@pytest.fixture
async def real_broker(tmp_path):
    async with open_broker(BrokerConfig(data_dir=tmp_path / "cli-broker", port=0)) as broker:
        yield broker


def seed(broker) -> list[str]:
    return ["--seed", f"127.0.0.1:{broker.port}"]


async def test_create_queue_by_name_append_from_stdin_consume_and_delete(
    real_broker, cli, monkeypatch
):
    status, out, _ = await cli(*seed(real_broker), "create-queue", "orders")
    assert status == 0
    queue_id = out.strip()
    assert await cli(*seed(real_broker), "create-queue", "orders") == (0, out, "")
    monkeypatch.setattr("sys.stdin", io.StringIO('1\n"two"\n\n{"n": 3}\n'))
    assert await cli(*seed(real_broker), "append", "orders") == (0, "1\n2\n3\n", "")
    status, out, err = await cli(*seed(real_broker), "consume", "orders", "w", "--count", "2")
    assert (status, out) == (0, '1\t1\t1\n2\t1\t"two"\n')
    # Taken without ack: leased to the member consume names, then handed back with nack.
    status, out, err = await cli(
        *seed(real_broker), "--json", "consume", "orders", "w", "--no-ack", "--wait", "0.1"
    )
    assert status == 0
    [message] = json.loads(out)
    assert (message["sequence_num"], message["data"]) == (3, {"n": 3})
    member = err.split()[1]
    status, out, _ = await cli(
        *seed(real_broker), "nack", "orders", "w", "3", "--member", member, "--error", "x"
    )
    assert (status, out) == (0, "3\n")
    status, out, _ = await cli(*seed(real_broker), "--json", "consume", "orders", "w", "--no-ack")
    assert [(m["sequence_num"], m["delivery_count"]) for m in json.loads(out)] == [(3, 2)]
    assert await cli(*seed(real_broker), "ack", "orders", "w", "3") == (0, "3\n", "")
    assert await cli(*seed(real_broker), "ack", "orders", "w", "3") == (0, "\n", "")
    assert await cli(*seed(real_broker), "delete-queue", "orders") == (
        0,
        "deleted orders\n",
        "",
    )
    status, out, err = await cli(*seed(real_broker), "delete-queue", queue_id)
    assert status == 1 and "QUEUE_NOT_FOUND" in err


async def test_read_prints_the_client_id_it_generated(real_broker, cli):
    status, out, _ = await cli(*seed(real_broker), "create-queue")
    queue_id = out.strip()
    await cli(*seed(real_broker), "append", queue_id, "1")
    await cli(*seed(real_broker), "append", queue_id, "2")
    status, out, err = await cli(*seed(real_broker), "read", queue_id)
    assert (status, out) == (0, "1\t1\n")
    client_id = err.split()[2]
    assert client_id.startswith("C-")
    # Passing it on continues from where that read stopped.
    again = await cli(*seed(real_broker), "--client-id", client_id, "read", queue_id)
    assert again == (0, "2\t2\n", "")


@pytest.mark.parametrize("name", ["Q-nope", "has space"])
async def test_a_bad_name_is_refused(real_broker, cli, name):
    status, _, err = await cli(*seed(real_broker), "create-queue", name)
    assert status == 1 and "BAD_REQUEST" in err


async def test_read_peek_and_tail(real_broker, cli):
    assert (await cli(*seed(real_broker), "create-queue", "log"))[0] == 0
    for value in ("1", "2", "3"):
        await cli(*seed(real_broker), "append", "log", value)
    args = [*seed(real_broker), "--client-id", "C-TAIL1"]
    peeked = await cli(*args, "read", "log", "--peek", "--count", "2")
    assert peeked == (0, "1\t1\n2\t2\n", "")
    assert await cli(*args, "read", "log") == (0, "1\t1\n", "")  # the peek moved nothing
    assert await cli(*args, "tail", "log") == (0, "2\t2\n3\t3\n", "")
    assert await cli(*args, "tail", "log") == (0, "", "")


async def test_tail_follow_prints_what_comes_until_interrupted(real_broker, cli):
    await cli(*seed(real_broker), "create-queue", "live")
    command = [sys.executable, "-m", "trio_broker", "client", *seed(real_broker)]
    command += ["--timeout", "1", "tail", "live", "--follow"]
    process = await trio.lowlevel.open_process(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        with trio.fail_after(20):
            await trio.sleep(1.5)  # past --timeout: following is not bounded by it
            assert process.returncode is None
            status, _, _ = await cli(*seed(real_broker), "append", "live", "7")
            assert status == 0
            assert process.stdout is not None
            received = b""
            while b"\n" not in received:
                received += await process.stdout.receive_some(1024)
            assert received == b"1\t7\n"
            process.send_signal(signal.SIGINT)
            assert await process.wait() == 130
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def _holders(out: str, queue_name_or_id: str) -> list[str]:
    (queue,) = [q for q in json.loads(out)["queues"] if q["queue_id"] == queue_name_or_id]
    return sorted(c["client_id"] for c in queue["clients"])


async def test_tail_peek_moves_nothing_and_leaves_no_position(real_broker, cli):
    _, out, _ = await cli(*seed(real_broker), "create-queue", "peeked")
    queue_id = out.strip()
    for value in ("1", "2", "3"):
        await cli(*seed(real_broker), "append", "peeked", value)
    args = [*seed(real_broker), "--client-id", "C-PEEK1"]
    assert await cli(*args, "read", "peeked") == (0, "1\t1\n", "")
    assert await cli(*args, "tail", "peeked", "--peek") == (0, "2\t2\n3\t3\n", "")
    assert await cli(*args, "tail", "peeked", "--peek") == (0, "2\t2\n3\t3\n", "")
    assert await cli(*args, "read", "peeked") == (0, "2\t2\n", "")
    # The reader that did the peeking was forgotten: only C-PEEK1 holds a position.
    _, out, _ = await cli(*seed(real_broker), "--json", "queues")
    assert _holders(out, queue_id) == ["C-PEEK1"]
    # At the end of the queue there is nothing to show, and nothing is created.
    await cli(*args, "read", "peeked")
    assert await cli(*args, "tail", "peeked", "--peek") == (0, "", "")
    # A new client id peeks from the first message; no id to go on with is printed.
    assert await cli(*seed(real_broker), "tail", "peeked", "--peek") == (
        0,
        "1\t1\n2\t2\n3\t3\n",
        "",
    )


async def test_the_client_id_a_user_keeps_in_the_environment(real_broker, cli, monkeypatch):
    await cli(*seed(real_broker), "create-queue", "kept")
    for value in ("1", "2"):
        await cli(*seed(real_broker), "append", "kept", value)
    monkeypatch.setenv("TRIO_BROKER_CLIENT_ID", "C-KEPT1")
    assert await cli(*seed(real_broker), "read", "kept") == (0, "1\t1\n", "")
    assert await cli(*seed(real_broker), "read", "kept") == (0, "2\t2\n", "")
    # --client-id overrides it.
    assert await cli(*seed(real_broker), "--client-id", "C-OTHER", "read", "kept") == (
        0,
        "1\t1\n",
        "",
    )


async def _follow(
    real_broker,
    cli,
    argv: list[str],
    queue: str,
    append: str,
    expected: bytes,
    cli_timeout: str = "1",
) -> None:
    """Start a following command, append 1.5 s later (past a --timeout of 1 s, the default
    here), read its first line, interrupt it: it exits 130."""
    command = [sys.executable, "-m", "trio_broker", "client", *seed(real_broker)]
    command += ["--timeout", cli_timeout, *argv]
    process = await trio.lowlevel.open_process(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        with trio.fail_after(20):
            await trio.sleep(1.5)  # (past a --timeout of 1 s: following is not bounded by it)
            assert process.returncode is None
            assert (await cli(*seed(real_broker), "append", queue, append))[0] == 0
            assert process.stdout is not None
            received = b""
            while b"\n" not in received:
                received += await process.stdout.receive_some(1024)
            assert received == expected
            process.send_signal(signal.SIGINT)
            assert await process.wait() == 130
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_consume_follow_takes_what_comes_until_interrupted(real_broker, cli):
    await cli(*seed(real_broker), "create-queue", "jobs")
    argv = ["consume", "jobs", "w", "--follow"]
    await _follow(real_broker, cli, argv, "jobs", "8", b"1\t1\t8\n")
    # With --json, one object per line as they come.
    line = b'{"sequence_num":2,"data":9,"headers":null,"delivery_count":1}\n'
    await _follow(real_broker, cli, ["--json", *argv], "jobs", "9", line)
    # It was acknowledged: nothing is left for the group.
    status, out, err = await cli(*seed(real_broker), "consume", "jobs", "w", "--wait", "0.1")
    assert (status, out) == (0, "") and "no more messages" in err


async def test_tail_peek_follow_forgets_its_reader_when_interrupted(real_broker, cli):
    _, out, _ = await cli(*seed(real_broker), "create-queue", "watched")
    queue_id = out.strip()
    argv = ["--client-id", "C-WATCH", "tail", "watched", "--peek", "--follow"]
    # The reader is forgotten on a new connection within --timeout after the interruption:
    # a timeout of 1 s can run out on a loaded machine (the position then stays until the
    # idle sweep), which is not what this test is about.
    await _follow(real_broker, cli, argv, "watched", "9", b"1\t9\n", cli_timeout="20")
    # A message after the interruption: the reader's long poll, which was waiting when the
    # reader was forgotten, read it (from the first message, as a new client) and set the
    # reader's position again, when the broker still had that poll (its wait had not run out,
    # or had and read again, setting it then). The forget ends it now.
    assert (await cli(*seed(real_broker), "append", "watched", "10"))[0] == 0
    _, out, _ = await cli(*seed(real_broker), "--json", "queues")
    assert _holders(out, queue_id) == []
    # Nothing was moved: the message is still C-WATCH's next.
    args = [*seed(real_broker), "--client-id", "C-WATCH"]
    assert await cli(*args, "read", "watched") == (0, "1\t9\n", "")
