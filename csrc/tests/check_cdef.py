"""Compile the channel core with chan.cdef through cffi (API mode) in a scratch directory and
smoke-test the result: proves the cdef parses and matches chan.h.
Usage: python3 check_cdef.py SCRATCH_DIR"""
import os
import sys

import cffi

here = os.path.dirname(os.path.abspath(__file__))
csrc = os.path.dirname(here)
scratch = sys.argv[1]

ffi = cffi.FFI()
with open(os.path.join(csrc, "chan.cdef")) as f:
    ffi.cdef(f.read())
ffi.set_source("_chan_check", '#include "chan.h"',
               sources=[os.path.join(csrc, n) for n in ("chan.c", "ring.c", "bcast.c")],
               include_dirs=[csrc], extra_compile_args=["-O2", "-Wall", "-Wextra", "-Werror"])
ffi.compile(tmpdir=scratch, verbose=False)
sys.path.insert(0, scratch)
from _chan_check import ffi, lib  # noqa: E402

assert lib.shm_chan_abi_version() == lib.SHM_CHAN_ABI_VERSION
n = lib.shm_chan_dtype_count()
strs = [ffi.string(lib.shm_chan_dtype_str(c)).decode() for c in range(1, n + 1)]
assert lib.shm_chan_dtype_str(0) == ffi.NULL and lib.shm_chan_dtype_str(n + 1) == ffi.NULL
try:
    import numpy as np
    for c, s in enumerate(strs, 1):
        assert np.dtype(s).str == s, s
        assert np.dtype(s).itemsize == lib.shm_chan_dtype_itemsize(c), s
except ImportError:
    pass

p = ffi.new("shm_chan_params *", dict(mode=lib.SHM_CHAN_MODE_ONE_TO_ONE, capacity=4,
                                      max_participants=2, slot_bytes=100))
size = lib.shm_chan_size(p)
buf = ffi.new("char[]", size + 4096)
base = ffi.cast("void *", (int(ffi.cast("uintptr_t", buf)) + 4095) & ~4095)
assert lib.shm_chan_format(base, size, p) == 0
prod, cons = ffi.new("shm_chan_t *"), ffi.new("shm_chan_t *")
info = ffi.new("shm_chan_info *")
bits = ffi.new("uint64_t[1]")
assert lib.shm_chan_attach(prod, base, size, info) == 0 and info.capacity == 4
assert lib.shm_chan_attach(cons, base, size, ffi.NULL) == 0
assert lib.shm_chan_register(prod, 0, lib.SHM_CHAN_ROLE_PRODUCER, os.getpid(), 0, ffi.NULL,
                             0) == 0
assert lib.shm_chan_register(cons, 1, lib.SHM_CHAN_ROLE_CONSUMER, os.getpid(), 0, bits, 1) == 0
shape = ffi.new("uint64_t[8]", [3, 4])
assert lib.shm_chan_set_schema(prod, 4 + 1, 2, shape) == 48  # <i4
data = bytes(range(48))
assert lib.shm_chan_send(prod, data, 48, 7, 0) >= 0
fr = ffi.new("shm_chan_frame *")
slot = lib.shm_chan_recv(cons, fr, ffi.NULL, 0, 0)
assert slot == 0 and fr.tag == 7 and fr.ndim == 2 and list(fr.shape)[:2] == [3, 4] and fr.held
assert ffi.string(lib.shm_chan_dtype_str(fr.dtype)) == b"<i4"
off = info.payload_off + slot * info.slot_stride
assert ffi.buffer(ffi.cast("char *", base) + off, 48)[:] == data
assert lib.shm_chan_release(cons, fr.pos, fr.gen) == 0
assert lib.shm_chan_release(cons, fr.pos, fr.gen) == lib.SHM_CHAN_STALE
assert lib.shm_chan_end(prod) == 0
assert lib.shm_chan_recv(cons, fr, ffi.NULL, 0, 0) == lib.SHM_CHAN_ENDED
print("cffi API-mode build ok")
