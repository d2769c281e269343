"""Build definitions of shmarray's compiled parts (used by setup.py at install time).

- ``shmarray._ring``: the C core (segment header codec, channel core, bench probe) through
  cffi in API mode: ``ffibuilder`` (setup.py's ``cffi_modules``).
- ``shmarray._lease``: the lease objects, a small CPython extension built against the numpy
  C API (csrc/lease.c): ``lease_extension()`` (setup.py's ``ext_modules``).

Compiled once by ``pip install .``; importing shmarray never runs a compiler. Build switches
(environment, at install time):
  SHMARRAY_WERROR=1           add -Werror (CI; never on a user's install)
  SHMARRAY_DEBUG=1            -O0 -g instead of -O2
  SHMARRAY_SANITIZE=address   build with AddressSanitizer + UBSan (run with LD_PRELOAD=libasan)
  SHMARRAY_SANITIZE=thread    build with ThreadSanitizer
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent
SOURCES = ["seg.c", "chan.c", "ring.c", "bcast.c", "probe.c"]
CDEFS = ["seg.cdef", "chan.cdef", "probe.cdef"]


def flags() -> tuple[list[str], list[str]]:
    """(compile flags, link flags) for every compiled part, from the build switches."""
    cflags = ["-std=gnu11", "-Wall", "-Wextra", "-fvisibility=hidden"]
    ldflags: list[str] = []
    cflags += ["-O0", "-g"] if os.environ.get("SHMARRAY_DEBUG") == "1" else ["-O2"]
    if os.environ.get("SHMARRAY_WERROR") == "1":
        # cffi's generated glue trips a few warnings that are not ours to fix.
        cflags += ["-Werror", "-Wno-error=unused-parameter",
                   "-Wno-error=missing-field-initializers"]
    san = os.environ.get("SHMARRAY_SANITIZE", "")
    if san == "address":
        cflags += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer",
                   "-fno-sanitize-recover=all"]
        ldflags += ["-fsanitize=address,undefined"]
    elif san == "thread":
        cflags += ["-fsanitize=thread"]
        ldflags += ["-fsanitize=thread"]
    elif san:
        raise SystemExit(f"SHMARRAY_SANITIZE={san!r}: use 'address' or 'thread'")
    return cflags + ["-pthread"], ldflags + ["-pthread"]


def _rel(name: str) -> str:
    return str((HERE / name).relative_to(HERE.parent))


ffibuilder = FFI()
ffibuilder.cdef("\n".join((HERE / name).read_text() for name in CDEFS))
_cflags, _ldflags = flags()
ffibuilder.set_source(
    "shmarray._ring",
    '#include "seg.h"\n#include "chan.h"\n#include "probe.h"\n',
    sources=[_rel(s) for s in SOURCES],
    include_dirs=[_rel(".")],
    libraries=["rt"],
    extra_compile_args=_cflags,
    extra_link_args=_ldflags,
)


def lease_extension() -> Any:
    """The ``shmarray._lease`` Extension (needs numpy's headers: a build requirement)."""
    import numpy
    from setuptools import Extension

    cflags, ldflags = flags()
    return Extension("shmarray._lease", [_rel("lease.c")],
                     include_dirs=[_rel("."), numpy.get_include()],
                     extra_compile_args=[f for f in cflags if f != "-std=gnu11"] + ["-std=gnu11"],
                     extra_link_args=ldflags)


if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
