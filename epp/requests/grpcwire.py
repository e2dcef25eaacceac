"""Just enough of gRPC's framing and protobuf's wire format to read the few fields the gRPC request
parsers (Vertex AI, vLLM's engine API) route on, without their generated message classes."""

from __future__ import annotations

from collections.abc import Iterator

from epp.requests.usage import UsageReader


def grpc_payload(body: bytes) -> bytes:
    """The message of one gRPC length-prefixed frame (compression flag 0)."""
    if len(body) < 5:
        raise ValueError("shorter than a gRPC frame header")
    if body[0] != 0:
        raise ValueError("compressed gRPC messages are not supported")
    length = int.from_bytes(body[1:5], "big")
    if len(body) < 5 + length:
        raise ValueError(f"gRPC frame announces {length} bytes, {len(body) - 5} present")
    return body[5 : 5 + length]


def field_bytes(message: bytes, number: int) -> bytes | None:
    """The last length-delimited field `number` of a protobuf message (proto3: last one wins)."""
    found: bytes | None = None
    for field, value in fields(message):
        if field == number and isinstance(value, bytes):
            found = value
    return found


def fields(message: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) of a protobuf message: varints as int, length-delimited as bytes;
    fixed-width fields are skipped."""
    position = 0
    while position < len(message):
        key, position = _varint(message, position)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, position = _varint(message, position)
            yield number, value
        elif wire == 1:
            position += 8
        elif wire == 2:
            length, position = _varint(message, position)
            if position + length > len(message):
                raise ValueError("truncated protobuf field")
            yield number, message[position : position + length]
            position += length
        elif wire == 5:
            position += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if position > len(message):
            raise ValueError("truncated protobuf field")


def _varint(message: bytes, position: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if position >= len(message) or shift > 63:
            raise ValueError("truncated protobuf varint")
        byte = message[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7


def varints(message: bytes, number: int) -> list[int]:
    """A repeated integer field, packed (proto3's default) or not."""
    values: list[int] = []
    for field, value in fields(message):
        if field != number:
            continue
        if isinstance(value, int):
            values.append(value)
        else:
            values.extend(v for _, v in fields(_as_varint_run(value)) if isinstance(v, int))
    return values


def _as_varint_run(packed: bytes) -> bytes:
    """Packed varints re-keyed as field 1 varints, so the field reader can decode them."""
    out = bytearray()
    position = 0
    while position < len(packed):
        start = position
        while position < len(packed) and packed[position] & 0x80:
            position += 1
        position += 1
        out += b"\x08" + packed[start:position]
    return bytes(out)


class FrameBuffer:
    """Reassembles a stream of gRPC frames from arbitrary chunks; compressed frames are skipped."""

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending = bytearray()

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        """The messages of every frame completed by `chunk`."""
        self._pending += chunk
        while len(self._pending) >= 5:
            length = int.from_bytes(self._pending[1:5], "big")
            if len(self._pending) < 5 + length:
                return
            payload, compressed = bytes(self._pending[5 : 5 + length]), self._pending[0] != 0
            del self._pending[: 5 + length]
            if not compressed:
                yield payload


class FramedUsageReader(UsageReader):
    """Usage from a gRPC response's body: frames are reassembled across chunks and each message
    handed to `frame`; a message that does not decode (ValueError) is skipped."""

    __slots__ = ("_frames",)

    def __init__(self, streaming: bool) -> None:
        super().__init__(streaming)
        self._frames = FrameBuffer()

    def feed(self, chunk: bytes, end_of_stream: bool) -> None:
        for payload in self._frames.feed(chunk):
            try:
                self.frame(payload)
            except ValueError:
                continue

    def frame(self, payload: bytes) -> None:
        """Read one message of the response stream."""
        raise NotImplementedError
