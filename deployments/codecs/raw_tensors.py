"""Tensors as raw bytes, the layout the REST binary extension and gRPC's raw contents share.

Row-major, little-endian; BOOL one byte per element; BYTES a 4-byte little-endian length before
each element. Sizes are checked against shape x datatype before anything is allocated, and BYTES
elements are walked with bounds checks, so a lying size or a truncated body is a 400 that says
which input and by how much, never a crash or a read past the end.
"""
from __future__ import annotations

import math
import struct
from typing import Union

import numpy as np

from modelpool.deployments.datatypes import V2_DATATYPES, byte_size, datatype_of
from modelpool.deployments.errors import RequestError

__all__ = ["array_from_bytes", "array_to_bytes", "text_or_bytes"]

Buffer = Union[bytes, bytearray, memoryview]
_LENGTH = struct.Struct("<I")
_BYTES_HINT = "each BYTES element is a 4-byte little-endian length followed by that many bytes"


def array_from_bytes(data: Buffer, datatype: str, shape: tuple[int, ...], field: str) -> np.ndarray:
    """Decode one tensor's bytes into a writable native array of ``shape`` (copied: the body is not kept)."""
    count = math.prod(shape)
    if datatype == "BYTES":
        flat = _bytes_elements(memoryview(data), count, field)
    else:
        expected = byte_size(datatype, shape)
        if len(data) != expected:
            itemsize = V2_DATATYPES[datatype].itemsize
            raise RequestError(f"{field}: {len(data)} bytes of data, but shape {list(shape)} of {datatype} needs "
                               f"{expected} ({count} elements x {itemsize} bytes); send exactly that many bytes or "
                               "fix the shape", field=field)
        if datatype == "BOOL":
            flat = np.frombuffer(data, np.uint8) != 0  # any non-zero byte is true, as C reads a bool
        else:
            dtype = V2_DATATYPES[datatype]
            flat = np.frombuffer(data, dtype.newbyteorder("<")).astype(dtype)  # astype copies: writable, native
    try:
        return flat.reshape(shape)
    except (ValueError, OverflowError) as exc:  # a zero-sized tensor with absurd other dimensions
        raise RequestError(f"shape {list(shape)} cannot be allocated ({exc}); send realistic dimensions",
                           field=field) from None


def _bytes_elements(data: memoryview, count: int, field: str) -> np.ndarray:
    """Walk length-prefixed elements; refuse before looping when the data cannot hold ``count`` of them."""
    size = len(data)
    if count * _LENGTH.size > size:
        raise RequestError(f"{field}: {size} bytes cannot hold {count} BYTES elements ({_BYTES_HINT}, so at least "
                           f"{count * _LENGTH.size} bytes); fix the shape or the data", field=field)
    elements: list[Union[str, bytes]] = []
    offset = 0
    for k in range(count):
        if offset + _LENGTH.size > size:
            raise RequestError(f"{field}: the data ends after {k} of {count} BYTES elements; {_BYTES_HINT}",
                               field=field)
        (length,) = _LENGTH.unpack_from(data, offset)
        offset += _LENGTH.size
        if offset + length > size:
            raise RequestError(f"{field}: BYTES element {k} declares {length} bytes but only {size - offset} remain; "
                               f"{_BYTES_HINT}", field=field)
        elements.append(text_or_bytes(data[offset:offset + length].tobytes()))
        offset += length
    if offset != size:
        raise RequestError(f"{field}: {size - offset} bytes are left after the {count} BYTES elements the shape "
                           f"holds; {_BYTES_HINT}, and the shape must count every element", field=field)
    flat = np.empty(count, dtype=object)
    flat[:] = elements
    return flat


def text_or_bytes(raw: bytes) -> Union[str, bytes]:
    """A BYTES element: UTF-8 text becomes str, as JSON would have sent it; anything else stays bytes."""
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw


def array_to_bytes(array: np.ndarray, name: str) -> bytes:
    """Encode an output array in the raw layout (its V2 datatype follows from the dtype)."""
    datatype = datatype_of(array.dtype, name)
    if datatype == "BYTES":
        return b"".join(_LENGTH.pack(len(e)) + e for e in map(_element_bytes, np.asarray(array).ravel().tolist()))
    if datatype == "BOOL":
        return np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def _element_bytes(value: object) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    return str(value).encode()
