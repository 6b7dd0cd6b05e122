"""amdim.Loader: AMDIM's two augmented views from amdim-load, as torch
tensors that alias the shared-memory ring slots (docs/python.md)."""
import collections
import ctypes
import os
import re
import signal
import subprocess
import sys
import threading
import weakref

import torch

from . import _lib

DECODE_MODES = ("scaled", "region", "full")


class LoaderError(RuntimeError):
    """A failure of the loader pipeline: a worker died, failed or stalled
    (status "worker"), amdim-load went away ("protocol"), a ring slot did not
    hold what was due ("corrupt"). The message is the C consumer's; what it
    names is parsed into the attributes (None where it names nothing)."""

    def __init__(self, message, status=None, log=()):
        full = message
        if log:
            full += "\namdim-load said:\n  " + "\n  ".join(log)
        super().__init__(full)
        self.message = message
        self.status = status
        self.log = list(log)

        def grab(pattern):
            m = re.search(pattern, message)
            return int(m.group(1)) if m else None
        self.worker = grab(r"worker (\d+)")
        self.pid = grab(r"\(pid (\d+)\)")
        self.signal = grab(r"signal (\d+)")
        self.epoch = grab(r"epoch (\d+) batch \d+")
        self.batch = grab(r"epoch \d+ batch (\d+)")


class Batch:
    """One batch: view1, view2 torch.uint8 (count, size, size, 3); labels
    (-1: unlabelled) and records (the record index in the split) torch.int64
    (count,); epoch, index (ints); last_in_epoch. view1 and view2 alias the
    ring slot (or, with device="cuda", a device buffer the loader reuses):
    they are valid until the loop advances to the next batch; .clone() what
    must live longer. digest: the batch's FNV-1a digest (amdim_delivery_add)
    when the loader verifies, else None."""

    __slots__ = ("view1", "view2", "labels", "records", "epoch", "index", "last_in_epoch", "digest")

    def __init__(self, view1, view2, labels, records, epoch, index, last_in_epoch, digest=None):
        self.view1, self.view2, self.labels, self.records = view1, view2, labels, records
        self.epoch, self.index, self.last_in_epoch, self.digest = epoch, index, last_in_epoch, digest

    def __len__(self):
        return self.labels.shape[0]

    def __repr__(self):
        return "amdim.Batch(epoch=%d, index=%d, count=%d, views=%s %s on %s)" % (
            self.epoch, self.index, len(self), tuple(self.view1.shape), self.view1.dtype, self.view1.device)


def _resolve_shard(shard):
    """(rank, size) for shard: "auto" (torch.distributed when initialised,
    else the MPI / PMIx / Slurm environment), "R/N", (R, N) or None (no sharding)."""
    if shard is None:
        return 0, 1
    if isinstance(shard, (tuple, list)):
        return _lib.parse_shard("%d/%d" % tuple(shard))
    if shard == "auto":
        dist = getattr(torch, "distributed", None)
        if dist is not None and dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    return _lib.parse_shard(shard)


class _StderrPump:
    """Reads amdim-load's stderr: forwards each line to `sink` (sys.stderr
    unless None) and keeps the last lines for error messages."""

    def __init__(self, stream, sink):
        self.tail = collections.deque(maxlen=12)
        self._stream, self._sink = stream, sink
        self._thread = threading.Thread(target=self._run, name="amdim-load stderr", daemon=True)
        self._thread.start()

    def _run(self):
        for raw in iter(self._stream.readline, b""):
            line = raw.decode(errors="replace").rstrip("\n")
            self.tail.append(line)
            sink = self._sink if self._sink is not None else sys.stderr
            if sink is not False and sink is not None:
                try:
                    sink.write(line + "\n")
                    sink.flush()
                except (ValueError, OSError):  # the sink was closed (interpreter exit)
                    pass
        self._stream.close()

    def join(self, timeout):
        self._thread.join(timeout)


class _Native:
    """What must be given back, whatever happens to the Loader: the C
    consumer (amdim_loader_close: STOP, or ABORT after a failure), the
    delivery check, the page-locked rings, the amdim-load process. Holds no
    reference to the Loader, so that weakref.finalize can run it."""

    def __init__(self):
        self.lib = _lib.load()
        self.handle = None
        self.delivery = None
        self.cuda = None
        self.proc = None
        self.pump = None
        self.closed = False
        self.wait = 0.0  # amdim_loader_wait_seconds when it was closed

    def close(self):
        if self.closed:
            return
        self.closed = True
        if self.cuda is not None:
            self.cuda.close()
            self.cuda = None
        if self.delivery:
            self.lib.amdim_delivery_free(self.delivery)
            self.delivery = None
        if self.handle:
            self.wait = float(self.lib.amdim_loader_wait_seconds(self.handle))
            self.lib.amdim_loader_close(self.handle)
            self.handle = None
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.stdout is not None:
                proc.stdout.close()
            try:  # STOP was sent: it exits at once; else end it
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if self.pump is not None:
            self.pump.join(1.0)


class Loader:
    """Batches of AMDIM view pairs from amdim-load, zero-copy.

    Loader(path, split="train", batch=256, workers=None, epochs=1, seed=0,
           decode="scaled", shard="auto", device=None, state=None, ...)
    starts `amdim-load` on the packed dataset `path` (found as $AMDIM_LOAD,
    beside the package, or on $PATH) and attaches to it; Loader.attach(fileobj)
    attaches to an amdim-load already writing into fileobj (a pipe).

    batch is the global batch: with shard (R, N) this rank receives its
    share, batch / N pairs of every global batch, so N ranks together see
    exactly the batches one process would. epochs is the whole run's
    count (default 1, or the state's): with state= (from state_dict()) the
    loader continues with the next batch and ends where the uninterrupted
    run would.

    Keyword-only: preset (default: implied by the data), slots, keep_last,
    respawn, queue_depth, progress (a tqdm bar if tqdm is installed; off by
    default), verify (check every batch against the seed and digest it as
    amdim-peek does: see delivery()), log (where amdim-load's stderr goes:
    None sys.stderr, False nowhere, or a file object), amdim_load (the
    program), extra_args (more amdim-load options).
    """

    def __init__(self, path, split="train", batch=256, workers=None, epochs=None, seed=0, decode="scaled",
                 shard="auto", device=None, state=None, *, preset=None, slots=None, keep_last=False, respawn=0,
                 queue_depth=None, progress=False, verify=False, log=None, amdim_load=None, extra_args=()):
        if decode not in DECODE_MODES:
            raise ValueError("amdim: decode must be one of %s, got %r" % (", ".join(DECODE_MODES), decode))
        if not os.path.exists(path):
            raise FileNotFoundError("amdim: no dataset at %s" % path)
        rank, size = _resolve_shard(shard)
        start_epoch, start_batch, run_epochs, seed = self._plan(state, epochs, seed, batch)
        args = [amdim_load or _lib.amdim_load_path(), "--split", split, "--batch", str(int(batch)),
                "--epochs", str(max(1, run_epochs)), "--seed", str(int(seed)), "--decode", decode]
        if workers is not None:
            args += ["--workers", str(int(workers))]
        if size > 1:
            args += ["--shard", "%d/%d" % (rank, size)]
        if preset:
            args += ["--preset", preset]
        if slots is not None:
            args += ["--slots", str(int(slots))]
        if queue_depth is not None:
            args += ["--queue-depth", str(int(queue_depth))]
        if keep_last:
            args.append("--keep-last")
        if respawn:
            args += ["--respawn", str(int(respawn))]
        args += list(extra_args) + [path]
        native = _Native()
        self._native = native
        self._finalizer = weakref.finalize(self, native.close)
        native.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, close_fds=True)
        native.pump = _StderrPump(native.proc.stderr, log)
        self._setup(native.proc.stdout.fileno(), seed, start_epoch, start_batch, run_epochs, device, progress,
                    verify, int(batch))

    @classmethod
    def attach(cls, fileobj=None, seed=None, epochs=None, state=None, device=None, *, progress=False,
               verify=False):
        """Attaches to an amdim-load writing into fileobj (default sys.stdin),
        e.g. `amdim-load data.lmdb | python3 train.py`. seed and epochs (the
        run's total) override amdim-load's; state= resumes."""
        if fileobj is None:
            fileobj = sys.stdin
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        self = cls.__new__(cls)
        native = _Native()
        self._native = native
        self._finalizer = weakref.finalize(self, native.close)
        start_epoch, start_batch, run_epochs, seed = cls._plan(state, epochs, seed, None)
        self._fileobj = fileobj  # the pipe stays open while attached
        self._setup(fd, seed, start_epoch, start_batch, run_epochs, device, progress, verify,
                    int(state["batch_size"]) if state and "batch_size" in state else None)
        return self

    @staticmethod
    def _plan(state, epochs, seed, batch):
        """(start epoch, start batch, epochs to run or None, seed) for a fresh run or a resumed one."""
        if state is None:
            return 0, 0, epochs if epochs is not None or batch is None else 1, seed
        for key in ("seed", "epoch", "batch", "epochs"):
            if key not in state:
                raise ValueError("amdim: state has no %r: pass what Loader.state_dict() returned" % key)
        if batch is not None and int(state.get("batch_size", batch)) != batch:
            raise ValueError("amdim: the state comes from a run with batch %d, not %d: its batches would differ"
                             % (state["batch_size"], batch))
        total = int(epochs if epochs is not None else state["epochs"])
        return int(state["epoch"]), int(state["batch"]), total - int(state["epoch"]), int(state["seed"])

    def _setup(self, fd, seed, start_epoch, start_batch, run_epochs, device, progress, verify, batch):
        native = self._native
        lib = native.lib
        req = _lib.Request(has_seed=0, seed=0, start_epoch=-1, start_batch=-1, epochs=-1)
        if seed is not None:
            req.has_seed, req.seed = 1, int(seed)
        if start_epoch or start_batch:
            req.start_epoch, req.start_batch = int(start_epoch), int(start_batch)
        self._empty = run_epochs is not None and run_epochs <= 0  # a state at the end: nothing left
        if run_epochs is not None:
            req.epochs = max(1, int(run_epochs))
        handle = ctypes.c_void_p()
        err = ctypes.create_string_buffer(2048)
        st = lib.amdim_loader_attach(ctypes.byref(handle), fd, ctypes.byref(req), err, len(err))
        if st:
            msg = err.value.decode(errors="replace")
            native.close()
            raise LoaderError("attaching to amdim-load failed: %s (%s)" % (_lib.strerror(st), msg), _lib.STATUS.get(st),
                              self._log())
        native.handle = handle
        info = lib.amdim_loader_get_info(handle).contents
        self.preset = info.preset.decode()
        self.split = info.split.decode()
        self.size = int(info.size)
        self.local_batch = int(info.batch)
        self.shard = (int(info.shard_rank), int(info.shard_size))
        self.batch_size = self.local_batch * self.shard[1]
        self.workers = int(info.workers)
        self.records = int(info.records)
        self.classes = int(info.classes)
        self.seed = int(info.seed)
        self.batches_per_epoch = int(info.batches_per_epoch)
        self.start = (int(info.start_epoch), int(info.start_batch))
        self.end_epoch = int(info.start_epoch + info.epochs)
        self.loader_pid = int(info.loader_pid)
        if batch is not None and self.batch_size != batch:
            native.close()
            raise ValueError("amdim: amdim-load makes batches of %d, not %d (the state's or the one asked for)"
                             % (self.batch_size, batch))
        self._next_pos = self.start
        self._cb = _lib.CBatch()
        self._held = False
        self._done = self._empty
        self._counts = None
        self._arrays = {}
        # one uint8 tensor per ring aliasing all of it: each batch's views are slices
        self._rings = []
        for w in range(self.workers):
            base, nbytes = ctypes.c_void_p(), ctypes.c_size_t()
            lib.amdim_loader_ring_memory(handle, w, ctypes.byref(base), ctypes.byref(nbytes))
            self._rings.append((int(base.value), int(nbytes.value), self._alias(base.value, nbytes.value)))
        self._view_bytes = self.size * self.size * 3
        self._progress = progress
        if verify:
            native.delivery = lib.amdim_delivery_new(handle)
            if not native.delivery:
                raise MemoryError("amdim: amdim_delivery_new")
        self.device = None
        if device is not None and torch.device(device).type != "cpu":
            from . import _cuda
            self.device = torch.device(device)
            native.cuda = _cuda.Stager(self.device, [(b, n) for b, n, _ in self._rings], self.local_batch,
                                       self.size)
            self.device = native.cuda.device

    def _alias(self, address, nbytes):
        """A uint8 tensor over nbytes at address (no copy; the memory stays the C side's)."""
        t = self._arrays.get(nbytes)
        if t is None:
            t = self._arrays[nbytes] = ctypes.c_uint8 * nbytes
        return torch.frombuffer(t.from_address(address), dtype=torch.uint8)

    def _log(self):
        pump = getattr(self._native, "pump", None)
        return list(pump.tail) if pump is not None else []

    # ---- the protocol of a PyTorch data source -------------------------------

    def __len__(self):
        """Batches per epoch for this rank."""
        return self.batches_per_epoch

    def __iter__(self):
        """The remaining batches of every requested epoch, in (epoch, index)
        order. Iterating again after a break continues where it stopped."""
        bar = self._bar()
        try:
            while True:
                b = self._next()
                if b is None:
                    return
                yield b
                if bar is not None:
                    bar.update(1)
        except (KeyboardInterrupt, LoaderError):
            self.close()  # Ctrl-C or a fault: stop the pipeline, leave no process behind
            raise
        finally:
            if bar is not None:
                bar.close()

    def _bar(self):
        if not self._progress:
            return None
        try:
            from tqdm import tqdm
        except ImportError:
            return None
        e, b = self._next_pos
        left = max(0, (self.end_epoch - e) * self.batches_per_epoch - b)
        return tqdm(total=left, unit="batch", desc="amdim", dynamic_ncols=True, smoothing=0.1)

    def _release(self):
        if self._held:
            self._held = False
            if self._native.cuda is not None:
                self._native.cuda.before_release()
            self._native.lib.amdim_loader_release(self._native.handle, ctypes.byref(self._cb))

    def _next(self):
        native = self._native
        if native.closed:
            if self._done:
                return None
            raise LoaderError("the loader is closed")
        self._release()
        if self._done:
            self._finish()
            return None
        cb = self._cb
        rc = native.lib.amdim_loader_next(native.handle, ctypes.byref(cb))
        if rc == 1:
            self._done = True
            self._finish()
            return None
        if rc < 0:
            msg = native.lib.amdim_loader_error(native.handle).decode(errors="replace")
            self._done = True
            native.close()  # ABORT: amdim-load exits 1 and its workers with it
            raise LoaderError(msg, _lib.STATUS.get(rc, rc), self._log())
        self._held = True
        digest = int(native.lib.amdim_delivery_add(native.delivery, ctypes.byref(cb))) if native.delivery else None
        n = int(cb.count)
        labels = self._alias(cb.labels, 4 * n).view(torch.int32).to(torch.int64)
        records = self._alias(cb.records, 8 * n).view(torch.int64).clone()
        base, _, ring = self._rings[cb.ring]
        nv = n * self._view_bytes
        o1, o2 = cb.view1 - base, cb.view2 - base
        shape = (n, self.size, self.size, 3)
        v1, v2 = ring[o1:o1 + nv].view(shape), ring[o2:o2 + nv].view(shape)
        epoch, index = int(cb.epoch), int(cb.index)
        self._next_pos = (epoch, index + 1) if index + 1 < self.batches_per_epoch else (epoch + 1, 0)
        if native.cuda is not None:
            v1, v2, labels, records = native.cuda.stage(v1, v2, labels, records)
        return Batch(v1, v2, labels, records, epoch, index, bool(cb.last_in_epoch), digest)

    def _finish(self):
        """Every requested batch was delivered: the delivery counts, then the pipeline ends."""
        native = self._native
        if native.delivery and self._counts is None:
            self._counts = native.lib.amdim_delivery_finish(native.delivery).as_dict()
        native.close()

    # ---- resume --------------------------------------------------------------

    def state_dict(self):
        """Where to resume: the seed and the batch after the last one
        delivered (the one being used counts as done). Pass it as state= to
        a new Loader (or Loader.attach) to continue with exactly that batch."""
        e, b = self._next_pos
        return {"version": 1, "seed": self.seed, "epoch": e, "batch": b, "epochs": self.end_epoch,
                "batch_size": self.batch_size, "records": self.records, "split": self.split}

    # ---- checks and figures --------------------------------------------------

    def delivery(self):
        """With verify=True, what amdim-peek prints: pairs, batches, epochs,
        duplicates, missing, mismatched and the digest of everything delivered
        (equal to amdim-peek's for the same seed and batches). Ends the check:
        call it after the loop."""
        native = self._native
        if self._counts is None:
            if not native.delivery:
                raise RuntimeError("amdim: delivery() needs Loader(..., verify=True)")
            self._release()
            self._counts = native.lib.amdim_delivery_finish(native.delivery).as_dict()
        return dict(self._counts)

    def wait_seconds(self):
        """Seconds spent waiting for batches so far (until it was closed)."""
        native = self._native
        return float(native.lib.amdim_loader_wait_seconds(native.handle)) if native.handle else native.wait

    # ---- lifetime ------------------------------------------------------------

    def close(self):
        """Ends the pipeline: the views of the last batch become invalid, the
        rings are unmapped, amdim-load is told STOP and (when this Loader
        started it) waited for; idempotent. Also on garbage collection and
        at the end of a with block."""
        self._held = False
        self._native.close()

    @property
    def closed(self):
        return self._native.closed

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __repr__(self):
        return "amdim.Loader(%s split %s, %d records, batch %d (%d here, shard %d/%d), %dx%d views, %d workers, " \
               "seed %d, %s)" % (self.preset, self.split, self.records, self.batch_size, self.local_batch,
                                 self.shard[0], self.shard[1], self.size, self.size, self.workers, self.seed,
                                 "closed" if self.closed else "at epoch %d batch %d" % self._next_pos)
