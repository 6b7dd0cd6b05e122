"""Writer for amdim reference files: a gzip stream of named tensors that the
C tests read with tests/reffile.h. Layout (little-endian):

    magic b"AMRF", u32 version (1), u32 count, then per tensor:
    u16 name length, name (UTF-8), u8 dtype (0 uint8, 1 int32, 2 float32,
    3 float64), u8 ndim, u32 dims[ndim], raw data (C order)
"""
import gzip
import struct

import numpy as np

DTYPES = {np.dtype(np.uint8): 0, np.dtype(np.int32): 1, np.dtype(np.float32): 2, np.dtype(np.float64): 3}


class RefWriter:
    def __init__(self):
        self.items = []

    def add(self, name, array):
        a = np.array(array, order="C")  # keeps 0-d arrays 0-d (ascontiguousarray would not)
        if a.dtype not in DTYPES:
            raise TypeError(f"{name}: unsupported dtype {a.dtype}")
        if any(n == name for n, _ in self.items):
            raise KeyError(f"duplicate tensor {name}")
        self.items.append((name, a))

    def save(self, path):
        out = [b"AMRF", struct.pack("<II", 1, len(self.items))]
        for name, a in self.items:
            nb = name.encode()
            out.append(struct.pack("<H", len(nb)) + nb)
            out.append(struct.pack("<BB", DTYPES[a.dtype], a.ndim))
            out.append(struct.pack(f"<{a.ndim}I", *a.shape))
            out.append(a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes())
        # mtime=0 keeps the file byte-identical across regenerations
        with open(path, "wb") as f:
            f.write(gzip.compress(b"".join(out), compresslevel=9, mtime=0))
