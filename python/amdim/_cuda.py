"""device="cuda": the rings page-locked once (cudaHostRegister through
PyTorch's CUDA runtime) and each batch copied to the GPU on a side stream.

Per batch k (amdim.Loader._next): the user's stream records "done with
batch k-1" (as far as its work is queued); the side stream waits for "done
with batch k-2", whose device buffer batch k reuses, and copies batch k from
the ring slot, asynchronously since the slot's pages are locked; the user's
stream waits for that copy's event (a device-side wait: the CPU goes on).
So batch k's copy runs while the GPU still works through batch k-1. The
ring slot is released at the next batch, after the copy's event completed
(before_release). Views on the device are valid until the next batch."""
import torch


class Stager:
    def __init__(self, device, rings, batch, size):
        if not torch.cuda.is_available():
            raise RuntimeError("amdim: device=%r but torch.cuda.is_available() is False" % (str(device),))
        device = torch.device(device)
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        self.device = device
        self._cudart = torch.cuda.cudart()
        self._registered = []
        with torch.cuda.device(device):
            try:
                for base, nbytes in rings:
                    self._check(self._cudart.cudaHostRegister(base, nbytes, 0), "cudaHostRegister of a %d-byte ring"
                                % nbytes)
                    self._registered.append(base)
            except Exception:
                self.close()
                raise
            self._stream = torch.cuda.Stream(device)
            shape = (batch, size, size, 3)
            self._bufs = [tuple(torch.empty(shape, dtype=torch.uint8, device=device) for _ in range(2)) +
                          tuple(torch.empty(batch, dtype=torch.int64, device=device) for _ in range(2))
                          for _ in range(2)]
            # labels and records pass through page-locked host buffers, so their copies are asynchronous too
            self._host = [tuple(torch.empty(batch, dtype=torch.int64).pin_memory() for _ in range(2)) for _ in range(2)]
            self._user_done = [None, None]  # per buffer: the user's stream past its batch
            self._copied = None             # the held batch's copy
            self._k = 0

    def _check(self, err, what):
        code = 0 if err is None else int(err)
        if code != 0:
            raise RuntimeError("amdim: %s failed: %s (%d)" % (what, self._cudart.cudaGetErrorString(err), code))

    def stage(self, v1, v2, labels, records):
        """Queues the copy of the batch now held; returns its device tensors."""
        k, slot = self._k, self._k % 2
        self._k += 1
        user = torch.cuda.current_stream(self.device)
        prev = 1 - slot
        if k > 0:  # the previous batch's buffer: free once what the user queued so far has run
            ev = torch.cuda.Event()
            ev.record(user)
            self._user_done[prev] = ev
        d1, d2, dl, dr = self._bufs[slot]
        n = v1.shape[0]
        hl, hr = self._host[slot]  # its last copy (batch k-2) ended before batch k-1's slot was released
        hl, hr = hl[:n], hr[:n]
        hl.copy_(labels)
        hr.copy_(records)
        with torch.cuda.stream(self._stream):
            if self._user_done[slot] is not None:
                self._stream.wait_event(self._user_done[slot])
            d1, d2, dl, dr = d1[:n], d2[:n], dl[:n], dr[:n]
            d1.copy_(v1, non_blocking=True)
            d2.copy_(v2, non_blocking=True)
            dl.copy_(hl, non_blocking=True)
            dr.copy_(hr, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self._stream)
        user.wait_event(done)
        self._copied = done
        return d1, d2, dl, dr

    def before_release(self):
        """The held slot is about to go back to its worker: its copy must be over."""
        if self._copied is not None:
            self._copied.synchronize()
            self._copied = None

    def close(self):
        if getattr(self, "_stream", None) is not None:
            self._stream.synchronize()
        for base in self._registered:
            self._cudart.cudaHostUnregister(base)
        self._registered = []
