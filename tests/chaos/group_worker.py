"""The clients of the several-groups chaos test, run as a process inside the lab's hub network
namespace (the lab's addresses exist only there): ``python -m tests.chaos.group_worker MODE``.

``create --seeds A,B,C``
    One queue on every replication group (a CREATE_QUEUE lands on a group the broker it
    reaches leads, so each group's leader is asked until every group has one); prints
    ``{"queues": {group: queue}}``.
``load --seeds ... --queues Q,... --clients N --old-clients M --seconds S --seed X
--stop-file F --out H``
    N trio clients (``Workload.trio_client`` of the chaos suite) and M clients of the original
    design (:func:`old_client`) append unique values and read, each operation recorded with its
    outcome, until ``F`` exists or ``S`` seconds have passed; the history is written to ``H``
    (JSON lines, ``History.dump``).
``final --seeds ... --queues Q,... --out F``
    Every message of every queue, read from the start by a fresh client id;
    ``{"final": {queue: [[seq, data], ...]}}`` written to ``F``.

Every wait is bounded; the test bounds the process too.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import sys
from typing import Any

import orjson
import trio

from trio_broker._ids import cluster_of_queue
from trio_broker.client import connect
from trio_broker.testing._history import History

from ..wire import RawConnection
from .test_chaos import (
    CONNECT_TIMEOUT,
    CONNECTION_ERRORS,
    MAX_OPS_PER_CLIENT,
    OP_TIMEOUT,
    Workload,
    _error_outcome,
    value_for,
)

CREATE_ROUNDS = 20
MAX_CLIENT_ROUNDS = 100
"""Client ids one client slot goes through at most (each does up to 2,000 operations)."""
FINAL_PAGE = 500
FINAL_PAGES = 200
"""At most 100,000 messages per queue are read back."""


async def create(seeds: list[str]) -> None:
    queues: dict[str, str] = {}
    with trio.fail_after(60):
        async with connect(seeds, client_id="C-GSET0") as client:
            groups = sorted(client.clusters)
            for _ in range(CREATE_ROUNDS):
                for group in groups:
                    if group not in queues:
                        queue = await client.create_queue(group)
                        queues.setdefault(cluster_of_queue(queue), queue)
                if len(queues) == len(groups):
                    break
    print(orjson.dumps({"queues": queues}).decode(), flush=True)


Address = tuple[str, int]


async def _one_request(address: Address, request: dict[str, Any], within: float) -> Any:
    """One request on a connection of its own, as clients of the original design do: the
    answer, ``"unsent"`` if no connection could be made, None if no answer came."""
    conn = None
    with trio.move_on_after(CONNECT_TIMEOUT):
        with contextlib.suppress(*CONNECTION_ERRORS):
            conn = RawConnection(await trio.open_tcp_stream(*address))
    if conn is None:
        return "unsent"
    try:
        with trio.move_on_after(within):
            await conn.send(request)
            return await conn.receive()
    except CONNECTION_ERRORS:
        return None
    finally:
        await trio.aclose_forcefully(conn.stream)
    return None


async def _find_leader(group: str, seeds: list[Address], rng: random.Random) -> Address | None:
    """CLUSTER_QUERY naming the queue's group (its id is the queue id without ``Q-`` and the last
    five characters), asked of the seeds in a random order: where that group's leader is."""
    for seed in rng.sample(seeds, len(seeds)):
        answer = await _one_request(seed, {"operation": "CLUSTER_QUERY", "cluster_id": group}, 0.5)
        if not isinstance(answer, dict) or answer.get("status") != "success":
            continue
        for broker in answer.get("brokers", []):
            if broker.get("role") == "leader":
                return broker["host"], broker["port"]
    return None


async def old_client(
    history: History,
    queues: list[str],
    seeds: list[Address],
    client_id: str,
    rng: random.Random,
    stop: trio.Event,
) -> None:
    """A client of the original design (the wire contract): a connection per request, each
    queue routed by its id to its group's leader, found with CLUSTER_QUERY; on NOT_LEADER it
    moves to the leader the error names, or asks again."""
    leaders: dict[str, Address | None] = {}
    for n in range(MAX_OPS_PER_CLIENT):
        if stop.is_set():
            return
        queue = rng.choice(queues)
        group = "G-" + queue[2:-5]
        leader = leaders.get(group) or await _find_leader(group, seeds, rng)
        if leader is None:
            await trio.sleep(0.05)
            continue
        if rng.random() < 0.6:
            value = value_for(client_id, n)
            request = {"operation": "APPEND", "queue_name": queue, "data": value}
            op = history.invoke(client_id, "append", queue, value)
        else:
            request = {"operation": "READ", "queue_name": queue}
            op = history.invoke(client_id, "read", queue)
        request["client_id"] = client_id
        response = await _one_request(leader, request, OP_TIMEOUT)
        leaders[group] = leader
        if response == "unsent":
            history.fail(op, "cannot connect: nothing sent")
            leaders[group] = None
        elif response is None:
            history.info(op, "no answer")
            leaders[group] = None
        elif response.get("status") == "success":
            if op.f == "append":
                history.ok(op, response["sequence_num"])
            elif "sequence_num" in response:
                history.ok(op, response["sequence_num"], response["data"])
            else:
                history.ok(op)
        else:
            _error_outcome(history, op, response)
            host, port = response.get("leader_host"), response.get("leader_port")
            hinted = isinstance(host, str) and isinstance(port, int)
            leaders[group] = (host, port) if hinted else None
        await trio.sleep(rng.uniform(0, 0.02))


async def load(args: argparse.Namespace) -> None:
    history = History()
    workload = Workload(history, args.queues.split(","), args.seeds.split(","))
    rng = random.Random(args.seed)
    stop_file = trio.Path(args.stop_file)
    if not (1 <= args.clients <= 10 and 0 <= args.old_clients <= 10):
        raise SystemExit("between 1 and 10 trio clients, at most 10 others")
    seeds = []
    for seed in args.seeds.split(","):
        host, _, port = seed.rpartition(":")
        seeds.append((host, int(port)))

    async def original(i: int, client_rng: random.Random) -> None:
        for round_ in range(MAX_CLIENT_ROUNDS):
            if workload.stop.is_set():
                return
            await old_client(
                history, workload.queues, seeds, f"C-O{i}{round_:03d}", client_rng, workload.stop
            )

    async def client(i: int, client_rng: random.Random) -> None:
        # A client stops after MAX_OPS_PER_CLIENT operations: on a fast machine that can come
        # before the faults end, so another client id takes over until the test says stop.
        for round_ in range(MAX_CLIENT_ROUNDS):
            if workload.stop.is_set():
                return
            await workload.trio_client(f"C-G{i}{round_:03d}", client_rng)

    try:
        async with trio.open_nursery() as nursery:
            for i in range(args.clients):
                nursery.start_soon(client, i, random.Random(rng.getrandbits(64)))
            for i in range(args.old_clients):
                nursery.start_soon(original, i, random.Random(rng.getrandbits(64)))
            with trio.move_on_after(args.seconds):
                while True:
                    if await stop_file.exists():
                        break
                    await trio.sleep(0.1)
            workload.stop.set()
            # Each client finishes its operation in flight (bounded by its own timeout).
            nursery.cancel_scope.deadline = trio.current_time() + 10
    finally:
        history.dump(args.out)


async def final(args: argparse.Namespace) -> None:
    messages: dict[str, list[tuple[int, object]]] = {}
    with trio.fail_after(120):
        async with connect(args.seeds.split(","), client_id="C-GFIN0") as client:
            for queue in args.queues.split(","):
                read: list[tuple[int, object]] = []
                for _ in range(FINAL_PAGES):
                    page = await client.read_batch(queue, FINAL_PAGE)
                    if not page:
                        break
                    read += [(m.sequence_num, m.data) for m in page]
                messages[queue] = read
    await trio.Path(args.out).write_bytes(orjson.dumps({"final": messages}))


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="group_worker")
    parser.add_argument("mode", choices=["create", "load", "final"])
    parser.add_argument("--seeds", required=True)
    parser.add_argument("--queues", default="")
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--old-clients", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stop-file", default="")
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    if args.mode == "create":
        trio.run(create, args.seeds.split(","))
    elif args.mode == "load":
        trio.run(load, args)
    else:
        trio.run(final, args)


if __name__ == "__main__":
    main(sys.argv[1:])
