"""Compact binary encoding of writes for the replica's PREPARED records.

Hand-written rather than pickle (unsafe to load) or JSON (values are bytes up to 1 MiB; base64 would
add a third). Format per write: tag byte ('P' or 'D'), key length (u16) + UTF-8 key, then for a put:
lease (i64), value length (u32) + value.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from corral.errors import Internal
from corral.model import Delete, PreparedWrite, Put, PutSequential

_PUT = b"P"
_DELETE = b"D"
_SEQUENTIAL = b"S"
_U16 = struct.Struct(">H")
_PUT_TAIL = struct.Struct(">qI")


def encode_writes(writes: Iterable[PreparedWrite]) -> bytes:
    parts: list[bytes] = []
    for w in writes:
        if isinstance(w, Put):
            key = w.key.encode("utf-8")
            parts += [_PUT, _U16.pack(len(key)), key, _PUT_TAIL.pack(w.lease, len(w.value)), w.value]
        elif isinstance(w, PutSequential):
            prefix = w.prefix.encode("utf-8")
            parts += [_SEQUENTIAL, _U16.pack(len(prefix)), prefix, _PUT_TAIL.pack(w.lease, len(w.value)), w.value]
        elif isinstance(w, Delete):
            key = w.key.encode("utf-8")
            parts += [_DELETE, _U16.pack(len(key)), key]
        else:
            raise Internal(f"{type(w).__name__} is resolved at prepare time and never stored")
    return b"".join(parts)


def decode_writes(data: bytes) -> tuple[PreparedWrite, ...]:
    out: list[PreparedWrite] = []
    view = memoryview(data)
    pos = 0
    while pos < len(view):
        tag = bytes(view[pos : pos + 1])
        (klen,) = _U16.unpack_from(view, pos + 1)
        key = bytes(view[pos + 3 : pos + 3 + klen]).decode("utf-8")
        pos += 3 + klen
        if tag in (_PUT, _SEQUENTIAL):
            lease, vlen = _PUT_TAIL.unpack_from(view, pos)
            pos += _PUT_TAIL.size
            value = bytes(view[pos : pos + vlen])
            out.append(Put(key, value, lease) if tag == _PUT else PutSequential(key, value, lease))
            pos += vlen
        elif tag == _DELETE:
            out.append(Delete(key))
        else:
            raise Internal(f"corrupt write record: tag {tag!r} at byte {pos}")
    return tuple(out)


def encode_keys(keys: Iterable[str]) -> bytes:
    return "\x00".join(sorted(keys)).encode("utf-8")


def decode_keys(data: bytes) -> frozenset[str]:
    return frozenset(data.decode("utf-8").split("\x00")) if data else frozenset()
