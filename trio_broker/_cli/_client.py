"""``python -m trio_broker client``: talk to brokers from the command line.

Exit status (``_exit.py``): 0 on success, 1 when a broker refuses the request
(``error: CODE: message`` on stderr) or no answer comes within ``--timeout``, 2 when no seed
broker can be reached (every seed is tried), 64 for a usage error.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import signal
import ssl
import sys
import threading
from typing import Any

import trio

from .._auth import AuthConfigError, load_secret, load_token
from .._client._common import structure
from .._client._work import GroupConsumer
from .._errors import BrokerError
from .._ids import new_client_id
from .._protocol import converter, dumps_value
from .._protocol._messages import ForgetPositionRequest, MessageBatch, Read, SeekRequest
from ..client import BrokerUnreachableError, Client, Retention, connect
from ._client_args import CLIENT_ID_ENV, add_client_parser
from ._client_groups import format_topology, groups_command, status_command
from ._exit import EXIT_ERROR, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE
from ._reach import SETTLE, Reached, answers_cluster_query, ask_every_seed, topology_of
from ._seeds import SEEDS_ENV, client_seeds, format_seed, parse_seed

__all__ = ["add_client_parser", "format_topology", "parse_data", "run_client"]


def parse_data(text: str) -> Any:
    """Command-line DATA: JSON if it parses as JSON (NaN and Infinity do not), else a string."""

    def reject(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")

    try:
        return json.loads(text, parse_constant=reject)
    except ValueError:
        return text


EXIT_INTERRUPTED = 128 + signal.SIGINT
"""Ctrl-C (SIGINT), as shells report a command it stopped."""


def run_client(args: argparse.Namespace) -> int:
    """Run one client command; returns the exit status."""
    try:
        return trio.run(_run_interruptible, args)
    except KeyboardInterrupt:  # off the main thread, where no signal receiver can be had
        return EXIT_INTERRUPTED


async def _run_interruptible(args: argparse.Namespace) -> int:
    """:func:`_run`, stopped cleanly by SIGINT: the signal cancels the command and the exit
    status says it was interrupted. Without a receiver, trio raises KeyboardInterrupt in
    whichever task is at a checkpoint, and a client task's failure could then surface first
    as a lost connection (exit status 1)."""
    if threading.current_thread() is not threading.main_thread():
        return await _run(args)
    status = EXIT_INTERRUPTED
    with trio.open_signal_receiver(signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:

            async def command() -> None:
                nonlocal status
                status = await _run(args)
                nursery.cancel_scope.cancel()

            nursery.start_soon(command)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break
    return status


def _security(args: argparse.Namespace) -> dict[str, Any]:
    """connect()'s security arguments from the command line; AuthConfigError if unusable."""
    options: dict[str, Any] = {}
    if args.tls_ca is not None:
        try:
            options["ssl_context"] = ssl.create_default_context(cafile=args.tls_ca)
        except (OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "strerror", None) or exc
            raise AuthConfigError(f"cannot load CA bundle {args.tls_ca}: {reason}") from None
    if args.token_file is not None:
        options["token"] = load_token(args.token_file)
    if args.cluster_secret_file is not None:
        options["cluster_secret"] = load_secret(args.cluster_secret_file)
    return options


async def _run(args: argparse.Namespace) -> int:
    try:
        seeds = client_seeds(args.seed, os.environ)
    except ValueError as exc:
        _err(str(exc))
        return EXIT_USAGE
    try:
        security = _security(args)
    except AuthConfigError as exc:
        _err(str(exc))
        return EXIT_ERROR
    if args.client_id is None:
        args.client_id = os.environ.get(CLIENT_ID_ENV) or None
    args.generated_client_id = args.client_id is None
    deadline = trio.current_time() + args.timeout
    try:
        if args.client_command == "health":
            return await _health(seeds, security, deadline, args)
        reached = Reached(seeds)
        with trio.move_on_at(deadline):
            await ask_every_seed(reached, answers_cluster_query(**security), settle=SETTLE)
        if not reached.answers:
            return _no_answer(reached, args)
        # tail --follow runs until interrupted: the deadline covers finding the cluster only.
        follow = getattr(args, "follow", False)
        args.reconnect = functools.partial(
            connect, reached.connect_order(), client_id=args.client_id, **security
        )
        with trio.fail_at(math.inf if follow else deadline):
            async with args.reconnect() as client:
                return await _COMMANDS[args.client_command](client, args)
    except BrokerUnreachableError as exc:
        _unreachable(exc.errors)
        return EXIT_UNREACHABLE
    except BrokerError as exc:
        _err(f"{exc.code}: {exc.message}")
        return EXIT_ERROR
    except trio.TooSlowError:
        _err(f"TIMEOUT: no answer within {args.timeout:g} s")
        return EXIT_ERROR
    except (TypeError, ValueError) as exc:
        # Data the client refuses to send (an integer beyond 64 bits, for instance).
        _err(str(exc))
        return EXIT_ERROR


def _no_answer(reached: Reached, args: argparse.Namespace) -> int:
    """No seed answered: a refusal is the broker's answer (1), every seed unreachable is 2,
    and seeds that were still silent when time ran out are a timeout (1)."""
    if reached.refusals:
        exc = reached.refusals[0]
        _err(f"{exc.code}: {exc.message}")
        return EXIT_ERROR
    if reached.silent:
        _err(f"TIMEOUT: no answer within {args.timeout:g} s from {_seed_names(reached.silent)}")
        return EXIT_ERROR
    _unreachable(list(reached.unreachable.items()))
    return EXIT_UNREACHABLE


def _unreachable(errors: list[tuple[tuple[str, int], str]]) -> None:
    for address, reason in errors:
        _err(f"cannot connect to {format_seed(address)}: {reason}")
    _err(f"is a broker running there? (name one with --seed HOST:PORT or ${SEEDS_ENV})")


def _seed_names(seeds: list[tuple[str, int]]) -> str:
    return ", ".join(format_seed(s) for s in seeds)


def _err(text: str) -> None:
    print(f"error: {text}", file=sys.stderr, flush=True)


def _note(text: str) -> None:
    """What the user needs to go on (a generated id), on standard error: not a result."""
    print(text, file=sys.stderr, flush=True)


def _out(text: str) -> None:
    print(text, flush=True)


def _json(value: Any) -> str:
    return dumps_value(value).decode()


async def _health(
    seeds: list[tuple[str, int]],
    security: dict[str, Any],
    deadline: float,
    args: argparse.Namespace,
) -> int:
    """For supervisors: 0 when a seed broker answers and follows a leader, 1 when the one
    that answered knows no leader, 2 when none answers before the deadline."""
    reached = Reached(seeds)
    with trio.move_on_at(deadline):
        await ask_every_seed(reached, topology_of(**security))
    if not reached.answers:
        if reached.refusals:
            return _no_answer(reached, args)
        _unreachable(list(reached.unreachable.items()))
        if reached.silent:
            _err(f"no answer within {args.timeout:g} s from {_seed_names(reached.silent)}")
        return EXIT_UNREACHABLE
    topology = next(iter(reached.answers.values()))
    me = next((b for b in topology.brokers if b.broker_id == topology.self_id), None)
    healthy = topology.leader is not None
    report = {
        "healthy": healthy,
        "broker_id": topology.self_id,
        "role": topology.self_role,
        "status": None if me is None else me.status,
        "cluster_id": topology.cluster_id,
        "leader_id": None if topology.leader is None else topology.leader.broker_id,
    }
    if args.json:
        _out(_json(report))
    elif healthy:
        _out(
            f"ok: {report['broker_id']} is {report['role']} in {report['cluster_id']}, "
            f"leader {report['leader_id']}"
        )
    else:
        _err(f"{report['broker_id']} in {report['cluster_id']} knows no leader")
    return EXIT_OK if healthy else EXIT_ERROR


def _policy_args(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "max_messages": args.max_messages,
        "max_age": args.max_age,
        "delete_acknowledged": args.delete_acknowledged,
    }


def _describe_retention(retention: Retention | None) -> str:
    if retention is None or retention == Retention():
        return "keep-all"
    rules = []
    if retention.max_messages is not None:
        rules.append(f"max-messages={retention.max_messages}")
    if retention.max_age_ms is not None:
        rules.append(f"max-age={retention.max_age_ms / 1000:g}s")
    if retention.delete_acknowledged:
        rules.append("delete-acknowledged")
    return ",".join(rules)


async def _create_queue(client: Client, args: argparse.Namespace) -> int:
    queue_id = await client.create_queue(args.cluster, name=args.name, **_policy_args(args))
    _out(_json({"queue_id": queue_id}) if args.json else queue_id)
    return EXIT_OK


async def _delete_queue(client: Client, args: argparse.Namespace) -> int:
    await client.delete_queue(args.queue, force=args.force)
    _out(_json({"deleted": args.queue}) if args.json else f"deleted {args.queue}")
    return EXIT_OK


def _group_message_json(message: Any) -> dict[str, Any]:
    return {
        "sequence_num": message.sequence_num,
        "data": message.data,
        "headers": message.headers,
        "delivery_count": message.delivery_count,
    }


async def _consume(client: Client, args: argparse.Namespace) -> int:
    """Take messages as one worker of the group: each printed, then acknowledged (so one
    interrupted in between comes again). With --json, a list at the end, or with --follow one
    object per line as they come (nothing is kept: following has no end)."""
    taken = []
    received = 0
    count = args.count or (math.inf if args.follow else 1)
    async with client.consumer_group(
        args.queue, args.group, prefetch=1, wait=min(args.wait, 60.0)
    ) as worker:
        if args.no_ack:
            _note(f"member {worker.member} holds the leases")
        while received < count:
            [*messages] = await worker.receive(1)
            if not messages and args.follow:
                continue  # one poll ended empty: wait on (until interrupted)
            if not messages:
                break
            message = messages[0]
            received += 1
            if args.json and args.follow:
                _out(_json(_group_message_json(message)))
            elif args.json:
                taken.append(message)
            else:
                _out(f"{message.sequence_num}\t{message.delivery_count}\t{_json(message.data)}")
            if not args.no_ack:
                await message.ack()
    if args.json and not args.follow:
        _out(_json([_group_message_json(m) for m in taken]))
    elif not args.json and received < count:
        print("(no more messages)", file=sys.stderr, flush=True)
    return EXIT_OK


async def _lease(client: Client, args: argparse.Namespace) -> int:
    member = getattr(args, "member", None) or client.client_id
    worker = GroupConsumer(client, args.queue, args.group, member, 1, 0)
    if args.client_command == "ack":
        done = [seq for seq in args.sequence_nums if await worker._ack([seq])]
    else:
        done = [
            seq
            for seq in args.sequence_nums
            if await worker._change("nack", seq, delay=args.delay, error=args.error)
        ]
    _out(_json({args.client_command: done}) if args.json else " ".join(map(str, done)))
    return EXIT_OK


async def _set_retention(client: Client, args: argparse.Namespace) -> int:
    policy = _policy_args(args)
    given = policy != {"max_messages": None, "max_age": None, "delete_acknowledged": False}
    if given == args.keep_all:
        print(
            "set-retention: give --max-messages, --max-age and/or --delete-acknowledged, "
            "or --keep-all alone",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_ERROR
    retention = await client.set_retention(args.queue, **policy)
    if args.json:
        _out(_json({"queue_id": args.queue, "retention": converter.unstructure(retention)}))
    else:
        _out(f"{args.queue}\t{_describe_retention(retention)}")
    return EXIT_OK


TAIL_BATCH = 100
"""Messages one poll of ``tail`` reads at most."""


async def _tail(client: Client, args: argparse.Namespace) -> int:
    """Every message from this client's position on; with --follow, then each new one as it
    arrives (one poll of up to 1 s at a time) until interrupted. With --peek, the position
    stays where it is: a reader of its own (a new client id, set to this client's position
    and forgotten at the end) does the reading."""
    wait = 1.0 if args.follow else None
    if not args.peek:
        await _print_reads(client, args, client.client_id, wait)
        if args.generated_client_id:
            _note(f"client id {client.client_id} (pass --client-id {client.client_id} to go on)")
        return EXIT_OK
    start = None
    while start is None:
        first = await client.read_batch(args.queue, 1, peek=True, wait=wait)
        if first:
            start = first[0].sequence_num
        elif not args.follow:
            return EXIT_OK  # nothing after this client's position
    reader = new_client_id()
    sought = False
    try:
        # On a connection of its own, closed before the reader is forgotten: nothing of this
        # command waits on the broker then (the broker also ends a long poll that a forget
        # of its client finds waiting, so that it sets no position again).
        async with args.reconnect() as reading:
            sought = True  # (from here the SEEK may be applied, even if interrupted)
            seek = SeekRequest(queue_name=args.queue, client_id=reader, next_sequence_num=start)
            await reading._queue_call(args.queue, seek)
            await _print_reads(reading, args, reader, wait)
    finally:
        if sought:
            # Even when interrupted (the reader's position would hold retention until the
            # broker's idle sweep, if any, forgot it): on a new connection, as an
            # interruption cancels the others'.
            forget = ForgetPositionRequest(queue_name=args.queue, client_id=reader)
            with trio.CancelScope(shield=True), trio.move_on_after(args.timeout):
                async with args.reconnect() as again:
                    await again._queue_call(args.queue, forget)
    return EXIT_OK


async def _print_reads(
    client: Client, args: argparse.Namespace, reader: str, wait: float | None
) -> None:
    """Read as ``reader`` and print, until the queue has nothing more (for ever, with a
    ``wait``: each READ then waits up to it for a message)."""
    read = Read(
        queue_name=args.queue,
        client_id=reader,
        max_messages=TAIL_BATCH,
        wait_ms=None if wait is None else round(wait * 1000),
    )
    while True:
        response = await client._queue_call(args.queue, read)
        batch = structure(response, MessageBatch).messages
        for message in batch:
            if args.json:
                _out(_json({"sequence_num": message.sequence_num, "data": message.data}))
            else:
                _out(f"{message.sequence_num}\t{_json(message.data)}")
        if not batch and wait is None:
            return


STDIN_BATCH = 1000
"""Values read from standard input are appended this many at a time."""


async def _append(client: Client, args: argparse.Namespace) -> int:
    if args.data != "-":
        sequence_nums = [await client.append(args.queue, parse_data(args.data))]
    else:
        sequence_nums = []
        batch: list[Any] = []
        for line in sys.stdin:
            if line.strip():
                batch.append(parse_data(line.rstrip("\n")))
            if len(batch) == STDIN_BATCH:
                sequence_nums += await client.append_batch(args.queue, batch)
                batch = []
        if batch:
            sequence_nums += await client.append_batch(args.queue, batch)
    if args.json and args.data != "-":
        _out(_json({"queue_id": args.queue, "sequence_num": sequence_nums[0]}))
    elif args.json:
        _out(_json({"queue_id": args.queue, "sequence_nums": sequence_nums}))
    else:
        for sequence_num in sequence_nums:
            _out(str(sequence_num))
    return EXIT_OK


async def _read(client: Client, args: argparse.Namespace) -> int:
    messages = []
    if args.peek:
        messages = await client.read_batch(args.queue, args.count, peek=True)
        if not args.json:
            for message in messages:
                _out(f"{message.sequence_num}\t{_json(message.data)}")
    while not args.peek and len(messages) < args.count:
        message = await client.read(args.queue)
        if message is None:
            break
        messages.append(message)
        if not args.json:
            _out(f"{message.sequence_num}\t{_json(message.data)}")
    if args.json:
        _out(_json([{"sequence_num": m.sequence_num, "data": m.data} for m in messages]))
    elif len(messages) < args.count:
        print("(no more messages)", file=sys.stderr, flush=True)
    if args.generated_client_id:
        # A new id: the position it has now is kept under it, for the next command.
        _note(f"client id {client.client_id} (pass --client-id {client.client_id} to go on)")
    return EXIT_OK


async def _remove_member(client: Client, args: argparse.Namespace) -> int:
    broker_id = args.broker_id
    if ":" in broker_id:
        # An address: the member that the cluster's topology lists there.
        address = parse_seed(broker_id)
        topology = await client.cluster_query(cluster_id=args.cluster)
        found = [b for b in topology.brokers if (b.host, b.port) == address]
        if not found:
            _err(f"no member of cluster {topology.cluster_id} at {args.broker_id}")
            return EXIT_ERROR
        broker_id = found[0].broker_id
    await client.remove_member(broker_id, cluster_id=args.cluster)
    if args.json:
        _out(_json({"removed": broker_id}))
    else:
        _out(f"removed {broker_id}")
    return EXIT_OK


async def _add_member(client: Client, args: argparse.Namespace) -> int:
    host, port = parse_seed(args.address)
    added = await client.add_member(host, port, cluster_id=args.cluster)
    if args.json:
        _out(_json(converter.unstructure(added)))
    else:
        _out(f"added {added.broker_id} as a learner (cluster version {added.cluster_version})")
    return EXIT_OK


async def _transfer_leader(client: Client, args: argparse.Namespace) -> int:
    result = await client.transfer_leadership(args.to, cluster_id=args.cluster)
    if args.json:
        _out(_json(converter.unstructure(result)))
    else:
        _out(f"{result.leader_id} leads (term {result.term})")
    return EXIT_OK


async def _snapshot(client: Client, args: argparse.Namespace) -> int:
    taken = await client.take_snapshot(args.broker, cluster_id=args.cluster)
    if args.json:
        _out(_json({"snapshots": [converter.unstructure(t) for t in taken]}))
    else:
        for t in taken:
            _out(f"{t.broker_id}\tlog compacted up to {t.snapshot_index} (term {t.snapshot_term})")
    return EXIT_OK


async def _rebalance(client: Client, args: argparse.Namespace) -> int:
    report = await client.rebalance()
    if args.json:
        _out(_json(converter.unstructure(report)))
        return EXIT_OK
    for move in report.moves:
        source = f" from {move.source}" if move.source else ""
        reason = f": {move.reason}" if move.reason else ""
        _out(f"{move.group_id}\t{move.move} {move.broker_id}{source}\t{move.outcome}{reason}")
    if not report.moves:
        _out("balanced: nothing to move")
    _out(f"map version {report.map_version}, {report.moving_groups} group(s) moving a replica")
    return EXIT_OK


async def _set_settings(client: Client, args: argparse.Namespace) -> int:
    """``set-group-count``, ``set-replication-factor``, ``set-metadata-voters``."""
    field = args.client_command.removeprefix("set-").replace("-", "_")  # (the wire field)
    done = await client.set_cluster_settings(**{field: args.value})
    if args.json:
        _out(_json(converter.unstructure(done)))
        return EXIT_OK
    added = f"; added {', '.join(done.added_groups)}" if done.added_groups else ""
    _out(
        f"{done.group_count} groups, replication factor {done.replication_factor}, "
        f"{done.metadata_voters} metadata voters{added}"
    )
    _out("the balancer now places and moves replicas, one change at a time: watch `groups`")
    return EXIT_OK


async def _drain(client: Client, args: argparse.Namespace) -> int:
    state = await client.drain_broker(args.broker_id, draining=not args.undo)
    if args.json:
        _out(_json(converter.unstructure(state)))
    elif not state.draining:
        _out(f"{state.broker_id} stays (holds {state.replicas} replica(s))")
    elif state.replicas or state.leads:
        _out(
            f"{state.broker_id} is draining: still holds {state.replicas} replica(s), "
            f"leads {state.leads} group(s)"
        )
    else:
        _out(f"{state.broker_id} is drained: it holds nothing and can be stopped and removed")
    return EXIT_OK


async def _queues(client: Client, args: argparse.Namespace) -> int:
    """Every queue of the cluster, a page at a time, with each client's lag."""
    queues = []
    after = None
    for _ in range(MAX_QUEUE_PAGES):
        page = await client.list_queues(args.cluster, after=after, max_queues=1000)
        queues += page.queues
        after = page.next_after
        if after is None:
            break
    if args.json:
        _out(_json({"queues": [converter.unstructure(q) for q in queues]}))
        return EXIT_OK
    # LENGTH is the last sequence number; FIRST and RETAINED say what retention has left.
    rows = [("QUEUE", "LENGTH", "FIRST", "RETAINED", "RETENTION", "CLIENT", "NEXT", "LAG")]
    for q in queues:
        first = "" if q.first_sequence_num is None else str(q.first_sequence_num)
        retained = "" if q.retained is None else str(q.retained)
        rows.append(
            (q.queue_id, str(q.length), first, retained, _describe_retention(q.retention))
            + ("",) * 3
        )
        rows += [("",) * 5 + (c.client_id, str(c.next_sequence_num), str(c.lag)) for c in q.clients]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    _out(
        "\n".join(
            "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
        )
    )
    return EXIT_OK


MAX_QUEUE_PAGES = 100
"""The CLI lists at most 100,000 queues (100 pages)."""

_COMMANDS = {
    "status": status_command,
    "queues": _queues,
    "groups": groups_command,
    "remove-member": _remove_member,
    "add-member": _add_member,
    "transfer-leader": _transfer_leader,
    "snapshot": _snapshot,
    "rebalance": _rebalance,
    "drain": _drain,
    "set-group-count": _set_settings,
    "set-replication-factor": _set_settings,
    "set-metadata-voters": _set_settings,
    "create-queue": _create_queue,
    "set-retention": _set_retention,
    "append": _append,
    "read": _read,
    "delete-queue": _delete_queue,
    "tail": _tail,
    "consume": _consume,
    "ack": _lease,
    "nack": _lease,
}
