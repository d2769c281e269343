"""Discovery of shmarray objects on this machine, their owners' liveness, and cleanup.

Everything is found from /dev/shm: segments are ``shmarray.<name>``, semaphores
``sem.shmarray.<name>.<nonce>.<role>``, asyncio doorbell FIFOs
``shmarray.<name>.<nonce>.db<index>``; message queues cannot be listed where /dev/mqueue is
not mounted, so each segment header records the OS names of the objects that belong to it, and
cleanup works from those lists (it never guesses).
"""

from __future__ import annotations

import mmap
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from . import names as _names
from . import segment as _segment
from .native import lib

SEM_PREFIX = "sem." + _names.PREFIX


@dataclass
class Entry:
    """One shmarray segment (or an orphaned semaphore) as `shmarray ls` shows it."""

    name: str
    kind: str  # "array", "channel", "unknown" (header unreadable), "semaphore", "doorbell"
    #          (orphans: their segment is gone)
    size: int
    owner_pid: int = 0
    alive: bool | None = None  # owner liveness: True, False, None (cannot tell)
    created_ns: int = 0
    ready: bool = True
    detail: str = ""
    objects: list[str] = field(default_factory=list)
    problem: str = ""

    @property
    def state(self) -> str:
        if self.alive is None:
            return "unknown"
        return "alive" if self.alive else "dead"

    def age(self) -> str:
        if not self.created_ns:
            return "-"
        s = max(0.0, time.time() - self.created_ns / 1e9)
        if s < 120:
            return f"{s:.0f}s"
        if s < 7200:
            return f"{s / 60:.0f}m"
        if s < 172800:
            return f"{s / 3600:.0f}h"
        return f"{s / 86400:.0f}d"


#: Filled by upper layers: kind number -> function(mapping, info) -> detail text.
describers: dict[int, Callable[[Any, Any], str]] = {}


def _describe_array(info: Any) -> str:
    from .native import ffi

    shape = tuple(int(info.shape[i]) for i in range(min(int(info.ndim), 64)))
    dt = ffi.string(info.dtype).decode("utf-8", "replace")
    if len(dt) > 24:
        dt = dt[:21] + "..."
    order = " F-order" if int(info.order) == 1 else ""
    return f"{dt} {shape}{order}"


def inspect(name: str) -> Entry:
    """Describe segment ``name`` (never raises for a bad or vanished segment)."""
    path = _names.segment_path(name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        try:
            size = os.stat(path).st_size
        except OSError:
            size = 0
        return Entry(name, "unknown", size, problem=exc.strerror or str(exc))
    try:
        size = os.fstat(fd).st_size
        alive = _segment.probe_owner(name, fd)
        e = Entry(name, "unknown", size, alive=alive)
        if size < lib.SHM_SEG_MIN_SIZE:
            e.ready = False
            e.problem = "being created" if alive else "half-built (creator died)"
            return e
        mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
        mapping = _segment.Mapping(name, mm, size, True)
        rc, info = _segment.read_header(mapping, require_ready=False)
        if rc not in (0, lib.SHM_SEG_NOT_READY):
            from .native import seg_field

            if rc == lib.SHM_SEG_BAD_MAGIC and mm[:8] == bytes(8) and not info.ready:
                # sized, header not written yet (a zero magic): still being created
                e.ready = False
                e.problem = "being created" if alive else "half-built (creator died)"
                return e
            e.problem = f"corrupt header (field '{seg_field(rc)}')"
            e.objects = _segment.objects_of(name, rc, info)
            return e
        f = _segment.header_fields(info)
        e.owner_pid = f["creator_pid"]
        e.created_ns = f["created_ns"]
        e.objects = f["objects"]
        e.ready = rc == 0 and int(info.ready) == 1  # read with require_ready=False: check it
        if not e.ready:
            e.problem = "being created" if alive else "half-built (creator died)"
        if f["kind"] == lib.SHM_SEG_KIND_ARRAY:
            e.kind = "array"
            if e.ready:
                e.detail = _describe_array(info)
        else:
            e.kind = "channel"
            describe = describers.get(f["kind"])
            if e.ready and describe is not None:
                try:
                    e.detail = describe(mapping, info)
                except Exception as exc:  # a corrupt ring must not break `ls`
                    e.problem = f"ring: {exc}"
        return e
    finally:
        os.close(fd)


def _orphan_semaphores(live: dict[str, Entry]) -> list[Entry]:
    out = []
    for fn in sorted(os.listdir(_names.SHM_DIR)):
        if not fn.startswith(SEM_PREFIX):
            continue
        osname = "/" + fn[len("sem."):]
        owner = fn[len(SEM_PREFIX):].split(".", 1)[0]
        e = live.get(owner)
        if e is not None and (osname in e.objects or not e.ready):
            continue
        try:
            size = os.stat(os.path.join(_names.SHM_DIR, fn)).st_size
        except OSError:
            continue
        out.append(Entry(osname, "semaphore", size, alive=False,
                         problem="orphan: its segment is gone"))
    return out


def _orphan_doorbells(live: dict[str, Entry]) -> list[Entry]:
    """Doorbell FIFOs whose channel incarnation is gone and that nobody reads (their waiter
    was killed, and the channel unlinked or re-created since)."""
    out = []
    for fn in sorted(os.listdir(_names.SHM_DIR)):
        owner = _names.doorbell_owner(fn)
        if owner is None:
            continue
        name, nonce = owner
        e = live.get(name)
        if e is not None and (_names.sub_object(name, nonce, "ctl") in e.objects
                              or not e.ready):
            continue
        if not _segment.abandoned_fifo(os.path.join(_names.SHM_DIR, fn)):
            continue  # a live waiter's (of a channel unlinked since, or just re-created)
        out.append(Entry(os.path.join(_names.SHM_DIR, fn), "doorbell", 0, alive=False,
                         problem="orphan: its channel is gone"))
    return out


def scan() -> list[Entry]:
    """Every shmarray object in /dev/shm: segments, then orphaned semaphores and doorbells."""
    entries: dict[str, Entry] = {}
    for fn in sorted(os.listdir(_names.SHM_DIR)):
        name = _names.from_segment_file(fn)
        if name is not None:
            entries[name] = inspect(name)
    return list(entries.values()) + _orphan_semaphores(entries) + _orphan_doorbells(entries)


def clean(names: list[str] | None = None, *, force: bool = False, dry_run: bool = False,
          report: Callable[[str], None] = print) -> int:
    """Remove segments whose owner is dead (with the objects their headers list) and orphaned
    semaphores; with ``names``, just those, refusing a live owner's unless ``force``.
    Returns the number of problems (refusals, failures)."""
    import posix_ipc

    problems = 0
    if names:
        targets = []
        for n in names:
            _names.validate(n)
            if not os.path.exists(_names.segment_path(n)):
                report(f"{n}: not found ('shmarray ls' lists what exists)")
                problems += 1
                continue
            targets.append(inspect(n))
        orphans: list[Entry] = []
    else:
        all_entries = scan()
        targets = [e for e in all_entries if e.kind not in ("semaphore", "doorbell")]
        orphans = [e for e in all_entries if e.kind in ("semaphore", "doorbell")]
    for e in targets:
        if e.alive and not force:
            if names:
                report(f"{e.name}: refused: its owner (pid {e.owner_pid}) is alive; "
                       "use --force to remove it anyway")
                problems += 1
            continue
        if e.alive is None and not force:
            if names:
                report(f"{e.name}: refused: cannot tell whether its owner lives ({e.problem}); "
                       "use --force")
                problems += 1
            continue
        verb = "would remove" if dry_run else "removed"
        if not dry_run:
            try:
                _segment.unlink_objects(e.objects)
                os.unlink(_names.segment_path(e.name))
            except FileNotFoundError:
                pass
            except OSError as exc:
                report(f"{e.name}: cannot remove: {exc.strerror}")
                problems += 1
                continue
        extra = f" (+{len(e.objects)} semaphores/queues)" if e.objects else ""
        report(f"{verb} {e.kind} {e.name}{extra}, owner pid {e.owner_pid} {e.state}")
    for o in orphans:
        if o.kind == "doorbell":
            if not dry_run:
                try:
                    os.unlink(o.name)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    report(f"{o.name}: cannot remove: {exc.strerror}")
                    problems += 1
                    continue
            report(f"{'would remove' if dry_run else 'removed'} orphaned doorbell {o.name}")
            continue
        if not dry_run:
            try:
                posix_ipc.unlink_semaphore(o.name)
            except posix_ipc.Error:
                pass
            # The control queue of the same incarnation, /shmarray.<name>.<nonce>.ctl, cannot
            # be listed where /dev/mqueue is not mounted; its orphaned semaphores name it.
            try:
                posix_ipc.unlink_message_queue(o.name.rsplit(".", 1)[0] + ".ctl")
            except posix_ipc.Error:
                pass
        report(f"{'would remove' if dry_run else 'removed'} orphaned semaphore {o.name}")
    return problems
