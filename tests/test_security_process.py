"""A TLS cluster with a cluster secret and plaintext listeners, started from the command line
(``python -m trio_broker node``): a TLS trio client, an original-design client on the
plaintext listener, and a broker with the wrong secret that exits with a readable error."""

from __future__ import annotations

import secrets
import ssl
from pathlib import Path

import pytest
import trio
import trustme

from trio_broker.client import connect

from .processes import free_port, open_nodes
from .wire import call

FAST = ("--heartbeat-interval", "0.05", "--failure-timeout", "0.5")
DEADLINE = 60


@pytest.fixture
def tls_args(tmp_path: Path) -> list[str]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    paths = {name: tmp_path / f"{name}.pem" for name in ("cert", "key", "ca")}
    cert.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    cert.private_key_pem.write_to_path(str(paths["key"]))
    ca.cert_pem.write_to_path(str(paths["ca"]))
    return [f"--tls-{name}={path}" for name, path in paths.items()]


async def test_a_tls_cluster_from_the_command_line(tmp_path, tls_args):
    secret = tmp_path / "cluster.secret"
    secret.write_text(secrets.token_hex(32))
    wrong = tmp_path / "wrong.secret"
    wrong.write_text(secrets.token_hex(32))
    with trio.fail_after(DEADLINE):
        async with open_nodes(tmp_path / "nodes") as nodes:
            members = []
            plaintext_ports = []
            for i in range(3):
                plaintext_ports.append(free_port())
                args = [
                    *FAST,
                    *tls_args,
                    f"--cluster-secret-file={secret}",
                    f"--plaintext-port={plaintext_ports[-1]}",
                ]
                members.append(
                    await nodes.start_member(tmp_path / f"d{i}", seeds=members[:1], extra_args=args)
                )
            assert "cluster_secret=set" in members[0].stderr_text()
            assert secret.read_text() not in members[0].stderr_text()  # never printed

            # A trio client over TLS, through the main ports.
            context = ssl.create_default_context(cafile=tls_args[2].partition("=")[2])
            seeds = [m.address for m in members]
            async with connect(seeds, ssl_context=context) as client:
                while len(client.topology().brokers) < 3 or any(
                    b.status != "active" for b in client.topology().brokers
                ):
                    await trio.sleep(0.05)
                    await client.cluster_query()
                queue_id = await client.create_queue()
                assert await client.append(queue_id, {"tls": True}) == 1

            # An original-design client, plain TCP, on a plaintext listener.
            while True:
                view = await call(plaintext_ports[1], {"operation": "CLUSTER_QUERY"})
                if len(view["brokers"]) == 3 and any(
                    b["role"] == "leader" for b in view["brokers"]
                ):
                    break
                await trio.sleep(0.05)
            assert {b["port"] for b in view["brokers"]} == set(plaintext_ports)
            leader_port = next(b["port"] for b in view["brokers"] if b["role"] == "leader")
            read = {"operation": "READ", "queue_name": queue_id, "client_id": "C-OLD01"}
            assert await call(leader_port, read) == {
                "status": "success",
                "sequence_num": 1,
                "data": {"tls": True},
            }

            # A broker with the wrong secret: refused, a readable error, a non-zero exit.
            rogue = await nodes.start(
                tmp_path / "rogue",
                extra_args=[
                    *FAST,
                    *tls_args,
                    f"--cluster-secret-file={wrong}",
                    "--seed",
                    members[0].address,
                ],
                wait_ready=False,
            )
            assert await rogue.wait() == 1
            error = rogue.stderr_text()
            assert "error: seeds refused to describe their cluster: UNAUTHORIZED" in error
            assert "--cluster-secret-file" in error
            assert "Traceback" not in error
            assert any("wrong cluster secret" in m.stderr_text() for m in members)
