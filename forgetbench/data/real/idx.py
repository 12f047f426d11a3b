"""The IDX format of MNIST and Fashion-MNIST (http://yann.lecun.com/exdb/mnist/), plain or gzipped.

A file is two zero bytes, a type code (0x08: unsigned bytes, the only one these datasets use), the number of
dimensions, each dimension as a big-endian 32-bit integer, then the data in C order.
"""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from ...errors import DataError


def read_idx(path: Path) -> np.ndarray:
    """The uint8 array of an IDX file (``.gz`` or not); a DataError names the file when it is not one."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:  # gzip raises BadGzipFile (an OSError) or EOFError on damaged files
        raise DataError(f"{path}: cannot read it ({type(e).__name__}: {e})") from None
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08 or data[3] == 0:
        raise DataError(f"{path}: not an IDX file of unsigned bytes (it starts with {data[:4]!r}; expected "
                        f"00 00 08 and a dimension count)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header ({len(data)} bytes)")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + int(np.prod(shape, dtype=np.int64))
    if len(data) != expected:
        raise DataError(f"{path}: an IDX array of shape {shape} needs {expected} bytes, the file has {len(data)} "
                        f"(truncated or damaged)")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)
