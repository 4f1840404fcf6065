"""``python -m trio_broker data check``, ``data reset`` and ``data trust-log``: a stopped
broker's data folder.

``check`` opens the data as a starting broker would (SQLite's integrity check, every log entry's
checksum) and then reads every stored value back against its checksum; on a folder where a write
failed (``STORAGE-FAILED``, docs/reliability.md, "A failed fsync stops the broker") it reports
that instead, as ``trust-log`` does. ``reset`` moves the database files, the groups' folder
and that mark, into a ``damaged-<time>`` folder beside them (nothing is deleted), so that the
broker can rejoin its cluster empty and be refilled by the others (docs/reliability.md,
"Damaged data"). ``trust-log``
is the operator's override when a cluster whose machines rebooted cannot verify a majority
(docs/reliability.md, "A reboot votes only once it knows"): it accepts the broker's log as it
is, in the folder and in each group's folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .._runtime._config import DEFAULT_DATA_DIR
from ._exit import EXIT_ERROR, EXIT_OK, EXIT_STATUS_HELP


def add_data_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "data",
        help="check a stopped broker's data, or move damaged data aside",
        description="Work on the data folder of a stopped broker. 'check' reads everything "
        "back against its checksums; 'reset' moves the database files (and the groups' "
        "folder) into a new "
        "damaged-<time> folder inside --data-dir (nothing is deleted), so that the broker "
        "can rejoin its cluster empty; 'trust-log' accepts its log as it is after a reboot "
        "(it votes at once on its next start: acknowledged writes its disk lost, if no "
        "other broker holds them, may then be lost). See docs/reliability.md.",
        epilog=EXIT_STATUS_HELP,
    )
    p.add_argument("action", choices=("check", "reset", "trust-log"))
    p.add_argument("--data-dir", type=Path, default=Path(DEFAULT_DATA_DIR))


def run_data(args: argparse.Namespace) -> int:
    # The storage is imported by the commands that use it, not by every command's parser.
    from .._storage import DataDirInUse, SchemaTooNew, StorageDamaged, StorageFailed
    from .._storage._files import move_aside

    try:
        if args.action == "check":
            return _check(args.data_dir)
        if args.action == "trust-log":
            return _trust_log(args.data_dir)
        target, moved = move_aside(args.data_dir)
    except (StorageDamaged, StorageFailed) as exc:
        print(exc.report(str(args.data_dir)), file=sys.stderr)
        return EXIT_ERROR
    except (DataDirInUse, SchemaTooNew, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(
        f"moved {', '.join(moved)} from {args.data_dir} to {target} (nothing was deleted).\n"
        f"To rejoin the cluster empty: start this broker with --seed naming a running member, "
        f"e.g.\n  python -m trio_broker node --data-dir {args.data_dir} --seed HOST:PORT\n"
        f"It joins as a new broker and the cluster sends it the data; then remove its old "
        f"broker id from the membership:\n"
        f"  python -m trio_broker client --seed HOST:PORT remove-member OLD_BROKER_ID"
    )
    return EXIT_OK


def _check(data_dir: Path) -> int:
    from .._storage import StorageDamaged, Store
    from .._storage._failed import refuse_if_failed

    refuse_if_failed(data_dir)  # (a write failed here: what the files hold proves nothing)
    if not (data_dir / "broker.sqlite3").exists():
        print(f"error: no broker database in {data_dir}", file=sys.stderr)
        return EXIT_ERROR
    store = Store(data_dir)
    try:
        damage = store.log_damage()
        if damage is not None:
            raise StorageDamaged(
                str(data_dir / "broker.sqlite3"),
                "raft_log",
                f"index {damage.first_damaged} (the log held up to {damage.last_index})",
                "the entry is damaged or missing",
            )
        store.raft_state()
        values = 0
        for queue_id in store.queue_lengths():
            values += len(store.messages(queue_id))
    finally:
        store.close()
    print(f"{data_dir}: intact (integrity check, every log entry, {values} stored values)")
    return EXIT_OK


def _trust_log(data_dir: Path) -> int:
    """Clear ``unverified`` in the broker's store and in each group's (``groups/G-*``)."""
    from .._runtime._boot import boot_id
    from .._runtime._groups import GROUPS_DIR
    from .._storage import Store
    from .._storage._failed import refuse_if_failed
    from .._storage._files import DB_FILE

    # (a write failed here: the log its disk kept may lack acknowledged writes, and trusting
    # it would let this broker vote on it; the mark's report says what to do instead)
    refuse_if_failed(data_dir)
    if not (data_dir / DB_FILE).exists():
        print(f"error: no broker database in {data_dir}", file=sys.stderr)
        return EXIT_ERROR
    current = boot_id()
    cleared, kept = [], []
    for folder in [data_dir, *sorted(p.parent for p in data_dir.glob(f"{GROUPS_DIR}/*/{DB_FILE}"))]:
        store = Store(folder)
        try:
            (cleared if store.trust_log(current) else kept).append(str(folder))
        finally:
            store.close()
    if cleared:
        print(
            f"accepted the log as it is in {', '.join(cleared)}: on its next start this "
            "broker votes at once, on what its disk kept. If its disk lost acknowledged "
            "writes and no other broker holds them, a leader elected with its vote may lack "
            "them: they are lost."
        )
    if kept:
        print(f"nothing to accept in {', '.join(kept)}: it was not waiting after a reboot")
    return EXIT_OK
