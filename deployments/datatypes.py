"""The Open Inference Protocol (V2) tensor datatypes and their numpy dtypes: the one table.

Replicas decode requests with it and name their outputs with it, batch scoring casts table columns
with it and the client turns answers back into arrays with it. Pure (numpy only: no Ray, no web
framework), so the client side can import it too.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

V2_DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),  # values are Python str (or bytes when not UTF-8)
}

#: The datatypes whose elements have a fixed size (every one but BYTES).
FIXED_SIZE_DATATYPES: dict[str, np.dtype] = {name: dtype for name, dtype in V2_DATATYPES.items() if name != "BYTES"}

# numpy (kind, itemsize) -> V2 datatype, for outputs; keyed this way so byte order does not matter.
_OUTPUT_DATATYPES: dict[tuple[str, int], str] = {
    (dtype.kind, dtype.itemsize): name for name, dtype in FIXED_SIZE_DATATYPES.items()
}


def numpy_dtype(datatype: str) -> Optional[np.dtype]:
    """The numpy dtype of a V2 datatype name (exact spelling), None for a name V2 does not define."""
    return V2_DATATYPES.get(datatype)


def datatype_of(dtype: np.dtype, name: str) -> str:
    """Map a numpy dtype to a V2 datatype; anything V2 cannot carry is a server bug, not a 4xx."""
    if dtype.kind in "USO":
        return "BYTES"
    datatype = _OUTPUT_DATATYPES.get((dtype.kind, dtype.itemsize))
    if datatype is None:
        raise TypeError(f"output {name!r} has numpy dtype {dtype}, which V2 cannot carry; "
                        f"cast it to one of {', '.join(V2_DATATYPES)} first")
    return datatype


def byte_size(datatype: str, shape: tuple[int, ...]) -> int:
    """Bytes a fixed-size tensor takes (BYTES has no fixed size: -1)."""
    return -1 if datatype == "BYTES" else math.prod(shape) * V2_DATATYPES[datatype].itemsize
