"""Newline-delimited framing: bytes as they arrive on a socket -> complete frames.

One JSON value per line (the contract's framing, and what ``socat`` sends). Kept free of I/O so
the property tests can feed it arbitrary chunkings of the same byte stream.
"""

from __future__ import annotations

from buildrunnerd import protocol
from buildrunnerd.errors import BuildRunnerError

__all__ = ["FrameReader", "FrameTooLargeError"]


class FrameTooLargeError(BuildRunnerError):
    """A peer sent a line longer than the configured limit; the connection will be closed."""

    code = protocol.FRAME_TOO_LARGE

    def __init__(self, limit_bytes: int) -> None:
        super().__init__(
            f"frame larger than {limit_bytes} bytes; the connection is closed "
            "(send smaller requests, or raise daemon.max_frame_bytes in the config)",
            data={"limit_bytes": limit_bytes},
        )
        self.limit_bytes = limit_bytes


class FrameReader:
    """Accumulates received bytes and splits them into frames at ``\\n``.

    A trailing ``\\r`` is stripped (``socat`` on a CRLF terminal, Windows-made files) and blank
    lines are skipped, so a frame is never empty. The limit counts a frame's bytes without its
    terminator; a partial line that already exceeds it fails at once instead of buffering an
    endless line from a peer that never sends ``\\n``.
    """

    __slots__ = ("_buffer", "_max_frame_bytes", "_scan_from")

    def __init__(self, max_frame_bytes: int) -> None:
        if max_frame_bytes < 1:
            raise ValueError("max_frame_bytes must be at least 1")
        self._buffer = bytearray()
        self._max_frame_bytes = max_frame_bytes
        # Where to resume looking for b"\n": bytes before it are known not to contain one, so a
        # large frame arriving in many small chunks stays linear, not quadratic.
        self._scan_from = 0

    @property
    def pending_bytes(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data``; return every frame it completes, in order.

        Raises :class:`FrameTooLargeError` as soon as a frame is known to be over the limit.
        """
        self._buffer += data
        frames: list[bytes] = []
        start = 0
        while True:
            newline = self._buffer.find(b"\n", max(start, self._scan_from))
            if newline < 0:
                break
            frame = bytes(self._buffer[start:newline])
            start = newline + 1
            self._scan_from = start
            if frame.endswith(b"\r"):
                frame = frame[:-1]
            if len(frame) > self._max_frame_bytes:
                raise FrameTooLargeError(self._max_frame_bytes)
            if frame.strip():
                frames.append(frame)
        del self._buffer[:start]
        self._scan_from = len(self._buffer)
        # +1: the partial frame may still end in "\r", which does not count against the limit.
        if len(self._buffer) > self._max_frame_bytes + 1:
            raise FrameTooLargeError(self._max_frame_bytes)
        return frames
