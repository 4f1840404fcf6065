"""Length-prefixed framing, sans-IO.

Every message in both directions is one frame: a 4-byte big-endian unsigned length N, then N
bytes of payload (UTF-8 JSON holding one object). :class:`FrameDecoder` turns a byte stream into
frames and knows nothing of sockets.
"""

from __future__ import annotations

import struct

from .._errors import ErrorCode, ProtocolError

_HEADER = struct.Struct(">I")
HEADER_SIZE = _HEADER.size
_unpack_header = _HEADER.unpack_from
DEFAULT_MAX_FRAME = 1024 * 1024


class FrameTooLarge(ProtocolError):
    """A length prefix beyond the maximum: the stream cannot be resynchronised."""

    def __init__(self, length: int, maximum: int) -> None:
        super().__init__(
            f"frame of {length} bytes is larger than the maximum of {maximum} bytes",
            code=ErrorCode.TOO_LARGE,
        )
        self.length = length
        self.maximum = maximum


def encode_frame(payload: bytes) -> bytes:
    return _HEADER.pack(len(payload)) + payload


def frame_header(length: int) -> bytes:
    """The length prefix of a frame of ``length`` bytes (to join frames without copying each
    payload into its own frame first)."""
    return _HEADER.pack(length)


class FrameDecoder:
    """Accumulates bytes and yields whole frame payloads.

    Buffers at most one frame of ``max_frame`` bytes plus whatever the last ``feed`` brought.
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        if max_frame <= 0:
            raise ValueError("max_frame must be positive")
        self.max_frame = max_frame
        self._buf: bytes | bytearray = b""
        """The bytes received and not yet consumed past ``_pos``: a receive's own ``bytes``
        when nothing was left before it (its frames are then sliced out of it, one copy each,
        with no buffer to copy it into first), else a ``bytearray`` that gathers receives."""
        self._pos = 0

    def feed(self, data: bytes | bytearray) -> None:
        buf = self._buf
        if self._pos >= len(buf):  # (nothing left: the usual receive of whole frames)
            self._buf = data if type(data) is bytes else bytes(data)
            self._pos = 0
            return
        if type(buf) is bytes:
            self._buf = buf = bytearray(memoryview(buf)[self._pos :])
            self._pos = 0
        elif self._pos > len(buf) // 2:
            del buf[: self._pos]
            self._pos = 0
        buf += data

    def take_whole(self, data: bytes | bytearray) -> bytes | None:
        """:meth:`feed`, and when nothing was buffered and ``data`` is exactly one whole frame
        of at most ``max_frame`` bytes (a receive at one request in flight), its payload,
        taken at once and nothing left buffered: one call where ``feed`` and two
        :meth:`next_frame` (the frame, then None) are three. None otherwise: ``data`` is
        buffered, its frames come from :meth:`next_frame` (a frame too large raises there)."""
        if self._pos >= len(self._buf) and type(data) is bytes and len(data) >= HEADER_SIZE:
            (length,) = _HEADER.unpack_from(data)
            if length == len(data) - HEADER_SIZE and length <= self.max_frame:
                self._buf = b""
                self._pos = 0
                return data[HEADER_SIZE:]
        self.feed(data)
        return None

    def next_frame(self) -> bytes | None:
        """The next whole payload, or None if more bytes are needed.

        Raises :class:`FrameTooLarge` when the next length prefix exceeds ``max_frame``.
        """
        buf, pos = self._buf, self._pos  # (each read once: one per frame of a receive)
        if len(buf) - pos < HEADER_SIZE:
            return None
        (length,) = _unpack_header(buf, pos)
        if length > self.max_frame:
            raise FrameTooLarge(length, self.max_frame)
        start = pos + HEADER_SIZE
        end = start + length
        if len(buf) < end:
            return None
        if type(buf) is bytes:  # (a slice of bytes is bytes: one copy)
            self._pos = end
            return buf[start:end]
        # One copy, from a view of the buffer (a slice of the bytearray, then bytes of it,
        # copied the payload twice); the view and its slice (an export of the buffer too) are
        # released here, not when collected, before ``feed`` may resize it.
        with memoryview(buf) as view, view[start:end] as part:
            payload = part.tobytes()
        self._pos = end
        return payload

    def mark(self) -> int:
        """Where the next frame starts, for :meth:`rewind`."""
        return self._pos

    def rewind(self, mark: int) -> None:
        """Give back the frames :meth:`next_frame` returned since :meth:`mark` gave ``mark``,
        with no :meth:`feed` since (a reader that cut a receive's frames ahead, and then reads
        them one by one after all)."""
        self._pos = mark

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames (a partial frame at end of stream)."""
        return len(self._buf) - self._pos
