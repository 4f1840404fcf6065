"""``python -m trio_broker backup`` and ``restore``: a running broker's data to a file and back."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .._runtime._config import DEFAULT_DATA_DIR
from ._exit import EXIT_ERROR, EXIT_OK, EXIT_STATUS_HELP


def add_backup_parsers(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "backup",
        help="copy a broker's data (while it runs) to a backup file",
        description="Write a consistent copy of the database of the broker whose data is in "
        "--data-dir to OUTPUT. The broker may be running. See docs/operations.md.",
        epilog=EXIT_STATUS_HELP,
    )
    p.add_argument("output", type=Path, help="the backup file to create (never overwritten)")
    p.add_argument("--data-dir", type=Path, default=Path(DEFAULT_DATA_DIR))
    p = subparsers.add_parser(
        "restore",
        help="start a recovered cluster's first broker from a backup",
        description="Create --data-dir from BACKUP: the backup's cluster and applied state, "
        "a new broker id, the only voter. Start it with 'node --data-dir ...', then join the "
        "other brokers to it with 'node --seed'. See docs/operations.md.",
        epilog=EXIT_STATUS_HELP,
    )
    p.add_argument("backup", type=Path, help="a file written by 'backup'")
    p.add_argument("--data-dir", type=Path, required=True, help="a new, empty data folder")
    p.add_argument("--broker-id", help="the restored broker's id (default: a new one)")


def run_backup(args: argparse.Namespace) -> int:
    from .._ids import BROKER_ID_RE, new_broker_id
    from .._storage import DataDirInUse, SchemaTooNew, StorageFailed
    from .._storage._backup import BackupError, backup, restore

    try:
        if args.command == "backup":
            info = backup(args.data_dir, args.output)
            print(
                f"backed up broker {info.broker_id} of cluster {info.cluster_id} to "
                f"{args.output}: applied index {info.applied_index}, {info.queues} queues, "
                f"{info.messages} messages"
            )
            return EXIT_OK
        broker_id = args.broker_id or new_broker_id()
        if not BROKER_ID_RE.fullmatch(broker_id):
            raise BackupError(f"--broker-id must look like {BROKER_ID_RE.pattern}")
        info = restore(args.backup, args.data_dir, broker_id)
    except StorageFailed as exc:  # (a backup of a folder whose disk failed a write)
        print(exc.report(str(args.data_dir)), file=sys.stderr)
        return EXIT_ERROR
    except (BackupError, DataDirInUse, SchemaTooNew, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(
        f"restored cluster {info.cluster_id} into {args.data_dir} as broker {info.broker_id}, "
        f"its only voter: applied index {info.applied_index}, {info.queues} queues, "
        f"{info.messages} messages; start it with: python -m trio_broker node "
        f"--data-dir {args.data_dir}"
    )
    return EXIT_OK
