"""The IDX file format (MNIST, Fashion-MNIST): a 4-byte magic, big-endian dimensions, then the array.

Magic: two zero bytes, a type code, and the number of dimensions. Files may be gzipped.
"""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from .sample import DataError

DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
          0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
CODES = {v: k for k, v in DTYPES.items()}


def parse_idx(data: bytes, name: str = "IDX data") -> np.ndarray:
    if len(data) < 4:
        raise DataError(f"{name}: too short to be an IDX file ({len(data)} bytes)")
    zero, code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or code not in DTYPES:
        raise DataError(f"{name}: not an IDX file (magic bytes {data[:4].hex()})")
    head = 4 + 4 * ndim
    if len(data) < head:
        raise DataError(f"{name}: header declares {ndim} dimensions but the file ends after {len(data)} bytes")
    shape = struct.unpack(f">{ndim}I", data[4:head])
    dtype = DTYPES[code]
    need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - head != need:
        raise DataError(f"{name}: shape {tuple(shape)} needs {need} data bytes, the file has {len(data) - head}")
    return np.frombuffer(data, dtype=dtype, offset=head).reshape(shape).astype(dtype.newbyteorder("="))


def read_idx(path: str | Path) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DataError(f"{path}: corrupt gzip data ({e})") from None
    return parse_idx(raw, str(path))


def write_idx(path: str | Path, array: np.ndarray, compress: bool | None = None) -> None:
    """Write an array as IDX (gzipped when the name ends in .gz); for fixtures and exports."""
    path = Path(path)
    a = np.asarray(array)
    dt = a.dtype.newbyteorder(">") if a.dtype.itemsize > 1 else a.dtype
    if dt not in CODES:
        raise DataError(f"IDX cannot store dtype {a.dtype}")
    raw = struct.pack(">HBB", 0, CODES[dt], a.ndim) + struct.pack(f">{a.ndim}I", *a.shape) + a.astype(dt).tobytes()
    if compress if compress is not None else path.suffix == ".gz":
        raw = gzip.compress(raw, mtime=0)
    path.write_bytes(raw)
