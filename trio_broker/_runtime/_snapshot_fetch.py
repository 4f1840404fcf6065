"""A replica fetches the snapshot a leader offered it, chunk by checked chunk.

The downloaded file is not fsynced: nothing durable depends on it. Installing it copies its
tables into the broker's own database in one transaction at synchronous=FULL (``Store.save``),
which is what survives a power cut; the file is deleted afterwards, and one left behind by a
crash is deleted at the next start."""

from __future__ import annotations

import base64
import hashlib
import logging
from pathlib import Path
from typing import Any

import trio

from .._auth import authenticate
from .._errors import ProtocolError
from .._protocol import (
    DataSyncRequest,
    FrameDecoder,
    encode_frame,
    encode_request,
    loads_object,
)
from ._log import log_event
from ._network import Network

CHUNK_DEADLINE = 10.0
MAX_SNAPSHOT = 1 << 40


async def request_response(
    stream: trio.abc.Stream, decoder: FrameDecoder, request: Any
) -> dict[str, Any]:
    await stream.send_all(encode_frame(encode_request(request)))
    while (payload := decoder.next_frame()) is None:
        data = await stream.receive_some(1 << 16)
        if not data:
            raise ConnectionError("connection closed before the answer")
        decoder.feed(data)
    return loads_object(payload)


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
    try:
        with trio.fail_after(CHUNK_DEADLINE):  # connecting, TLS and AUTH are bounded too
            stream = await network.connect(*address)
        async with stream:
            decoder = FrameDecoder(4 * 1024 * 1024)
            with trio.fail_after(CHUNK_DEADLINE):
                refused = await authenticate(stream, decoder, secret=secret)
            if refused:
                log_event(logging.WARNING, "snapshot.fetch_refused", reason=refused.get("message"))
                return False
            async with await trio.open_file(path, "wb") as out:
                offset = 0
                while offset < size:
                    with trio.fail_after(CHUNK_DEADLINE):
                        answer = await request_response(
                            stream,
                            decoder,
                            DataSyncRequest(snapshot_id, offset, cluster_id=cluster_id),
                        )
                    if answer.get("status") != "success":
                        log_event(
                            logging.WARNING, "snapshot.fetch_refused", reason=answer.get("message")
                        )
                        return False
                    chunk = base64.b64decode(answer["data"])
                    if not chunk or hashlib.sha256(chunk).hexdigest() != answer["sha256"]:
                        log_event(logging.WARNING, "snapshot.bad_chunk", offset=offset)
                        return False
                    await out.write(chunk)
                    whole.update(chunk)
                    offset += len(chunk)
                await out.flush()
    except (
        OSError,
        ConnectionError,
        trio.TooSlowError,
        trio.BrokenResourceError,
        KeyError,
        ValueError,
        ProtocolError,
    ) as exc:
        log_event(logging.WARNING, "snapshot.fetch_failed", error=repr(exc))
        return False
    if offset != size or whole.hexdigest() != digest:
        log_event(logging.WARNING, "snapshot.checksum_mismatch", size=offset)
        return False
    return True
