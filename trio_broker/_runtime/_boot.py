"""The machine's boot id, which tells a broker's start after a reboot from a process restart.

A disk that reports a flush it did not do (a volatile write cache that lies) loses synced
writes only when the power goes: a process that crashes or is killed leaves every write it
made in the kernel's page cache, and the disk keeps what it was told to sync while it has
power. So a broker may have lost entries it acknowledged only if its machine rebooted since
its store was last opened; then it starts *unverified* (docs/reliability.md, "A reboot votes
only once it knows"): ``Store.note_boot`` compares the boot id recorded at the last start
with this one, and marks the hard state in the same durable transaction.

Linux gives a random id per boot in ``/proc/sys/kernel/random/boot_id`` (in a container, the
host kernel's: the one whose page cache and disk matter). Where there is none (another
system, or /proc not mounted), every start counts as a reboot: the broker cannot tell, and a
start that waits to learn what it acknowledged costs availability, never data.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ._log import log_event

BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")


def boot_id(path: Path = BOOT_ID_PATH) -> str | None:
    """This machine's boot id, or None where the system has none to read."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text or None


def _noted(store: Any, current: str | None) -> tuple[bool, bool]:
    """On the storage thread: whether the store has no past (no boot recorded and no term:
    a new data folder), then :meth:`~trio_broker._storage.Store.note_boot`'s answer."""
    new = store.get_meta("boot_id") is None and not store.get_meta("raft_term", 0)
    return new, store.note_boot(current)


async def note_boot(worker: Any, store: Any, **fields: Any) -> bool:
    """Record this boot's id in ``store`` (on its storage ``worker``) before the consensus
    core is built from it; returns whether the broker starts after a reboot (or cannot
    tell, or the store had recorded none), which marks its hard state ``unverified``.
    ``fields`` name the store in the log line (its broker id, or its data folder): a new data
    folder's first start logs ``broker.first_start``, any other such start ``broker.rebooted``."""
    current = boot_id()
    new, rebooted = await worker.run(_noted, store, current)
    if rebooted:
        log_event(
            logging.INFO,
            "broker.first_start" if new else "broker.rebooted",
            **fields,
            boot_id=current or "unknown",
            detail="a new data folder: no earlier start is recorded in it"
            if new
            else "the store was last opened under another boot (or none is known): a disk "
            "may have lost synced writes, so this broker votes once it has learned what it "
            "may have acknowledged before",
        )
    return rebooted


__all__ = ["BOOT_ID_PATH", "boot_id", "note_boot"]
