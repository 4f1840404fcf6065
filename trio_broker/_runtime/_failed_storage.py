"""The operator's line and the data folder's mark when a broker's storage failed a write
that may have lost acknowledged writes (docs/reliability.md, "A failed fsync stops the
broker"); the driver calls :func:`report_failed_storage` as it stops."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .._storage._failed import UNKNOWN_FILE, StorageFailed, marker_dir, write_marker
from .._storage._files import DB_FILE
from ._log import log_event


def report_failed_storage(
    failure: StorageFailed, broker_id: str, group: str, store: Any, config: Any
) -> None:
    """One ``storage.failed`` CRITICAL line per failed storage (the first group that meets
    it: ``group``, whose ``store`` names the file), and the mark that keeps the next start on
    this data folder from trusting it (written at once, not at the end of a stop that may
    never finish)."""
    if failure.reported:
        return
    failure.reported = True
    if failure.file == UNKNOWN_FILE:
        failure.file = str(Path(store.data_dir) / DB_FILE)
    marker = write_marker(marker_dir(config.data_dir), failure)
    shared = getattr(store, "_shared", None)  # (its fsync covers the group's saves)
    log_event(
        logging.CRITICAL,
        "storage.failed",
        broker_id=broker_id,
        group=group,
        file=failure.file,
        code=failure.code,
        error=failure.error,
        shared_log=str(shared.path) if shared is not None else None,
        marker=str(marker) if marker is not None else "not written",
        action="stopping; replace the disk, then data reset and rejoin",
    )


__all__ = ["report_failed_storage"]
