"""The only importer of the compiled C core (``shmarray._ring``).

Status codes from C become exceptions here, in one place. A missing build explains how to build.
"""

from __future__ import annotations

from typing import Any, NoReturn

from .errors import CorruptSegmentError, InternalError, ShmArrayError

try:
    from . import _ring  # type: ignore[attr-defined]
except ImportError as exc:  # pragma: no cover - only without a build
    raise ImportError(
        "shmarray's C core (shmarray._ring) is not built. Install the package with "
        "'pip install .' (or 'pip install -e .') from the source tree; it compiles csrc/ with "
        "cffi once at install time (needs a C compiler and the Python headers)."
    ) from exc

ffi: Any = _ring.ffi
lib: Any = _ring.lib

#: Bumped whenever csrc/ and the Python layer must change together.
SEG_ABI_VERSION = 100
RING_ABI_VERSION = 1


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


def check_abi() -> None:
    """Raise InternalError when the compiled core does not match this Python package."""
    for what, got, want in (("segment", int(lib.shm_seg_abi_version()), SEG_ABI_VERSION),
                            ("ring", int(lib.shm_ring_abi_version()), RING_ABI_VERSION)):
        if got != want:
            raise InternalError(
                f"shmarray._ring has {what} ABI {got}, the Python package expects {want}: "
                "reinstall shmarray ('pip install --force-reinstall .')"
            )


def oserror(exc: OSError, what: str) -> ShmArrayError:
    """Translate an OSError about ``what`` into the shmarray exception a caller expects."""
    import errno

    from . import errors

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


check_abi()
