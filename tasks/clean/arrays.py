"""Zero-copy numpy views of Arrow arrays, shared by the text statistics (text.py) and MinHash
(minhash.py): both count and hash bytes with numpy kernels and never build a Python string."""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def utf8_buffers(arr: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """The UTF-8 bytes of a string array as one uint8 array, and int64 offsets starting at 0.

    Zero-copy for (large_)string arrays: we read Arrow's buffers directly, so the per-byte numpy
    kernels never build Python strings. Nulls read as empty strings.
    """
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        arr = arr.cast(pa.large_string())
    if len(arr) == 0:
        return np.zeros(0, np.uint8), np.zeros(1, np.int64)
    otype = np.int64 if pa.types.is_large_string(arr.type) else np.int32
    bufs = arr.buffers()
    offs = np.frombuffer(
        bufs[1], dtype=otype, count=len(arr) + 1, offset=arr.offset * np.dtype(otype).itemsize
    ).astype(np.int64)
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    data = data[offs[0] : offs[-1]]
    return data, offs - offs[0]


def np_values(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The values of a null-free primitive Arrow array as numpy, read from its buffer (pyarrow's
    own `to_numpy` imports pandas on first use: 0.3 s in every worker process)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    dtype = np.dtype(arr.type.to_pandas_dtype())
    if arr.null_count:
        raise ValueError("np_values needs an array without nulls")
    return np.frombuffer(arr.buffers()[1], dtype=dtype, count=len(arr), offset=arr.offset * dtype.itemsize)


def ascii_space(data: np.ndarray) -> np.ndarray:
    """Per byte: is it ASCII whitespace (tab, newline, vertical tab, form feed, return, space)."""
    return (data == 32) | ((data - np.uint8(9)) < np.uint8(5))
