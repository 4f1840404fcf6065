"""Replicated clusters of real ``python -m trio_broker node`` processes: forming, failover under
load, joining under load, whole-cluster crashes, snapshot catch-up, and an unchanged client of
the original design across a failover.

Everything is observed through the wire (CLUSTER_QUERY, APPEND, READ, REMOVE_MEMBER) except the
one log line that says a snapshot was installed. Every node runs with fast failure detection so
a failover takes well under two seconds; every wait has a deadline and every load loop a bound
in count and in time.

Cluster versions: a founded cluster is at version 1 and every membership change adds one; a
join is two changes (add a learner, then promote it to voter once caught up). So a cluster of N
brokers that all joined and were all promoted is at version ``2N - 1``, which is how these tests
know, through the wire only, that every broker is a voter (learners are shown as replicas).

Proving what one particular broker holds: only the leader serves READ, so the tests make that
broker the only voter with REMOVE_MEMBER (see :func:`make_sole_voter`) and read from it.

Leadership may also move without a kill (a 0.5 s failure timeout on a small, busy machine, e.g.
during a burst of pipelined READs); the final full reads therefore ask who leads and read again
from the next leader if a READ is refused with NOT_LEADER. That changes nothing in what is
checked: whichever broker leads must hold everything acknowledged.
"""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio

from .processes import NodeProcess, Nodes, open_nodes, value_for
from .wire import RawConnection

HEARTBEAT = 0.05
FAILURE_TIMEOUT = 0.5
FAST = ("--heartbeat-interval", str(HEARTBEAT), "--failure-timeout", str(FAILURE_TIMEOUT))
FAILOVER_WITHIN = 5.0
"""Acknowledgements from a new leader must resume within this many seconds of the kill."""

CONNECTION_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError)


@pytest.fixture
async def nodes(tmp_path: Path):
    async with open_nodes(tmp_path) as nodes:
        yield nodes


# -- values ------------------------------------------------------------------------------------


def key(value: Any) -> bytes:
    """A value as JSON bytes: equal keys mean equal values, types included (1 is not 1.0)."""
    return orjson.dumps(value)


# -- wire helpers ------------------------------------------------------------------------------


async def try_call(port: int, request: dict[str, Any], within: float = 2.0) -> dict | None:
    """One request on its own connection; None if the broker is unreachable or gave no answer."""
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


async def must_call(port: int, request: dict[str, Any]) -> dict[str, Any]:
    response = await try_call(port, request, within=5.0)
    assert response is not None, f"no answer from port {port} to {request}"
    assert response.get("status") == "success", (request, response)
    return response


async def query(port: int) -> dict[str, Any] | None:
    answer = await try_call(port, {"operation": "CLUSTER_QUERY", "client_id": "C-TOPO1"}, 1.0)
    if answer is None or answer.get("status") != "success":
        return None
    return answer


async def create_queue(port: int) -> str:
    response = await must_call(port, {"operation": "CREATE_QUEUE", "client_id": "C-SETUP"})
    return response["queue_id"]


class LeaderMoved(AssertionError):
    """A READ got NOT_LEADER from the broker that led when the reading began."""


async def read_all(port: int, queue_id: str, client_id: str, *, batch: int = 256) -> list[Any]:
    """Every message of the queue from ``client_id``'s position on (a fresh client id: the whole
    queue), pipelined; checks the sequence numbers are consecutive and returns (seq, data)."""
    conn = await RawConnection.open(port)
    messages: list[tuple[int, Any]] = []
    try:
        with trio.fail_after(20):
            exhausted = False
            while not exhausted:
                request = {"operation": "READ", "queue_name": queue_id, "client_id": client_id}
                await conn.send(*[request] * batch)
                for _ in range(batch):
                    response = await conn.receive()
                    assert response is not None, "broker closed the connection"
                    if response.get("code") == "NOT_LEADER":
                        raise LeaderMoved(response)
                    assert response["status"] == "success", response
                    if "sequence_num" in response:
                        assert not exhausted, f"a message after no_messages: {response}"
                        messages.append((response["sequence_num"], response["data"]))
                    else:
                        assert response.get("message") == "no_messages", response
                        exhausted = True
    finally:
        await trio.aclose_forcefully(conn.stream)
    seqs = [seq for seq, _ in messages]
    if seqs:
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "sequence numbers not consecutive"
    return messages


async def eventually(predicate, within: float, what: str) -> None:
    """Poll ``predicate`` until it holds; fail with ``what`` after ``within`` seconds."""
    try:
        with trio.fail_after(within):
            while True:
                if predicate():
                    return
                await trio.sleep(0.02)
    except trio.TooSlowError:
        raise AssertionError(f"after {within} s: {what}") from None


# -- topology ----------------------------------------------------------------------------------


def describe(topologies: dict[str, Any]) -> str:
    return "\n".join(f"  {name}: {answer}" for name, answer in topologies.items())


async def wait_formed(
    live: list[NodeProcess],
    *,
    members: int,
    version: int | None = None,
    within: float = 15.0,
) -> NodeProcess:
    """Wait until every live node reports the same cluster, version and leader (one of the live
    nodes), ``members`` brokers, that leader as the only ``leader`` and every other broker a
    ``replica``, all ``active``; returns the leader's process."""
    topologies: dict[str, Any] = {}
    try:
        with trio.fail_after(within):
            while True:
                topologies = {n.name: await query(n.port) for n in live}
                answers = list(topologies.values())
                if all(a is not None for a in answers):
                    leader_ids = {a.get("leader_id") for a in answers}
                    leader_id = next(iter(leader_ids))
                    leader = [n for n in live if n.broker_id == leader_id]
                    first = answers[0]
                    if (
                        len(leader_ids) == 1
                        and leader
                        and len({a["cluster_id"] for a in answers}) == 1
                        and len({a["cluster_version"] for a in answers}) == 1
                        and (version is None or first["cluster_version"] == version)
                        and all(_healthy(a, leader_id, members) for a in answers)
                    ):
                        return leader[0]
                await trio.sleep(0.05)
    except trio.TooSlowError:
        raise AssertionError(
            f"cluster of {members} (version {version}) not formed within {within} s; "
            f"last answers:\n{describe(topologies)}"
        ) from None


def _healthy(answer: dict[str, Any], leader_id: str, members: int) -> bool:
    brokers = answer["brokers"]
    self_role = "leader" if answer["self_id"] == leader_id else "replica"
    return (
        answer["self_role"] == self_role
        and len(brokers) == members
        and all(b["status"] == "active" for b in brokers)
        and [b["broker_id"] for b in brokers if b["role"] == "leader"] == [leader_id]
        and all(b["role"] == "replica" for b in brokers if b["broker_id"] != leader_id)
    )


async def wait_new_leader(
    live: list[NodeProcess], *, not_id: str | None = None, within: float = FAILOVER_WITHIN
) -> NodeProcess:
    """Wait until the live nodes agree on a live leader (other than ``not_id``) that says so."""
    topologies: dict[str, Any] = {}
    try:
        with trio.fail_after(within):
            while True:
                topologies = {n.name: await query(n.port) for n in live}
                leader_ids = {a.get("leader_id") if a else None for a in topologies.values()}
                if len(leader_ids) == 1:
                    leader_id = leader_ids.pop()
                    for n in live:
                        answer = topologies[n.name]
                        if n.broker_id == leader_id != not_id and answer["self_role"] == "leader":
                            return n
                await trio.sleep(0.05)
    except trio.TooSlowError:
        raise AssertionError(
            f"no new leader among {[n.name for n in live]} within {within} s; "
            f"last answers:\n{describe(topologies)}"
        ) from None


async def read_all_from_leader(
    live: list[NodeProcess], queue_id: str, tag: str
) -> list[tuple[int, Any]]:
    """:func:`read_all` with a fresh client id (``C-`` + 4-character ``tag`` + attempt) from
    whoever leads the live nodes. A 0.5 s failure timeout on a small, busy machine can move
    leadership without any kill; then the whole queue is read again from the next leader."""
    for attempt in range(3):
        leader = await wait_new_leader(live)
        try:
            return await read_all(leader.port, queue_id, f"C-{tag}{attempt}")
        except LeaderMoved as exc:
            print(f"leadership moved during a full read: {exc}")
    raise AssertionError("leadership moved during three full reads in a row")


async def append_on_leader(live: list[NodeProcess], queue_id: str, value: Any) -> dict:
    """One APPEND on whoever leads, again on the next leader after a NOT_LEADER."""
    request = {"operation": "APPEND", "queue_name": queue_id, "data": value}
    for _ in range(3):
        leader = await wait_new_leader(live)
        answer = await try_call(leader.port, request, within=5.0)
        if answer is None or answer.get("code") != "NOT_LEADER":
            break
    assert answer is not None and answer.get("status") == "success", answer
    return answer


async def start_cluster(
    nodes: Nodes, base: Path, count: int = 3, extra_args: tuple[str, ...] = ()
) -> list[NodeProcess]:
    """Node 1 founds the cluster, the others join it with ``--seed`` node 1, one at a time."""
    flags = [*FAST, *extra_args]
    first = await nodes.start_member(base / "b1", extra_args=flags)
    started = [first]
    for i in range(2, count + 1):
        started.append(await nodes.start_member(base / f"b{i}", seeds=[first], extra_args=flags))
    await wait_formed(started, members=count, version=2 * count - 1)
    return started


async def kill_and_reap(*victims: NodeProcess) -> None:
    for victim in victims:  # all signals first: "at once"
        victim.kill()
    for victim in victims:
        assert await victim.wait() == -signal.SIGKILL, victim.describe()


async def make_sole_voter(target: NodeProcess, live: list[NodeProcess]) -> None:
    """Remove every other member of the cluster with REMOVE_MEMBER (one at a time, through any
    live broker, which passes it on to the leader) until ``target`` is the only voter; then it
    must lead, and everything READ from it is its own data, so the READs prove what it holds.
    """
    topology = await query(target.port)
    assert topology is not None
    others = [b["broker_id"] for b in topology["brokers"] if b["broker_id"] != target.broker_id]
    # The dead first, then live replicas, the leader last (it steps down once it is removed).
    alive = {n.broker_id for n in live}
    others.sort(key=lambda b: (b in alive, b == topology.get("leader_id")))
    version = topology["cluster_version"]
    for broker_id in others:
        request = {
            "operation": "REMOVE_MEMBER",
            "broker_id": broker_id,
            "cluster_id": topology["cluster_id"],
        }
        answer = None
        with trio.fail_after(10):
            while True:  # only while no leader is known (just after a leader removed itself)
                answer = await try_call(target.port, request, within=5.0)
                if answer is not None and answer.get("code") not in ("NOT_LEADER", "UNAVAILABLE"):
                    break
                await trio.sleep(0.1)
        assert answer == {"status": "success"}, (broker_id, answer)
        version += 1
    with trio.fail_after(FAILOVER_WITHIN):
        while True:
            topology = await query(target.port)
            if (
                topology is not None
                and topology["self_role"] == "leader"
                and [b["broker_id"] for b in topology["brokers"]] == [target.broker_id]
            ):
                break
            await trio.sleep(0.05)
    assert topology["cluster_version"] == version, topology


# -- load: a writer and a reader that survive failovers ------------------------------------------


class Topology:
    """What a client knows about the cluster: every broker's port, and the current leader."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = list(ports)
        self.leader_port: int | None = None
        self.leader_id: str | None = None
        self.refreshes = 0

    async def refresh(self, deadline: float) -> bool:
        """Find the leader by asking every known broker; False if none until ``deadline``."""
        self.refreshes += 1
        while trio.current_time() < deadline:
            for port in self.ports:
                answer = await query(port)
                if answer is None:
                    continue
                for b in answer["brokers"]:
                    if b["port"] not in self.ports:
                        self.ports.append(b["port"])
                if answer["self_role"] == "leader":
                    self.leader_port, self.leader_id = port, answer["self_id"]
                    return True
            await trio.sleep(0.02)
        return False


class Outcome:
    ACKED = "acked"
    NOT_APPLIED = "not_applied"  # refused before it could be applied: retry the same value
    INDETERMINATE = "indeterminate"  # sent, answer lost or "outcome unknown"


async def one_request(port: int, request: dict[str, Any]) -> tuple[str, dict | None]:
    """One request on its own connection, classified by what can be known of its fate."""
    try:
        with trio.fail_after(1.0):
            conn = await RawConnection.open(port)
    except (*CONNECTION_ERRORS, trio.TooSlowError):
        return Outcome.NOT_APPLIED, None  # nothing was sent
    try:
        with trio.fail_after(3.0):
            await conn.send(request)
            response = await conn.receive()
    except (*CONNECTION_ERRORS, trio.TooSlowError):
        response = None
    finally:
        await trio.aclose_forcefully(conn.stream)
    if response is None:
        return Outcome.INDETERMINATE, None
    if response.get("status") == "success":
        return Outcome.ACKED, response
    if response.get("code") == "NOT_LEADER":
        # Trusted as "not applied": if it were applied after all, the retry below would store
        # the value twice, and the checks would see the duplicate.
        return Outcome.NOT_APPLIED, response
    return Outcome.INDETERMINATE, response


class Writer:
    """Old-design APPENDs (one connection per request) of unique values, surviving failovers."""

    def __init__(self, queue_id: str, topology: Topology, offset: int) -> None:
        self.queue_id = queue_id
        self.topology = topology
        self.offset = offset
        self.acked: list[tuple[int, Any]] = []
        self.ack_log: list[tuple[float, str | None]] = []  # (time, leader that acknowledged)
        self.indeterminate: list[Any] = []
        self.errors: list[dict[str, Any]] = []  # error answers other than NOT_LEADER
        self.retries = 0
        self.gave_up = False

    async def run(self, stop: trio.Event, *, max_count: int, duration: float) -> None:
        deadline = trio.current_time() + duration
        for i in range(max_count):
            if stop.is_set() or trio.current_time() >= deadline:
                return
            value = value_for(self.offset + i)
            request = {
                "operation": "APPEND",
                "queue_name": self.queue_id,
                "data": value,
                "client_id": "C-WRITE",
            }
            while True:  # the same value until it is acknowledged or indeterminate
                if self.topology.leader_port is None and not await self.topology.refresh(deadline):
                    self.gave_up = True
                    return
                leader_id = self.topology.leader_id
                outcome, response = await one_request(self.topology.leader_port, request)
                if outcome == Outcome.ACKED:
                    assert response is not None
                    self.acked.append((response["sequence_num"], value))
                    self.ack_log.append((trio.current_time(), leader_id))
                    break
                self.topology.leader_port = None
                if outcome == Outcome.INDETERMINATE:
                    self.indeterminate.append(value)
                    if response is not None:
                        self.errors.append(response)
                    break
                self.retries += 1
                await trio.sleep(0.01)


class Reader:
    """Old-design READs (one connection per request) with a fixed client id."""

    def __init__(self, queue_id: str, topology: Topology, client_id: str) -> None:
        self.queue_id = queue_id
        self.topology = topology
        self.client_id = client_id
        self.acked: list[tuple[int, Any]] = []
        self.lost = 0  # READs that may have moved the position without us seeing the message
        self.errors: list[dict[str, Any]] = []

    async def run(self, stop: trio.Event, *, max_count: int, duration: float) -> None:
        deadline = trio.current_time() + duration
        request = {"operation": "READ", "queue_name": self.queue_id, "client_id": self.client_id}
        for _ in range(max_count):
            if stop.is_set() or trio.current_time() >= deadline:
                return
            if self.topology.leader_port is None and not await self.topology.refresh(deadline):
                return
            outcome, response = await one_request(self.topology.leader_port, request)
            if outcome == Outcome.ACKED:
                assert response is not None
                if "sequence_num" in response:
                    self.acked.append((response["sequence_num"], response["data"]))
                else:
                    assert response == {"status": "success", "message": "no_messages"}
                    await trio.sleep(0.005)
                continue
            self.topology.leader_port = None
            if outcome == Outcome.INDETERMINATE:
                self.lost += 1
                if response is not None:
                    self.errors.append(response)
            await trio.sleep(0.01)


class PipelinedWriter:
    """Fast-client APPENDs of unique values, up to ``depth`` in flight on one connection to the
    leader, surviving failovers: when the connection breaks, every unanswered value is
    indeterminate; a NOT_LEADER answer puts its value back to be sent again; then it finds the
    leader again and reconnects. Same record as :class:`Writer`."""

    def __init__(self, queue_id: str, topology: Topology, offset: int, depth: int = 32) -> None:
        self.queue_id = queue_id
        self.topology = topology
        self.offset = offset
        self.depth = depth
        self.acked: list[tuple[int, Any]] = []
        self.ack_log: list[tuple[float, str | None]] = []
        self.indeterminate: list[Any] = []
        self.errors: list[dict[str, Any]] = []
        self.retries = 0
        self.connections = 0
        self.gave_up = False

    async def run(self, stop: trio.Event, *, max_count: int, duration: float) -> None:
        deadline = trio.current_time() + duration
        fresh = iter(range(max_count))
        again: list[Any] = []  # refused with NOT_LEADER: never applied, send again

        def next_value() -> Any:
            if again:
                return again.pop(0)
            i = next(fresh, None)
            return None if i is None else value_for(self.offset + i)

        while not stop.is_set() and trio.current_time() < deadline:
            if self.topology.leader_port is None and not await self.topology.refresh(deadline):
                self.gave_up = True
                return
            leader_id = self.topology.leader_id
            try:
                conn = await RawConnection.open(self.topology.leader_port)
            except CONNECTION_ERRORS:
                self.topology.leader_port = None
                continue
            self.connections += 1
            in_flight: list[Any] = []
            slots = trio.Semaphore(self.depth)
            exhausted = False

            async def sender(
                cancel: trio.CancelScope, conn=conn, in_flight=in_flight, slots=slots
            ) -> None:
                nonlocal exhausted
                with contextlib.suppress(*CONNECTION_ERRORS):
                    while not stop.is_set() and trio.current_time() < deadline:
                        await slots.acquire()
                        value = next_value()
                        if value is None:
                            exhausted = True
                            break
                        in_flight.append(value)
                        request = {"operation": "APPEND", "queue_name": self.queue_id}
                        await conn.send({**request, "data": value})
                    for _ in range(self.depth):  # every answer in
                        await slots.acquire()
                    cancel.cancel()

            async def receiver(
                cancel: trio.CancelScope,
                conn=conn,
                in_flight=in_flight,
                slots=slots,
                leader_id=leader_id,
            ) -> None:
                while True:
                    try:
                        response = await conn.receive()
                    except CONNECTION_ERRORS:
                        response = None
                    if response is None:
                        cancel.cancel()
                        return
                    value = in_flight.pop(0)
                    if response.get("status") == "success":
                        self.acked.append((response["sequence_num"], value))
                        self.ack_log.append((trio.current_time(), leader_id))
                    elif response.get("code") == "NOT_LEADER":
                        again.append(value)
                        self.retries += 1
                    else:
                        self.indeterminate.append(value)
                        self.errors.append(response)
                    slots.release()

            try:
                with trio.fail_after(max(deadline - trio.current_time(), 0) + 5):
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(sender, nursery.cancel_scope)
                        nursery.start_soon(receiver, nursery.cancel_scope)
            finally:
                await trio.aclose_forcefully(conn.stream)
            self.indeterminate += in_flight  # sent, never answered
            if exhausted:
                return
            self.topology.leader_port = None
            await trio.sleep(0.01)


async def pipelined_appends(
    port: int,
    queue_id: str,
    *,
    count: int,
    duration: float,
    depth: int = 64,
    stop: trio.Event | None = None,
) -> tuple[list[Any], list[tuple[int, Any]], list[dict]]:
    """Fast-client APPENDs of value_for(0..) on one connection with up to ``depth`` in flight,
    until ``count`` are sent, ``duration`` passes, ``stop`` is set, or the connection breaks.
    Returns the values sent (in order), the acknowledged (seq, value) pairs, and the error
    answers."""
    sent: list[Any] = []
    acked: list[tuple[int, Any]] = []
    errors: list[dict] = []
    conn = await RawConnection.open(port)
    slots = trio.Semaphore(depth)
    deadline = trio.current_time() + duration
    answers = 0

    async def sender(cancel: trio.CancelScope) -> None:
        try:
            while len(sent) < count and trio.current_time() < deadline:
                await slots.acquire()
                if stop is not None and stop.is_set():
                    slots.release()
                    break
                value = value_for(len(sent))
                sent.append(value)
                await conn.send({"operation": "APPEND", "queue_name": queue_id, "data": value})
            for _ in range(depth):
                await slots.acquire()
        except CONNECTION_ERRORS:
            return
        cancel.cancel()

    async def receiver(cancel: trio.CancelScope) -> None:
        nonlocal answers
        while True:
            try:
                response = await conn.receive()
            except CONNECTION_ERRORS:
                response = None
            if response is None:
                cancel.cancel()
                return
            value = sent[answers]
            answers += 1
            if response.get("status") == "success":
                acked.append((response["sequence_num"], value))
            else:
                errors.append(response)
            slots.release()

    try:
        with trio.fail_after(duration + 10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sender, nursery.cancel_scope)
                nursery.start_soon(receiver, nursery.cancel_scope)
    finally:
        await trio.aclose_forcefully(conn.stream)
    return sent, acked, errors


# -- checks ------------------------------------------------------------------------------------


def check_queue(
    stored: list[tuple[int, Any]],
    acked: list[tuple[int, Any]],
    indeterminate: list[Any] = (),
) -> None:
    """Every acknowledged append is stored at its sequence number with its value; every stored
    value was acknowledged or indeterminate (no phantoms), and is stored once."""
    assert not stored or stored[0][0] == 1, stored[:3]
    by_seq = {seq: key(value) for seq, value in stored}
    lost = [(s, v) for s, v in acked if by_seq.get(s) != key(v)]
    assert not lost, (
        f"{len(lost)} of {len(acked)} acknowledged appends lost or changed "
        f"({len(stored)} stored), first {lost[:5]}"
    )
    allowed = {key(v) for _, v in acked} | {key(v) for v in indeterminate}
    phantoms = [(s, v) for s, v in stored if key(v) not in allowed]
    assert not phantoms, f"stored values never acknowledged nor in doubt: {phantoms[:5]}"
    keys = [key(v) for _, v in stored]
    assert len(set(keys)) == len(keys), "a value is stored twice"


async def check_reader(
    live: list[NodeProcess], reader: Reader, stored: list[tuple[int, Any]]
) -> None:
    """The reader saw each message once, in order, with its stored value; its next READ goes on
    after its last acknowledged message; the skipped messages are at most its lost READs."""
    by_seq = {seq: key(value) for seq, value in stored}
    seqs = [seq for seq, _ in reader.acked]
    assert seqs == sorted(set(seqs)), f"reader saw messages out of order or twice: {seqs}"
    wrong = [(s, d) for s, d in reader.acked if by_seq.get(s) != key(d)]
    assert not wrong, f"reader got data that is not stored there: {wrong[:5]}"
    last = seqs[-1] if seqs else 0
    request = {"operation": "READ", "queue_name": reader.queue_id, "client_id": reader.client_id}
    for _ in range(3):  # NOT_LEADER is not applied: ask the next leader
        leader = await wait_new_leader(live)
        answer = await try_call(leader.port, request, within=5.0)
        if answer is None or answer.get("code") != "NOT_LEADER":
            break
    assert answer is not None and answer.get("status") == "success", answer
    following = answer.get("sequence_num", len(stored) + 1)
    assert following > last, f"reader position went back: read {last}, then {answer}"
    skipped = (following - 1) - len(seqs)  # messages before ``following`` never seen
    assert skipped <= reader.lost, (
        f"reader skipped {skipped} messages with only {reader.lost} READs lost; "
        f"read {len(seqs)} up to {last}, next READ gave {answer}"
    )


# -- 1. forming --------------------------------------------------------------------------------


async def test_three_brokers_form_one_cluster(nodes: Nodes, tmp_path):
    with trio.fail_after(30):
        started = await start_cluster(nodes, tmp_path)
        answers = [await query(n.port) for n in started]
    assert all(answers), answers
    first = started[0]
    assert {a["cluster_id"] for a in answers} == {first.cluster_id}
    assert {n.cluster_id for n in started} == {first.cluster_id}, "ready lines disagree"
    assert {a.get("leader_id") for a in answers} == {first.broker_id}, "the founder should lead"
    assert {a["cluster_version"] for a in answers} == {5}
    ids = sorted(n.broker_id for n in started)
    assert len(set(ids)) == 3
    for node, answer in zip(started, answers, strict=True):
        assert answer["self_id"] == node.broker_id
        assert answer["self_role"] == ("leader" if node is first else "replica")
        brokers = {b["broker_id"]: b for b in answer["brokers"]}
        assert sorted(brokers) == ids
        for n in started:
            b = brokers[n.broker_id]
            assert (b["host"], b["port"]) == ("127.0.0.1", n.port)
            assert b["role"] == ("leader" if n is first else "replica")
            assert b["status"] == "active"
    # A replica refuses writes with a hint at the leader.
    refused = await try_call(started[1].port, {"operation": "CREATE_QUEUE"})
    assert refused is not None and refused["status"] == "error", refused
    assert refused["code"] == "NOT_LEADER"
    assert (refused["leader_id"], refused["leader_port"]) == (first.broker_id, first.port)


# -- 2. leader SIGKILL under load ----------------------------------------------------------------


async def test_leader_sigkill_under_load_loses_nothing_acknowledged(nodes: Nodes, tmp_path):
    with trio.fail_after(60):
        started = await start_cluster(nodes, tmp_path)
        old_leader = started[0]
        queue_id = await create_queue(old_leader.port)
        ports = [n.port for n in started]
        writers = [Writer(queue_id, Topology(ports), offset=w * 1_000_000) for w in range(3)]
        reader = Reader(queue_id, Topology(ports), "C-RDR01")
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            for w in writers:
                nursery.start_soon(lambda w=w: w.run(stop, max_count=20_000, duration=15.0))
            nursery.start_soon(lambda: reader.run(stop, max_count=200_000, duration=15.0))
            await trio.sleep(1.0)
            assert all(w.acked for w in writers), "no appends acknowledged before the kill"
            assert reader.acked, "no reads acknowledged before the kill"
            before = sum(len(w.acked) for w in writers)
            await kill_and_reap(old_leader)
            killed_at = trio.current_time()
            live = started[1:]
            # The writers must get acknowledgements from a new leader within a few seconds.
            await eventually(
                lambda: any(
                    leader not in (None, old_leader.broker_id)
                    for w in writers
                    for _, leader in w.ack_log
                ),
                FAILOVER_WITHIN,
                "no append acknowledged by a new leader",
            )
            resumed_after = trio.current_time() - killed_at
            await trio.sleep(0.7)  # some more load on the new leader
            stop.set()
        assert not any(w.gave_up for w in writers), "a writer found no leader"
        new_leader = await wait_new_leader(live, not_id=old_leader.broker_id)

        acked = [pair for w in writers for pair in w.acked]
        indeterminate = [v for w in writers for v in w.indeterminate]
        errors = [e for w in writers for e in w.errors] + reader.errors
        unexpected = [e for e in errors if e.get("outcome") != "unknown"]
        assert not unexpected, f"error answers that are neither NOT_LEADER nor in doubt: {errors}"
        seqs = [s for s, _ in acked]
        assert len(set(seqs)) == len(seqs), "two appends acknowledged with one sequence number"
        print(
            f"{before} appends acknowledged before the kill, {len(acked)} in all; "
            f"{len(indeterminate)} indeterminate; retries {sum(w.retries for w in writers)}; "
            f"writes resumed {resumed_after:.2f} s after the kill; "
            f"{len(reader.acked)} reads, {reader.lost} lost"
        )

        stored = await read_all_from_leader(live, queue_id, "CHK1")
        check_queue(stored, acked, indeterminate)
        await check_reader(live, reader, stored)

        # The killed broker comes back from its data dir, without --seed, as a replica.
        restarted = await nodes.restart_same(old_leader)
        assert (restarted.broker_id, restarted.cluster_id) == (
            old_leader.broker_id,
            old_leader.cluster_id,
        )
        live = [*live, restarted]
        leader = await wait_formed(live, members=3, version=5)
        assert leader is new_leader
        answer = await query(restarted.port)
        assert answer["self_role"] == "replica" and answer.get("leader_id") == new_leader.broker_id

        # More acknowledged work while it is back, then the current leader dies too: the cluster
        # now relies on the restarted broker, and still has everything.
        more = [("after", i) for i in range(20)]
        for i, value in enumerate(more):
            response = await must_call(
                new_leader.port,
                {"operation": "APPEND", "queue_name": queue_id, "data": list(value)},
            )
            assert response["sequence_num"] == len(stored) + 1 + i
        acked += [(len(stored) + 1 + i, list(v)) for i, v in enumerate(more)]
        await kill_and_reap(new_leader)
        live.remove(new_leader)
        await wait_new_leader(live, not_id=new_leader.broker_id)
        stored = await read_all_from_leader(live, queue_id, "CHK2")
        check_queue(stored, acked, indeterminate)

        # And the restarted broker itself holds all of it (see make_sole_voter).
        await make_sole_voter(restarted, live)
        stored = await read_all(restarted.port, queue_id, "C-CHK03")
        check_queue(stored, acked, indeterminate)


async def test_repeated_leader_failovers_under_load(nodes: Nodes, tmp_path):
    """Three leaders in a row SIGKILLed under load, each restarted before the next kill."""
    with trio.fail_after(60):
        live = await start_cluster(nodes, tmp_path)
        leader = live[0]
        queue_id = await create_queue(leader.port)
        ports = [n.port for n in live]
        # One old-design writer (a connection per request), one pipelining writer.
        writers = [
            Writer(queue_id, Topology(ports), offset=0),
            PipelinedWriter(queue_id, Topology(ports), offset=1_000_000, depth=8),
        ]
        reader = Reader(queue_id, Topology(ports), "C-RDR02")
        stop = trio.Event()
        leaders = [leader.broker_id]
        async with trio.open_nursery() as nursery:
            for w in writers:
                nursery.start_soon(lambda w=w: w.run(stop, max_count=20_000, duration=40.0))
            nursery.start_soon(lambda: reader.run(stop, max_count=200_000, duration=40.0))
            for _ in range(3):
                await trio.sleep(0.5)
                await kill_and_reap(leader)
                live.remove(leader)
                old, killed_at = leader.broker_id, trio.current_time()
                await eventually(
                    lambda old=old, killed_at=killed_at: any(
                        at > killed_at and who not in (None, old)
                        for w in writers
                        for at, who in w.ack_log
                    ),
                    FAILOVER_WITHIN,
                    f"no append acknowledged by a new leader after {old} was killed",
                )
                live.append(await nodes.restart_same(leader))
                leader = await wait_formed(live, members=3, version=5)
                leaders.append(leader.broker_id)
            await trio.sleep(0.3)
            stop.set()
        assert not any(w.gave_up for w in writers), "a writer found no leader"
        acked = [pair for w in writers for pair in w.acked]
        indeterminate = [v for w in writers for v in w.indeterminate]
        errors = [e for w in writers for e in w.errors] + reader.errors
        assert all(e.get("outcome") == "unknown" for e in errors), errors
        print(
            f"leaders {leaders}; {[len(w.acked) for w in writers]} appends acknowledged, "
            f"{[len(w.indeterminate) for w in writers]} "
            f"indeterminate; {len(reader.acked)} reads, {reader.lost} lost"
        )
        # Under heavy load on a small machine a 0.5 s failure timeout can also move leadership
        # without a kill; ask who leads now.
        leader = await wait_formed(live, members=3, version=5)
        elections = sum(n.stderr_text().count(" role=leader ") for n in nodes.processes)
        print(f"{elections} elections won in all (3 kills + the founding)")
        stored = await read_all_from_leader(live, queue_id, "CHK1")
        check_queue(stored, acked, indeterminate)
        await check_reader(live, reader, stored)


# -- 3. a fourth broker joins under load -------------------------------------------------------


async def test_fourth_broker_joins_under_load_and_holds_identical_data(nodes: Nodes, tmp_path):
    with trio.fail_after(60):
        started = await start_cluster(nodes, tmp_path)
        leader = started[0]
        queue_id = await create_queue(leader.port)
        result: list[Any] = []
        stop = trio.Event()

        async def load() -> None:
            result.append(
                await pipelined_appends(leader.port, queue_id, count=50_000, duration=20, stop=stop)
            )

        async with trio.open_nursery() as nursery:
            nursery.start_soon(load)
            await trio.sleep(0.7)
            fourth = await nodes.start_member(tmp_path / "b4", seeds=[leader], extra_args=FAST)
            assert not result, "the load ended before the 4th broker had joined"
            joined_at = trio.current_time()
            await trio.sleep(1.0)  # while it catches up and is promoted
            stop.set()
        t = trio.current_time()
        print(f"load went on {t - joined_at:.2f} s after the join")
        [(sent, acked, errors)] = result
        assert errors == [], errors[:3]
        assert len(acked) == len(sent), "the load ended early"
        print(f"{len(acked)} appends acknowledged; the 4th broker joined during the load")

        everyone = [*started, fourth]
        assert await wait_formed(everyone, members=4, version=7) is leader
        print(f"4 voters {trio.current_time() - t:.2f} s after the load")
        answer = await query(fourth.port)
        assert answer["self_role"] == "replica" and answer.get("leader_id") == leader.broker_id
        check_queue(await read_all_from_leader(everyone, queue_id, "CHK0"), acked)

        # The leader dies: whoever leads now (quorum 3 of 4) has everything acknowledged.
        await kill_and_reap(leader)
        live = everyone[1:]
        await wait_new_leader(live, not_id=leader.broker_id)
        check_queue(await read_all_from_leader(live, queue_id, "CHK1"), acked)

        # Identical data on the 4th broker, through the wire only: with 4 voters at most one
        # can be lost, so instead of killing more brokers until the 4th leads (which may never
        # happen), REMOVE_MEMBER the others; the 4th is then the only voter, leads, and serves
        # READs from its own state, which must be exactly the acknowledged appends.
        t = trio.current_time()
        await make_sole_voter(fourth, live)
        print(f"the 4th broker was made the only voter in {trio.current_time() - t:.2f} s")
        stored = await read_all(fourth.port, queue_id, "C-CHK02")
        check_queue(stored, acked)
        assert [v for _, v in stored] == sent, "the 4th broker's queue differs from what was sent"


# -- 4. the whole cluster SIGKILLed at once -------------------------------------------------------


async def test_whole_cluster_sigkill_under_load_and_restart(nodes: Nodes, tmp_path):
    with trio.fail_after(60):
        started = await start_cluster(nodes, tmp_path)
        leader = started[0]
        queue_id = await create_queue(leader.port)
        result: list[Any] = []

        async def load() -> None:
            result.append(
                await pipelined_appends(leader.port, queue_id, count=50_000, duration=5.0)
            )

        async with trio.open_nursery() as nursery:
            nursery.start_soon(load)
            await trio.sleep(1.0)
            await kill_and_reap(*started)
        [(sent, acked, errors)] = result
        assert errors == [], errors[:3]
        assert acked, "nothing acknowledged before the kill"
        assert len(sent) < 50_000, "the load finished before the kill: nothing tested"
        # One connection, answers in request order: the acknowledged appends are 1..N.
        assert [s for s, _ in acked] == list(range(1, len(acked) + 1))

        restarted = [await nodes.restart_same(n) for n in started]
        await wait_formed(restarted, members=3, version=5)
        stored = await read_all_from_leader(restarted, queue_id, "CHK1")
        print(f"{len(sent)} sent, {len(acked)} acknowledged, {len(stored)} stored after restart")
        check_queue(stored, acked, sent[len(acked) :])
        # What was not acknowledged survived, if at all, as a prefix of what was sent.
        assert [v for _, v in stored] == sent[: len(stored)]
        response = await append_on_leader(restarted, queue_id, "after")
        assert response["sequence_num"] == len(stored) + 1


# -- 5. compaction and catch-up by snapshot ---------------------------------------------------


async def test_replica_catches_up_by_snapshot_after_compaction(nodes: Nodes, tmp_path):
    compaction = ("--compact-threshold", "200", "--compact-keep", "20")
    compaction += ("--compact-bytes", "20000", "--log-level", "INFO")
    with trio.fail_after(60):
        started = await start_cluster(nodes, tmp_path, extra_args=compaction)
        leader, replica, other = started
        queue_id = await create_queue(leader.port)
        await kill_and_reap(replica)

        sent, acked, errors = await pipelined_appends(
            leader.port, queue_id, count=2_000, duration=20.0
        )
        assert errors == [] and len(acked) == len(sent) == 2_000, (len(acked), errors[:3])
        # A reader's position is state too, and must travel in the snapshot.
        conn = await RawConnection.open(leader.port)
        try:
            with trio.fail_after(10):
                read = {"operation": "READ", "queue_name": queue_id, "client_id": "C-RDR05"}
                await conn.send(*[read] * 700)
                for i in range(700):
                    answer = await conn.receive()
                    assert answer is not None and answer.get("sequence_num") == i + 1, answer
        finally:
            await trio.aclose_forcefully(conn.stream)

        back = await nodes.restart_same(replica)
        await eventually(
            lambda: "snapshot.installed" in back.stderr_text(),
            15,
            f"the restarted replica installed no snapshot\n{back.describe()}",
        )
        await wait_formed([leader, back, other], members=3, version=5)

        await kill_and_reap(leader)
        await wait_new_leader([back, other], not_id=leader.broker_id)
        stored = await read_all_from_leader([back, other], queue_id, "CHK1")
        check_queue(stored, acked)
        assert len(stored) == 2_000

        # And the broker that caught up by snapshot holds all of it itself.
        await make_sole_voter(back, [back, other])
        stored = await read_all(back.port, queue_id, "C-CHK02")
        check_queue(stored, acked)
        assert len(stored) == 2_000
        rest = await read_all(back.port, queue_id, "C-RDR05")
        assert rest == stored[700:], f"the reader's position was not kept: {rest[:2]}"


# -- 6. a client of the original design across a failover --------------------------------------


class OldClient:
    """A client as the original design has it: one TCP connection per request; on any error
    (connection failure, error answer) it runs CLUSTER_QUERY against its seed list again and
    retries on the broker listed as leader. It knows nothing of leader_id, codes or hints."""

    def __init__(self, seeds: list[int], client_id: str) -> None:
        self.seeds = seeds
        self.client_id = client_id
        self.leader_port: int | None = None
        self.in_doubt = 0  # requests retried after they may have been applied
        self.failures = 0

    async def _discover(self) -> None:
        self.leader_port = None
        for port in self.seeds:
            topology = await try_call(
                port, {"operation": "CLUSTER_QUERY", "client_id": self.client_id}, 1.0
            )
            if topology is None or topology.get("status") != "success":
                continue
            for b in topology["brokers"]:
                if b["role"] == "leader":
                    self.leader_port = b["port"]
                    return

    async def request(self, request: dict[str, Any]) -> dict[str, Any]:
        request = {**request, "client_id": self.client_id}
        with trio.fail_after(10):
            while True:
                if self.leader_port is None:
                    await self._discover()
                    if self.leader_port is None:
                        await trio.sleep(0.05)
                        continue
                sent = False
                try:
                    stream = await trio.open_tcp_stream("127.0.0.1", self.leader_port)
                    conn = RawConnection(stream)
                    try:
                        await conn.send(request)
                        sent = True
                        response = await conn.receive()
                    finally:
                        await trio.aclose_forcefully(stream)
                except CONNECTION_ERRORS:
                    response = None
                if response is not None and response.get("status") == "success":
                    return response
                self.failures += 1
                if sent and (response is None or response.get("code") != "NOT_LEADER"):
                    self.in_doubt += 1
                self.leader_port = None
                await trio.sleep(0.05)


async def test_old_design_client_keeps_working_across_failover(nodes: Nodes, tmp_path):
    with trio.fail_after(60):
        started = await start_cluster(nodes, tmp_path)
        client = OldClient([n.port for n in started], "C-OLD01")
        queue_id = (await client.request({"operation": "CREATE_QUEUE"}))["queue_id"]
        values = list(range(1, 301))
        got: list[tuple[int, Any]] = []
        killed = None
        for v in values:
            if v == 150:
                # Mid-stream, the leader dies; the client is not told.
                leader = await wait_formed(started, members=3, version=5, within=2)
                await kill_and_reap(leader)
                killed = leader
                killed_at = trio.current_time()
            response = await client.request(
                {"operation": "APPEND", "queue_name": queue_id, "data": v}
            )
            if v == 150:
                print(f"first APPEND after the kill answered in {trio.current_time() - killed_at}")
            assert isinstance(response["sequence_num"], int)
            if v % 3 == 0:
                answer = await client.request({"operation": "READ", "queue_name": queue_id})
                if "sequence_num" in answer:
                    got.append((answer["sequence_num"], answer["data"]))
        for _ in range(len(values) * 2 + 10):
            answer = await client.request({"operation": "READ", "queue_name": queue_id})
            if "sequence_num" not in answer:
                assert answer == {"status": "success", "message": "no_messages"}
                break
            got.append((answer["sequence_num"], answer["data"]))
        assert killed is not None
    print(f"client failures {client.failures}, in doubt {client.in_doubt}")
    seqs = [s for s, _ in got]
    assert seqs == sorted(set(seqs))
    data = [d for _, d in got]
    # Everything appended, in order; a retried request that had been applied may show up as a
    # duplicate (an APPEND) or a skipped message (a READ), at most once per request in doubt.
    deduped = [d for i, d in enumerate(data) if i == 0 or d != data[i - 1]]
    assert len(data) - len(deduped) + (len(values) - len(set(data))) <= client.in_doubt
    missing = sorted(set(values) - set(data))
    assert len(missing) <= client.in_doubt, f"messages never read: {missing}"
    assert deduped == [v for v in values if v not in missing]
