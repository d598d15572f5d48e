"""Tests of the I/O-free codecs in ``bingfa.protocol`` (frame, line, raw).

The central property: however the byte stream is cut into chunks, a codec returns the same
messages, in order. Hypothesis generates both the messages and the cut points.
"""

from __future__ import annotations

import pickle
import struct
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bingfa
from bingfa.errors import (
    BingfaError,
    FrameTooLarge,
    MessageTooLarge,
    ProtocolError,
    RemoteError,
    UsageError,
)
from bingfa.protocol import (
    DEFAULT_MAX_FRAME_SIZE,
    PROTOCOLS,
    Codec,
    FrameCodec,
    LineCodec,
    RawCodec,
    make_codec,
)

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

MiB = 1024 * 1024


# --- reference implementations (written from the spec, not from the codec) -----------------


def ref_encode(payload: bytes) -> bytes:
    """The interop encoder of docs/protocol.md: 4-byte big-endian length, then the payload."""
    return struct.pack("!I", len(payload)) + payload


def ref_decode(stream: bytes, limit: int | None = None) -> tuple[list[bytes], bool, int]:
    """Decode every complete frame of ``stream``.

    Returns (messages, bad_header_seen, bytes_left_over). Stops at the first header that
    declares more than ``limit`` bytes.
    """
    out: list[bytes] = []
    pos = 0
    while len(stream) - pos >= 4:
        (size,) = struct.unpack("!I", stream[pos : pos + 4])
        if limit is not None and size > limit:
            return out, True, 0
        if pos + 4 + size > len(stream):
            break
        out.append(stream[pos + 4 : pos + 4 + size])
        pos += 4 + size
    return out, False, len(stream) - pos


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    """Split ``data`` at the given offsets (any order, duplicates give empty chunks)."""
    points = sorted(min(max(c, 0), len(data)) for c in cuts)
    chunks = []
    start = 0
    for p in points:
        chunks.append(data[start:p])
        start = p
    chunks.append(data[start:])
    return chunks


def feed_all(codec: Codec, chunks: list[bytes]) -> list[bytes]:
    out: list[bytes] = []
    for chunk in chunks:
        got = codec.feed(chunk)
        assert all(type(m) is bytes for m in got)
        out.extend(got)
    return out


def one_byte_at_a_time(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


@st.composite
def stream_and_cuts(draw: st.DrawFn, stream: bytes) -> list[bytes]:
    cuts = draw(st.lists(st.integers(0, len(stream)), max_size=min(len(stream) + 1, 40)))
    return chunked(stream, cuts)


messages_st = st.lists(st.binary(max_size=300), max_size=30)


# --- frame ----------------------------------------------------------------------------------


class TestFrameRoundTrip:
    @FAST
    @given(messages=messages_st, data=st.data())
    def test_random_chunking_is_identity(self, messages: list[bytes], data: st.DataObject) -> None:
        enc = FrameCodec()
        stream = b"".join(enc.encode(m) for m in messages)
        chunks = data.draw(stream_and_cuts(stream))
        dec = FrameCodec()
        assert feed_all(dec, chunks) == messages
        assert dec.pending == 0

    @FEW
    @given(messages=messages_st)
    def test_one_byte_at_a_time(self, messages: list[bytes]) -> None:
        enc = FrameCodec()
        stream = b"".join(enc.encode(m) for m in messages)
        dec = FrameCodec()
        assert feed_all(dec, one_byte_at_a_time(stream)) == messages
        assert dec.pending == 0

    @FAST
    @given(messages=messages_st)
    def test_all_in_one_chunk(self, messages: list[bytes]) -> None:
        enc = FrameCodec()
        dec = FrameCodec()
        assert dec.feed(b"".join(enc.encode(m) for m in messages)) == messages
        assert dec.pending == 0

    def test_one_byte_at_a_time_explicit(self) -> None:
        messages = [b"hello", b"", b"world", b"\x00\x00\x00\x05", b"x" * 1000]
        stream = b"".join(ref_encode(m) for m in messages)
        dec = FrameCodec()
        got: list[bytes] = []
        for i, chunk in enumerate(one_byte_at_a_time(stream)):
            got.extend(dec.feed(chunk))
            # Nothing is ever lost or duplicated along the way.
            assert dec.pending + sum(4 + len(m) for m in got) == i + 1
        assert got == messages

    def test_thousand_messages_in_one_chunk(self) -> None:
        messages = [b"msg-%d-" % i + b"z" * (i % 37) for i in range(1000)]
        messages[::97] = [b""] * len(messages[::97])
        stream = b"".join(FrameCodec().encode(m) for m in messages)
        dec = FrameCodec()
        assert dec.feed(stream) == messages
        assert dec.pending == 0

    def test_thousand_messages_with_a_tail(self) -> None:
        messages = [b"%04d" % i for i in range(1000)]
        stream = b"".join(ref_encode(m) for m in messages)
        dec = FrameCodec()
        # The first chunk ends three bytes into the last frame's payload.
        assert dec.feed(stream[:-1]) == messages[:-1]
        assert dec.pending == 4 + 3
        assert dec.feed(stream[-1:]) == messages[-1:]
        assert dec.pending == 0

    def test_exact_single_frame_chunks(self) -> None:
        # Request/response traffic: each chunk is exactly one frame (the codec's fast path).
        dec = FrameCodec()
        for m in [b"a", b"", b"bc", b"\xff" * 100]:
            got = dec.feed(ref_encode(m))
            assert got == [m]
            assert type(got[0]) is bytes
            assert dec.pending == 0

    def test_empty_feed(self) -> None:
        dec = FrameCodec()
        assert dec.feed(b"") == []
        assert dec.feed(b"\x00\x00") == []
        assert dec.feed(b"") == []
        assert dec.pending == 2
        assert dec.feed(b"\x00\x01!") == [b"!"]


class TestFrameZeroLength:
    def test_encode_empty(self) -> None:
        assert FrameCodec().encode(b"") == b"\x00\x00\x00\x00"

    def test_decode_empty(self) -> None:
        dec = FrameCodec()
        assert dec.feed(b"\x00\x00\x00\x00") == [b""]
        assert dec.feed(b"\x00\x00\x00\x00" * 5) == [b""] * 5
        assert dec.pending == 0

    def test_empty_between_others(self) -> None:
        stream = ref_encode(b"a") + ref_encode(b"") + ref_encode(b"") + ref_encode(b"b")
        assert FrameCodec().feed(stream) == [b"a", b"", b"", b"b"]

    def test_max_frame_size_zero_allows_only_empty(self) -> None:
        codec = FrameCodec(max_frame_size=0)
        assert codec.encode(b"") == b"\x00\x00\x00\x00"
        assert codec.feed(b"\x00\x00\x00\x00" * 3) == [b"", b"", b""]
        with pytest.raises(MessageTooLarge):
            codec.encode(b"x")
        with pytest.raises(FrameTooLarge) as info:
            codec.feed(b"\x00\x00\x00\x01x")
        assert (info.value.size, info.value.limit) == (1, 0)


class TestFrameLarge:
    def test_8mib_frame_in_64kib_chunks(self) -> None:
        payload = bytes(range(256)) * (8 * MiB // 256)
        assert len(payload) == 8 * MiB
        stream = FrameCodec().encode(payload)
        dec = FrameCodec()
        step = 64 * 1024
        got: list[bytes] = []
        for start in range(0, len(stream), step):
            out = dec.feed(stream[start : start + step])
            if start + step < len(stream):
                assert out == []
                assert dec.pending == start + step
            got.extend(out)
        assert len(got) == 1
        assert got[0] == payload
        assert dec.pending == 0

    def test_frame_of_exactly_the_limit(self) -> None:
        codec = FrameCodec(max_frame_size=1000)
        payload = b"q" * 1000
        wire = codec.encode(payload)
        assert wire == ref_encode(payload)
        assert FrameCodec(max_frame_size=1000).feed(wire) == [payload]
        split = FrameCodec(max_frame_size=1000)
        assert split.feed(wire[:10]) == []
        assert split.feed(wire[10:]) == [payload]


class TestFrameInterop:
    @FAST
    @given(payload=st.binary(max_size=2000))
    def test_encode_matches_struct_pack(self, payload: bytes) -> None:
        assert FrameCodec().encode(payload) == ref_encode(payload)

    @FAST
    @given(messages=messages_st, data=st.data())
    def test_codec_decodes_hand_written_encoder(
        self, messages: list[bytes], data: st.DataObject
    ) -> None:
        stream = b"".join(ref_encode(m) for m in messages)
        assert feed_all(FrameCodec(), data.draw(stream_and_cuts(stream))) == messages

    @FAST
    @given(messages=messages_st)
    def test_hand_written_decoder_reads_codec_output(self, messages: list[bytes]) -> None:
        codec = FrameCodec()
        stream = b"".join(codec.encode(m) for m in messages)
        assert ref_decode(stream) == (messages, False, 0)

    def test_header_is_big_endian(self) -> None:
        assert FrameCodec().encode(b"x" * 258)[:4] == b"\x00\x00\x01\x02"
        assert FrameCodec().feed(b"\x00\x00\x00\x03abc") == [b"abc"]
        # Little-endian 3 would be 50331648 bytes, over a 1 MiB limit: rejected, not misread.
        with pytest.raises(FrameTooLarge) as info:
            FrameCodec(max_frame_size=MiB).feed(b"\x03\x00\x00\x00abc")
        assert info.value.size == 0x03000000


class TestFrameLimits:
    def test_default_limit_is_16_mib(self) -> None:
        assert 16 * MiB == DEFAULT_MAX_FRAME_SIZE
        assert FrameCodec().max_frame_size == 16 * MiB
        assert make_codec("frame").max_frame_size == 16 * MiB

    def test_huge_header_rejected_immediately(self) -> None:
        dec = FrameCodec()
        tracemalloc.start()
        try:
            with pytest.raises(FrameTooLarge) as info:
                dec.feed(struct.pack("!I", 0xFFFFFFFF))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        exc = info.value
        assert exc.size == 2**32 - 1
        assert exc.limit == DEFAULT_MAX_FRAME_SIZE
        assert exc.decoded == []
        assert dec.pending == 0
        assert peak < MiB  # nothing near the declared 4 GiB was allocated

    def test_huge_header_with_payload_bytes_rejected_on_that_chunk(self) -> None:
        # The header comes with 64 KiB of "payload"; the codec must not wait for the rest.
        dec = FrameCodec()
        with pytest.raises(FrameTooLarge) as info:
            dec.feed(struct.pack("!I", 0xFFFFFFFF) + b"\xaa" * 65536)
        assert info.value.size == 0xFFFFFFFF
        assert dec.pending == 0

    def test_header_split_across_feeds(self) -> None:
        dec = FrameCodec(max_frame_size=100)
        header = struct.pack("!I", 101)
        assert dec.feed(header[:1]) == []
        assert dec.feed(header[1:3]) == []
        assert dec.pending == 3
        with pytest.raises(FrameTooLarge) as info:
            dec.feed(header[3:])
        assert (info.value.size, info.value.limit) == (101, 100)
        assert dec.pending == 0

    def test_large_legal_frame_is_not_preallocated(self) -> None:
        # A legal 8 MiB header with 10 payload bytes: only what arrived is buffered.
        dec = FrameCodec()
        assert dec.feed(struct.pack("!I", 8 * MiB) + b"0123456789") == []
        assert dec.pending == 14

    def test_limit_boundary_on_decode(self) -> None:
        assert FrameCodec(max_frame_size=5).feed(ref_encode(b"12345")) == [b"12345"]
        with pytest.raises(FrameTooLarge):
            FrameCodec(max_frame_size=5).feed(struct.pack("!I", 6))

    def test_messages_before_bad_header_are_in_decoded(self) -> None:
        dec = FrameCodec(max_frame_size=10)
        good = [b"one", b"", b"three"]
        stream = b"".join(ref_encode(m) for m in good) + struct.pack("!I", 11) + b"zz"
        with pytest.raises(FrameTooLarge) as info:
            dec.feed(stream)
        assert info.value.decoded == good
        assert info.value.size == 11
        assert dec.pending == 0

    def test_decoded_only_holds_this_calls_messages(self) -> None:
        dec = FrameCodec(max_frame_size=10)
        assert dec.feed(ref_encode(b"first") + ref_encode(b"sec")[:3]) == [b"first"]
        with pytest.raises(FrameTooLarge) as info:
            dec.feed(ref_encode(b"sec")[3:] + struct.pack("!I", 999))
        assert info.value.decoded == [b"sec"]

    def test_frame_too_large_is_a_protocol_error(self) -> None:
        with pytest.raises(ProtocolError):
            FrameCodec(max_frame_size=1).feed(struct.pack("!I", 2))

    def test_encode_oversized_raises_message_too_large(self) -> None:
        codec = FrameCodec(max_frame_size=8)
        assert codec.encode(b"12345678") == ref_encode(b"12345678")
        with pytest.raises(MessageTooLarge) as info:
            codec.encode(b"123456789")
        exc = info.value
        assert isinstance(exc, UsageError)
        assert isinstance(exc, ValueError)
        assert not isinstance(exc, RemoteError)
        assert (exc.size, exc.limit) == (9, 8)

    def test_encode_default_limit(self) -> None:
        with pytest.raises(MessageTooLarge) as info:
            FrameCodec().encode(bytes(DEFAULT_MAX_FRAME_SIZE + 1))
        assert info.value.size == DEFAULT_MAX_FRAME_SIZE + 1

    @FAST
    @given(
        before=messages_st,
        size=st.integers(101, 2**32 - 1),
        tail=st.binary(max_size=50),
        data=st.data(),
    )
    def test_bad_header_after_good_frames_any_chunking(
        self, before: list[bytes], size: int, tail: bytes, data: st.DataObject
    ) -> None:
        before = [m[:100] for m in before]
        stream = b"".join(ref_encode(m) for m in before) + struct.pack("!I", size) + tail
        dec = FrameCodec(max_frame_size=100)
        got: list[bytes] = []
        with pytest.raises(FrameTooLarge) as info:
            for chunk in data.draw(stream_and_cuts(stream)):
                got.extend(dec.feed(chunk))
        assert got + info.value.decoded == before
        assert info.value.size == size
        assert dec.pending == 0


# --- line -----------------------------------------------------------------------------------


line_message_st = st.binary(max_size=200).filter(lambda b: b"\n" not in b and not b.endswith(b"\r"))


class TestLine:
    def test_lf_and_crlf(self) -> None:
        dec = LineCodec()
        assert dec.feed(b"alpha\nbeta\r\ngamma") == [b"alpha", b"beta"]
        assert dec.pending == len(b"gamma")
        assert dec.feed(b"\r\n") == [b"gamma"]
        assert dec.pending == 0

    def test_split_between_cr_and_lf(self) -> None:
        dec = LineCodec()
        assert dec.feed(b"hello\r") == []
        assert dec.feed(b"\nworld\r") == [b"hello"]
        assert dec.feed(b"\n") == [b"world"]

    def test_only_the_cr_right_before_lf_is_dropped(self) -> None:
        dec = LineCodec()
        assert dec.feed(b"a\rb\n") == [b"a\rb"]
        assert dec.feed(b"c\r\r\n") == [b"c\r"]
        assert dec.feed(b"\r\n") == [b""]

    def test_empty_lines(self) -> None:
        assert LineCodec().feed(b"\n\r\n\n") == [b"", b"", b""]

    def test_encode(self) -> None:
        codec = LineCodec()
        assert codec.encode(b"hello") == b"hello\n"
        assert codec.encode(b"") == b"\n"
        assert codec.encode(b"a\rb") == b"a\rb\n"

    @FAST
    @given(messages=st.lists(line_message_st, max_size=30), data=st.data())
    def test_roundtrip_random_chunking(self, messages: list[bytes], data: st.DataObject) -> None:
        enc = LineCodec()
        stream = b"".join(enc.encode(m) for m in messages)
        dec = LineCodec()
        assert feed_all(dec, data.draw(stream_and_cuts(stream))) == messages
        assert dec.pending == 0

    @FAST
    @given(
        lines=st.lists(st.tuples(line_message_st, st.booleans()), max_size=30),
        data=st.data(),
    )
    def test_mixed_lf_crlf_any_split(
        self, lines: list[tuple[bytes, bool]], data: st.DataObject
    ) -> None:
        stream = b"".join(m + (b"\r\n" if crlf else b"\n") for m, crlf in lines)
        dec = LineCodec()
        assert feed_all(dec, data.draw(stream_and_cuts(stream))) == [m for m, _ in lines]
        assert dec.pending == 0

    @FEW
    @given(lines=st.lists(st.tuples(line_message_st, st.booleans()), max_size=10))
    def test_mixed_lf_crlf_one_byte_at_a_time(self, lines: list[tuple[bytes, bool]]) -> None:
        stream = b"".join(m + (b"\r\n" if crlf else b"\n") for m, crlf in lines)
        assert feed_all(LineCodec(), one_byte_at_a_time(stream)) == [m for m, _ in lines]

    def test_overlong_line_without_newline(self) -> None:
        dec = LineCodec(max_frame_size=8)
        assert dec.feed(b"12345678") == []  # exactly the limit is fine so far
        with pytest.raises(ProtocolError) as info:
            dec.feed(b"9")
        assert type(info.value) is ProtocolError
        assert "max_frame_size=8" in str(info.value)
        assert info.value.decoded == []
        assert dec.pending == 0

    def test_overlong_line_in_one_chunk(self) -> None:
        with pytest.raises(ProtocolError):
            LineCodec(max_frame_size=8).feed(b"x" * 9)

    def test_overlong_line_after_good_lines(self) -> None:
        dec = LineCodec(max_frame_size=4)
        with pytest.raises(ProtocolError) as info:
            dec.feed(b"ok\nfine\r\ntoo long\nnever")
        assert info.value.decoded == [b"ok", b"fine"]
        assert dec.pending == 0

    def test_overlong_unterminated_tail_after_good_lines(self) -> None:
        dec = LineCodec(max_frame_size=4)
        with pytest.raises(ProtocolError) as info:
            dec.feed(b"ok\n12345")
        assert info.value.decoded == [b"ok"]

    @pytest.mark.parametrize(
        "chunks",
        [
            [b"1234\n"],
            [b"1234\r\n"],
            [b"1234\r", b"\n"],
            [b"12", b"34\r", b"\n"],
            [b"1234", b"\r", b"\n"],
        ],
    )
    def test_line_of_exactly_the_limit(self, chunks: list[bytes]) -> None:
        # However the terminator is split, a 4-byte line fits max_frame_size=4.
        assert feed_all(LineCodec(max_frame_size=4), chunks) == [b"1234"]

    def test_cr_not_followed_by_lf_counts_towards_the_limit(self) -> None:
        dec = LineCodec(max_frame_size=4)
        assert dec.feed(b"1234\r") == []
        with pytest.raises(ProtocolError):
            dec.feed(b"x")

    def test_encode_rejects_newline(self) -> None:
        with pytest.raises(UsageError, match="newline"):
            LineCodec().encode(b"two\nlines")
        with pytest.raises(UsageError):
            LineCodec().encode(b"trailing\n")

    def test_encode_rejects_trailing_cr(self) -> None:
        # It would arrive without its \r: refused rather than silently altered.
        with pytest.raises(UsageError, match="carriage return"):
            LineCodec().encode(b"abc\r")

    def test_encode_oversized(self) -> None:
        codec = LineCodec(max_frame_size=3)
        assert codec.encode(b"abc") == b"abc\n"
        with pytest.raises(MessageTooLarge) as info:
            codec.encode(b"abcd")
        assert (info.value.size, info.value.limit) == (4, 3)


# --- raw ------------------------------------------------------------------------------------


class TestRaw:
    def test_each_chunk_is_a_message(self) -> None:
        dec = RawCodec()
        assert dec.feed(b"hello") == [b"hello"]
        assert dec.feed(b"\x00\x00\x00\x05") == [b"\x00\x00\x00\x05"]
        assert dec.feed(b"a\nb\n") == [b"a\nb\n"]
        assert dec.feed(b"") == []
        assert dec.pending == 0

    @FAST
    @given(chunks=st.lists(st.binary(min_size=1, max_size=200), max_size=20))
    def test_chunks_are_messages(self, chunks: list[bytes]) -> None:
        assert feed_all(RawCodec(), chunks) == chunks

    @FAST
    @given(message=st.binary(max_size=200))
    def test_encode_is_identity(self, message: bytes) -> None:
        assert RawCodec().encode(message) == message

    def test_limits(self) -> None:
        codec = RawCodec(max_frame_size=4)
        assert codec.feed(b"1234") == [b"1234"]
        with pytest.raises(FrameTooLarge) as info:
            codec.feed(b"12345")
        assert (info.value.size, info.value.limit) == (5, 4)
        with pytest.raises(MessageTooLarge):
            codec.encode(b"12345")


# --- garbage --------------------------------------------------------------------------------


EXPECTED_ERROR = {"frame": FrameTooLarge, "line": ProtocolError, "raw": FrameTooLarge}


@settings(max_examples=300, deadline=None)
@given(
    protocol=st.sampled_from(sorted(PROTOCOLS)),
    limit=st.sampled_from([0, 1, 3, 16, 100, DEFAULT_MAX_FRAME_SIZE]),
    garbage=st.binary(max_size=1500),
    data=st.data(),
)
def test_garbage_only_ever_raises_protocol_error(
    protocol: str, limit: int, garbage: bytes, data: st.DataObject
) -> None:
    codec = make_codec(protocol, limit)
    chunks = data.draw(stream_and_cuts(garbage))
    got: list[bytes] = []
    try:
        for chunk in chunks:
            got.extend(codec.feed(chunk))
    except ProtocolError as exc:
        # Exactly the documented type, and the codec dropped its state.
        assert type(exc) is EXPECTED_ERROR[protocol]
        assert all(type(m) is bytes for m in exc.decoded)
        assert codec.pending == 0
        got.extend(exc.decoded)
    # Whatever came out respects the limit.
    assert all(len(m) <= limit for m in got)


@settings(max_examples=300, deadline=None)
@given(
    limit=st.sampled_from([0, 2, 40, 300, DEFAULT_MAX_FRAME_SIZE]),
    garbage=st.binary(max_size=1500),
    data=st.data(),
)
def test_frame_garbage_matches_reference_decoder(
    limit: int, garbage: bytes, data: st.DataObject
) -> None:
    # Frames are "garbage" with plausible small headers too: biased towards short lengths.
    prefix = data.draw(st.lists(st.binary(max_size=50), max_size=5))
    stream = b"".join(ref_encode(p) for p in prefix) + garbage
    expected, bad, left = ref_decode(stream, limit)
    dec = FrameCodec(max_frame_size=limit)
    got: list[bytes] = []
    raised = False
    try:
        for chunk in data.draw(stream_and_cuts(stream)):
            got.extend(dec.feed(chunk))
    except FrameTooLarge as exc:
        raised = True
        got.extend(exc.decoded)
    assert got == expected
    assert raised == bad
    assert dec.pending == left


@settings(max_examples=200, deadline=None)
@given(
    protocol=st.sampled_from(["frame", "line"]),
    limit=st.sampled_from([0, 1, 4, 50, DEFAULT_MAX_FRAME_SIZE]),
    stream=st.one_of(
        st.binary(max_size=600).map(lambda b: b.replace(b"\x0b", b"\n")),
        # Few distinct bytes: lines near the limit, lone \r, CR/LF split by the cuts.
        st.lists(st.sampled_from([b"a", b"\r", b"\n", b"\r\n", b"\x00"]), max_size=60).map(
            b"".join
        ),
    ),
    data=st.data(),
)
def test_split_does_not_change_the_outcome(
    protocol: str, limit: int, stream: bytes, data: st.DataObject
) -> None:
    """Same messages, same error-or-not, whether the stream arrives whole or cut anywhere."""

    def run(chunks: list[bytes]) -> tuple[list[bytes], bool]:
        codec = make_codec(protocol, limit)
        out: list[bytes] = []
        try:
            for chunk in chunks:
                out.extend(codec.feed(chunk))
        except ProtocolError as exc:
            return out + exc.decoded, True
        return out, False

    assert run(data.draw(stream_and_cuts(stream))) == run([stream])


# --- make_codec -----------------------------------------------------------------------------


class TestMakeCodec:
    @pytest.mark.parametrize(
        ("name", "cls"), [("frame", FrameCodec), ("line", LineCodec), ("raw", RawCodec)]
    )
    def test_known_protocols(self, name: str, cls: type[Codec]) -> None:
        codec = make_codec(name)
        assert type(codec) is cls
        assert codec.name == name
        assert codec.max_frame_size == DEFAULT_MAX_FRAME_SIZE
        assert make_codec(name, 123).max_frame_size == 123

    def test_protocols_table(self) -> None:
        assert dict(PROTOCOLS) == {"frame": FrameCodec, "line": LineCodec, "raw": RawCodec}

    def test_one_codec_per_connection(self) -> None:
        a, b = make_codec("frame"), make_codec("frame")
        assert a is not b
        a.feed(b"\x00\x00")
        assert (a.pending, b.pending) == (2, 0)

    @pytest.mark.parametrize("name", ["", "Frame", "http", "lines", "frame "])
    def test_unknown_protocol(self, name: str) -> None:
        with pytest.raises(UsageError) as info:
            make_codec(name)
        msg = str(info.value)
        assert repr(name) in msg
        assert "frame" in msg and "line" in msg and "raw" in msg

    @pytest.mark.parametrize("bad", [-1, 2**32, 2**40])
    def test_max_frame_size_out_of_range(self, bad: int) -> None:
        for name in PROTOCOLS:
            with pytest.raises(UsageError, match="max_frame_size"):
                make_codec(name, bad)

    @pytest.mark.parametrize("bad", [1.5, 1024.0, "16", None, True])
    def test_max_frame_size_not_an_int(self, bad: object) -> None:
        with pytest.raises(UsageError, match="max_frame_size"):
            make_codec("frame", bad)  # type: ignore[arg-type]

    @pytest.mark.parametrize("ok", [0, 1, 2**32 - 1])
    def test_max_frame_size_bounds(self, ok: int) -> None:
        assert make_codec("frame", ok).max_frame_size == ok

    def test_classes_check_too(self) -> None:
        for cls in (FrameCodec, LineCodec, RawCodec):
            with pytest.raises(UsageError):
                cls(max_frame_size=-1)

    def test_errors_are_bingfa_errors(self) -> None:
        with pytest.raises(BingfaError):
            make_codec("nope")
        with pytest.raises(ValueError):
            make_codec("nope")

    def test_public_reexports(self) -> None:
        assert bingfa.make_codec is make_codec
        assert bingfa.FrameCodec is FrameCodec
        assert bingfa.LineCodec is LineCodec
        assert bingfa.RawCodec is RawCodec


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
@pytest.mark.parametrize("message", ["text", 42, None])
def test_encoding_a_non_bytes_message_says_what_was_wrong(protocol: str, message: object) -> None:
    """A handler that returns ``str`` used to fail with ``can't concat str to bytes`` from deep
    inside the codec; the error now names the type and, for text, the fix."""
    with pytest.raises(UsageError, match=f"must be bytes.*not {type(message).__name__}") as info:
        make_codec(protocol).encode(message)  # type: ignore[arg-type]
    assert ("reply.encode()" in str(info.value)) == isinstance(message, str)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "look like an HTTP request ('GET '"),
        (b"POST /a HTTP/1.1\r\n", "look like an HTTP request ('POST'"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "look like a TLS handshake"),
    ],
)
def test_a_foreign_protocol_on_a_frame_connection_is_named(data: bytes, expected: str) -> None:
    codec = make_codec("frame")
    with pytest.raises(FrameTooLarge) as info:
        codec.feed(data)
    assert expected in str(info.value)
    assert str(info.value).startswith("declared frame length")
    again = pickle.loads(pickle.dumps(info.value))  # a process pool sends it back
    assert str(again) == str(info.value) and again.hint == info.value.hint


def test_an_absurd_length_that_is_not_another_protocol_has_no_hint() -> None:
    with pytest.raises(FrameTooLarge) as info:
        make_codec("frame").feed(b"\xff\xff\xff\xff")
    assert info.value.hint == ""
    assert str(info.value) == "declared frame length 4294967295 exceeds max_frame_size=16777216"
