"""A group of appends in runs across a cluster (docs/replication.md, "A group of appends in
runs"): a leader writes the compact form only while every member said it reads it (its
answer to PEER_HELLO), so a cluster with a broker of the version before keeps every log in
COMMAND_GROUPs, and one whose every broker reads runs stores them on all."""

from __future__ import annotations

from typing import Any

import trio

from trio_broker._protocol import PeerWelcome
from trio_broker._runtime import _broker
from trio_broker.testing import open_local_cluster

from .wire import RawConnection, create_queue

APPENDS = 64


async def _stored_forms(broker: Any) -> list[str]:
    """The ``type`` of every payload in the broker's log (read on its storage thread)."""
    db = broker.driver._store._db

    def read() -> list[str]:
        rows = db.execute("SELECT payload FROM raft_log ORDER BY log_index")
        return [bytes(payload)[9:].split(b'"', 1)[0].decode() for (payload,) in rows]

    return await broker.driver._worker.run(read)


async def _append_pipelined(port: int, queue_id: str, count: int) -> None:
    """``count`` APPENDs in one write (the leader groups them), every answer a success."""
    conn = await RawConnection.open(port)
    try:
        await conn.send(
            *(
                {"operation": "APPEND", "queue_name": queue_id, "data": f"v{i}"}
                for i in range(count)
            )
        )
        for _ in range(count):
            answer = await conn.receive()
            assert answer is not None and answer["status"] == "success", answer
    finally:
        await conn.aclose()


async def _forms_after_appends(cluster: Any) -> dict[str, set[str]]:
    leader = await cluster.wait_for_leader()
    queue_id = await create_queue(leader.port)
    await _append_pipelined(leader.port, queue_id, APPENDS)
    last = leader.node.log.last_index
    for broker in cluster.brokers.values():
        while broker.applied_index < last:
            await broker.driver.wait_changed()
    return {name: set(await _stored_forms(b)) for name, b in cluster.brokers.items()}


def _answering_as_before(monkeypatch: Any, names: set[str]) -> None:
    """The brokers named in ``names`` (read at each greeting: it may grow) answer PEER_HELLO
    as the version before did, without saying they read runs."""
    real = _broker.Broker._accept_peer

    def accept(self: Any, hello: Any, peer: str) -> Any:
        answer = real(self, hello, peer)
        if isinstance(answer, PeerWelcome) and self.config.data_dir.name in names:
            return PeerWelcome(append_runs=False)
        return answer

    monkeypatch.setattr(_broker.Broker, "_accept_peer", accept)


async def test_every_broker_reading_runs_stores_a_group_of_appends_in_runs(tmp_path):
    async with open_local_cluster(tmp_path, 3) as cluster:
        with trio.fail_after(30):
            forms = await _forms_after_appends(cluster)
    for name, seen in forms.items():
        assert "APPEND_RUNS" in seen, (name, seen)
        assert "COMMAND_GROUP" not in seen, (name, seen)


async def test_a_broker_that_does_not_say_it_reads_runs_keeps_every_log_in_command_groups(
    tmp_path, monkeypatch
):
    """b3 answers PEER_HELLO as the version before did: no broker writes or stores runs."""
    _answering_as_before(monkeypatch, {"b3"})
    async with open_local_cluster(tmp_path, 3) as cluster:
        with trio.fail_after(30):
            forms = await _forms_after_appends(cluster)
    for name, seen in forms.items():
        assert "COMMAND_GROUP" in seen, (name, seen)
        assert "APPEND_RUNS" not in seen, (name, seen)


async def test_a_broker_back_as_the_version_before_catches_up_runs_as_command_groups(
    tmp_path, monkeypatch
):
    """A replica that said it reads runs is down while its group writes them (a member keeps
    what it last said), then comes back answering as the version before: what it is sent of
    the log, and stores, is COMMAND_GROUPs, and it applies every append."""
    old: set[str] = set()
    _answering_as_before(monkeypatch, old)
    async with open_local_cluster(tmp_path, 3) as cluster:
        with trio.fail_after(30):
            leader = await cluster.wait_for_leader()
            while not leader.driver._append_runs():
                await leader.driver.wait_changed()
            victim = next(n for n, b in cluster.brokers.items() if b is not leader)
            await cluster.stop(victim)
            queue_id = await create_queue(leader.port)
            await _append_pipelined(leader.port, queue_id, APPENDS)
            assert "APPEND_RUNS" in await _stored_forms(leader)
            old.add(victim)
            back = await cluster.start(victim)
            last = leader.node.log.last_index
            while back.applied_index < last:
                await back.driver.wait_changed()
            forms = set(await _stored_forms(back))
            db = back.driver._store._db
            stored = await back.driver._worker.run(
                lambda: db.execute("SELECT count(*) FROM queue_data").fetchone()[0]
            )
    assert "COMMAND_GROUP" in forms and "APPEND_RUNS" not in forms, forms
    assert stored == APPENDS


async def test_a_member_catching_up_while_one_of_the_version_before_is_in_the_group(
    tmp_path, monkeypatch
):
    """Entries re-read from the log (a member restarted and caught up) are sent as
    COMMAND_GROUPs: before, they were encoded by the link's own peer's answer, and the
    restarted member stored APPEND_RUNS while a member of the version before was in the
    group, so going back to that version on it failed (found in review, with real brokers of
    both versions)."""
    _answering_as_before(monkeypatch, {"b3"})
    async with open_local_cluster(tmp_path, 3) as cluster:
        with trio.fail_after(60):
            leader = await cluster.wait_for_leader()
            queue_id = await create_queue(leader.port)
            victim = next(n for n, b in cluster.brokers.items() if b is not leader and n != "b3")
            await cluster.stop(victim)
            for _ in range(4):
                await _append_pipelined(leader.port, queue_id, APPENDS)
            assert "APPEND_RUNS" not in await _stored_forms(leader)  # the gate holds here
            back = await cluster.start(victim)
            last = leader.node.log.last_index
            while back.applied_index < last:
                await back.driver.wait_changed()
            forms = set(await _stored_forms(back))
    assert "APPEND_RUNS" not in forms, f"{victim} stored {forms} while b3 is of the version before"
