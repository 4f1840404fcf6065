"""The clients of the several-groups chaos test, run as a process inside the lab's hub network
namespace (the lab's addresses exist only there): ``python -m tests.chaos.group_worker MODE``.

``create --seeds A,B,C``
    One queue on every replication group (a CREATE_QUEUE lands on a group the broker it
    reaches leads, so each group's leader is asked until every group has one); prints
    ``{"queues": {group: queue}}``.
``load --seeds ... --queues Q,... --clients N --seconds S --seed X --stop-file F --out H``
    N trio clients append unique values and read (``Workload.trio_client`` of the chaos
    suite), each operation recorded with its outcome, until ``F`` exists or ``S`` seconds have
    passed; the history is written to ``H`` (JSON lines, ``History.dump``).
``final --seeds ... --queues Q,... --out F``
    Every message of every queue, read from the start by a fresh client id;
    ``{"final": {queue: [[seq, data], ...]}}`` written to ``F``.

Every wait is bounded; the test bounds the process too.
"""

from __future__ import annotations

import argparse
import random
import sys

import orjson
import trio

from trio_broker._ids import cluster_of_queue
from trio_broker.client import connect
from trio_broker.testing._history import History

from .test_chaos import Workload

CREATE_ROUNDS = 20
MAX_CLIENT_ROUNDS = 100
"""Client ids one client slot goes through at most (each does up to 2,000 operations)."""
FINAL_PAGE = 500
FINAL_PAGES = 200
"""At most 100,000 messages per queue are read back."""


async def create(seeds: list[str]) -> None:
    queues: dict[str, str] = {}
    with trio.fail_after(60):
        async with connect(seeds, client_id="C-GSETUP") as client:
            groups = sorted(client.clusters)
            for _ in range(CREATE_ROUNDS):
                for group in groups:
                    if group not in queues:
                        queue = await client.create_queue(group)
                        queues.setdefault(cluster_of_queue(queue), queue)
                if len(queues) == len(groups):
                    break
    print(orjson.dumps({"queues": queues}).decode(), flush=True)


async def load(args: argparse.Namespace) -> None:
    history = History()
    workload = Workload(history, args.queues.split(","), args.seeds.split(","))
    rng = random.Random(args.seed)
    stop_file = trio.Path(args.stop_file)
    if not 1 <= args.clients <= 10:
        raise SystemExit("between 1 and 10 clients")

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
        async with connect(args.seeds.split(","), client_id="C-GFINAL") as client:
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
