"""cffi builder (API mode) for shmarray's C core: ``shmarray._ring``.

Compiled once by ``pip install .`` (setup.py's ``cffi_modules``); importing shmarray never runs a
compiler. Build switches (environment, at install time):
  SHMARRAY_WERROR=1           add -Werror (CI; never on a user's install)
  SHMARRAY_DEBUG=1            -O0 -g instead of -O2
  SHMARRAY_SANITIZE=address   build with AddressSanitizer + UBSan (run with LD_PRELOAD=libasan)
  SHMARRAY_SANITIZE=thread    build with ThreadSanitizer
  SHMARRAY_FAULTS=1           compile the C fault-injection hooks in (one CI job)
"""

from __future__ import annotations

import os
import pathlib

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent
SOURCES = ["seg.c", "ring.c", "probe.c", "bcast.c"]
CDEFS = ["seg.cdef", "ring.cdef", "probe.cdef", "bcast.cdef"]


def _flags() -> tuple[list[str], list[str]]:
    cflags = ["-std=gnu11", "-Wall", "-Wextra", "-fvisibility=hidden"]
    ldflags: list[str] = []
    cflags += ["-O0", "-g"] if os.environ.get("SHMARRAY_DEBUG") == "1" else ["-O2"]
    if os.environ.get("SHMARRAY_WERROR") == "1":
        # cffi's generated glue trips a few warnings that are not ours to fix.
        cflags += ["-Werror", "-Wno-error=unused-parameter", "-Wno-error=missing-field-initializers"]
    san = os.environ.get("SHMARRAY_SANITIZE", "")
    if san == "address":
        cflags += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=all"]
        ldflags += ["-fsanitize=address,undefined"]
    elif san == "thread":
        cflags += ["-fsanitize=thread"]
        ldflags += ["-fsanitize=thread"]
    elif san:
        raise SystemExit(f"SHMARRAY_SANITIZE={san!r}: use 'address' or 'thread'")
    if os.environ.get("SHMARRAY_FAULTS") == "1":
        cflags += ["-DSHM_RING_FAULTS=1"]
    return cflags, ldflags


ffibuilder = FFI()
ffibuilder.cdef("\n".join((HERE / name).read_text() for name in CDEFS))
_cflags, _ldflags = _flags()
ffibuilder.set_source(
    "shmarray._ring",
    '#include "seg.h"\n#include "ring.h"\n#include "probe.h"\n#include "bcast.h"\n',
    sources=[str((HERE / s).relative_to(HERE.parent)) for s in SOURCES],
    include_dirs=[str(HERE.relative_to(HERE.parent))],
    libraries=["rt"],
    extra_compile_args=_cflags + ["-pthread"],
    extra_link_args=_ldflags + ["-pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
