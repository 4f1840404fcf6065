"""Chaos: real broker processes, real faults, and a Jepsen-style check of what clients saw.

Each scenario starts 3 or 5 ``python -m trio_broker node`` processes on 127.0.0.1, each behind
a :class:`~trio_broker.testing._proxy.FaultProxy` (the node advertises the proxy's port, so its
peers and its clients reach it only through the proxy). Client tasks with fixed client ids
append unique values and read, some through the trio client, some as clients of the original
design (one connection per request, leader found with CLUSTER_QUERY, NOT_LEADER followed); every
operation is recorded in a :class:`~trio_broker.testing._history.History` with its outcome:
ok, fail (definitely not applied) or info (unknown: a timeout, a lost connection,
``"outcome": "unknown"``).

Meanwhile a nemesis driven by one seeded ``random.Random`` injects faults one after another:
SIGKILL and restart of the leader or of a replica, SIGSTOP/SIGCONT of the leader for longer
than the failure timeout, partitions isolating the leader, random majority/minority splits,
one-way links, flapping links, slow links, and lost answers to clients. Then everything is
healed (every node running, every link up), a leader must emerge, a fresh client reads every
queue from the start, and the checker judges the history (see ``trio_broker/testing/_history``).

The seed is printed; ``TRIO_BROKER_CHAOS_SEED=N`` replays its fault schedule and its clients'
choices (not the exact timing: these are real processes on a real clock).
``TRIO_BROKER_CHAOS_DURATION=S`` changes how long faults are injected (default 20 s).
Each run writes its history (JSON lines: every operation, then the final queues) and the
nemesis log to ``$TRIO_BROKER_CHAOS_ARTIFACTS/<scenario>-<seed>/`` (default: under the system
temporary directory, ``trio_broker_chaos``), and on failure every node's log too; the path is
printed.

Run: ``pytest tests/chaos --chaos -v`` (or ``TRIO_BROKER_CHAOS=1 pytest tests/chaos``).
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from trio_broker._errors import BrokerError, ErrorCode, OutcomeUnknownError
from trio_broker.client import connect
from trio_broker.testing._history import History, Op
from trio_broker.testing._proxy import CLIENT, DROP, PASS, Fault, FaultProxy

from ..processes import HOST, NodeProcess, Nodes, free_port, open_nodes
from ..wire import RawConnection

pytestmark = pytest.mark.chaos

HEARTBEAT = 0.1
FAILURE_TIMEOUT = 1.0
NODE_FLAGS = (
    "--heartbeat-interval",
    str(HEARTBEAT),
    "--failure-timeout",
    str(FAILURE_TIMEOUT),
    # Small enough that restarted and partitioned replicas sometimes catch up by snapshot.
    "--compact-threshold",
    "300",
    "--compact-keep",
    "50",
    # Requests arriving together share log entries: compact by size too.
    "--compact-bytes",
    "200000",
    "--log-level",
    "INFO",
)
OP_TIMEOUT = 2.0
"""A client gives up on an operation after this long: its outcome is then unknown."""
CONNECT_TIMEOUT = 0.5
MAX_OPS_PER_CLIENT = 2000
HEAL_WITHIN = 30.0
"""After healing, a leader that every node agrees on must emerge within this bound."""
FINAL_READ_ATTEMPTS = 8
SCENARIO_OVERHEAD = 240.0
"""Bound on everything but the faults: forming, healing, final reads (each bounded itself)."""
CONNECTION_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError)


def _seed() -> int:
    text = os.environ.get("TRIO_BROKER_CHAOS_SEED")
    return int(text) if text else random.SystemRandom().randrange(1, 2**32)


def _duration() -> float:
    return float(os.environ.get("TRIO_BROKER_CHAOS_DURATION", "20"))


def _artifacts() -> Path:
    default = Path(tempfile.gettempdir()) / "trio_broker_chaos"
    return Path(os.environ.get("TRIO_BROKER_CHAOS_ARTIFACTS", default))


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}.{int(time.time() * 1000) % 1000:03d}] {message}")


# -- the cluster behind its proxies --------------------------------------------------------------


class Member:
    """One broker: its process (replaced on restart), its real port and its proxy."""

    def __init__(self, index: int, data_dir: Path, real_port: int, proxy: FaultProxy) -> None:
        self.index = index
        self.name = f"b{index + 1}"
        self.data_dir = data_dir
        self.real_port = real_port
        self.proxy = proxy
        self.process: NodeProcess | None = None
        self.broker_id: str | None = None
        self.stopped = False

    @property
    def address(self) -> str:
        """Where peers and clients reach it: the proxy."""
        return f"{HOST}:{self.proxy.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.running

    def __repr__(self) -> str:
        state = "stopped" if self.stopped else "up" if self.running else "down"
        return f"{self.name}({self.broker_id}, {state})"


class ChaosCluster:
    def __init__(self, nodes: Nodes, proxies: trio.Nursery, base: Path) -> None:
        self.nodes = nodes
        self.proxies = proxies
        self.base = base
        self.members: list[Member] = []

    @property
    def seeds(self) -> list[str]:
        return [m.address for m in self.members]

    async def start(self, count: int) -> None:
        for i in range(count):
            real = free_port()
            proxy = FaultProxy(real, name=f"p{i + 1}")
            await self.proxies.start(proxy.serve)
            self.members.append(Member(i, self.base / f"b{i + 1}", real, proxy))
        first = self.members[0]
        for member in self.members:
            seeds = [] if member is first else [first.address]
            member.process = await self.nodes.start_member(
                member.data_dir,
                port=member.real_port,
                seeds=seeds,
                extra_args=[*NODE_FLAGS, "--advertise-port", str(member.proxy.port)],
            )
            member.broker_id = member.process.broker_id
        await self.wait_healthy(within=30.0, version=2 * count - 1)
        for member in self.members:
            assert set(member.proxy.statistics().sources) - {CLIENT}, (
                f"no broker dialed {member.name} through its proxy: is --advertise-port honoured?"
            )

    def member(self, broker_id: str | None) -> Member | None:
        return next((m for m in self.members if m.broker_id == broker_id), None)

    # -- observing (real ports: the observer is never partitioned) ------------------------------

    async def query(self, member: Member, within: float = 0.5) -> dict[str, Any] | None:
        if not member.running or member.stopped:
            return None
        request = {"operation": "CLUSTER_QUERY", "client_id": "C-CHAOS"}
        answer = await raw_call(member.real_port, request, within)
        if answer is None or answer.get("status") != "success":
            return None
        return answer

    async def leader(self) -> Member | None:
        """A member that says it leads (the one most others follow, if several say so)."""
        answers = {m.name: await self.query(m) for m in self.members}
        claims = [m for m in self.members if (answers[m.name] or {}).get("self_role") == "leader"]
        if not claims:
            return None
        followed = [a.get("leader_id") for a in answers.values() if a]
        return max(claims, key=lambda m: followed.count(m.broker_id))

    async def wait_healthy(self, *, within: float, version: int | None = None) -> Member:
        """Every member running, all agreeing on one leader that says so, every broker
        ``active`` (and the cluster at ``version`` if given)."""
        answers: dict[str, Any] = {}
        try:
            with trio.fail_after(within):
                while True:
                    answers = {m.name: await self.query(m, 1.0) for m in self.members}
                    if all(answers.values()):
                        leader_ids = {a.get("leader_id") for a in answers.values()}
                        leader = self.member(next(iter(leader_ids)))
                        if (
                            len(leader_ids) == 1
                            and leader is not None
                            and answers[leader.name]["self_role"] == "leader"
                            and all(
                                len(a["brokers"]) == len(self.members)
                                and all(b["status"] == "active" for b in a["brokers"])
                                and (version is None or a["cluster_version"] == version)
                                for a in answers.values()
                            )
                        ):
                            return leader
                    await trio.sleep(0.1)
        except trio.TooSlowError:
            lines = "\n".join(f"  {name}: {answer}" for name, answer in answers.items())
            raise AssertionError(f"cluster not healthy within {within} s:\n{lines}") from None

    # -- faults ---------------------------------------------------------------------------------

    async def kill(self, member: Member) -> None:
        assert member.process is not None
        member.proxy.pause()  # its port refuses connections, as a dead broker's does
        member.process.kill()
        await member.process.wait()
        member.proxy.cut()
        member.stopped = False

    async def terminate(self, member: Member) -> int:
        """SIGTERM: a graceful shutdown (a leader hands its leadership over first)."""
        assert member.process is not None
        member.process.terminate()
        status = await member.process.wait()
        member.proxy.pause()
        member.proxy.cut()
        member.stopped = False
        return status

    async def restart(self, member: Member) -> None:
        assert member.process is not None and not member.process.running
        member.process = await self.nodes.restart_same(member.process)
        await member.proxy.resume()

    def stop(self, member: Member) -> None:
        assert member.process is not None
        member.process.stop()
        member.stopped = True

    def cont(self, member: Member) -> None:
        assert member.process is not None
        member.process.cont()
        member.stopped = False

    def block(self, a: Member, b: Member, *, one_way: bool = False) -> None:
        """Drop everything ``a`` sends ``b`` (and, unless ``one_way``, ``b`` sends ``a``)."""
        assert a.broker_id and b.broker_id
        b.proxy.set_fault(a.broker_id, up=DROP, down=DROP)
        if not one_way:
            a.proxy.set_fault(b.broker_id, up=DROP, down=DROP)

    def partition(self, *groups: list[Member]) -> None:
        for i, group in enumerate(groups):
            for other in groups[i + 1 :]:
                for a in group:
                    for b in other:
                        self.block(a, b)

    def heal_links(self) -> None:
        for member in self.members:
            member.proxy.heal()

    async def heal_all(self) -> None:
        """Every link up, every process running and not stopped."""
        self.heal_links()
        for member in self.members:
            if member.stopped:
                self.cont(member)
            if not member.running:
                await self.restart(member)


async def raw_call(port: int, request: dict[str, Any], within: float) -> dict[str, Any] | None:
    """One request on its own connection; None if there was no answer."""
    try:
        with trio.fail_after(within):
            conn = await RawConnection.open(port)
            try:
                await conn.send(request)
                return await conn.receive()
            finally:
                await trio.aclose_forcefully(conn.stream)
    except (*CONNECTION_ERRORS, trio.TooSlowError):
        return None


# -- the nemesis ---------------------------------------------------------------------------------


class Nemesis:
    """Injects one fault at a time, each chosen and sized by the seeded ``rng``."""

    def __init__(self, cluster: ChaosCluster, rng: random.Random, kinds: list[str]) -> None:
        self.cluster = cluster
        self.rng = rng
        self.kinds = kinds
        self.log: list[str] = []

    def note(self, message: str) -> None:
        self.log.append(f"{time.monotonic():.3f} {message}")
        log(f"nemesis: {message}")

    async def target(self, leader: bool) -> Member:
        found = await self.cluster.leader()
        members = self.cluster.members
        if leader:
            return found if found is not None else self.rng.choice(members)
        return self.rng.choice([m for m in members if m is not found])

    async def run(self, duration: float) -> None:
        deadline = trio.current_time() + duration
        while trio.current_time() < deadline:
            kind = self.rng.choice(self.kinds)
            await getattr(self, kind)()
            self.cluster.heal_links()
            self.note("healed")
            await trio.sleep(self.rng.uniform(0.3, 1.5))

    # Each fault leaves the cluster as it found it (the run loop heals links afterwards).

    async def kill_leader(self) -> None:
        await self._kill(await self.target(leader=True), "leader")

    async def kill_replica(self) -> None:
        await self._kill(await self.target(leader=False), "replica")

    async def _kill(self, member: Member, what: str) -> None:
        down = self.rng.uniform(0.2, 3.0)
        self.note(f"SIGKILL {what} {member}, restart after {down:.2f} s")
        await self.cluster.kill(member)
        await trio.sleep(down)
        await self.cluster.restart(member)
        self.note(f"restarted {member}")

    async def transfer_leader(self) -> None:
        """The operator's TRANSFER_LEADERSHIP, to a random member or (None) the best voter,
        whatever faults are in force."""
        leader = await self.target(leader=True)
        others = [m.broker_id for m in self.cluster.members if m is not leader]
        to = self.rng.choice([None, *others])
        request: dict[str, Any] = {"operation": "TRANSFER_LEADERSHIP"}
        if to is not None:
            request["broker_id"] = to
        answer = await raw_call(leader.real_port, request, within=5.0)
        self.note(f"transfer leadership from {leader} to {to or 'the best voter'}: {answer}")

    async def sigterm_leader(self) -> None:
        """A graceful restart of the leader (it steps down first), as a rolling upgrade does."""
        leader = await self.target(leader=True)
        if not leader.running or leader.stopped:
            return
        down = self.rng.uniform(0.2, 2.0)
        self.note(f"SIGTERM leader {leader}, restart after {down:.2f} s")
        status = await self.cluster.terminate(leader)
        assert status == 0, leader.process.describe() if leader.process else status
        await trio.sleep(down)
        await self.cluster.restart(leader)
        self.note(f"restarted {leader}")

    async def kill_all(self) -> None:
        """The whole cluster crashes at once (a power cut) and comes back."""
        down = self.rng.uniform(0.2, 2.0)
        self.note(f"SIGKILL every broker, restart after {down:.2f} s")
        for member in self.cluster.members:
            await self.cluster.kill(member)
        await trio.sleep(down)
        for member in self.rng.sample(self.cluster.members, len(self.cluster.members)):
            await self.cluster.restart(member)
        self.note("restarted every broker")

    async def kill_two_replicas(self) -> None:
        """Five nodes only: two of five down is still a majority up."""
        leader = await self.cluster.leader()
        victims = self.rng.sample([m for m in self.cluster.members if m is not leader], 2)
        down = self.rng.uniform(0.5, 3.0)
        self.note(f"SIGKILL replicas {victims}, restart after {down:.2f} s")
        for member in victims:
            await self.cluster.kill(member)
        await trio.sleep(down)
        for member in victims:
            await self.cluster.restart(member)
        self.note(f"restarted {victims}")

    async def pause_leader(self) -> None:
        member = await self.target(leader=True)
        pause = FAILURE_TIMEOUT * self.rng.uniform(1.5, 4.0)
        self.note(f"SIGSTOP leader {member} for {pause:.2f} s")
        self.cluster.stop(member)
        await trio.sleep(pause)
        self.cluster.cont(member)
        self.note(f"SIGCONT {member}")

    async def pause_replica(self) -> None:
        member = await self.target(leader=False)
        pause = FAILURE_TIMEOUT * self.rng.uniform(0.5, 3.0)
        self.note(f"SIGSTOP replica {member} for {pause:.2f} s")
        self.cluster.stop(member)
        await trio.sleep(pause)
        self.cluster.cont(member)
        self.note(f"SIGCONT {member}")

    async def isolate_leader(self) -> None:
        leader = await self.target(leader=True)
        rest = [m for m in self.cluster.members if m is not leader]
        hold = self.rng.uniform(1.5, 4.0) * FAILURE_TIMEOUT
        self.note(f"partition: leader {leader} | {rest} for {hold:.2f} s")
        self.cluster.partition([leader], rest)
        await trio.sleep(hold)

    async def split(self) -> None:
        members = list(self.cluster.members)
        self.rng.shuffle(members)
        cut = self.rng.randrange(1, (len(members) + 1) // 2)
        minority, majority = members[:cut], members[cut:]
        hold = self.rng.uniform(1.0, 4.0) * FAILURE_TIMEOUT
        self.note(f"partition: {minority} | {majority} for {hold:.2f} s")
        self.cluster.partition(minority, majority)
        await trio.sleep(hold)

    async def bridge(self) -> None:
        """Five nodes: two halves that only the bridge node hears (Jepsen's 'bridge')."""
        members = list(self.cluster.members)
        self.rng.shuffle(members)
        bridge, left, right = members[0], members[1:3], members[3:]
        hold = self.rng.uniform(1.5, 4.0) * FAILURE_TIMEOUT
        self.note(f"bridge: {left} | {right}, both see {bridge}, for {hold:.2f} s")
        self.cluster.partition(left, right)
        await trio.sleep(hold)

    async def one_way_leader(self) -> None:
        """The leader's messages are lost; it still hears the others."""
        leader = await self.target(leader=True)
        hold = self.rng.uniform(1.5, 4.0) * FAILURE_TIMEOUT
        self.note(f"one-way: nothing from leader {leader} gets through, for {hold:.2f} s")
        for other in self.cluster.members:
            if other is not leader:
                self.cluster.block(leader, other, one_way=True)
        await trio.sleep(hold)

    async def flap(self) -> None:
        members = self.cluster.members
        leader = await self.cluster.leader()
        a = leader if leader is not None and self.rng.random() < 0.7 else self.rng.choice(members)
        b = self.rng.choice([m for m in members if m is not a])
        until = trio.current_time() + self.rng.uniform(2.0, 5.0)
        self.note(f"flapping link {a} <-> {b}")
        while trio.current_time() < until:
            self.cluster.block(a, b)
            await trio.sleep(self.rng.uniform(0.05, 0.6))
            self.cluster.heal_links()
            await trio.sleep(self.rng.uniform(0.05, 0.6))

    async def slow_links(self) -> None:
        delay = self.rng.uniform(0.01, 0.15)
        hold = self.rng.uniform(1.0, 3.0)
        self.note(f"every link delayed {delay * 1000:.0f} ms for {hold:.2f} s")
        slow = Fault(delay=delay)
        for member in self.cluster.members:
            for other in self.cluster.members:
                if other is not member and other.broker_id:
                    member.proxy.set_fault(other.broker_id, up=slow, down=slow)
        await trio.sleep(hold)

    async def lose_answers(self) -> None:
        """The leader's answers to clients are lost: every request in that window has an unknown
        outcome."""
        leader = await self.target(leader=True)
        hold = self.rng.uniform(0.5, 2.5)
        self.note(f"answers from leader {leader} to clients lost for {hold:.2f} s")
        leader.proxy.set_fault(CLIENT, up=PASS, down=DROP)
        await trio.sleep(hold)


def value_for(client_id: str, n: int) -> Any:
    """The n-th value a client appends: unique, and of several JSON types in turn (the broker
    must return exactly what was appended)."""
    kind = n % 3
    if kind == 0:
        return f"{client_id}-{n}"
    if kind == 1:
        return {"client": client_id, "n": n, "half": n + 0.5}
    return [client_id, n, True, None]


# -- clients -------------------------------------------------------------------------------------


def _error_outcome(history: History, op: Op, response: dict[str, Any]) -> None:
    """An error envelope: definitely not applied unless INTERNAL or "outcome": "unknown"."""
    code = response.get("code")
    text = f"{code}: {response.get('message')}"
    if response.get("outcome") == "unknown" or code in (ErrorCode.INTERNAL, None):
        history.info(op, text)
    else:
        history.fail(op, text)


class Workload:
    def __init__(self, history: History, queues: list[str], seeds: list[str]) -> None:
        self.history = history
        self.queues = queues
        self.seeds = seeds
        self.stop = trio.Event()

    async def trio_client(self, client_id: str, rng: random.Random) -> None:
        """The trio client: one connection per broker, retries NOT_LEADER itself, raises
        OutcomeUnknownError when an answer is lost."""
        async with connect(self.seeds, client_id=client_id) as client:
            for n in range(MAX_OPS_PER_CLIENT):
                if self.stop.is_set():
                    return
                queue = rng.choice(self.queues)
                if rng.random() < 0.6:
                    value = value_for(client_id, n)
                    op = self.history.invoke(client_id, "append", queue, value)
                    call: Callable[[], Awaitable[Any]] = functools.partial(
                        client.append, queue, value
                    )
                else:
                    op = self.history.invoke(client_id, "read", queue)
                    call = functools.partial(client.read, queue)
                result: Any = None
                with trio.move_on_after(OP_TIMEOUT) as scope:
                    try:
                        result = await call()
                    except OutcomeUnknownError as exc:
                        self.history.info(op, f"{exc.code}: {exc.message}")
                    except BrokerError as exc:
                        if exc.code == ErrorCode.INTERNAL:
                            self.history.info(op, f"{exc.code}: {exc.message}")
                        else:
                            self.history.fail(op, f"{exc.code}: {exc.message}")
                if scope.cancelled_caught:
                    # Maybe never sent (no leader known), maybe sent: unknown either way.
                    self.history.info(op, "timeout")
                elif op.type == "invoke":
                    if op.f == "append":
                        self.history.ok(op, result)
                    elif result is None:
                        self.history.ok(op)
                    else:
                        self.history.ok(op, result.sequence_num, result.data)
                await trio.sleep(rng.uniform(0, 0.02))

    async def old_client(self, client_id: str, rng: random.Random) -> None:
        """A client of the original design: a new connection per request; finds the leader with
        CLUSTER_QUERY; on NOT_LEADER (not applied) moves on to the hinted leader."""
        leader: int | None = None
        ports = [int(seed.rpartition(":")[2]) for seed in self.seeds]
        for n in range(MAX_OPS_PER_CLIENT):
            if self.stop.is_set():
                return
            if leader is None:
                leader = await self._find_leader(rng, ports)
                if leader is None:
                    await trio.sleep(0.05)
                    continue
            queue = rng.choice(self.queues)
            if rng.random() < 0.6:
                value = value_for(client_id, n)
                request = {
                    "operation": "APPEND",
                    "queue_name": queue,
                    "data": value,
                    "client_id": client_id,
                }
                op = self.history.invoke(client_id, "append", queue, value)
            else:
                request = {"operation": "READ", "queue_name": queue, "client_id": client_id}
                op = self.history.invoke(client_id, "read", queue)
            response = None
            conn = None
            with trio.move_on_after(CONNECT_TIMEOUT):
                with contextlib.suppress(*CONNECTION_ERRORS):
                    conn = await RawConnection.open(leader)
            if conn is None:
                self.history.fail(op, "cannot connect: nothing sent")
                leader = None
                await trio.sleep(0.05)
                continue
            try:
                with trio.move_on_after(OP_TIMEOUT):
                    await conn.send(request)
                    response = await conn.receive()
            except CONNECTION_ERRORS:
                pass
            finally:
                await trio.aclose_forcefully(conn.stream)
            if response is None:
                self.history.info(op, "no answer")
                leader = None
            elif response.get("status") == "success":
                if op.f == "append":
                    self.history.ok(op, response["sequence_num"])
                elif "sequence_num" in response:
                    self.history.ok(op, response["sequence_num"], response["data"])
                else:
                    self.history.ok(op)
            else:
                _error_outcome(self.history, op, response)
                port = response.get("leader_port")
                leader = port if isinstance(port, int) and port in ports else None
            await trio.sleep(rng.uniform(0, 0.02))

    async def _find_leader(self, rng: random.Random, ports: list[int]) -> int | None:
        for port in rng.sample(ports, len(ports)):
            answer = await raw_call(port, {"operation": "CLUSTER_QUERY"}, 0.5)
            if answer is None or answer.get("status") != "success":
                continue
            for broker in answer.get("brokers", []):
                if broker.get("role") == "leader" and broker.get("port") in ports:
                    return broker["port"]
        return None


async def final_read(cluster: ChaosCluster, queue: str) -> list[tuple[int, Any]]:
    """Every message of ``queue``, read from the start by a fresh client id (a new one for each
    attempt: an attempt that loses an answer may have skipped a message)."""
    problems = []
    for attempt in range(FINAL_READ_ATTEMPTS):
        leader = await cluster.wait_healthy(within=HEAL_WITHIN)
        client_id = f"C-FINAL-{queue[-5:]}-{attempt}"
        messages: list[tuple[int, Any]] = []
        request = {"operation": "READ", "queue_name": queue, "client_id": client_id}
        try:
            with trio.fail_after(30):
                conn = await RawConnection.open(leader.real_port)
                try:
                    while True:
                        await conn.send(*[request] * 32)
                        answers = [await conn.receive() for _ in range(32)]
                        if any(a is None or a.get("status") != "success" for a in answers):
                            raise RuntimeError(f"final read refused: {answers}")
                        messages += [(a["sequence_num"], a["data"]) for a in answers if "data" in a]
                        if any("sequence_num" not in a for a in answers):
                            return messages
                finally:
                    await trio.aclose_forcefully(conn.stream)
        except (*CONNECTION_ERRORS, trio.TooSlowError, RuntimeError) as exc:
            problems.append(repr(exc))
            await trio.sleep(0.5)
    raise AssertionError(f"no complete final read of {queue}: {problems}")


# -- scenarios -----------------------------------------------------------------------------------

ALL_FAULTS = [
    "kill_all",
    "kill_leader",
    "kill_replica",
    "pause_leader",
    "pause_replica",
    "isolate_leader",
    "split",
    "one_way_leader",
    "flap",
    "slow_links",
    "lose_answers",
]
SCENARIOS = {
    "3-crashes": (3, ["kill_leader", "kill_replica", "pause_leader", "pause_replica", "kill_all"]),
    "3-partitions": (
        3,
        ["isolate_leader", "split", "one_way_leader", "flap", "slow_links", "lose_answers"],
    ),
    "3-mixed": (3, ALL_FAULTS),
    "5-mixed": (5, [*ALL_FAULTS, "kill_two_replicas", "bridge"]),
    "3-admin": (
        3,
        ["transfer_leader", "sigterm_leader", "kill_leader", "pause_replica", "isolate_leader"],
    ),
}


async def run_scenario(
    tmp_path: Path,
    count: int,
    kinds: list[str],
    rng: random.Random,
    duration: float,
    history: History,
    nemesis_log: list[str],
) -> float:
    """Form the cluster, run the load under the nemesis, heal, read every queue into
    ``history``; returns the time (``time.monotonic``) everything was healed."""
    async with open_nodes(tmp_path) as nodes, trio.open_nursery() as proxies:
        cluster = ChaosCluster(nodes, proxies, tmp_path)
        await cluster.start(count)
        log(f"cluster formed: {cluster.members}")
        async with connect(cluster.seeds, client_id="C-SETUP") as setup:
            queues = [await setup.create_queue() for _ in range(2)]
        workload = Workload(history, queues, cluster.seeds)
        nemesis = Nemesis(cluster, random.Random(rng.getrandbits(64)), kinds)
        nemesis.log = nemesis_log
        async with trio.open_nursery() as load:
            for i in range(2 * count - 1):
                client_rng = random.Random(rng.getrandbits(64))
                if i % 2 == 0:
                    load.start_soon(workload.trio_client, f"C-TRIO{i}", client_rng)
                else:
                    load.start_soon(workload.old_client, f"C-OLD{i}", client_rng)
            await trio.sleep(1.0)
            await nemesis.run(duration)
            await cluster.heal_all()
            healed = time.monotonic()
            nemesis.note("all healed: every node running, every link up")
            await cluster.wait_healthy(within=HEAL_WITHIN)
            await trio.sleep(2.0)  # the clients must get going again
            workload.stop.set()
        for queue in queues:
            history.set_final(queue, await final_read(cluster, queue))
        for member in cluster.members:
            log(f"{member.name} proxy: {member.proxy.statistics()}")
        proxies.cancel_scope.cancel()
    return healed


@pytest.mark.parametrize("scenario", list(SCENARIOS))
async def test_chaos(scenario: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Safety under faults (the checker), then liveness once healed (a leader, clients served,
    complete final reads)."""
    count, kinds = SCENARIOS[scenario]
    seed = _seed()
    duration = _duration()
    replay = (
        f"TRIO_BROKER_CHAOS_SEED={seed} TRIO_BROKER_CHAOS_DURATION={duration:g} "
        f"pytest tests/chaos --chaos -k '{request.node.name}'"
    )
    log(f"scenario {scenario}: {count} nodes, seed {seed}, faults for {duration:g} s")
    log(f"replay the fault schedule with: {replay}")
    history = History()
    # Outside pytest's tmp_path, which other pytest runs on this machine may clean up.
    artifacts = _artifacts() / f"{scenario}-{seed}"
    artifacts.mkdir(parents=True, exist_ok=True)
    nemesis_log: list[str] = []
    passed = False
    try:
        with trio.fail_after(duration + SCENARIO_OVERHEAD):
            healed = await run_scenario(
                tmp_path, count, kinds, random.Random(seed), duration, history, nemesis_log
            )
        passed = True
    finally:
        history.dump(artifacts / "history.jsonl")
        (artifacts / "nemesis.log").write_text("\n".join(nemesis_log) + "\n")
        result = history.check()
        if not (passed and result.valid) and (tmp_path / "logs").is_dir():
            shutil.copytree(tmp_path / "logs", artifacts / "logs", dirs_exist_ok=True)
        log(f"history, nemesis log (and node logs if it failed) in {artifacts}")
        if not passed:
            log(f"seed {seed}; replay: {replay}")
    log(result.report(history))
    assert result.valid, f"seed {seed}: {result.report(history)}\nreplay: {replay}"
    assert result.counts.get("append:ok", 0) > 0 and result.counts.get("read:ok", 0) > 0, (
        f"seed {seed}: the clients got nothing done: {result.counts}\nreplay: {replay}"
    )
    served = [op for op in history.ops if op.type == "ok" and op.invoke_time > healed]
    assert served, f"seed {seed}: no client was served after healing\nreplay: {replay}"
