"""Named POSIX shared-memory segments: create, open, map, protect, unlink, and ownership.

On Linux ``shm_open(name)`` is ``open("/dev/shm" + name, O_NOFOLLOW | O_CLOEXEC)``; this module
uses the file directly, which gives real errno values and lets ``fstat``/``fallocate``/OFD locks
work on the same descriptor.

Ownership: the creating process holds an open-file-description lock on byte 0 of the segment
(its *owner lock*) until it unlinks the segment or dies; the kernel drops it at death, which is
how every other process tells a live owner from a dead one. The creator unlinks what it created
at ``unlink()``, at interpreter exit (atexit, and multiprocessing's exit hook for its children)
and, when opted in (:func:`cleanup_on_sigterm`), on SIGTERM; never in a forked child.
"""

from __future__ import annotations

import atexit
import errno
import mmap
import os
import signal
import stat
import threading
import time
from typing import Any, Callable

from . import faults as _faults
from . import names as _names
from .native import ffi, lib, oserror, raise_corrupt
from ..errors import (
    AccessDeniedError,
    CorruptSegmentError,
    ExistsError,
    LimitError,
    NotFoundError,
    ShmArrayError,
)

OWNER_BYTE = 0


def process_start_time(pid: int) -> int:
    """Start time of ``pid`` in clock ticks since boot (/proc/<pid>/stat field 22), 0 if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return 0
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = data[data.rindex(b")") + 2:].split()
    return int(fields[19])


class Deadline:
    """A monotonic deadline for ``timeout=None | 0 | seconds``."""

    __slots__ = ("timeout", "end")

    def __init__(self, timeout: float | None) -> None:
        if timeout is not None and timeout < 0:
            raise ValueError(f"timeout must be None or >= 0, not {timeout!r}")
        self.timeout = timeout
        self.end = None if timeout is None else time.monotonic() + timeout

    def remaining(self) -> float | None:
        """Seconds left (>= 0), or None for no deadline."""
        if self.end is None:
            return None
        return max(0.0, self.end - time.monotonic())

    def expired(self) -> bool:
        return self.end is not None and time.monotonic() >= self.end

    def slice(self, cap: float = 0.1) -> float:
        """The next wait slice: at most ``cap`` seconds, never past the deadline."""
        r = self.remaining()
        return cap if r is None else min(cap, r)


def _open_flags(readonly: bool) -> int:
    return (os.O_RDONLY if readonly else os.O_RDWR) | os.O_NOFOLLOW | os.O_CLOEXEC


def free_space() -> int:
    """Bytes available in /dev/shm."""
    st = os.statvfs(_names.SHM_DIR)
    return st.f_bavail * st.f_frsize


def check_space(name: str, size: int) -> None:
    """Raise LimitError when /dev/shm cannot hold ``size`` more bytes."""
    avail = free_space()
    if size > avail:
        raise LimitError(
            f"segment {name!r} needs {size:,} bytes but /dev/shm has {avail:,} free "
            "('df -h /dev/shm'; in a container raise --shm-size; 'shmarray clean' removes "
            "leftovers)"
        )


class Mapping:
    """One process's mapping of a segment. The mmap is unmapped when the last ndarray that uses
    it is collected (arrays reference the mmap object), never under a live view."""

    __slots__ = ("name", "mm", "size", "readonly", "addr", "_buf", "closed", "__weakref__")

    def __init__(self, name: str, mm: mmap.mmap, size: int, readonly: bool) -> None:
        self.name = name
        self.mm = mm
        self.size = size
        self.readonly = readonly
        self._buf = ffi.from_buffer(mm)  # an export: the mmap cannot be closed under us
        self.addr = int(ffi.cast("uintptr_t", self._buf))
        self.closed = False

    def ptr(self, offset: int = 0) -> Any:
        return ffi.cast("char *", self._buf) + offset

    def protect(self, readonly: bool) -> None:
        rc = lib.shm_seg_protect(self.ptr(), self.size, 1 if readonly else 0)
        if rc < 0:
            raise oserror(OSError(-rc, os.strerror(-rc)), f"mprotect of segment {self.name!r}")


def read_header(mapping: Mapping, require_ready: bool = True) -> Any:
    """Copy the header of a mapping once into a private ``shm_seg_info``; return (rc, info)."""
    info = ffi.new("shm_seg_info *")
    rc = lib.shm_seg_read(mapping.ptr(), mapping.size, info, 1 if require_ready else 0)
    return rc, info


def objects_of(name: str, rc: int, info: Any) -> list[str]:
    """The OS objects that belong to segment ``name`` by the header read with status ``rc``: the
    list it records; or, when only that list fails validation (scribbled over) in a channel's
    header, the control queue derived from the name and the nonce (names are derived in one
    place, so this is the name its creator gave it)."""
    if rc in (0, lib.SHM_SEG_NOT_READY):
        objects: list[str] = header_fields(info)["objects"]
        return objects
    if rc == lib.SHM_SEG_BAD_OBJECTS and int(info.kind) != lib.SHM_SEG_KIND_ARRAY:
        return [_names.sub_object(name, int(info.nonce), "ctl")]
    return []


def header_fields(info: Any) -> dict[str, Any]:
    """The common header fields of a validated ``shm_seg_info`` as Python values."""
    return {
        "kind": int(info.kind),
        "name": ffi.string(info.name).decode(),
        "creator_pid": int(info.creator_pid),
        "creator_start": int(info.creator_start),
        "created_ns": int(info.created_ns),
        "nonce": int(info.nonce),
        "total_size": int(info.total_size),
        "mode": int(info.mode),
        "objects": [o for o in ffi.string(info.objects).decode().split("\n") if o],
    }


# ---------------------------------------------------------------------------------------------
# Ownership: what this process created and must unlink.

class _Owned:
    __slots__ = ("name", "nonce", "lock_fd", "pid", "objects")

    def __init__(self, name: str, nonce: int, lock_fd: int) -> None:
        self.name = name
        self.nonce = nonce
        self.lock_fd = lock_fd
        self.pid = os.getpid()
        # the semaphores / queue the header listed when we published it: our own unlink uses
        # this private copy, so a peer scribbling on the header cannot make us leak them
        self.objects: list[str] = []


_owned: dict[str, _Owned] = {}
_owned_lock = threading.Lock()
_hooks_pid = 0


def _after_fork_in_child() -> None:
    # A forked child must neither unlink its parent's objects nor keep their owner locks alive
    # after the parent dies: drop its copies of the lock descriptors (closing a copy does not
    # release the parent's lock, which belongs to the shared open file description).
    global _owned_lock
    _owned_lock = threading.Lock()
    for o in list(_owned.values()):
        try:
            os.close(o.lock_fd)
        except OSError:
            pass
    _owned.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def cleanup_owned() -> None:
    """Unlink every object this process created and still owns (idempotent)."""
    for o in list(_owned.values()):
        if o.pid == os.getpid():
            try:
                unlink(o.name, o.nonce)
            except (NotFoundError, OSError):
                pass


def _install_exit_hooks() -> None:
    global _hooks_pid
    if _hooks_pid == os.getpid():
        return
    _hooks_pid = os.getpid()
    atexit.register(cleanup_owned)
    try:  # multiprocessing children leave through os._exit after running these finalizers
        from multiprocessing import util

        util.Finalize(None, cleanup_owned, exitpriority=0)
    except Exception:  # pragma: no cover
        pass


def cleanup_on_sigterm() -> None:
    """Opt in: on SIGTERM, unlink what this process owns, then exit with status 143.

    A previously installed Python handler is called after the cleanup. Must be called from the
    main thread (a Python rule for signal handlers).
    """
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum: int, frame: Any) -> None:
        cleanup_owned()
        if callable(previous):
            previous(signum, frame)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def owned_nonce(name: str) -> int | None:
    o = _owned.get(name)
    return o.nonce if o is not None and o.pid == os.getpid() else None


def owned_fd(name: str, nonce: int) -> int:
    """The descriptor this process created segment ``name`` (incarnation ``nonce``) with (its
    owner lock lives on it): :func:`reopen` it for descriptors of that incarnation."""
    o = _owned.get(name)
    if o is None or o.pid != os.getpid() or o.nonce != nonce:
        raise NotFoundError(f"segment {name!r} is not owned by this process")
    return o.lock_fd


# ---------------------------------------------------------------------------------------------
# Create / open / unlink

def probe_owner(name: str, fd: int | None = None) -> bool | None:
    """True if the segment's owner lock is held (its creator lives and has not unlinked it),
    False if not, None if it cannot be told (no permission, gone)."""
    own = fd is None
    if own:
        try:
            fd = os.open(_names.segment_path(name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None
    assert fd is not None
    try:
        rc = lib.shm_seg_lock_probe(fd, OWNER_BYTE)
        return None if rc < 0 else bool(rc)
    finally:
        if own:
            os.close(fd)


def describe_owner(name: str) -> str:
    """'owner pid 4242, alive' for messages; best effort."""
    try:
        fd = os.open(_names.segment_path(name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return "owner unknown"
    try:
        size = os.fstat(fd).st_size
        alive = probe_owner(name, fd)
        if size < 4096:
            return "being created" if alive else "half-built, creator dead"
        mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
        rc, info = read_header(Mapping(name, mm, size, True), require_ready=False)
        pid = int(info.creator_pid) if rc in (0, lib.SHM_SEG_NOT_READY) else 0
    except (OSError, ValueError):
        return "owner unknown"
    finally:
        os.close(fd)
    state = "alive" if alive else "dead" if alive is False else "liveness unknown"
    return f"owner pid {pid}, {state}" if pid else f"owner {state}"


def create(name: str, size: int, *, mode: int = 0o600, reserve: bool = False,
           init: Callable[[Mapping, int], None]) -> tuple[Mapping, int]:
    """Create, size and map segment ``name`` exclusively; ``init(mapping, nonce)`` writes the
    header (and publishes it); the segment is registered for unlinking at exit before ``init``
    runs, so nothing half-built outlives a failure. Returns (mapping, nonce).

    Raises ExistsError, LimitError (no space in /dev/shm), AccessDeniedError.
    """
    _names.validate(name)
    check_space(name, size)
    path = _names.segment_path(name)
    # The segment appears under its name only once this process holds its owner lock: it is
    # made as an unnamed O_TMPFILE, locked, then linked in (O_EXCL where tmpfiles are not
    # supported). So a visible segment with a free owner lock has a dead creator, never a live
    # one that has not locked it yet (attach would call that "never finished", and
    # `shmarray clean` would remove it under its creator).
    global _use_tmpfile
    visible = False
    try:
        fd = -1
        if _use_tmpfile:
            try:
                fd = os.open(_names.SHM_DIR, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, mode)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                    raise
                _use_tmpfile = False
        if fd < 0:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         mode)
            visible = True
    except FileExistsError:
        raise _exists_error(name) from None
    except OSError as exc:
        raise oserror(exc, f"cannot create segment {name!r}") from exc
    nonce = _names.new_nonce()
    linking = False
    try:
        _faults.point("segment.opened")  # fault point (tests/faults)
        os.fchmod(fd, mode)  # exactly the mode asked for, whatever the umask
        rc = lib.shm_seg_lock_try(fd, OWNER_BYTE)
        if rc != 0:
            raise LimitError(f"cannot take the owner lock of segment {name!r}: "
                             f"{os.strerror(-rc) if rc < 0 else 'held by another process'}")
        if not visible:
            linking = True
            _link_tmpfile(fd, name)  # ExistsError; an OSError: fall back to O_EXCL
            linking = False
            visible = True
        with _owned_lock:
            _install_exit_hooks()
            _owned[name] = _Owned(name, nonce, fd)
    except BaseException as exc:
        os.close(fd)
        if visible:
            _unlink_path(path)
        if linking and type(exc) is OSError and exc.errno in _NO_LINKAT:
            _use_tmpfile = False  # no linkat through /proc here: use O_EXCL from now on
            return create(name, size, mode=mode, reserve=reserve, init=init)
        if isinstance(exc, OSError) and not isinstance(exc, ShmArrayError):
            raise oserror(exc, f"cannot create segment {name!r}") from exc
        raise
    try:
        _faults.point("segment.locked")  # fault point (tests/faults)
        os.ftruncate(fd, size)
        if reserve:
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.ENOMEM, errno.EFBIG):
                    raise LimitError(
                        f"cannot reserve {size:,} bytes for segment {name!r}: /dev/shm is full "
                        "('df -h /dev/shm'; in a container raise --shm-size)"
                    ) from exc
                raise
        _faults.point("segment.truncated")  # fault point (tests/faults)
        mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        mapping = Mapping(name, mm, size, False)
        init(mapping, nonce)
        rc, info = read_header(mapping, require_ready=False)
        o = _owned.get(name)
        if rc in (0, lib.SHM_SEG_NOT_READY) and o is not None and o.nonce == nonce:
            o.objects = header_fields(info)["objects"]
    except BaseException as exc:
        _forget(name)
        _unlink_path(path)
        if isinstance(exc, OSError) and not isinstance(exc, LimitError):
            raise oserror(exc, f"cannot create segment {name!r}") from exc
        raise
    return mapping, nonce


_use_tmpfile = True  # create segments as O_TMPFILE + link (False: where that fails)
# linkat errors that mean "not possible here" (no /proc, a filesystem or policy that refuses):
# fall back to O_EXCL; anything else (EMFILE, ENOSPC...) is a real error
_NO_LINKAT = (errno.EXDEV, errno.ENOENT, errno.EPERM, errno.EACCES, errno.EOPNOTSUPP,
              errno.EINVAL, errno.ENOSYS)


def _link_tmpfile(fd: int, name: str) -> None:
    """Give the unnamed file ``fd`` its segment name (linkat with AT_SYMLINK_FOLLOW through
    /proc/self/fd, which needs no privilege); ExistsError if the name is taken."""
    dfd = os.open(_names.SHM_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        # dst_dir_fd makes os.link call linkat() (plain link() does not follow the symlink)
        os.link(f"/proc/self/fd/{fd}", _names.PREFIX + name, dst_dir_fd=dfd,
                follow_symlinks=True)
    except FileExistsError:
        raise _exists_error(name) from None
    finally:
        os.close(dfd)


def _exists_error(name: str) -> ExistsError:
    return ExistsError(
        f"segment {name!r} already exists ({describe_owner(name)}); attach it with "
        f"shmarray.attach({name!r}) or shmarray.Channel.open({name!r}), or pick another name"
        " ('shmarray clean' removes segments whose owner died)"
    )


def _same_file(fd: int, st: os.stat_result) -> bool:
    try:
        mine = os.fstat(fd)
    except OSError:
        return False
    return (mine.st_dev, mine.st_ino) == (st.st_dev, st.st_ino)


def _forget(name: str) -> None:
    with _owned_lock:
        o = _owned.pop(name, None)
    if o is not None:
        try:
            os.close(o.lock_fd)
        except OSError:
            pass


def _unlink_path(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def open_mapping(name: str, readonly: bool, timeout: float | None,
                 kind_hint: str = "segment") -> tuple[Mapping, Any]:
    """Open and map segment ``name`` once its header is complete; return (mapping, info).

    As :func:`open_segment`, without keeping the descriptor."""
    mapping, info, fd = open_segment(name, readonly, timeout, kind_hint)
    os.close(fd)
    return mapping, info


def open_segment(name: str, readonly: bool, timeout: float | None,
                 kind_hint: str = "segment") -> tuple[Mapping, Any, int]:
    """Open and map segment ``name`` once its header is complete; return (mapping, info, fd).

    ``fd`` is the descriptor of the incarnation that was mapped (the caller closes it): locks
    and further mappings taken through it (:func:`reopen`) follow that incarnation even after
    the name is unlinked and created again. Blocks until the segment exists and its creator has
    published its header, up to ``timeout`` (None: forever; 0: not at all). Raises
    NotFoundError (absent past the timeout), AccessDeniedError, CorruptSegmentError (a header
    field fails validation, or the segment was never finished: its creator died, or it stayed
    unpublished past the timeout).
    """
    _names.validate(name)
    path = _names.segment_path(name)
    deadline = Deadline(timeout)
    pause = 0.001
    dead_polls = 0
    while True:
        try:
            fd = os.open(path, _open_flags(readonly))
        except FileNotFoundError:
            if deadline.expired():
                waited = ("pass timeout=SECONDS to wait for its creator" if not timeout
                          else f"waited {timeout:g} s for its creator")
                raise NotFoundError(
                    f"{kind_hint} {name!r} not found ({waited}; is the producer running? "
                    "'shmarray ls' lists segments)"
                ) from None
            time.sleep(min(pause, deadline.slice()))
            pause = min(pause * 2, 0.05)
            continue
        except PermissionError:
            try:
                owner = os.stat(path).st_uid
            except OSError:
                owner = -1
            raise AccessDeniedError(
                f"{kind_hint} {name!r} belongs to uid {owner} and is not shared with uid "
                f"{os.getuid()} (segments are mode 0600 unless created with mode=...)"
            ) from None
        except OSError as exc:
            raise oserror(exc, f"cannot open {kind_hint} {name!r}") from exc
        keep = False
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise CorruptSegmentError(f"{kind_hint} {name!r} is not a regular file")
            size = st.st_size
            if size >= 4096:
                prot = mmap.PROT_READ | (0 if readonly else mmap.PROT_WRITE)
                try:
                    mm = mmap.mmap(fd, size, mmap.MAP_SHARED, prot)
                except OSError as exc:  # EMFILE (mmap dups the descriptor), ENOMEM
                    raise oserror(exc, f"cannot map {kind_hint} {name!r}") from exc
                mapping = Mapping(name, mm, size, readonly)
                word = int(lib.shm_seg_ready(mapping.ptr(), size))
                ready = word == 1
                # A segment being created has an all-zero magic until its header is written;
                # any other wrong magic is not ours (or scribbled on): say so now.
                if word > 1 and mm[:8] == bytes(8):  # the creator writes only 0, then 1
                    raise_corrupt(f"{kind_hint} {name!r}", lib.SHM_SEG_BAD_READY,
                                  f"it holds {word:#x}; 'shmarray clean {name}' removes the "
                                  "segment once its owner is dead")
                if ready or mm[:8] != bytes(8):
                    rc, info = read_header(mapping)
                    if rc != 0 and (ready or rc != lib.SHM_SEG_NOT_READY):
                        raise_corrupt(f"{kind_hint} {name!r}", rc,
                                      f"'shmarray clean {name}' removes it if its owner is dead")
                    if rc == 0:
                        keep = True
                        return mapping, info, fd
                del mapping, mm
            # Not complete yet: still being created, or abandoned by a dead creator.
            alive = probe_owner(name, fd)
        finally:
            if not keep:
                os.close(fd)
        dead_polls = dead_polls + 1 if alive is False else 0
        if dead_polls >= 3:
            raise CorruptSegmentError(
                f"{kind_hint} {name!r} was never finished: its creator died while creating it "
                f"(header field 'ready' is 0); remove it with 'shmarray clean {name}'"
            )
        if deadline.expired():
            raise CorruptSegmentError(
                f"{kind_hint} {name!r} is still not ready after {timeout:g} s (header field "
                f"'ready' is 0; is its creator stuck? 'shmarray ls' shows it)"
            )
        time.sleep(min(pause, deadline.slice()))
        pause = min(pause * 2, 0.05)


def reopen(fd: int, readonly: bool = False) -> int:
    """A new open file description of the file behind ``fd`` (not of whatever now bears its
    name): liveness locks taken through it belong to the incarnation ``fd`` opened."""
    # (no O_NOFOLLOW: /proc/self/fd/N is the magic link to the file itself)
    return os.open(f"/proc/self/fd/{fd}", (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC)


def unlink_objects(objects: list[str]) -> None:
    """Unlink the queue (and, from older versions, semaphores) a segment header lists, and the
    doorbell FIFOs of the same incarnation (missing ones are fine)."""
    import posix_ipc

    for obj in objects:
        try:
            if obj.endswith(".ctl"):
                posix_ipc.unlink_message_queue(obj)
            else:
                posix_ipc.unlink_semaphore(obj)
        except posix_ipc.ExistentialError:
            pass
        except posix_ipc.PermissionsError:
            pass
        if obj.endswith(".ctl"):  # /shmarray.<name>.<nonce>.ctl -> .../shmarray.<name>.<nonce>.db*
            unlink_doorbells(f"{_names.SHM_DIR}{obj[:-len('ctl')]}db")


def unlink_doorbells(prefix: str) -> None:
    """Remove the doorbell FIFOs ``<prefix><index>`` (shmarray.aio) that killed waiters left;
    a live waiter's stays (it may still be rung by processes that have the channel open, and
    removes its own when it closes)."""
    head, _, stem = prefix.rpartition("/")
    try:
        files = os.listdir(head)
    except OSError:
        return
    for fn in files:
        if fn.startswith(stem) and fn[len(stem):].isdigit():
            path = os.path.join(head, fn)
            if abandoned_fifo(path):
                try:
                    os.unlink(path)
                except OSError:
                    pass


def abandoned_fifo(path: str) -> bool:
    """True when ``path`` is a FIFO that nobody reads (its waiter is gone): opening it for
    writing without blocking fails with ENXIO exactly then. Never writes to it."""
    try:
        if not stat.S_ISFIFO(os.lstat(path).st_mode):
            return False
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as exc:
        return exc.errno == errno.ENXIO
    os.close(fd)
    return False


def unlink(name: str, nonce: int | None = None) -> None:
    """Remove segment ``name`` and the objects its header lists; the memory lives on in every
    process that still maps it. With ``nonce``, only that incarnation is removed.

    Raises NotFoundError when there is no such segment (or it is another incarnation),
    AccessDeniedError.
    """
    _names.validate(name)
    path = _names.segment_path(name)
    objects: list[str] = []
    mine = _owned.get(name)
    if mine is not None and (mine.pid != os.getpid() or nonce not in (None, mine.nonce)):
        mine = None
    if mine is not None:
        # our own segment (the file we hold the owner lock of): unlink what we created,
        # whatever its header says now; no descriptor needed, so this works at EMFILE too
        try:
            same = _same_file(mine.lock_fd, os.stat(path, follow_symlinks=False))
        except FileNotFoundError:
            same = False
        if same:
            unlink_objects(list(mine.objects))
            _faults.point("segment.unlink")  # fault point (tests/faults)
            _unlink_path(path)
            _forget(name)
            return
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        _forget(name)
        raise NotFoundError(f"segment {name!r} not found: already unlinked? "
                            "('shmarray ls' lists segments)") from None
    except PermissionError:
        fd = -1
    if fd >= 0:
        try:
            st = os.fstat(fd)
            size = st.st_size
            if size >= 4096:
                mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
                rc, info = read_header(Mapping(name, mm, size, True), require_ready=False)
                if rc in (0, lib.SHM_SEG_NOT_READY, lib.SHM_SEG_BAD_OBJECTS):
                    if nonce is not None and int(info.nonce) != nonce:
                        _forget(name)
                        raise NotFoundError(
                            f"segment {name!r} was already unlinked (a newer segment of the same "
                            "name exists and was left alone)")
                objects = objects_of(name, rc, info)
        finally:
            os.close(fd)
    unlink_objects(objects)  # first: a crash in between leaves the segment that lists them
    _faults.point("segment.unlink")  # fault point (tests/faults)
    try:
        os.unlink(path)
    except FileNotFoundError:
        _forget(name)
        raise NotFoundError(f"segment {name!r} not found: already unlinked?") from None
    except PermissionError as exc:
        raise AccessDeniedError(f"cannot unlink segment {name!r}: it belongs to another user") \
            from exc
    _forget(name)
