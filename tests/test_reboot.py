"""A broker whose machine rebooted votes only once it knows what it acknowledged; a process
restart votes at once; without a majority that can tell, the group waits, says so, and the
operator may accept the logs as they are (docs/reliability.md, "A reboot votes only once it
knows"). The core's rules are in tests/core/test_raft_recovering.py."""

from __future__ import annotations

import functools
import logging

import trio

from trio_broker._cli._main import main
from trio_broker._core._raft_messages import HardState
from trio_broker._runtime import _boot
from trio_broker._runtime._boot import boot_id, note_boot
from trio_broker._runtime._groups import GROUPS_DIR
from trio_broker._runtime._metrics import _StateCollector
from trio_broker._runtime._status import RequestRates, read_status
from trio_broker._storage import Store, open_sqlite_storage
from trio_broker.testing._mock_cluster import open_mock_cluster

NAMES = ("b1", "b2", "b3")


def gauge(broker, name: str) -> float:
    families = _StateCollector(broker, broker.metrics).collect()
    (family,) = [f for f in families if f.name == name]
    return family.samples[0].value


def node(cluster, name: str):
    return cluster.brokers[name].driver.node


async def fill(cluster, leader: str, count: int) -> str:
    queue = (await cluster.call(leader, {"operation": "CREATE_QUEUE"}))["queue_id"]
    for k in range(count):
        answer = await cluster.call(leader, {"operation": "APPEND", "queue_name": queue, "data": k})
        assert answer["status"] == "success", answer
    await cluster.stabilize()
    return queue


def test_the_boot_id_is_read_where_the_system_has_one(tmp_path):
    path = tmp_path / "boot_id"
    assert boot_id(path) is None  # no such file: another system
    path.write_text("6f1d0c52-6d2b-4a53-9a53-0f0f4d0b8c11\n")
    assert boot_id(path) == "6f1d0c52-6d2b-4a53-9a53-0f0f4d0b8c11"
    path.write_text("")
    assert boot_id(path) is None


def test_the_store_marks_a_start_under_another_boot_unverified(tmp_path):
    store = Store(tmp_path)
    try:
        assert not store.raft_state().hard_state.unverified
        assert store.note_boot("boot-a")  # nothing recorded before: it cannot tell
        assert store.raft_state().hard_state.unverified
        store.save(hard_state=HardState(term=2))  # the core clears it
        assert not store.note_boot("boot-a")  # a process restart: nothing changes
        assert not store.raft_state().hard_state.unverified
        assert store.note_boot("boot-b")  # rebooted
        assert store.raft_state().hard_state.unverified
        assert store.note_boot(None)  # no boot id on this system: every start counts
        assert store.trust_log("boot-c") and not store.raft_state().hard_state.unverified
        assert not store.note_boot("boot-c")  # accepted on this boot: starts trusting
    finally:
        store.close()


async def test_a_new_data_folder_is_logged_as_new_and_a_reboot_as_a_reboot(
    tmp_path, caplog, monkeypatch
):
    caplog.set_level(logging.INFO, logger="trio_broker")
    boots = iter(["boot-a", "boot-a", "boot-b", None])
    monkeypatch.setattr(_boot, "boot_id", lambda: next(boots))

    async def start() -> tuple[bool, list[logging.LogRecord]]:
        caplog.clear()
        async with open_sqlite_storage(tmp_path) as (worker, store):
            rebooted = await note_boot(worker, store, data_dir=str(tmp_path))
            await worker.run(functools.partial(store.save, hard_state=HardState(term=2)))
        return rebooted, [r for r in caplog.records if getattr(r, "event", None)]

    # The first start: the store is marked as the rule says, but logged as a new folder.
    rebooted, (record,) = await start()
    assert rebooted and record.event == "broker.first_start"
    assert "new data folder" in record.getMessage() and str(tmp_path) in record.getMessage()
    assert await start() == (False, [])  # a process restart: nothing to say
    for boot in ("boot-b", "unknown"):  # another boot; then none known on this system
        rebooted, (record,) = await start()
        assert rebooted and record.event == "broker.rebooted"
        assert f"boot_id={boot}" in record.getMessage()


def test_data_trust_log_accepts_every_group_of_a_stopped_broker(tmp_path, capsys):
    group = tmp_path / GROUPS_DIR / "G-ABCDE"
    for folder in (tmp_path, group):
        store = Store(folder)
        store.note_boot("a-boot-before")
        store.close()
    lock = Store(tmp_path)  # a running broker holds the folder: refused, nothing changed
    try:
        assert main(["data", "trust-log", "--data-dir", str(tmp_path)]) == 1
        assert "in use" in capsys.readouterr().err
    finally:
        lock.close()
    assert main(["data", "trust-log", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert str(group) in out and "lost" in out
    for folder in (tmp_path, group):
        store = Store(folder)
        try:
            assert not store.raft_state().hard_state.unverified
            assert not store.note_boot(boot_id())  # its next start on this boot trusts it
        finally:
            store.close()
    assert main(["data", "trust-log", "--data-dir", str(tmp_path / "nothing")]) == 1


async def test_a_process_restart_of_two_of_three_elects_with_the_third_down(autojump_clock):
    async with open_mock_cluster(3) as cluster:
        leader = cluster.name_of(await cluster.wait_for_leader())
        queue = await fill(cluster, leader, 5)
        other, _down = [n for n in NAMES if n != leader]
        for name in NAMES:
            await cluster.crash(name)
        for name in (leader, other):
            await cluster.restart(name)
            assert not node(cluster, name).unverified
        with trio.fail_after(30):
            new = cluster.name_of(await cluster.wait_for_leader(among=[leader, other]))
        answer = await cluster.call(new, {"operation": "APPEND", "queue_name": queue, "data": 5})
        assert answer["status"] == "success", answer


async def test_two_rebooted_brokers_without_the_third_wait_say_so_and_the_override_works(
    autojump_clock, caplog
):
    """The whole cluster lost power and one machine never came back: the two rebooted
    brokers cannot learn what they acknowledged, elect nobody, and say what to do (status,
    metrics, one ``raft.unverified`` WARNING each). The operator accepts their logs
    (``data trust-log``, here the store call it makes): they elect, and nothing is lost;
    the third, back later, follows."""
    caplog.set_level(logging.INFO, logger="trio_broker")
    async with open_mock_cluster(3) as cluster:
        leader = cluster.name_of(await cluster.wait_for_leader())
        queue = await fill(cluster, leader, 8)
        survivors = [leader, next(n for n in NAMES if n != leader)]
        gone = next(n for n in NAMES if n not in survivors)
        for name in NAMES:
            await cluster.crash(name)
            cluster.stores[name].reboot()
        for name in survivors:
            await cluster.restart(name)
        await trio.sleep(60)
        assert not any(node(cluster, n).is_leader for n in survivors)
        for name in survivors:
            broker = cluster.brokers[name]
            assert node(cluster, name).unverified
            assert broker.statistics().unverified
            assert gauge(broker, "trio_broker_unverified") == 1.0
            status = await read_status(broker, RequestRates(broker))
            assert status["broker"]["unverified"] is True
            warnings = [
                r
                for r in caplog.records
                if r.levelno == logging.WARNING
                and r.getMessage().startswith(f"raft.unverified broker_id={broker.broker_id}")
            ]
            assert len(warnings) == 1 and "data trust-log" in warnings[0].getMessage()
        answer = await cluster.call(
            survivors[0], {"operation": "APPEND", "queue_name": queue, "data": "x"}
        )
        assert answer["status"] == "error"

        for name in survivors:
            await cluster.crash(name)
            assert cluster.stores[name].trust_log(boot_id())
            await cluster.restart(name)
            assert not node(cluster, name).unverified
        with trio.fail_after(30):
            new = cluster.name_of(await cluster.wait_for_leader(among=survivors))
        answer = await cluster.call(new, {"operation": "APPEND", "queue_name": queue, "data": 8})
        assert answer["status"] == "success", answer
        assert gauge(cluster.brokers[new], "trio_broker_unverified") == 0.0
        await cluster.restart(gone)
        with trio.fail_after(30):
            await cluster.wait_until(lambda: not node(cluster, gone).unverified)
        await cluster.stabilize()
        for name in NAMES:
            assert cluster.messages(name, queue) == list(range(9))
