"""The only importer of the compiled parts: ``shmarray._ring`` (the C core, through cffi) and
``shmarray._lease`` (the lease objects, a CPython extension that calls the core's entry points
handed over here).

Status codes from C become exceptions in one place per layer; a missing build explains how to
build. The dtype allowlist of the channel core lives in C; its numpy side is built here.
"""

from __future__ import annotations

from typing import Any, NoReturn

import numpy as np

from ..errors import ClosedError, CorruptSegmentError, InternalError, ShmArrayError

try:
    from .. import _lease, _ring  # type: ignore[attr-defined]
except ImportError as exc:  # pragma: no cover - only without a build
    raise ImportError(
        "shmarray's compiled parts (shmarray._ring, shmarray._lease) are not built. Install "
        "the package with 'pip install .' (or 'pip install -e .') from the source tree; it "
        "compiles csrc/ once at install time (needs a C compiler and the Python headers)."
    ) from exc

ffi: Any = _ring.ffi
lib: Any = _ring.lib
lease: Any = _lease

#: Bumped whenever csrc/ and the Python layer must change together.
SEG_ABI_VERSION = 100
CHAN_ABI_VERSION = 2


def seg_field(rc: int) -> str:
    """The header field a negative ``shm_seg_*`` status code names."""
    return str(ffi.string(lib.shm_seg_field(rc)).decode())


def raise_corrupt(what: str, rc: int, fix: str = "") -> NoReturn:
    """Raise CorruptSegmentError for a failed header check ``rc`` of ``what``."""
    field = seg_field(rc)
    msg = f"{what} is corrupt: header field '{field}' failed validation"
    if fix:
        msg += f" ({fix})"
    raise CorruptSegmentError(msg)


def chan_strerror(rc: int) -> str:
    """The text of a ``shm_chan_*`` status code."""
    return str(ffi.string(lib.shm_chan_strerror(rc)).decode())


def check_abi() -> None:
    """Raise InternalError when the compiled parts do not match this Python package."""
    for what, got, want in (("segment", int(lib.shm_seg_abi_version()), SEG_ABI_VERSION),
                            ("channel", int(lib.shm_chan_abi_version()), CHAN_ABI_VERSION),
                            ("lease", int(_lease.ABI_VERSION), CHAN_ABI_VERSION)):
        if got != want:
            raise InternalError(
                f"shmarray's compiled core has {what} ABI {got}, the Python package expects "
                f"{want}: reinstall shmarray ('pip install --force-reinstall .')"
            )


def oserror(exc: OSError, what: str) -> ShmArrayError:
    """Translate an OSError about ``what`` into the shmarray exception a caller expects."""
    import errno

    from .. import errors

    e = exc.errno
    if e is None and "maximum number of files" in str(exc):
        e = errno.EMFILE  # posix_ipc reports EMFILE as a bare message, without errno
    cls: type[ShmArrayError]
    if e == errno.ENOENT:
        cls, hint = errors.NotFoundError, "'shmarray ls' lists what exists"
    elif e == errno.EEXIST:
        cls, hint = errors.ExistsError, "pick another name, or attach the existing one"
    elif e in (errno.EACCES, errno.EPERM):
        cls, hint = errors.AccessDeniedError, "it belongs to another user (mode 0600 by default)"
    elif e in (errno.ENOSPC, errno.ENOMEM):
        cls, hint = errors.LimitError, "/dev/shm or memory is full: 'df -h /dev/shm'"
    elif e in (errno.EMFILE, errno.ENFILE):
        cls, hint = errors.LimitError, "too many open files: raise 'ulimit -n'"
    else:
        cls, hint = errors.LimitError, exc.strerror or "OS error"
    err = cls(f"{what}: {exc.strerror or exc} ({hint})")
    err.__cause__ = exc
    return err


# -- the channel core's dtype allowlist (the C table is the single source of truth) ----------
CODE_OF: dict[str, int] = {}
DTYPE_OF: dict[int, np.dtype[Any]] = {}
for _code in range(1, int(lib.shm_chan_dtype_count()) + 1):
    _s = ffi.string(lib.shm_chan_dtype_str(_code)).decode()
    CODE_OF[_s] = _code
    DTYPE_OF[_code] = np.dtype(_s)


def _address(name: str) -> int:
    return int(ffi.cast("uintptr_t", ffi.addressof(lib, name)))


check_abi()
_lease.setup(
    tuple(_address(n) for n in (
        "shm_chan_recv", "shm_chan_latest", "shm_chan_recv_many", "shm_chan_release_many",
        "shm_chan_claim", "shm_chan_commit", "shm_chan_abort", "shm_chan_valid",
        "shm_chan_self")),
    (None,) + tuple(DTYPE_OF[c] for c in range(1, len(DTYPE_OF) + 1)),
    ClosedError, CorruptSegmentError)
