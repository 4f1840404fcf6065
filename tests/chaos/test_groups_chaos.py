"""Chaos with several replication groups: brokers that lead several groups at once are killed
and cut off while clients write to a queue of every group (docs/replication.md, "Several
leaders"; docs/reliability.md).

Three brokers in Linux network namespaces (:class:`~trio_broker.testing._netns.NetnsLab`, as in
``test_netns.py``), the first founding ``GROUPS`` groups (``node --groups``), every broker hosting
every group. The clients run as one process inside the hub namespace (``group_worker.py``): trio
clients and clients of the original design (a connection per request, each queue routed by its
id to its group's leader found with CLUSTER_QUERY) append unique values to, and read from, a
queue of every group, each operation recorded with its outcome
(:class:`~trio_broker.testing._history.History`). Meanwhile, ``ROUNDS`` faults
one after another, alternately:

- SIGKILL of the broker that leads the most groups (two or three of six): every group it led
  must fail over to the other two; it restarts from its data a few seconds after the kill;
- a partition cutting off the broker that leads the most groups (its veth down: packets
  dropped, nothing reset), healed a few seconds later.

Then, everything healed: leadership spreads back (no broker leads more than ``ceil(G/N)``
groups, every broker votes in every group), ``client status`` shows every replica of every
group caught up (lag 0), a fresh client reads every queue from the start, and the checker
judges the history: every acknowledged append is in its queue at its sequence number, in order,
nothing lost, duplicated or invented, per group.

The fault schedule comes from one seed, printed; ``TRIO_BROKER_CHAOS_SEED=N`` replays it (not
the timing). The history and the nemesis log are kept under ``$TRIO_BROKER_CHAOS_ARTIFACTS``
(see ``test_chaos.py``), the brokers' logs too on failure.

Run (root, for the namespaces): ``pytest tests/chaos/test_groups_chaos.py --chaos -v``.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio

from trio_broker.testing._history import History, Op, OpType
from trio_broker.testing._netns import NetnsLab

from .test_chaos import _artifacts, _seed
from .test_netns import CLI_TIMEOUT, Broker, Cluster, log

pytestmark = pytest.mark.chaos

GROUPS = 6
ROUNDS = 6
"""Faults, alternately a SIGKILL and a partition of the broker leading the most groups."""
CLIENTS = 6
"""Trio clients (a connection per broker, each queue routed to its group's leader)."""
OLD_CLIENTS = 3
"""Clients of the original design (a connection per request)."""
FORM_WITHIN = 60.0
"""The cluster formed: every broker a voter of every group, leadership spread."""
FAILOVER_WITHIN = 30.0
"""After a SIGKILL: every group led by one of the two other brokers (docs: 1.5-3 s per election;
the rest is for the client processes that look, seconds each on a loaded machine)."""
SPREAD_WITHIN = 60.0
"""After the last heal: leadership spread again, every replica caught up."""
LOAD_SECONDS = 600.0
"""The client process stops by itself after this long, whatever happens to the test."""
SCENARIO_WITHIN = 600.0
REPO = Path(__file__).resolve().parents[2]


def test_groups_survive_kills_and_partitions_of_brokers_leading_several(
    lab: NetnsLab, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    seed = _seed()
    replay = f"TRIO_BROKER_CHAOS_SEED={seed} pytest tests/chaos --chaos -k '{request.node.name}'"
    log(f"{GROUPS} groups on 3 brokers, {ROUNDS} faults, seed {seed}; replay: {replay}")
    artifacts = _artifacts() / f"groups-{seed}"
    artifacts.mkdir(parents=True, exist_ok=True)
    scenario = GroupsScenario(lab, tmp_path, random.Random(seed), founder_flags())
    passed = False
    try:
        trio.run(scenario.run)
        passed = True
    finally:
        scenario.history.dump(artifacts / "history.jsonl")
        (artifacts / "nemesis.log").write_text("\n".join(scenario.nemesis_log) + "\n")
        if not passed:
            for path in tmp_path.glob("b*.std*"):
                shutil.copy(path, artifacts / path.name)
            log(f"seed {seed}; replay: {replay}")
        log(f"history and nemesis log in {artifacts}")
    result = scenario.history.check()
    log(result.report(scenario.history))
    assert result.valid, f"seed {seed}: {result.report(scenario.history)}\nreplay: {replay}"
    # Every group's queue was written to, and read back, with faults on and after the heal.
    acked = Counter(op.queue for op in scenario.history.ops if _ok_append(op))
    assert sorted(acked) == sorted(scenario.queues.values()), acked
    final = scenario.history.final
    for queue, count in acked.items():
        assert len(final[queue]) >= count, (queue, count, len(final[queue]))
    old_design = [op for op in scenario.history.ops if op.process.startswith("C-O")]
    assert any(_ok_append(op) for op in old_design), "no original-design append acknowledged"
    assert {op.queue for op in old_design if op.type is OpType.OK} == set(acked), (
        "the original-design clients were not served on every group"
    )
    served = [
        op for op in scenario.history.ops if _ok_append(op) and op.invoke_time > scenario.healed
    ]
    assert served, f"seed {seed}: no append acknowledged after the heal\nreplay: {replay}"
    assert max(scenario.killed_leading) >= 2, (
        f"no SIGKILL hit a broker leading several groups: {scenario.killed_leading}"
    )


def founder_flags() -> list[str]:
    """``--groups GROUPS``, and ``--founding-brokers 3`` where the node has it: a broker that
    places its groups on the brokers known when it founds them must wait for all three, or
    every group would start on the founder alone."""
    usage = subprocess.run(
        [sys.executable, "-m", "trio_broker", "node", "--help"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    flags = ["--groups", str(GROUPS)]
    if "--founding-brokers" in usage:
        flags += ["--founding-brokers", "3"]
    return flags


def _ok_append(op: Op) -> bool:
    return op.f == "append" and op.type is OpType.OK


def load_history(path: Path, history: History) -> None:
    """The operations ``History.dump`` wrote (the client process's), into ``history``."""
    for line in path.read_bytes().splitlines():
        record = orjson.loads(line)
        if "index" not in record:
            continue
        history.ops.append(
            Op(
                index=len(history.ops),
                process=record["process"],
                f=record["f"],
                queue=record["queue"],
                value=record.get("value"),
                invoke_time=record["invoke"],
                type=OpType(record["type"]),
                complete_time=record["complete"],
                seq=record.get("seq"),
                data=record.get("data"),
                error=record.get("error"),
            )
        )


class GroupsScenario:
    def __init__(
        self, lab: NetnsLab, base: Path, rng: random.Random, founder_flags: list[str]
    ) -> None:
        self.lab = lab
        self.founder_flags = founder_flags
        self.base = base
        self.rng = rng
        self.cluster = Cluster(lab, base)
        self.history = History()
        self.nemesis_log: list[str] = []
        self.queues: dict[str, str] = {}
        self.killed_leading: list[int] = [0]
        """How many groups each SIGKILLed broker led when it was killed."""
        self.healed = math.inf
        """``time.monotonic()`` once every broker ran and every link was up again."""

    def note(self, message: str) -> None:
        self.nemesis_log.append(f"{time.monotonic():.3f} {message}")
        log(f"nemesis: {message}")

    @property
    def seeds(self) -> str:
        return ",".join(b.address for b in self.cluster.brokers)

    def seed_args(self) -> list[str]:
        return self.cluster.seeds()

    # -- the cluster ----------------------------------------------------------------------------

    async def start(self, broker: Broker) -> None:
        """Start ``broker``: the first founds the groups; the others join through it the first
        time and restart from their data afterwards."""
        first = self.cluster.brokers[0]
        if broker is first:
            await self.cluster.start(broker, None, *self.founder_flags)
        elif broker.broker_id is None:
            await self.cluster.start(broker, first)
        else:
            await self.cluster.start(broker, None)

    async def groups(self) -> list[dict[str, Any]] | None:
        """``client --json groups`` from the hub: each group's leader, voters, learners."""
        code, out, _ = await self.cluster.cli(
            "--json", *self.seed_args(), "groups", client_timeout=5.0
        )
        return json.loads(out)["groups"] if code == 0 and out.strip() else None

    async def status(self) -> list[dict[str, Any]] | None:
        code, out, _ = await self.cluster.cli(
            "--json", *self.seed_args(), "status", client_timeout=5.0
        )
        return json.loads(out)["clusters"] if code == 0 and out.strip() else None

    def spread(self, groups: list[dict[str, Any]] | None) -> bool:
        """Every group led, every broker a voter of each, no broker leading more than its
        share."""
        ids = sorted(b.broker_id for b in self.cluster.brokers if b.broker_id)
        if groups is None or len(groups) != GROUPS or len(ids) != len(self.cluster.brokers):
            return False
        led = Counter(g["leader_id"] for g in groups)
        share = -(-GROUPS // len(ids))
        return (
            all(g["leader_id"] in ids and g["voters"] == ids and not g["learners"] for g in groups)
            and max(led.values()) <= share
        )

    async def wait_spread(self, within: float, what: str) -> list[dict[str, Any]]:
        last = None
        try:
            with trio.fail_after(within):
                while True:
                    last = await self.groups()
                    if self.spread(last):
                        assert last is not None
                        return last
                    await trio.sleep(0.5)
        except trio.TooSlowError:
            pytest.fail(f"{what}: leadership not spread within {within} s: {last}")

    async def busiest(self) -> tuple[Broker, int]:
        """The broker leading the most groups (ties broken by the seeded rng), and how many."""
        groups = await self.groups() or []
        led = Counter(g["leader_id"] for g in groups if g["leader_id"])
        brokers = list(self.cluster.brokers)
        self.rng.shuffle(brokers)
        victim = max(brokers, key=lambda b: led.get(b.broker_id, 0))
        return victim, led.get(victim.broker_id, 0)

    # -- clients (one process in the hub namespace) ---------------------------------------------

    async def worker(self, *args: str, within: float) -> str:
        command = [sys.executable, "-m", "tests.chaos.group_worker", *args, "--seeds", self.seeds]
        with trio.fail_after(within):
            done = await trio.run_process(
                self.lab.exec(self.lab.hub, command),
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                env=dict(os.environ, PYTHONPATH=str(REPO)),
            )
        assert done.returncode == 0, f"group_worker {args[0]}: {done.stderr.decode()[-3000:]}"
        return done.stdout.decode()

    # -- the scenario ---------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            with trio.fail_after(SCENARIO_WITHIN):
                await self._run()
        except BaseException:
            print(self.cluster.report())
            raise
        finally:
            await self.cluster.aclose()

    async def _run(self) -> None:
        for broker in self.cluster.brokers:
            await self.start(broker)
        await self.wait_spread(FORM_WITHIN, "forming")
        self.queues = json.loads(await self.worker("create", within=90))["queues"]
        assert len(self.queues) == GROUPS, self.queues
        log(f"a queue on every group: {self.queues}")
        history_path = self.base / "history.jsonl"
        stop_file = self.base / "stop"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                lambda: self.worker(
                    "load",
                    *("--queues", ",".join(self.queues.values()), "--clients", str(CLIENTS)),
                    *("--old-clients", str(OLD_CLIENTS)),
                    *("--seconds", str(LOAD_SECONDS), "--seed", str(self.rng.getrandbits(32))),
                    *("--stop-file", str(stop_file), "--out", str(history_path)),
                    within=LOAD_SECONDS + 60,
                )
            )
            await trio.sleep(2.0)
            for round_ in range(ROUNDS):
                if round_ % 2 == 0:
                    await self.kill_busiest()
                else:
                    await self.isolate_busiest()
                await trio.sleep(self.rng.uniform(1.0, 3.0))
            self.healed = time.monotonic()
            self.note("all healed: every broker running, every link up")
            groups = await self.wait_spread(SPREAD_WITHIN, "after the heal")
            self.note(f"leadership spread again: {Counter(g['leader_id'] for g in groups)}")
            await trio.sleep(3.0)  # the clients are served again
            stop_file.write_text("stop\n")
        load_history(history_path, self.history)
        await self.wait_caught_up()
        out = self.base / "final.json"
        await self.worker(
            "final", "--queues", ",".join(self.queues.values()), "--out", str(out), within=150
        )
        for queue, messages in orjson.loads(out.read_bytes())["final"].items():
            self.history.set_final(queue, [(seq, data) for seq, data in messages])

    async def wait_caught_up(self) -> None:
        """``client status``: every broker of every group a voter, its lag 0."""
        last = None
        try:
            with trio.fail_after(SPREAD_WITHIN):
                while True:
                    last = await self.status()
                    if (
                        last is not None
                        and sorted(c["cluster_id"] for c in last) == sorted(self.queues)
                        and all(
                            len(c["brokers"]) == len(self.cluster.brokers)
                            and all(
                                b["lag"] == 0 and b["membership"] == "voter" for b in c["brokers"]
                            )
                            for c in last
                        )
                    ):
                        self.note("client status: every replica of every group caught up")
                        return
                    await trio.sleep(0.5)
        except trio.TooSlowError:
            pytest.fail(f"replicas not caught up {SPREAD_WITHIN} s after the load: {last}")

    async def kill_busiest(self) -> None:
        victim, led = await self.busiest()
        down = self.rng.uniform(1.0, 4.0)
        self.note(
            f"SIGKILL {victim.name} ({victim.broker_id}), leading {led} groups, "
            f"back in {down:.1f} s"
        )
        assert victim.process is not None
        killed_at = trio.current_time()
        victim.process.send_signal(signal.SIGKILL)
        with trio.fail_after(CLI_TIMEOUT):
            await victim.process.wait()
        self.killed_leading.append(led)
        # Every group it led fails over: the two survivors lead all the groups meanwhile.
        survivors = {b.broker_id for b in self.cluster.brokers if b is not victim}
        last = None
        try:
            with trio.fail_after(FAILOVER_WITHIN):
                while True:
                    last = await self.groups()
                    if last is not None and all(g["leader_id"] in survivors for g in last):
                        break
                    await trio.sleep(0.2)
        except trio.TooSlowError:
            pytest.fail(f"{victim.name}'s groups not led by the others in time: {last}")
        counts = Counter(g["leader_id"] for g in last)
        self.note(
            f"every group led by the survivors, {trio.current_time() - killed_at:.1f} s "
            f"after the kill: {dict(counts)}"
        )
        await trio.sleep_until(killed_at + down)
        await self.start(victim)
        self.note(f"restarted {victim.name}")

    async def isolate_busiest(self) -> None:
        victim, led = await self.busiest()
        hold = self.rng.uniform(3.0, 8.0)
        self.note(
            f"cut off {victim.name} ({victim.broker_id}), leading {led} groups, for {hold:.1f} s"
        )
        self.lab.isolate(victim.index)
        try:
            await trio.sleep(hold)
        finally:
            self.lab.heal(victim.index)
        self.note(f"healed {victim.name}")
