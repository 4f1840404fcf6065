"""Snapshots between brokers: a leader serves the chunks of a snapshot it offered in a
DATA_SYNC, and the replica fetches them, chunk by checked chunk.

The downloaded file is not fsynced: nothing durable depends on it. Installing it copies its
tables into the broker's own database in one transaction at synchronous=FULL (``Store.save``),
which is what survives a power cut; the file is deleted afterwards, and one left behind by a
crash is deleted at the next start."""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from .._errors import BrokerError, ErrorCode
from .._protocol import DataSyncRequest, SnapshotChunk
from ._dial import UNREACHABLE, Dialed, dial
from ._log import log_event
from ._network import Network

CHUNK_DEADLINE = 10.0
MAX_SNAPSHOT = 1 << 40


async def fetch_snapshot(
    network: Network,
    address: tuple[str, int],
    cluster_id: str,
    offer: dict[str, Any],
    path: Path,
    secret: bytes | None = None,
) -> bool:
    """Download the offered snapshot to ``path``; True once its size and checksum match."""
    snapshot_id, size, digest = offer.get("snapshot_id"), offer.get("size"), offer.get("sha256")
    if not (isinstance(size, int) and 0 < size <= MAX_SNAPSHOT and isinstance(digest, str)):
        log_event(logging.WARNING, "snapshot.bad_offer", offer=offer)
        return False
    whole = hashlib.sha256()
    offset = 0
    try:
        # Connecting, TLS and AUTH are bounded too, each by one chunk's deadline.
        async with dial(
            network, address, secret=secret, deadline=CHUNK_DEADLINE, max_frame=4 * 1024 * 1024
        ) as dialed:
            if not isinstance(dialed, Dialed):
                log_event(logging.WARNING, "snapshot.fetch_refused", reason=dialed.message)
                return False
            async with await trio.open_file(path, "wb") as out:
                while offset < size:
                    with trio.fail_after(CHUNK_DEADLINE):
                        answer = await dialed.ask(
                            DataSyncRequest(snapshot_id, offset, cluster_id=cluster_id),
                            SnapshotChunk,
                        )
                    if isinstance(answer, BrokerError):
                        log_event(logging.WARNING, "snapshot.fetch_refused", reason=answer.message)
                        return False
                    chunk = base64.b64decode(answer.data)
                    if not chunk or hashlib.sha256(chunk).hexdigest() != answer.sha256:
                        log_event(logging.WARNING, "snapshot.bad_chunk", offset=offset)
                        return False
                    await out.write(chunk)
                    whole.update(chunk)
                    offset += len(chunk)
                await out.flush()
    except (*UNREACHABLE, ValueError) as exc:  # ValueError: a chunk not in base64
        log_event(logging.WARNING, "snapshot.fetch_failed", error=repr(exc))
        return False
    if offset != size or whole.hexdigest() != digest:
        log_event(logging.WARNING, "snapshot.checksum_mismatch", size=offset)
        return False
    return True


async def serve_snapshot_chunk(
    read_chunk: Callable[[str, int], tuple[bytes, int, str] | None], request: DataSyncRequest
) -> SnapshotChunk | BrokerError:
    """The leader's side: one chunk of a snapshot it offered (DATA_SYNC_REQUEST), read in a
    thread by ``read_chunk(snapshot_id, offset)`` as (bytes, whole size, the bytes' sha256)."""
    found = await trio.to_thread.run_sync(read_chunk, request.snapshot_id, request.offset)
    if found is None:
        return BrokerError(ErrorCode.BAD_REQUEST, f"no snapshot {request.snapshot_id!r}")
    chunk, size, digest = found
    return SnapshotChunk(
        snapshot_id=request.snapshot_id,
        offset=request.offset,
        size=size,
        data=base64.b64encode(chunk).decode(),
        sha256=digest,
    )
