"""``python -m trio_broker client``: the command-line client against a real in-process broker."""

from __future__ import annotations

import json
import secrets
import socket
import sys
from functools import partial

import orjson
import pytest
import trio
import trustme

from trio_broker._cli._client import parse_data
from trio_broker._ids import QUEUE_ID_RE
from trio_broker._runtime import BrokerConfig, open_broker
from trio_broker.client import Message, connect
from trio_broker.testing import open_local_cluster

from .conftest import build_client_parser


@pytest.fixture
async def real_broker(tmp_path):
    async with open_broker(BrokerConfig(data_dir=tmp_path / "cli-broker", port=0)) as broker:
        yield broker


def seed(broker) -> list[str]:
    return ["--seed", f"127.0.0.1:{broker.port}"]


async def test_status_prints_an_aligned_table(real_broker, cli):
    status, out, err = await cli(*seed(real_broker), "status")
    assert (status, err) == (0, "")
    heading, header, row = out.splitlines()
    assert real_broker.cluster_id in heading
    assert f"leader {real_broker.broker_id}" in heading
    assert header.split() == ["BROKER", "ADDRESS", "ROLE", "STATUS", "MEMBERSHIP", "LAG"]
    assert row.split() == [
        real_broker.broker_id,
        f"127.0.0.1:{real_broker.port}",
        "leader",
        "active",
        "voter",
        "0",
    ]

    # Columns line up: every cell of the row starts where its header does.
    def starts(line: str) -> list[int]:
        return [i for i, c in enumerate(line) if c != " " and (i == 0 or line[i - 1] == " ")]

    assert starts(header) == starts(row)


async def test_status_json(real_broker, cli):
    status, out, err = await cli(*seed(real_broker), "--json", "status")
    assert (status, err) == (0, "")
    assert orjson.loads(out) == {
        "clusters": [
            {
                "cluster_id": real_broker.cluster_id,
                "cluster_version": 1,
                "leader": real_broker.broker_id,
                "brokers": [
                    {
                        "broker_id": real_broker.broker_id,
                        "host": "127.0.0.1",
                        "port": real_broker.port,
                        "role": "leader",
                        "status": "active",
                        "membership": "voter",
                        "lag": 0,
                    }
                ],
            }
        ]
    }
    # Common options are accepted after the command name too.
    status, out_after, _ = await cli("status", "--json", *seed(real_broker))
    assert status == 0
    assert orjson.loads(out_after) == orjson.loads(out)


async def test_create_append_read(real_broker, cli):
    status, out, err = await cli(*seed(real_broker), "create-queue")
    assert (status, err) == (0, "")
    queue_id = out.strip()
    assert QUEUE_ID_RE.fullmatch(queue_id)

    assert await cli(*seed(real_broker), "append", queue_id, "42") == (0, "1\n", "")
    status, out, _ = await cli(*seed(real_broker), "--json", "append", queue_id, '{"a": [1.5]}')
    assert (status, orjson.loads(out)) == (0, {"queue_id": queue_id, "sequence_num": 2})

    args = (*seed(real_broker), "--client-id", "C-CLI01")
    assert await cli(*args, "read", queue_id) == (0, "1\t42\n", "")
    # The same client id continues where it stopped; --count stops early when none are left.
    status, out, err = await cli(*args, "read", queue_id, "--count", "5")
    assert (status, out) == (0, '2\t{"a":[1.5]}\n')
    assert "no more messages" in err
    status, out, _ = await cli(*args, "--json", "read", queue_id, "--count", "3")
    assert (status, orjson.loads(out)) == (0, [])
    # Another client id reads from the start.
    status, out, _ = await cli(
        *seed(real_broker), "--json", "read", queue_id, "--count", "3", "--client-id", "C-CLI02"
    )
    assert orjson.loads(out) == [
        {"sequence_num": 1, "data": 42},
        {"sequence_num": 2, "data": {"a": [1.5]}},
    ]


async def test_create_queue_json(real_broker, cli):
    status, out, _ = await cli(*seed(real_broker), "--json", "create-queue")
    assert status == 0
    (queue_id,) = orjson.loads(out).values()
    assert QUEUE_ID_RE.fullmatch(queue_id)
    status, out, _ = await cli(
        *seed(real_broker), "create-queue", "--cluster", real_broker.cluster_id
    )
    assert status == 0
    assert out.strip().startswith("Q-" + real_broker.cluster_id[2:])


async def test_append_data_is_json_or_else_a_string(real_broker, cli):
    async with connect([f"127.0.0.1:{real_broker.port}"]) as client:
        queue_id = await client.create_queue()
        inputs = ["1.5", "true", '"7"', "7", "null", '{"k": {"n": [null, false]}}', "hello", "NaN"]
        for text in inputs:
            status, _, err = await cli(*seed(real_broker), "append", queue_id, text)
            assert (status, err) == (0, "")
        got = [await client.read(queue_id) for _ in inputs]
    values = [m.data for m in got]
    assert values == [1.5, True, "7", 7, None, {"k": {"n": [None, False]}}, "hello", "NaN"]
    assert [type(v) for v in values[:4]] == [float, bool, str, int]
    assert got[0] == Message(sequence_num=1, data=1.5)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1.5", 1.5),
        ("true", True),
        ('"7"', "7"),
        ("7", 7),
        ("[1, {}]", [1, {}]),
        ("not json", "not json"),
        ("Infinity", "Infinity"),
        ("", ""),
        ("{broken", "{broken"),
    ],
)
def test_parse_data(text, value):
    got = parse_data(text)
    assert got == value
    assert type(got) is type(value)


async def test_broker_error_is_printed_with_its_code(real_broker, cli):
    missing = "Q-" + real_broker.cluster_id[2:] + "NOPE0"
    status, out, err = await cli(*seed(real_broker), "read", missing)
    assert status == 1
    assert out == ""
    assert err.startswith("error: QUEUE_NOT_FOUND: ")
    assert missing in err


async def test_data_the_client_refuses_is_an_error(real_broker, cli):
    async with connect([f"127.0.0.1:{real_broker.port}"]) as client:
        queue_id = await client.create_queue()
    status, out, err = await cli(*seed(real_broker), "append", queue_id, str(2**70))
    assert (status, out) == (1, "")
    assert err.startswith("error: ")
    assert "64-bit" in err


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_connection_refused_is_exit_status_2(cli):
    port = _free_port()
    with trio.fail_after(10):
        status, out, err = await cli("--seed", f"127.0.0.1:{port}", "status")
    assert (status, out) == (2, "")
    assert f"cannot connect to 127.0.0.1:{port}: connection refused" in err


async def test_timeout_bounds_the_command(cli):
    """A broker that accepts but never answers: --timeout ends the command."""
    connected = trio.Event()

    async def silent(stream):
        connected.set()
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, silent, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        with trio.fail_after(10):
            status, out, err = await cli(
                "--seed", f"127.0.0.1:{port}", "--timeout", "0.3", "status"
            )
        assert connected.is_set()
        nursery.cancel_scope.cancel()
    assert (status, out) == (1, "")
    assert err.startswith("error: TIMEOUT: ")


def test_bad_arguments_are_refused_by_the_parser(capsys):
    parser = build_client_parser()
    for argv in (
        ["client", "--seed", "nocolon", "status"],
        ["client", "--timeout", "0", "status"],
        ["client", "read", "Q-X", "--count", "0"],
        ["client"],
    ):
        with pytest.raises(SystemExit) as info:
            parser.parse_args(argv)
        assert info.value.code == 2
    capsys.readouterr()


def test_defaults():
    args = build_client_parser().parse_args(["client", "status"])
    assert args.seed is None  # run_client then uses 127.0.0.1:9001
    assert args.timeout == 10
    assert args.json is False
    assert args.client_id is None


async def test_python_m_trio_broker_client(real_broker):
    """The installed entry point: a real subprocess."""
    base = [sys.executable, "-m", "trio_broker", "client", *seed(real_broker)]
    with trio.fail_after(30):
        result = await trio.run_process([*base, "create-queue"], capture_stdout=True)
        queue_id = result.stdout.decode().strip()
        assert QUEUE_ID_RE.fullmatch(queue_id)
        result = await trio.run_process(
            [*base, "--json", "append", queue_id, "[true]"], capture_stdout=True
        )
        assert orjson.loads(result.stdout)["sequence_num"] == 1
        result = await trio.run_process([*base, "read", queue_id], capture_stdout=True)
        assert result.stdout == b"1\t[true]\n"
        result = await trio.run_process(
            [*base, "read", "Q-" + real_broker.cluster_id[2:] + "NOPE0"],
            capture_stderr=True,
            check=False,
        )
        assert result.returncode == 1
        assert result.stderr.startswith(b"error: QUEUE_NOT_FOUND: ")


async def test_status_of_a_replicated_cluster(tmp_path, cli):
    with trio.fail_after(30):
        async with open_local_cluster(tmp_path, 3) as cluster:
            leader = await cluster.wait_for_leader()
            replica = next(b for b in cluster.brokers.values() if b is not leader)
            status, out, err = await cli("--seed", f"127.0.0.1:{replica.port}", "status")
            expected = {
                b.broker_id: [
                    f"127.0.0.1:{b.port}",
                    "leader" if b is leader else "replica",
                    "active",
                    "voter",
                ]
                for b in cluster.brokers.values()
            }
    assert (status, err) == (0, "")
    heading, header, *rows = out.splitlines()
    assert f"leader {leader.broker_id}" in heading
    # Asked through a replica, the lag still comes from the leader: a number for everyone.
    table = {row.split()[0]: row.split()[1:-1] for row in rows}
    assert all(row.split()[-1].isdigit() for row in rows)
    assert len(expected) == 3
    assert table == expected

    def starts(line: str) -> list[int]:
        return [i for i, c in enumerate(line) if c != " " and (i == 0 or line[i - 1] == " ")]

    for row in rows:
        assert starts(row) == starts(header)


async def test_remove_member_through_a_replica(tmp_path, cli):
    with trio.fail_after(30):
        async with open_local_cluster(tmp_path, 3) as cluster:
            leader = await cluster.wait_for_leader()
            replica, victim = [b for b in cluster.brokers.values() if b is not leader]
            status, out, err = await cli(
                "--seed", f"127.0.0.1:{replica.port}", "remove-member", victim.broker_id
            )
            assert (status, out.strip(), err) == (0, f"removed {victim.broker_id}", "")
            assert victim.broker_id not in leader.node.config.members
            status, out, err = await cli(
                "--seed", f"127.0.0.1:{replica.port}", "remove-member", victim.broker_id
            )
            assert status == 1
            assert "BAD_REQUEST" in err and "not a member" in err


async def test_remove_member_by_address(tmp_path, cli):
    with trio.fail_after(30):
        async with open_local_cluster(tmp_path, 3) as cluster:
            leader = await cluster.wait_for_leader()
            victim = next(b for b in cluster.brokers.values() if b is not leader)
            seed = ("--seed", f"127.0.0.1:{leader.port}")
            status, out, err = await cli(*seed, "remove-member", f"127.0.0.1:{victim.port}")
            assert (status, out.strip(), err) == (0, f"removed {victim.broker_id}", "")
            assert victim.broker_id not in leader.node.config.members
            # No member there any more: refused before anything is sent.
            status, out, err = await cli(*seed, "remove-member", f"127.0.0.1:{victim.port}")
            assert status == 1 and out == ""
            assert f"no member of cluster {leader.cluster_id} at 127.0.0.1:{victim.port}" in err


async def test_remove_member_needs_the_cluster_secret_when_the_cluster_has_one(tmp_path, cli):
    """docs/security.md: operator commands prove the secret with --cluster-secret-file."""
    secret = tmp_path / "secret"
    secret.write_text(secrets.token_hex(32))
    with trio.fail_after(30):
        async with open_local_cluster(tmp_path / "c", 3, cluster_secret_file=secret) as cluster:
            leader = await cluster.wait_for_leader()
            replica, victim = [b for b in cluster.brokers.values() if b is not leader]
            seed = ["--seed", f"127.0.0.1:{replica.port}"]
            status, out, err = await cli(*seed, "remove-member", victim.broker_id)
            assert status == 1 and "UNAUTHORIZED" in err and out == ""
            assert victim.broker_id in leader.node.config.members
            wrong = tmp_path / "wrong"
            wrong.write_text(secrets.token_hex(32))
            status, out, err = await cli(
                *seed, "--cluster-secret-file", str(wrong), "remove-member", victim.broker_id
            )
            assert status == 1 and "UNAUTHORIZED" in err and "wrong cluster secret" in err
            status, out, err = await cli(
                *seed, "--cluster-secret-file", str(tmp_path / "none"), "status"
            )
            assert status == 1 and "cannot read cluster secret file" in err
            status, out, err = await cli(
                *seed, "remove-member", "--cluster-secret-file", str(secret), victim.broker_id
            )
            assert (status, out.strip(), err) == (0, f"removed {victim.broker_id}", "")
            assert victim.broker_id not in leader.node.config.members


async def test_tls_and_a_token_from_the_command_line(tmp_path, cli):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    paths = {name: tmp_path / name for name in ("cert.pem", "key.pem", "ca.pem", "tokens")}
    cert.private_key_and_cert_chain_pem.write_to_path(str(paths["cert.pem"]))
    cert.private_key_pem.write_to_path(str(paths["key.pem"]))
    ca.cert_pem.write_to_path(str(paths["ca.pem"]))
    paths["tokens"].write_text("# mine\nsesame\n")
    config = BrokerConfig(
        data_dir=tmp_path / "b",
        port=0,
        tls_cert=paths["cert.pem"],
        tls_key=paths["key.pem"],
        client_tokens_file=paths["tokens"],
        allow_open_peers=True,  # one broker, no peers: no cluster secret needed
    )
    async with open_broker(config) as broker:
        seed = ["--seed", f"127.0.0.1:{broker.port}", "--timeout", "5"]
        tls = ["--tls-ca", str(paths["ca.pem"])]
        token = ["--token-file", str(paths["tokens"])]
        status, out, err = await cli(*seed, *tls, *token, "create-queue")
        assert status == 0, err
        queue_id = out.strip()
        status, out, err = await cli(*seed, *tls, "append", queue_id, "7")
        assert status == 1 and "UNAUTHORIZED" in err
        status, out, err = await cli(*seed, *tls, *token, "append", queue_id, "7")
        assert (status, out.strip()) == (0, "1")
        status, out, err = await cli(*seed, *token, "status")  # no TLS: nothing answers
        assert status != 0


async def test_health_reports_a_broker_that_follows_a_leader(tmp_path, cli):
    with trio.fail_after(30):
        async with open_local_cluster(tmp_path, 3) as cluster:
            leader = await cluster.wait_for_leader()
            replica = next(b for b in cluster.brokers.values() if b is not leader)
            seed = f"127.0.0.1:{replica.port}"
            status, out, err = await cli("--seed", seed, "health")
            assert status == 0, err
            assert out.strip() == (
                f"ok: {replica.broker_id} is replica in {replica.cluster_id}, "
                f"leader {leader.broker_id}"
            )
            # Alone, the replica soon knows no leader: unhealthy.
            for name in [n for n, b in cluster.brokers.items() if b is not replica]:
                await cluster.stop(name)
            while replica.leader_id is not None:
                await replica.driver.wait_changed()
            status, out, err = await cli("--seed", seed, "--json", "health")
            assert status == 1
            report = json.loads(out)
            assert report["healthy"] is False
            assert report["broker_id"] == replica.broker_id
    status, out, err = await cli("--seed", seed, "health")
    assert status == 2


async def test_queues_lists_lengths_and_client_lag(real_broker, cli):
    seed = f"127.0.0.1:{real_broker.port}"
    status, q, _ = await cli("--seed", seed, "create-queue")
    q = q.strip()
    for value in ("1", "2", "3"):
        await cli("--seed", seed, "append", q, value)
    await cli("--seed", seed, "--client-id", "C-LAGGY", "read", q)
    status, out, err = await cli("--seed", seed, "queues")
    assert (status, err) == (0, "")
    lines = [line.split() for line in out.strip().splitlines()]
    assert lines[0] == [
        "QUEUE",
        "LENGTH",
        "FIRST",
        "RETAINED",
        "RETENTION",
        "CLIENT",
        "NEXT",
        "LAG",
    ]
    assert [q, "3", "1", "3", "keep-all"] in lines
    assert ["C-LAGGY", "2", "2"] in lines
    status, out, _ = await cli("--seed", seed, "--json", "queues")
    (entry,) = [e for e in json.loads(out)["queues"] if e["queue_id"] == q]
    assert entry["clients"] == [{"client_id": "C-LAGGY", "next_sequence_num": 2, "lag": 2}]


async def test_set_retention_and_create_queue_with_a_policy(real_broker, cli):
    seed = f"127.0.0.1:{real_broker.port}"
    status, q, _ = await cli("--seed", seed, "create-queue", "--max-messages", "5")
    q = q.strip()
    assert status == 0 and QUEUE_ID_RE.fullmatch(q)
    status, out, err = await cli(
        "--seed", seed, "set-retention", q, "--max-age", "1.5", "--delete-acknowledged"
    )
    assert (status, err) == (0, "")
    assert out.split() == [q, "max-age=1.5s,delete-acknowledged"]
    status, out, _ = await cli("--seed", seed, "queues")
    assert [q, "0", "1", "0", "max-age=1.5s,delete-acknowledged"] in [
        line.split() for line in out.splitlines()
    ]
    status, out, _ = await cli("--seed", seed, "--json", "set-retention", q, "--keep-all")
    assert json.loads(out) == {
        "queue_id": q,
        "retention": {"max_messages": None, "max_age_ms": None, "delete_acknowledged": False},
    }
    # Neither rules nor --keep-all (or both): refused before anything is sent.
    status, _, err = await cli("--seed", seed, "set-retention", q)
    assert status == 1 and "--keep-all" in err
    status, _, err = await cli(
        "--seed", seed, "set-retention", q, "--keep-all", "--max-messages", "2"
    )
    assert status == 1
    missing = q[:-5] + ("ZZZZZ" if not q.endswith("ZZZZZ") else "YYYYY")
    status, _, err = await cli("--seed", seed, "set-retention", missing, "--max-messages", "1")
    assert status == 1 and "does not exist" in err
