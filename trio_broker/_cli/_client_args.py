"""The ``client`` command's arguments: the options every client command takes, and one
sub-parser per command (run by ``_client.py``)."""

from __future__ import annotations

import argparse
from typing import Any

from ._exit import EXIT_STATUS_HELP
from ._seeds import SEEDS_ENV, parse_seed, seed_list

DEFAULT_SEED = "127.0.0.1:9001"
DEFAULT_TIMEOUT = 10.0
CLIENT_ID_ENV = "TRIO_BROKER_CLIENT_ID"
"""The client id a user keeps for their commands (``--client-id`` overrides it)."""


_SETTINGS_COMMANDS = (
    (
        "set-group-count",
        "N",
        "add replication groups to a running cluster (never fewer: queues live on groups)",
        "Raises the cluster's number of groups to N: each new group starts on the broker "
        "holding fewest replicas and the balancer grows it to the replication factor, one "
        "replica at a time. N below the current count is refused (queues live on groups).",
    ),
    (
        "set-replication-factor",
        "R",
        "change how many brokers hold each group (1-7); the balancer moves replicas",
        "Sets the cluster's replication factor to R: the balancer then adds a replica to every "
        "group with fewer (a learner, promoted once caught up) or removes a voter from every "
        "group with more, one change per group at a time.",
    ),
    (
        "set-metadata-voters",
        "N",
        "cap the metadata group's voters (1-7, default 5); other brokers follow as learners",
        "At most N brokers vote in the metadata group (which holds the cluster map); the "
        "others receive it as learners. A dead voter is replaced by a caught-up learner. "
        "Voters beyond N stay until they leave (a voter is never demoted).",
    ),
)
"""The operator's cluster settings (SET_CLUSTER_SETTINGS): command, metavar, help, description."""


def _address(text: str) -> str:
    """argparse ``type=`` for one HOST:PORT (or [IPv6]:PORT)."""
    try:
        parse_seed(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text!r}")
    return value


def _common_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """The options every client command takes, before or after the command name.

    On the command sub-parsers they default to SUPPRESS, so that an option given before the
    command name is not overwritten by the default of the same option after it.
    """

    def default(value: Any) -> Any:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument(
        "--seed",
        action="append",
        type=seed_list,
        default=default(None),
        metavar="HOST:PORT[,...]",
        help="brokers to ask for the cluster's topology, all tried before giving up: "
        "HOST:PORT or [IPv6]:PORT, comma-separated or repeated "
        f"(default: ${SEEDS_ENV}, else {DEFAULT_SEED})",
    )
    parser.add_argument(
        "--client-id",
        default=default(None),
        metavar="ID",
        help="client id (C-XXXXX) owning the read positions; reuse it to continue reading "
        f"where the last command stopped (default: ${CLIENT_ID_ENV}, else a new id, printed, "
        "so reads start at the first message)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="print results as JSON",
    )
    parser.add_argument(
        "--tls-ca",
        default=default(None),
        metavar="FILE",
        help="speak TLS and check the brokers' certificates against this PEM CA bundle "
        "(docs/security.md)",
    )
    parser.add_argument(
        "--token-file",
        default=default(None),
        metavar="FILE",
        help="present the client token in this file (its first token line) on every connection",
    )
    parser.add_argument(
        "--cluster-secret-file",
        default=default(None),
        metavar="FILE",
        help="prove the cluster secret in this file on every connection: operator commands "
        "such as remove-member need it when the cluster has one",
    )
    parser.add_argument(
        "--timeout",
        type=_positive_float,
        default=default(DEFAULT_TIMEOUT),
        metavar="SECONDS",
        help=f"give up after this long (default {DEFAULT_TIMEOUT:g})",
    )


def _cluster_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cluster", metavar="G-XXXXX", help="its cluster (default: the first)")


def add_client_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``client`` sub-command on an argparse subparsers object."""
    client = subparsers.add_parser(
        "client",
        help="talk to brokers: status, health, groups, queues, create-queue, delete-queue, "
        "set-retention, append, read, consume, ack, nack, add-member, remove-member, "
        "transfer-leader, snapshot, rebalance, drain, set-group-count, set-replication-factor, "
        "set-metadata-voters",
        description="Talk to a trio_broker cluster. Exit status 0 on success, 1 when the "
        "broker refuses the request or time runs out, 2 when no seed broker can be reached "
        "(every seed is tried), 64 for a usage error.",
        epilog=EXIT_STATUS_HELP,
    )
    _common_options(client, defaults=True)
    commands = client.add_subparsers(dest="client_command", required=True, metavar="COMMAND")

    common = argparse.ArgumentParser(add_help=False)
    _common_options(common, defaults=False)

    commands.add_parser(
        "status",
        parents=[common],
        help="show the brokers of the cluster(s), their roles and status; with several "
        "replication groups, every group with its leader, voters and each replica's lag",
    )
    commands.add_parser(
        "groups",
        parents=[common],
        help="list the replication groups: id, leader, voters, learners, queue count",
    )
    policy = argparse.ArgumentParser(add_help=False)
    policy.add_argument(
        "--max-messages",
        type=_positive_int,
        metavar="N",
        help="retention: keep at most the N newest messages",
    )
    policy.add_argument(
        "--max-age",
        type=_positive_float,
        metavar="SECONDS",
        help="retention: delete messages appended more than SECONDS ago",
    )
    policy.add_argument(
        "--delete-acknowledged",
        action="store_true",
        help="retention: delete messages every client with a position has read past",
    )
    create = commands.add_parser(
        "create-queue",
        parents=[common, policy],
        help="create a queue (with a retention policy), or name one: create-queue NAME",
        description="Create a queue and print its id. With NAME, idempotent: when a queue of "
        "that name exists, nothing changes and its id is printed.",
    )
    create.add_argument("name", nargs="?", metavar="NAME", help="the queue's name (optional)")
    create.add_argument(
        "--group",
        "--cluster",
        dest="cluster",
        metavar="G-XXXXX",
        help="the group (or cluster) to create it in (default: the cluster's groups in turn)",
    )
    retention = commands.add_parser(
        "set-retention",
        parents=[common, policy],
        help="set (or remove, with --keep-all) a queue's retention policy",
        description="Set QUEUE's retention policy: old messages are deleted from the front "
        "once any rule allows it; sequence numbers never change. The leader enforces "
        "policies about once a second.",
    )
    retention.add_argument("queue", metavar="QUEUE")
    retention.add_argument(
        "--keep-all", action="store_true", help="remove the policy: keep every message"
    )
    append = commands.add_parser(
        "append",
        parents=[common],
        help="append one message",
        description="Append DATA to QUEUE. DATA is parsed as JSON (7, 1.5, true, null, "
        "'\"7\"', '{\"a\": [1]}'); text that is not JSON is sent as a string.",
    )
    append.add_argument("queue", metavar="QUEUE")
    append.add_argument(
        "data",
        nargs="?",
        default="-",
        metavar="DATA",
        help="the value; '-' or absent: one value per line of standard input",
    )
    delete = commands.add_parser(
        "delete-queue",
        parents=[common],
        help="delete a queue with its messages, positions and groups",
    )
    delete.add_argument("queue", metavar="QUEUE", help="the queue's id or name")
    delete.add_argument(
        "--force", action="store_true", help="even while a group holds unexpired leases"
    )
    consume = commands.add_parser(
        "consume",
        parents=[common],
        help="take messages from a consumer group as one worker, print and acknowledge them",
        description="Join GROUP of QUEUE (created with the defaults if new) and take up to "
        "--count messages, waiting up to --wait seconds for each; print each and acknowledge "
        "it, or with --no-ack leave it leased to this worker (its member id is printed on "
        "standard error) for a later ack or nack.",
    )
    consume.add_argument("queue", metavar="QUEUE", help="the queue's id or name")
    consume.add_argument("group", metavar="GROUP")
    consume.add_argument(
        "--count", type=_positive_int, metavar="N", help="take up to N messages (default 1)"
    )
    consume.add_argument("--wait", type=_positive_float, default=1.0, metavar="SECONDS")
    consume.add_argument("--no-ack", action="store_true", help="leave the messages leased")
    consume.add_argument(
        "--follow",
        action="store_true",
        help="keep waiting for messages (no --timeout; up to --count if given) until interrupted",
    )
    for name, helptext in (
        ("ack", "acknowledge messages of a consumer group (whoever holds their lease)"),
        ("nack", "hand messages of a consumer group back, for a redelivery"),
    ):
        lease = commands.add_parser(name, parents=[common], help=helptext)
        lease.add_argument("queue", metavar="QUEUE", help="the queue's id or name")
        lease.add_argument("group", metavar="GROUP")
        lease.add_argument("sequence_nums", type=_positive_int, nargs="+", metavar="SEQ")
        if name == "nack":
            lease.add_argument(
                "--member", required=True, help="the member holding the leases (consume says)"
            )
            lease.add_argument("--delay", type=float, default=0.0, metavar="SECONDS")
            lease.add_argument("--error", metavar="TEXT", help="kept as the last error")
    read = commands.add_parser(
        "read",
        parents=[common],
        help="read the next message(s) for this client id",
    )
    queues = commands.add_parser(
        "queues",
        parents=[common],
        help="list the queues with their lengths and each client's lag",
    )
    _cluster_option(queues)
    commands.add_parser(
        "health",
        parents=[common],
        help="exit 0 if a seed broker answers and follows a leader, 1 if the broker that "
        "answered knows no leader, 2 if no seed answers within --timeout",
        description="Ask every seed at once and report on the first that answers: exit 0 "
        "if it follows a leader, 1 if it knows no leader, 2 if no seed answers within "
        "--timeout. Give one seed to check one broker.",
    )
    remove = commands.add_parser(
        "remove-member",
        parents=[common],
        help="take a broker out of the cluster's membership",
    )
    remove.add_argument(
        "broker_id",
        metavar="BROKER_ID|HOST:PORT",
        help="the broker's id, or the address status shows for it",
    )
    _cluster_option(remove)
    add = commands.add_parser(
        "add-member",
        parents=[common],
        help="add the broker at HOST:PORT, started with 'node --join-wait --cluster-id G-XXXXX'",
        description="The leader asks the broker at HOST:PORT who it is and adds it as a "
        "learner; it becomes a voter once it has caught up. Refused if that broker belongs to "
        "another cluster or already has a membership of its own.",
    )
    add.add_argument("address", type=_address, metavar="HOST:PORT")
    _cluster_option(add)
    transfer = commands.add_parser(
        "transfer-leader",
        parents=[common],
        help="hand the leadership to another voter; answers once it leads",
    )
    transfer.add_argument(
        "--to",
        metavar="BROKER_ID",
        help="the voter to hand it to (default: the one whose log is the most up to date)",
    )
    _cluster_option(transfer)
    snapshot = commands.add_parser(
        "snapshot",
        parents=[common],
        help="compact the log now, on every broker of the cluster or on one",
    )
    snapshot.add_argument(
        "--broker",
        type=_address,
        metavar="HOST:PORT",
        help="only the broker listening there (default: every member)",
    )
    _cluster_option(snapshot)
    commands.add_parser(
        "rebalance",
        parents=[common],
        help="run one balancer round now and print what it moved (docs/replication.md)",
        description="The metadata group's leader runs one round of the balancer now: the next "
        "step of each replica move, leadership transfers, new moves; printed one line each "
        "(nothing: the cluster is balanced). Rounds also run on their own, every 5 s.",
    )
    drain = commands.add_parser(
        "drain",
        parents=[common],
        help="move every replica and leadership off a broker before it leaves (--undo: it stays)",
        description="Marks the broker as leaving: the balancer moves its replicas and its "
        "leadership to the brokers that stay, a move at a time. Run it again to see what it "
        "still holds; once it holds nothing it can be stopped and removed.",
    )
    for name, metavar, help_text, description in _SETTINGS_COMMANDS:
        setting = commands.add_parser(
            name, parents=[common], help=help_text, description=description
        )
        setting.add_argument("value", type=_positive_int, metavar=metavar)
    drain.add_argument("broker_id", metavar="BROKER_ID")
    drain.add_argument(
        "--undo", action="store_true", help="the broker stays after all: stop draining it"
    )
    read.add_argument("queue", metavar="QUEUE")
    read.add_argument(
        "--count",
        type=_positive_int,
        default=1,
        metavar="N",
        help="read up to N messages (default 1); stops early when none are left",
    )
    read.add_argument(
        "--peek", action="store_true", help="leave this client's position where it is"
    )
    tail = commands.add_parser(
        "tail",
        parents=[common],
        help="print the queue's messages from this client's position on (--follow: and "
        "what comes after, until interrupted)",
    )
    tail.add_argument("queue", metavar="QUEUE")
    tail.add_argument(
        "--follow",
        action="store_true",
        help="keep waiting for new messages (no --timeout) until interrupted",
    )
    tail.add_argument(
        "--peek",
        action="store_true",
        help="leave this client's position where it is (a reader of its own, forgotten at "
        "the end, reads from there)",
    )
