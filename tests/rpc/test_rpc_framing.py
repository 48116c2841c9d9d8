"""Property tests of the framing: any chunking of a byte stream yields the same frames."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from buildrunnerd.rpc import FrameReader, FrameTooLargeError

frame_bytes = st.binary(min_size=1, max_size=200).map(
    lambda b: b.replace(b"\n", b"").replace(b"\r", b"") or b"x"
).filter(lambda b: b.strip() != b"")


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for point in [*points, len(data)]:
        pieces.append(data[last:point])
        last = point
    return pieces


@given(st.lists(frame_bytes, max_size=20), st.lists(st.integers(min_value=0), max_size=40),
       st.booleans())
def test_any_split_gives_the_same_frames(
    frames: list[bytes], cuts: list[int], crlf: bool
) -> None:
    terminator = b"\r\n" if crlf else b"\n"
    stream = b"".join(f + terminator for f in frames)
    reader = FrameReader(max_frame_bytes=200)
    out: list[bytes] = []
    for chunk in _chunks(stream, cuts):
        out.extend(reader.feed(chunk))
    assert out == frames
    assert reader.pending_bytes == 0


@given(st.lists(frame_bytes, min_size=1, max_size=5), st.lists(st.integers(min_value=0)))
def test_an_unterminated_tail_is_held_back(frames: list[bytes], cuts: list[int]) -> None:
    stream = b"\n".join(frames)  # the last frame has no newline yet
    reader = FrameReader(max_frame_bytes=200)
    out: list[bytes] = []
    for chunk in _chunks(stream, cuts):
        out.extend(reader.feed(chunk))
    assert out == frames[:-1]
    assert reader.feed(b"\n") == frames[-1:]


@given(st.integers(min_value=1, max_value=64), st.lists(st.integers(min_value=0), max_size=10))
def test_oversize_is_detected_whatever_the_split(limit: int, cuts: list[int]) -> None:
    stream = b"a" * (limit + 2) + b"\n"
    reader = FrameReader(max_frame_bytes=limit)
    with pytest.raises(FrameTooLargeError) as info:
        for chunk in _chunks(stream, cuts):
            reader.feed(chunk)
    assert info.value.data == {"limit_bytes": limit}


def test_blank_lines_are_skipped_and_limit_excludes_terminator() -> None:
    reader = FrameReader(max_frame_bytes=3)
    assert reader.feed(b"\n\r\n  \nabc\r\nxyz\n") == [b"abc", b"xyz"]
    with pytest.raises(FrameTooLargeError):
        reader.feed(b"abcd\n")
