"""ctypes bindings of the consumer API in loader/amdim_loader.h, held in
libamdim_loader.so (built by CMake: the target amdim_loader_shared), and
where the native files are found.

Search order for the library: $AMDIM_LIBRARY, the copy installed beside this
package (amdim/_native/), then the dynamic linker's path. For the amdim-load
program: $AMDIM_LOAD, amdim/_native/amdim-load, then $PATH."""
import ctypes
import os
import shutil

_HERE = os.path.dirname(os.path.abspath(__file__))
NATIVE_DIR = os.path.join(_HERE, "_native")

# common/amdim_common.h
STATUS = {
    0: "ok", -1: "invalid", -2: "nomem", -3: "io", -4: "corrupt", -5: "truncated", -6: "unsupported",
    -7: "too_large", -8: "exists", -9: "not_found", -10: "lmdb", -11: "version", -12: "cancelled",
    -13: "empty", -14: "worker", -15: "protocol",
}
E_INVALID = -1
E_WORKER = -14
E_PROTOCOL = -15


class Info(ctypes.Structure):
    """amdim_loader_info."""
    _fields_ = [
        ("preset", ctypes.c_char * 16), ("split", ctypes.c_char * 40),
        ("size", ctypes.c_uint32), ("batch", ctypes.c_uint32), ("workers", ctypes.c_uint32),
        ("shard_rank", ctypes.c_uint32), ("shard_size", ctypes.c_uint32),
        ("records", ctypes.c_uint64), ("batches_per_epoch", ctypes.c_uint64),
        ("classes", ctypes.c_int32), ("drop_last", ctypes.c_int),
        ("seed", ctypes.c_uint64),
        ("start_epoch", ctypes.c_uint64), ("start_batch", ctypes.c_uint64), ("epochs", ctypes.c_uint64),
        ("loader_pid", ctypes.c_int),
    ]


class Request(ctypes.Structure):
    """amdim_loader_request: -1 (has_seed 0) keeps the loader's value."""
    _fields_ = [
        ("has_seed", ctypes.c_int), ("seed", ctypes.c_uint64),
        ("start_epoch", ctypes.c_int64), ("start_batch", ctypes.c_int64), ("epochs", ctypes.c_int64),
    ]


class CBatch(ctypes.Structure):
    """amdim_batch: labels and records point to the consumer's copies,
    view1 and view2 into the ring slot (borrowed until released)."""
    _fields_ = [
        ("epoch", ctypes.c_uint64), ("index", ctypes.c_uint64),
        ("count", ctypes.c_uint32), ("last_in_epoch", ctypes.c_int),
        ("labels", ctypes.c_void_p), ("records", ctypes.c_void_p),
        ("view1", ctypes.c_void_p), ("view2", ctypes.c_void_p),
        ("ring", ctypes.c_uint32),
    ]


class DeliveryCounts(ctypes.Structure):
    """amdim_delivery_counts."""
    _fields_ = [
        ("pairs", ctypes.c_uint64), ("batches", ctypes.c_uint64), ("epochs", ctypes.c_uint64),
        ("duplicates", ctypes.c_uint64), ("missing", ctypes.c_uint64), ("mismatched", ctypes.c_uint64),
        ("digest", ctypes.c_uint64),
    ]

    def as_dict(self):
        return {name: int(getattr(self, name)) for name, _ in self._fields_}


_P = ctypes.c_void_p
_SIGS = {
    "amdim_loader_attach": (ctypes.c_int, [ctypes.POINTER(_P), ctypes.c_int, ctypes.POINTER(Request),
                                           ctypes.c_char_p, ctypes.c_size_t]),
    "amdim_loader_get_info": (ctypes.POINTER(Info), [_P]),
    "amdim_loader_next": (ctypes.c_int, [_P, ctypes.POINTER(CBatch)]),
    "amdim_loader_release": (None, [_P, ctypes.POINTER(CBatch)]),
    "amdim_loader_close": (None, [_P]),
    "amdim_loader_error": (ctypes.c_char_p, [_P]),
    "amdim_loader_wait_seconds": (ctypes.c_double, [_P]),
    "amdim_loader_ring_memory": (None, [_P, ctypes.c_uint32, ctypes.POINTER(_P), ctypes.POINTER(ctypes.c_size_t)]),
    "amdim_loader_parse_shard": (ctypes.c_int, [ctypes.c_char_p, ctypes.POINTER(ctypes.c_int),
                                                ctypes.POINTER(ctypes.c_int), ctypes.c_char_p, ctypes.c_size_t]),
    "amdim_delivery_new": (_P, [_P]),
    "amdim_delivery_add": (ctypes.c_uint64, [_P, ctypes.POINTER(CBatch)]),
    "amdim_delivery_finish": (DeliveryCounts, [_P]),
    "amdim_delivery_free": (None, [_P]),
    "amdim_strerror": (ctypes.c_char_p, [ctypes.c_int]),
    "amdim_python_layout": (ctypes.c_long, [ctypes.c_char_p]),
    "amdim_python_preset_norm": (ctypes.c_int, [ctypes.c_char_p, ctypes.POINTER(ctypes.c_int),
                                                ctypes.c_float * 3, ctypes.c_float * 3]),
}

# what each mirror must agree on with the library (amdim_python_layout)
_LAYOUT = {
    "protocol": 1,
    "amdim_loader_info": ctypes.sizeof(Info),
    "amdim_loader_info.loader_pid": Info.loader_pid.offset,
    "amdim_loader_info.epochs": Info.epochs.offset,
    "amdim_loader_request": ctypes.sizeof(Request),
    "amdim_loader_request.epochs": Request.epochs.offset,
    "amdim_batch": ctypes.sizeof(CBatch),
    "amdim_batch.view2": CBatch.view2.offset,
    "amdim_batch.ring": CBatch.ring.offset,
    "amdim_delivery_counts": ctypes.sizeof(DeliveryCounts),
    "amdim_delivery_counts.digest": DeliveryCounts.digest.offset,
}

_lib = None


def library_path():
    """The libamdim_loader.so that load() opens (None: left to the dynamic linker)."""
    env = os.environ.get("AMDIM_LIBRARY")
    if env:
        return env
    beside = os.path.join(NATIVE_DIR, "libamdim_loader.so")
    return beside if os.path.exists(beside) else None


def load():
    """The library, opened once, its functions typed and its structs checked."""
    global _lib
    if _lib is not None:
        return _lib
    path = library_path()
    try:
        lib = ctypes.CDLL(path or "libamdim_loader.so")
    except OSError as e:
        raise ImportError(
            "amdim: cannot load libamdim_loader.so (%s). Install the package with "
            "'python3 -m pip install ./python' (docs/python.md) or set AMDIM_LIBRARY to the "
            "one a CMake build made (BUILD/libamdim_loader.so)" % e) from None
    for name, (res, args) in _SIGS.items():
        f = getattr(lib, name)
        f.restype = res
        f.argtypes = args
    for what, mine in _LAYOUT.items():
        theirs = lib.amdim_python_layout(what.encode())
        if theirs != mine:
            raise ImportError("amdim: %s is %d in %s but %d in this package: the library and the package "
                              "come from different versions" % (what, theirs, path or "libamdim_loader.so", mine))
    _lib = lib
    return lib


def amdim_load_path():
    """The amdim-load program to start: $AMDIM_LOAD, the one beside the package, or $PATH's."""
    env = os.environ.get("AMDIM_LOAD")
    if env:
        return env
    beside = os.path.join(NATIVE_DIR, "amdim-load")
    if os.access(beside, os.X_OK):
        return beside
    found = shutil.which("amdim-load")
    if found:
        return found
    raise FileNotFoundError("amdim: no amdim-load program: not in $AMDIM_LOAD, beside the package (%s) nor on "
                            "$PATH" % NATIVE_DIR)


def strerror(status):
    return load().amdim_strerror(status).decode(errors="replace")


def parse_shard(text):
    """amdim_loader_parse_shard: "R/N" or "auto" (MPI / PMIx / Slurm environment) -> (rank, size)."""
    lib = load()
    r, n = ctypes.c_int(0), ctypes.c_int(1)
    err = ctypes.create_string_buffer(512)
    st = lib.amdim_loader_parse_shard(str(text).encode(), ctypes.byref(r), ctypes.byref(n), err, len(err))
    if st:
        raise ValueError("amdim: shard %r: %s" % (text, err.value.decode(errors="replace")))
    return r.value, n.value


def preset_norm(name):
    """(size, mean, std) of a preset, from augment/draw.c."""
    lib = load()
    size = ctypes.c_int(0)
    mean, std = (ctypes.c_float * 3)(), (ctypes.c_float * 3)()
    if lib.amdim_python_preset_norm(name.encode(), ctypes.byref(size), mean, std):
        raise ValueError("amdim: unknown preset %r (see amdim-load --help: imagenet, stl10, cifar, dim28, dim32, "
                         "dim64, dim-stl10)" % name)
    return size.value, tuple(mean), tuple(std)
