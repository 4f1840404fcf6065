"""The command line as operators use it: seed lists, exit statuses, --version, help, logs.

Each command runs as a real process (``python -m trio_broker ...``), against brokers on
127.0.0.1, under a deadline.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from functools import partial
from importlib import metadata
from pathlib import Path

import pytest
import trio

from trio_broker._cli._exit import EXIT_ERROR, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE
from trio_broker._cli._seeds import client_seeds, parse_seed, parse_seeds
from trio_broker._runtime import BrokerConfig, open_broker

from .processes import free_port, open_nodes

DEADLINE = 60


async def cli(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """``python -m trio_broker ARGV``: (exit status, stdout, stderr). TRIO_BROKER_SEEDS is
    unset unless ``env`` gives it, so the machine's environment cannot leak in."""
    environ = {k: v for k, v in os.environ.items() if k != "TRIO_BROKER_SEEDS"}
    environ.update(env or {})
    result = await trio.run_process(
        [sys.executable, "-m", "trio_broker", *argv],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env=environ,
        stdin=subprocess.DEVNULL,
    )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


async def cli_all(commands: list[tuple[list[str], dict[str, str]]]) -> list[tuple[int, str, str]]:
    """:func:`cli` for each ``(argv, env)``, a few processes side by side (each command is
    still a process of its own): their results, in the commands' order."""
    results: list[tuple[int, str, str]] = [(-1, "", "")] * len(commands)
    limiter = trio.CapacityLimiter(4)

    async def one(i: int, argv: list[str], env: dict[str, str]) -> None:
        async with limiter:
            results[i] = await cli(*argv, env=env)

    async with trio.open_nursery() as nursery:
        for i, (argv, env) in enumerate(commands):
            nursery.start_soon(one, i, argv, env)
    return results


def seed_of(broker) -> str:
    return f"127.0.0.1:{broker.port}"


@pytest.fixture
async def broker(tmp_path):
    async with open_broker(BrokerConfig(data_dir=tmp_path / "broker", port=0)) as broker:
        yield broker


@pytest.fixture
async def silent_port():
    """A port that accepts connections and never answers (a hung machine, as clients see it)."""

    async def silent(stream):
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, silent, 0, host="127.0.0.1"))
        yield listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


# -- seeds -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seeds"),
    [
        ("127.0.0.1:9001", [("127.0.0.1", 9001)]),
        ("[::1]:9001", [("::1", 9001)]),
        ("a:1, [fe80::1]:2,,b:3", [("a", 1), ("fe80::1", 2), ("b", 3)]),
        (["a:1,b:2", "b:2", "c:3"], [("a", 1), ("b", 2), ("c", 3)]),
    ],
)
def test_seed_lists(text, seeds):
    assert parse_seeds(text) == seeds


BAD_SEEDS = ["nocolon", ":9001", "h:0", "h:70000", "h:x", "::1:9001", "[::1]9001", "[::1]:"]


@pytest.mark.parametrize("text", [*BAD_SEEDS, "h:\u0661"])  # a digit, but not an ASCII one
def test_bad_seeds_are_refused(text):
    with pytest.raises(ValueError):
        parse_seed(text)


def test_client_seeds_come_from_flags_then_the_environment_then_the_default():
    env = {"TRIO_BROKER_SEEDS": "e:1,e:2"}
    assert client_seeds(["f:1,f:2", "f:3"], env) == [("f", 1), ("f", 2), ("f", 3)]
    assert client_seeds(None, env) == [("e", 1), ("e", 2)]
    assert client_seeds(None, {}) == [("127.0.0.1", 9001)]
    for bad in ("nope", " , "):
        with pytest.raises(ValueError, match="TRIO_BROKER_SEEDS"):
            client_seeds(None, {"TRIO_BROKER_SEEDS": bad})


async def test_a_seed_list_from_the_flag_or_the_environment_reaches_the_broker(broker):
    dead = free_port()
    seeds = f"127.0.0.1:{dead},127.0.0.1:{broker.port}"
    with trio.fail_after(DEADLINE):
        status, out, err = await cli("client", "--seed", seeds, "create-queue")
        assert status == EXIT_OK, err
        assert out.startswith("Q-")
        status, out, err = await cli("client", "health", env={"TRIO_BROKER_SEEDS": seeds})
        assert status == EXIT_OK, err
        assert out.startswith(f"ok: {broker.broker_id} is leader")


async def test_every_seed_is_tried_before_giving_up(broker, silent_port):
    """A first seed that accepts and never answers does not use up the command's time: the
    client asks every seed at once (asked one after another, the silent seed alone would take
    longer than this --timeout)."""
    seeds = f"127.0.0.1:{silent_port},127.0.0.1:{broker.port}"
    with trio.fail_after(DEADLINE):
        status, out, err = await cli("client", "--timeout", "3", "--seed", seeds, "status")
    assert status == EXIT_OK, err
    assert broker.broker_id in out


# -- exit statuses ---------------------------------------------------------------------------


async def test_health_exits_2_when_no_seed_answers_and_never_hangs(silent_port):
    refused = free_port()
    with trio.fail_after(DEADLINE):
        status, out, err = await cli("client", "--seed", f"127.0.0.1:{refused}", "health")
        assert (status, out) == (EXIT_UNREACHABLE, "")
        assert f"cannot connect to 127.0.0.1:{refused}" in err
        # A seed that accepts but never answers: still "nothing answers", within --timeout.
        seeds = f"127.0.0.1:{refused},127.0.0.1:{silent_port}"
        status, out, err = await cli("client", "--timeout", "1", "--seed", seeds, "health")
        assert (status, out) == (EXIT_UNREACHABLE, "")
        assert f"no answer within 1 s from 127.0.0.1:{silent_port}" in err


async def test_usage_errors_and_unreachable_brokers_have_their_own_exit_status(tmp_path):
    refused = f"127.0.0.1:{free_port()}"
    usage: list[tuple[list[str], dict[str, str]]] = [
        (["client", "--seed", "nocolon", "status"], {}),
        (["client", "--bogus", "status"], {}),
        (["client", "read"], {}),
        (["client", "status"], {"TRIO_BROKER_SEEDS": "not a seed"}),
        (["node", "--port", "abc"], {}),
        (["node", "--data-dir", str(tmp_path / "d"), "--max-frame", "0"], {}),
        (["cluster", "--nodes", "0"], {}),
        ([], {}),
    ]
    unreachable: list[tuple[list[str], dict[str, str]]] = [
        (["client", "--seed", refused, "status"], {}),
        (["client", "--seed", refused, "health"], {}),
    ]
    with trio.fail_after(DEADLINE):
        results = await cli_all(usage + unreachable)
    for (argv, _env), (status, out, err) in zip(usage, results[: len(usage)], strict=True):
        assert status == EXIT_USAGE, (argv, status, err)
        assert "error" in err and out == "", (argv, err)
    assert not (tmp_path / "d").exists()
    for (argv, _env), (status, _, err) in zip(unreachable, results[len(usage) :], strict=True):
        assert status == EXIT_UNREACHABLE, (argv, err)


async def test_a_refusal_is_exit_1(broker):
    missing = "Q-" + broker.cluster_id[2:] + "NOPE0"
    with trio.fail_after(DEADLINE):
        status, out, err = await cli("client", "--seed", seed_of(broker), "read", missing)
    assert (status, out) == (EXIT_ERROR, "")
    assert err.startswith("error: QUEUE_NOT_FOUND: ")


# -- version and help ------------------------------------------------------------------------


async def test_version_on_the_command_and_the_console_script():
    expected = metadata.version("trio-broker")
    script = Path(sys.executable).parent / "trio-broker"
    assert script.exists(), f"no trio-broker console script next to {sys.executable}"
    with trio.fail_after(DEADLINE):
        status, out, _ = await cli("--version")
        assert (status, out) == (EXIT_OK, f"python -m trio_broker {expected}\n")
        result = await trio.run_process([str(script), "--version"], capture_stdout=True)
        assert result.stdout.decode() == f"trio-broker {expected}\n"
        result = await trio.run_process([str(script), "--help"], capture_stdout=True)
        assert "usage: trio-broker" in result.stdout.decode()


RST = re.compile(r"``|:(class|func|meth|attr|data|mod|ref):`|^\.\. ", re.MULTILINE)


async def test_help_has_no_raw_markup():
    pages = [
        [],
        ["node"],
        ["cluster"],
        ["client"],
        ["client", "health"],
        ["client", "status"],
        ["backup"],
        ["restore"],
    ]
    with trio.fail_after(DEADLINE):
        results = await cli_all([([*argv, "--help"], {}) for argv in pages])
    for argv, (status, out, _) in zip(pages, results, strict=True):
        assert status == EXIT_OK, argv
        assert "usage:" in out
        assert not RST.search(out), (argv, RST.search(out))
    status, out, _ = results[0]  # python -m trio_broker --help
    assert "exit status" in out and "64 usage error" in out


# -- logs ------------------------------------------------------------------------------------


async def test_json_settings_log_keeps_numbers_as_numbers(tmp_path):
    async with open_nodes(tmp_path) as nodes:
        node = await nodes.start(
            tmp_path / "data",
            extra_args=["--log-format", "json", "--heartbeat-interval", "0.25"],
        )
        lines = [json.loads(line) for line in node.stderr_text().splitlines() if line.strip()]
        node.terminate()
        assert await node.wait() == 0
    (settings,) = [line for line in lines if line["event"] == "broker.settings"]
    assert settings["port"] == node.port and type(settings["port"]) is int
    assert settings["heartbeat_interval"] == 0.25
    assert settings["max_frame"] == BrokerConfig(data_dir="x").max_frame
    assert settings["join_wait"] is False
    assert settings["seeds"] == []
    assert settings["data_dir"] == str(tmp_path / "data")
    assert settings["sources"] == {
        "host": "flag",
        "port": "flag",
        "data_dir": "flag",
        "heartbeat_interval": "flag",
        "log_format": "flag",
    }
