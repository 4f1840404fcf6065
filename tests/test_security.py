"""Security (docs/security.md): TLS, the cluster secret, client tokens, the plaintext listener.

Real brokers on 127.0.0.1; test certificates from ``trustme``.
"""

from __future__ import annotations

import logging
import secrets
import ssl

import pytest
import trio
import trustme

from trio_broker._auth import proof_for
from trio_broker._core._raft_messages import ElectionRequest
from trio_broker._errors import BrokerError
from trio_broker._protocol._consensus import encode_message
from trio_broker._runtime import BrokerConfig, JoinFailed, open_broker
from trio_broker._runtime._network import TCP
from trio_broker._runtime._peers import PeerFleet
from trio_broker.client import connect
from trio_broker.testing import open_local_cluster

from .wire import RawConnection, call, frame, request

DEADLINE = 20


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls(ram_path, ca) -> dict[str, str]:
    """BrokerConfig settings for TLS: one certificate for 127.0.0.1, shared by the brokers."""
    cert = ca.issue_cert("127.0.0.1", "localhost")
    paths = {name: ram_path / f"{name}.pem" for name in ("cert", "key", "ca")}
    paths["cert"].write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(paths["key"]))
    ca.cert_pem.write_to_path(str(paths["ca"]))
    return {
        "tls_cert": str(paths["cert"]),
        "tls_key": str(paths["key"]),
        "tls_ca": str(paths["ca"]),
    }


def write_secret(path, secret: str | None = None) -> str:
    path.write_text((secret or secrets.token_hex(32)) + "\n")
    return str(path)


@pytest.fixture
def secret_file(ram_path) -> str:
    return write_secret(ram_path / "cluster.secret")


def client_context_from(tls: dict[str, str]) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=tls["tls_ca"])


def read_secret(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read().strip()


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


async def wait_until(predicate) -> None:
    with trio.fail_after(DEADLINE):
        while not predicate():  # noqa: ASYNC110 (polling brokers' state, bounded)
            await trio.sleep(0.02)


# -- TLS --------------------------------------------------------------------------------------


async def test_a_tls_cluster_serves_a_tls_client_through_a_leader_change(
    ram_path, tls, secret_file, ca, caplog
):
    """Peers (replication, votes, joins) and the trio client all speak TLS."""
    caplog.set_level(logging.INFO, logger="trio_broker")
    with trio.fail_after(DEADLINE * 2):
        async with open_local_cluster(
            ram_path / "c", 3, **tls, cluster_secret_file=secret_file
        ) as cluster:
            leader = await cluster.wait_for_leader()
            seeds = [f"127.0.0.1:{b.port}" for b in cluster.brokers.values()]
            async with connect(seeds, ssl_context=client_context(ca)) as client:
                queue_id = await client.create_queue()
                assert [await client.append(queue_id, i) for i in range(5)] == [1, 2, 3, 4, 5]
                assert (await client.read(queue_id)).data == 0
                old_term = leader.node.term
                await cluster.stop(cluster.name_of(leader))
                new_leader = await cluster.wait_for_leader()
                assert new_leader is not leader and new_leader.node.term > old_term
                assert await client.append(queue_id, "after") == 6
                assert [(await client.read(queue_id)).data for _ in range(5)] == [
                    1,
                    2,
                    3,
                    4,
                    "after",
                ]
            # The main port speaks nothing but TLS: an original-design client gets no answer.
            conn = await RawConnection.open(new_leader.port)
            try:
                with trio.fail_after(DEADLINE):
                    await conn.send({"operation": "CLUSTER_QUERY"})
                    answer = await conn.receive()
            except trio.BrokenResourceError:
                answer = None
            finally:
                await conn.aclose()
            assert answer is None
            assert any(
                "connection.tls_failed" in r.getMessage() and "peer=127.0.0.1:" in r.getMessage()
                for r in caplog.records
            )


async def test_a_client_that_does_not_trust_the_certificate_cannot_connect(ram_path, tls):
    async with open_broker(BrokerConfig(data_dir=ram_path / "b", port=0, **tls)) as broker:
        other = client_context(trustme.CA())  # trusts another CA only
        with pytest.raises(BrokerError, match=r"TLS handshake failed.*certificate verify failed"):
            async with connect(f"127.0.0.1:{broker.port}", ssl_context=other):
                pass


async def test_original_clients_use_the_plaintext_listener_of_a_tls_cluster(
    ram_path, tls, secret_file
):
    """CLUSTER_QUERY on a plaintext listener announces every broker at its plaintext port, so
    an original-design client reconnects to the leader on a listener it can speak to."""
    with trio.fail_after(DEADLINE * 2):
        async with open_local_cluster(
            ram_path / "c", 3, **tls, cluster_secret_file=secret_file, plaintext_port=0
        ) as cluster:
            leader = await cluster.wait_for_leader()
            replica = next(b for b in cluster.brokers.values() if b is not leader)
            assert replica.plaintext_port not in (None, replica.port)
            plaintext = {b.broker_id: b.plaintext_port for b in cluster.brokers.values()}

            async def plaintext_view(broker) -> dict:
                with trio.fail_after(DEADLINE):
                    while True:  # the others' plaintext ports arrive with their PEER_HELLOs
                        view = await call(broker.plaintext_port, {"operation": "CLUSTER_QUERY"})
                        if len(view["brokers"]) == 3:
                            return view
                        await trio.sleep(0.02)

            view = await plaintext_view(replica)
            assert {b["broker_id"]: b["port"] for b in view["brokers"]} == plaintext
            announced = next(b for b in view["brokers"] if b["role"] == "leader")
            assert announced["broker_id"] == leader.broker_id
            # What an original client does next: talk to the announced leader.
            port = announced["port"]
            created = await call(port, {"operation": "CREATE_QUEUE", "client_id": "C-OLD01"})
            queue_id = created["queue_id"]
            appended = await call(
                port, {"operation": "APPEND", "queue_name": queue_id, "data": 7, "client_id": "x"}
            )
            assert appended == {"status": "success", "sequence_num": 1}
            read = {"operation": "READ", "queue_name": queue_id, "client_id": "C-OLD01"}
            assert await call(port, read) == {"status": "success", "sequence_num": 1, "data": 7}
            # A replica's NOT_LEADER points at the leader's plaintext listener.
            refused = await call(replica.plaintext_port, read)
            assert refused["code"] == "NOT_LEADER"
            assert (refused["leader_host"], refused["leader_port"]) == (
                "127.0.0.1",
                leader.plaintext_port,
            )
            # Broker-to-broker and authentication requests are not served there at all.
            for refused_request in (
                {
                    "operation": "PEER_HELLO",
                    "broker_id": "B-ROGUE",
                    "cluster_id": leader.cluster_id,
                },
                {
                    "operation": "JOIN_CLUSTER",
                    "broker_id": "B-ROGUE",
                    "host": "127.0.0.1",
                    "port": 1,
                },
                {"operation": "REMOVE_MEMBER", "broker_id": replica.broker_id},
                {"operation": "DATA_SYNC_REQUEST", "snapshot_id": "x", "offset": 0},
                {"operation": "AUTH_CHALLENGE"},
            ):
                answer = await call(leader.plaintext_port, refused_request)
                assert answer["code"] == "UNAUTHORIZED", answer
            assert len(leader.node.config.members) == 3
            # After a failover, the plaintext topology leads to the new leader.
            await cluster.stop(cluster.name_of(leader))
            new_leader = await cluster.wait_for_leader()
            with trio.fail_after(DEADLINE):
                while True:
                    view = await call(new_leader.plaintext_port, {"operation": "CLUSTER_QUERY"})
                    roles = {b["port"]: b["role"] for b in view["brokers"]}
                    if roles.get(new_leader.plaintext_port) == "leader":
                        break
                    await trio.sleep(0.02)
            assert await call(new_leader.plaintext_port, read) == {
                "status": "success",
                "message": "no_messages",
            }


# -- the cluster secret -----------------------------------------------------------------------


async def test_a_broker_without_the_secret_cannot_join(ram_path, secret_file, caplog):
    caplog.set_level(logging.WARNING, logger="trio_broker")
    with trio.fail_after(DEADLINE * 2):
        async with open_local_cluster(ram_path / "c", 3, cluster_secret_file=secret_file) as c:
            leader = await c.wait_for_leader()
            seeds = [f"127.0.0.1:{leader.port}"]
            wrong = write_secret(ram_path / "wrong.secret")
            for name, settings in (("none", {}), ("wrong", {"cluster_secret_file": wrong})):
                config = BrokerConfig(
                    data_dir=ram_path / name, port=0, seeds=seeds, broker_id="B-INTRU", **settings
                )
                with pytest.raises(JoinFailed, match=r"UNAUTHORIZED.*cluster-secret-file"):
                    async with open_broker(config):
                        pass
            assert "B-INTRU" not in leader.node.config.members
            assert "B-INTRU" not in leader.addresses
            refusals = [r.getMessage() for r in caplog.records if "unauthorized" in r.getMessage()]
            assert any("JOIN_CLUSTER" in m and "broker=B-INTRU" in m for m in refusals)
            assert any("wrong cluster secret" in m and "peer=127.0.0.1:" in m for m in refusals)
            # Nor, without the proof, do the other privileged requests get through.
            for refused in (
                {"operation": "REMOVE_MEMBER", "broker_id": next(iter(leader.node.config.voters))},
                {"operation": "DATA_SYNC_REQUEST", "snapshot_id": "x", "offset": 0},
            ):
                assert (await call(leader.port, refused))["code"] == "UNAUTHORIZED"
            assert len(leader.node.config.voters) == 3


async def test_a_broker_with_the_wrong_secret_cannot_vote_or_replicate(
    ram_path, secret_file, caplog
):
    """A member restarted with another secret can reach no one, and no one reaches it: its
    election requests never get into the others' consensus, whose term does not move."""
    caplog.set_level(logging.WARNING, logger="trio_broker")
    # The default timing, not the harness's fast one: the term must not move for any other
    # reason (a loaded machine delaying heartbeats by half a second) during this test.
    timing = {"heartbeat_interval": 0.2, "failure_timeout": 1.5}
    with trio.fail_after(DEADLINE * 3):
        async with open_local_cluster(
            ram_path / "c", 3, cluster_secret_file=secret_file, **timing
        ) as c:
            leader = await c.wait_for_leader()
            name = next(n for n, b in c.brokers.items() if b is not leader)
            # The victim must know itself a voter (only voters campaign), durably: it restarts
            # from its disk, and a configuration takes effect in memory as soon as its entry
            # arrives, before the entry is fsynced. Stopped in between, the victim came back a
            # learner, never campaigned, and its links never dropped anything.
            victim = c.brokers[name]
            await wait_until(lambda: len(victim.node.config.voters) == 3)
            promoted_at = leader.node.log.last_index  # holds the entry that made it a voter
            await wait_until(lambda: victim.applied_index >= promoted_at)
            term = leader.node.term
            await c.stop(name)
            wrong = write_secret(ram_path / "wrong.secret")
            # The rogue alone on a short election timer: it campaigns every 0.3-0.6 s rather
            # than every 1.5-3 s, so its three tries reach the others' links sooner; the
            # others keep the default timing, so their term still has no other reason to move.
            rogue = await c.start(
                name, cluster_secret_file=wrong, heartbeat_interval=0.05, failure_timeout=0.3
            )
            # Wait until the rogue has tried to send to both peers a few times: once its
            # election timer fires, it sends (pre-)vote requests, which its links drop.
            peers = set(leader.node.config.voters) - {rogue.broker_id}
            await wait_until(
                lambda: all(rogue.driver.peers.statistics().dropped(p) >= 3 for p in peers),
            )
            assert not rogue.driver.peers.statistics().any_connected
            assert rogue.node.leader_id != leader.broker_id or not rogue.is_leader
            assert leader.is_leader and leader.node.term == term
            for broker in c.brokers.values():
                if broker is not rogue:
                    assert broker.node.term == term
            messages = [r.getMessage() for r in caplog.records]
            assert any(
                "PEER_HELLO" in m and f"broker={rogue.broker_id}" in m and "unauthorized" in m
                for m in messages
            )


async def test_consensus_frames_after_a_refused_peer_hello_are_never_stepped(ram_path, secret_file):
    """Even pipelined behind its PEER_HELLO, a stranger's vote request reaches no core."""
    with trio.fail_after(DEADLINE * 2):
        async with open_local_cluster(ram_path / "c", 3, cluster_secret_file=secret_file) as c:
            leader = await c.wait_for_leader()
            term = leader.node.term
            for broker in c.brokers.values():
                vote = ElectionRequest(
                    src="B-ROGUE",
                    dst=broker.broker_id,
                    term=term + 100,
                    cluster_version=broker.node.cluster_version,
                    pre_vote=False,
                    last_log_index=10**6,
                    last_log_term=term + 99,
                )
                hello = {
                    "operation": "PEER_HELLO",
                    "cluster_id": broker.cluster_id,
                    "broker_id": "B-ROGUE",
                    "to": broker.broker_id,
                }
                conn = await RawConnection.open(broker.port)
                await conn.send_raw(request(hello) + frame(encode_message(vote)) * 3)
                answer = await conn.receive()
                assert answer["code"] == "UNAUTHORIZED", answer
                assert await conn.receive() is None  # closed: nothing after it is read
                await conn.aclose()
            # A rogue broker's own peer links, with a wrong secret, are refused likewise.
            async with trio.open_nursery() as nursery:
                fleet = PeerFleet(
                    "B-ROGUE",
                    leader.cluster_id,
                    nursery,
                    lambda peer: ("127.0.0.1", c.brokers[peer_names[peer]].port),
                    ("127.0.0.1", 1),
                    TCP.connect,
                    secret=b"not the cluster secret at all",
                )
                peer_names = {b.broker_id: n for n, b in c.brokers.items()}
                fleet.ensure(set(peer_names))
                for _ in range(20):
                    for peer in peer_names:
                        fleet.send(
                            ElectionRequest(
                                src="B-ROGUE",
                                dst=peer,
                                term=term + 100,
                                cluster_version=1,
                                pre_vote=False,
                                last_log_index=10**6,
                                last_log_term=term + 99,
                            )
                        )
                    await trio.sleep(0.05)
                assert not fleet.statistics().any_connected
                nursery.cancel_scope.cancel()
            assert leader.is_leader
            assert {b.node.term for b in c.brokers.values()} == {term}


async def test_a_proof_cannot_be_replayed(ram_path, secret_file):
    secret = read_secret(secret_file)
    config = BrokerConfig(data_dir=ram_path / "b", port=0, cluster_secret_file=secret_file)
    async with open_broker(config) as broker:
        first = await RawConnection.open(broker.port)
        nonce = (await first.call({"operation": "AUTH_CHALLENGE"}))["nonce"]
        proof = proof_for(secret, nonce)
        assert await first.call({"operation": "AUTH", "proof": proof}) == {"status": "success"}
        # The nonce was spent: the same proof again, here or on another connection, fails.
        assert (await first.call({"operation": "AUTH", "proof": proof}))["code"] == "UNAUTHORIZED"
        second = await RawConnection.open(broker.port)
        assert (await second.call({"operation": "AUTH", "proof": proof}))["code"] == (
            "UNAUTHORIZED"
        )
        await second.call({"operation": "AUTH_CHALLENGE"})
        assert (await second.call({"operation": "AUTH", "proof": proof}))["code"] == (
            "UNAUTHORIZED"
        )
        remove = {"operation": "REMOVE_MEMBER", "broker_id": "B-NOONE"}
        assert (await second.call(remove))["code"] == "UNAUTHORIZED"
        assert (await first.call(remove))["code"] == "BAD_REQUEST"  # authorised, not a member
        await first.aclose()
        await second.aclose()


async def test_the_client_library_proves_the_secret_for_operator_commands(ram_path, secret_file):
    with trio.fail_after(DEADLINE * 2):
        async with open_local_cluster(ram_path / "c", 3, cluster_secret_file=secret_file) as c:
            leader = await c.wait_for_leader()
            replica = next(b for b in c.brokers.values() if b is not leader)
            victim = next(b for b in c.brokers.values() if b not in (leader, replica))
            seed = f"127.0.0.1:{replica.port}"
            async with connect(seed) as client:
                with pytest.raises(BrokerError, match="UNAUTHORIZED"):
                    await client.remove_member(victim.broker_id)
            assert victim.broker_id in leader.node.config.members
            secret = read_secret(secret_file)
            async with connect(seed, cluster_secret=secret) as client:
                await client.remove_member(victim.broker_id)
            assert victim.broker_id not in leader.node.config.members


# -- client tokens ----------------------------------------------------------------------------


@pytest.fixture
async def token_broker(ram_path):
    tokens = ram_path / "tokens"
    tokens.write_text("# the clients of team A\ntoken-a\n\n  token-b  \n")
    config = BrokerConfig(
        data_dir=ram_path / "b",
        port=0,
        client_tokens_file=tokens,
        plaintext_port=0,
        allow_open_peers=True,  # one broker, no peers: no cluster secret needed
    )
    async with open_broker(config) as broker:
        yield broker


async def test_client_operations_need_a_token(token_broker):
    port = token_broker.port
    conn = await RawConnection.open(port)
    create = {"operation": "CREATE_QUEUE"}
    assert (await conn.call(create))["code"] == "UNAUTHORIZED"
    assert (await conn.call({"operation": "AUTH", "token": "token-c"}))["code"] == "UNAUTHORIZED"
    assert (await conn.call(create))["code"] == "UNAUTHORIZED"
    assert (await conn.call({"operation": "CLUSTER_QUERY"}))["status"] == "success"  # open
    assert await conn.call({"operation": "AUTH", "token": "token-b"}) == {"status": "success"}
    queue_id = (await conn.call(create))["queue_id"]
    append = {"operation": "APPEND", "queue_name": queue_id, "data": 1}
    assert (await conn.call(append))["sequence_num"] == 1
    await conn.aclose()
    # A token is per connection.
    assert (await call(port, append))["code"] == "UNAUTHORIZED"
    # The plaintext listener needs none.
    assert (await call(token_broker.plaintext_port, append))["sequence_num"] == 2


async def test_the_client_library_presents_its_token(token_broker):
    seed = f"127.0.0.1:{token_broker.port}"
    async with connect(seed) as client:  # CLUSTER_QUERY is open, the rest is not
        with pytest.raises(BrokerError, match="UNAUTHORIZED"):
            await client.create_queue()
    with pytest.raises(BrokerError, match="UNAUTHORIZED: client token refused"):
        async with connect(seed, token="token-z"):
            pass
    async with connect(seed, token="token-a") as client:
        queue_id = await client.create_queue()
        assert await client.append(queue_id, [1.5]) == 1
        assert (await client.read(queue_id)).data == [1.5]
    # Without a token, on the plaintext listener.
    async with connect(f"127.0.0.1:{token_broker.plaintext_port}") as client:
        assert (await client.read(queue_id)).data == [1.5]


async def test_with_no_security_settings_nothing_changes(broker):
    """The defaults: no TLS, no secret, no tokens; PEER_HELLO-level requests are open as
    before, and an AUTH with a token is accepted (there is nothing to check it against)."""
    assert broker.security.describe() == {
        "tls": "off",
        "cluster_secret": "unset",
        "client_tokens": "off",
    }
    assert broker.plaintext_port is None
    assert (await call(broker.port, {"operation": "CREATE_QUEUE"}))["status"] == "success"
    r = await call(broker.port, {"operation": "REMOVE_MEMBER", "broker_id": "B-NOONE"})
    assert r["code"] == "BAD_REQUEST"
    assert await call(broker.port, {"operation": "AUTH", "token": "t"}) == {"status": "success"}
    conn = await RawConnection.open(broker.port)
    await conn.call({"operation": "AUTH_CHALLENGE"})
    r = await conn.call({"operation": "AUTH", "proof": "00"})
    assert r["code"] == "UNAUTHORIZED" and "no cluster secret" in r["message"]
    await conn.aclose()


async def test_snapshot_transfer_and_forwarded_joins_work_with_tls_and_a_secret(
    ram_path, tls, secret_file
):
    """DATA_SYNC_REQUEST and a JOIN_CLUSTER that a replica forwards to the leader both open
    their own connections: TLS, and the secret proved, on each."""
    with trio.fail_after(DEADLINE * 3):
        async with open_local_cluster(
            ram_path / "c",
            3,
            **tls,
            cluster_secret_file=secret_file,
            compact_threshold=50,
            compact_keep=5,
            compact_bytes=2_000,  # concurrent appends share entries: compact by size too
        ) as c:
            leader = await c.wait_for_leader()
            lagging = next(n for n, b in c.brokers.items() if b is not leader)
            await c.stop(lagging)
            async with connect(
                f"127.0.0.1:{leader.port}", ssl_context=client_context_from(tls)
            ) as client:
                queue_id = await client.create_queue()
                async with trio.open_nursery() as nursery:  # concurrent: pipelined
                    for i in range(120):
                        nursery.start_soon(client.append, queue_id, i)
            while leader.node.log.snapshot_index == 0:
                await leader.driver.wait_changed()
            restarted = await c.start(lagging)
            while restarted.applied_index < leader.node.commit:
                await restarted.driver.wait_changed()
            assert restarted.node.log.snapshot_index > 0
            assert len(await restarted._worker.run(restarted._store.messages, queue_id)) == 120
            # A fourth broker that only knows a replica: its join is forwarded.
            replica = next(b for b in c.brokers.values() if b is not leader)
            fourth = await c.start("b4", seeds=[f"127.0.0.1:{replica.port}"])
            await c.wait_for_voters(4)
            assert fourth.broker_id in leader.node.config.voters


async def test_a_client_token_does_not_open_the_privileged_requests(ram_path, secret_file):
    tokens = ram_path / "tokens"
    tokens.write_text("sesame\n")
    config = BrokerConfig(
        data_dir=ram_path / "b",
        port=0,
        cluster_secret_file=secret_file,
        client_tokens_file=tokens,
    )
    async with open_broker(config) as broker:
        conn = await RawConnection.open(broker.port)
        for malformed in ({}, {"token": "sesame", "proof": "00"}, {"token": 7}):
            answer = await conn.call({"operation": "AUTH", **malformed})
            assert answer["code"] == "BAD_REQUEST", answer
        assert await conn.call({"operation": "AUTH", "token": "sesame"}) == {"status": "success"}
        assert (await conn.call({"operation": "CREATE_QUEUE"}))["status"] == "success"
        remove = {"operation": "REMOVE_MEMBER", "broker_id": broker.broker_id}
        assert (await conn.call(remove))["code"] == "UNAUTHORIZED"
        # A proof without a challenge proves nothing either.
        proof = proof_for(read_secret(secret_file), "0" * 64)
        assert (await conn.call({"operation": "AUTH", "proof": proof}))["code"] == "UNAUTHORIZED"
        assert (await conn.call(remove))["code"] == "UNAUTHORIZED"
        await conn.aclose()
        assert broker.broker_id in broker.node.config.voters


async def test_a_broker_of_another_cluster_is_refused_and_logged(broker, caplog):
    caplog.set_level(logging.WARNING, logger="trio_broker")
    join = {
        "operation": "JOIN_CLUSTER",
        "broker_id": "B-OTHER",
        "host": "127.0.0.1",
        "port": 1,
        "cluster_id": "G-OTHER",
    }
    assert (await call(broker.port, join))["code"] == "WRONG_CLUSTER"
    assert any(
        "request.wrong_cluster" in r.getMessage()
        and "operation=JOIN_CLUSTER" in r.getMessage()
        and "peer=127.0.0.1:" in r.getMessage()
        for r in caplog.records
    )
    assert "B-OTHER" not in broker.node.config.members


# One valid example of every privileged request: a new one without an example fails below.
PRIVILEGED_EXAMPLES = {
    "PEER_HELLO": {"broker_id": "B-ROGUE", "cluster_id": None},
    "JOIN_CLUSTER": {"broker_id": "B-ROGUE", "host": "127.0.0.1", "port": 1},
    "DATA_SYNC_REQUEST": {"snapshot_id": "x", "offset": 0},
    "FETCH_VALUES": {"queue_name": "Q-AAAAABBBBB", "first": 1},
    "REMOVE_MEMBER": {"broker_id": None},
    "TRANSFER_LEADERSHIP": {},
    "SNAPSHOT": {},
    "ADD_MEMBER": {"host": "127.0.0.1", "port": 1},
    "REBALANCE": {},
    "DRAIN_BROKER": {"broker_id": None},
    "SET_CLUSTER_SETTINGS": {"replication_factor": 2},
    "METADATA_PROPOSE": {
        "command": {"type": "REGISTER_BROKER", "broker_id": "B-ROGUE", "host": "h", "port": 1}
    },
}


async def test_every_privileged_request_needs_the_secret_and_none_is_served_in_plaintext(
    ram_path, secret_file
):
    from trio_broker._protocol._codec import OPERATION_NAMES
    from trio_broker._protocol._messages import PRIVILEGED_REQUESTS

    names = {OPERATION_NAMES[cls] for cls in PRIVILEGED_REQUESTS}
    assert names == set(PRIVILEGED_EXAMPLES), names ^ set(PRIVILEGED_EXAMPLES)
    with trio.fail_after(DEADLINE * 2):
        async with open_local_cluster(
            ram_path / "c", 3, cluster_secret_file=secret_file, plaintext_port=0
        ) as c:
            leader = await c.wait_for_leader()
            replica = next(b for b in c.brokers.values() if b is not leader)
            term, members = leader.node.term, set(leader.node.config.members)
            for name, fields in PRIVILEGED_EXAMPLES.items():
                body = {"operation": name, **fields}
                if "cluster_id" in body:
                    body["cluster_id"] = leader.cluster_id
                if body.get("broker_id") is None and "broker_id" in body:
                    body["broker_id"] = replica.broker_id
                for port in (leader.port, replica.port, leader.plaintext_port):
                    answer = await call(port, body)
                    assert answer.get("code") == "UNAUTHORIZED", (name, port, answer)
            assert (leader.node.term, set(leader.node.config.members)) == (term, members)
            assert leader.is_leader and leader.node.log.snapshot_index == 0


async def test_add_member_refuses_a_broker_that_does_not_hold_the_secret(ram_path, secret_file):
    """A --join-wait broker with another secret could never replicate or vote: the leader
    proves its secret to it first, and adds nothing when the proof is refused."""
    with trio.fail_after(DEADLINE * 2):
        async with open_local_cluster(ram_path / "c", 3, cluster_secret_file=secret_file) as c:
            leader = await c.wait_for_leader()
            wrong = write_secret(ram_path / "wrong.secret")
            config = BrokerConfig(
                data_dir=ram_path / "new",
                port=0,
                cluster_id=leader.cluster_id,
                join_wait=True,
                cluster_secret_file=wrong,
            )
            async with open_broker(config) as newcomer:
                secret = read_secret(secret_file)
                async with connect(f"127.0.0.1:{leader.port}", cluster_secret=secret) as client:
                    with pytest.raises(BrokerError) as info:
                        await client.add_member("127.0.0.1", newcomer.port)
                assert info.value.code == "UNAUTHORIZED"
                assert "--cluster-secret-file" in info.value.message
                assert newcomer.broker_id not in leader.node.config.members
