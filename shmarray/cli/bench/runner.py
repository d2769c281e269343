"""Runs the measurements: spawned processes, one protocol, bounded waits, statistics.

A *group* is one transport's set of spawned children (2 for latency and throughput: ping/echo,
producer/consumer; 1 + N for fan-out to N subscribers). The parent drives each measurement
over a command pipe per child:

    parent -> child     ("run", item, info)    child: attach, prepare buffers
    child  -> parent    ("ready",)
    parent -> receivers ("go",)                echo / consumers: arm, then their loop
    receivers -> parent ("armed",)
    parent -> senders   ("go",)                ping / producer: their loop
    child  -> parent    ("done", result)
    parent -> child     ("detach",)            child: close the transport
    child  -> parent    ("detached",)          (or, at any step, ("error", text))

Every wait of the parent has a deadline; past it the group is killed (SIGKILL), the
measurement is reported as "timeout", and the next one starts with fresh children. Children
also exit when their parent disappears, and when idle for too long.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing as mp
import multiprocessing.connection
import os
import re
import secrets
import signal
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from . import transports as T

#: Children start with this working directory: outside any source tree, so that `import
#: shmarray` finds the installed build.
CHILD_CWD = "/"

# ----------------------------------------------------------------------------------------------
# sizes and items

#: label -> (bytes, frame shape)
SIZES: dict[str, tuple[int, tuple[int, ...]]] = {
    "64 B": (64, (64,)),
    "4 KiB": (4096, (4096,)),
    "64 KiB": (65536, (65536,)),
    "1 MiB": (1 << 20, (1 << 20,)),
    "1080p": (1080 * 1920 * 3, (1080, 1920, 3)),
    "4K": (2160 * 3840 * 3, (2160, 3840, 3)),
}
LATENCY_SIZES = ["64 B", "4 KiB"]
THROUGHPUT_SIZES = ["64 B", "64 KiB", "1 MiB", "1080p", "4K"]
FANOUT_SIZES = ["1080p"]
FANOUT_SUBSCRIBERS = [1, 2, 4]

QUICK_LATENCY_SIZES = ["64 B"]
QUICK_THROUGHPUT_SIZES = ["64 B", "1080p"]
QUICK_FANOUT_SUBSCRIBERS = [2]
QUICK_FANOUT_TRANSPORTS = ("shmarray-loan", "iceoryx2-event", "mp.Queue")

RING_BUDGET = 64 << 20  # bytes of slots per throughput channel (and queue depth alike)


def parse_size(text: str) -> str:
    """A size label from ``text``: a label (``64B``, ``1080p``, ``4K``: 4K UHD RGB) or a byte
    count with an optional binary unit (``4096``, ``4KiB``, ``2MiB``)."""
    t = text.strip().replace(" ", "").lower()
    for label in SIZES:
        if t == label.replace(" ", "").lower():
            return label
    m = re.fullmatch(r"(\d+)(b|kib|mib)?", t)
    if not m:
        raise ValueError(f"unknown size {text!r}: use a byte count such as 4096 or 4KiB, "
                         f"or one of {', '.join(SIZES)}")
    n = int(m.group(1)) * {None: 1, "b": 1, "kib": 1024, "mib": 1 << 20}[m.group(2)]
    if not 1 <= n <= 1 << 30:
        raise ValueError(f"size {text!r} out of range (1 byte .. 1 GiB)")
    for label, (nb, _) in SIZES.items():
        if nb == n:
            return label
    label = fmt_bytes(n)
    SIZES[label] = (n, (n,))
    return label


def fmt_bytes(n: float) -> str:
    for unit, k in (("MiB", 1 << 20), ("KiB", 1024)):
        if n >= k and n % k == 0:
            return f"{n // k:.0f} {unit}"
    return f"{n:.0f} B"


def _pow2_floor(x: int) -> int:
    return 1 << max(0, int(x).bit_length() - 1)


@dataclass(frozen=True)
class Item:
    """One measurement: a workload at one frame size (picklable; sent to the children)."""

    workload: str  # "latency" | "throughput" | "fanout"
    size: str
    nbytes: int
    shape: tuple[int, ...]
    capacity: int
    duration: float
    max_count: int  # latency: round trips; throughput: frames
    warmup: int = 0
    batch: int = 1  # consumers timestamp every `batch`-th frame (a power of two)
    subscribers: int = 1

    @property
    def workload_name(self) -> str:
        return f"fanout-{self.subscribers}" if self.workload == "fanout" else self.workload

    @property
    def key(self) -> str:
        return f"{self.workload_name}/{self.size}"

    @property
    def check_mask(self) -> int:
        """A producer reads the clock when ``i & check_mask == 0``: every 64 small frames
        (the clock is not free), every large one."""
        return 63 if self.nbytes <= 4096 else 0

    @property
    def nprocs(self) -> int:
        return 1 + self.subscribers if self.workload == "fanout" else 2

    def roles(self) -> list[tuple[str, int]]:
        if self.workload == "latency":
            return [("ping", 0), ("echo", 0)]
        return [("produce", 0)] + [("consume", i) for i in range(self.subscribers)]


def make_item(workload: str, size: str, duration: float, quick: bool,
              subscribers: int = 1) -> Item:
    nbytes, shape = SIZES[size]
    if workload == "latency":
        return Item(workload, size, nbytes, shape, capacity=4, duration=duration,
                    max_count=2_000 if quick else 50_000, warmup=50 if quick else 500)
    capacity = min(256, max(4, _pow2_floor(RING_BUDGET // nbytes)))
    # frames are bounded by time first; the count bound (2 M frames/s: above any Python
    # transport, zero copy included) only guards a runaway clock
    max_count = int(duration * 2e6) + 1000
    # consumers timestamp every `batch`-th frame: often enough for the windows and the gaps
    batch = 1 if nbytes > 2 << 20 else 2 if nbytes > 128 << 10 else \
        8 if nbytes > 8 << 10 else 32 if nbytes > 256 else 64
    return Item(workload, size, nbytes, shape, capacity=capacity, duration=duration,
                max_count=max_count, batch=batch, subscribers=subscribers)


# ----------------------------------------------------------------------------------------------
# statistics


def stats(samples: Any) -> dict[str, Any]:
    """median, p99, p1, spread (IQR / median) and n of ``samples``."""
    a = np.asarray(samples, dtype=np.float64)
    if a.size == 0:
        return {"median": None, "p99": None, "p1": None, "spread": None, "n": 0}
    p1, p25, med, p75, p99 = np.percentile(a, [1, 25, 50, 75, 99])
    return {"median": float(med), "p99": float(p99), "p1": float(p1),
            "spread": float((p75 - p25) / med) if med else None, "n": int(a.size)}


def latency_record(item: Item, res: dict[str, Any]) -> dict[str, Any]:
    one_way = np.asarray(res["samples"], dtype=np.float64) / 2
    rec = stats(one_way)
    rec.update(unit="ns one-way", bad_stamps=res["bad"])
    return rec


#: throughput is measured over this many equal windows of the receiving time (at most)
WINDOWS = 15


def _windows(marks: np.ndarray, batch: int) -> np.ndarray:  # type: ignore[type-arg]
    """ns per frame in each of up to WINDOWS equal windows spanning the marks (frame
    ``j * batch`` received at ``marks[j]``); the first window (warm-up) dropped when there are
    4 or more. A window in which no frame arrived counts as 2 windows per frame."""
    n = max(1, min(WINDOWS, (marks.size - 1) // 4))
    edges = np.linspace(marks[0], marks[-1], n + 1)
    got = np.searchsorted(marks, edges, side="right") * batch
    frames = np.diff(got).astype(np.float64)
    width = (marks[-1] - marks[0]) / n
    per_frame: np.ndarray = np.where(frames > 0, width / np.maximum(frames, 1), 2 * width)  # type: ignore[type-arg]
    return per_frame[1:] if n >= 4 else per_frame


def throughput_record(item: Item, results: list[dict[str, Any]]) -> dict[str, Any]:
    """The consumers' receipt marks as windowed rates (ns/frame per window, pooled over the
    subscribers): median, p99, spread; frames/s from the median. Windows of about duration / 15
    are long against scheduler quanta and bursts, so a transport that delivers in bursts is
    not credited with its burst rate; the mean over the whole run is kept too."""
    windows: list[np.ndarray] = []  # type: ignore[type-arg]
    gaps: list[np.ndarray] = []  # type: ignore[type-arg]
    frames = bad = 0
    mean_fps = []
    for res in results:
        marks = np.asarray(res["marks"], dtype=np.float64)
        frames += res["count"]
        bad += res["bad"]
        if marks.size < 2:
            continue
        windows.append(_windows(marks, res["batch"]))
        gaps.append(np.diff(marks) / res["batch"])
        mean_fps.append(res["batch"] * (marks.size - 1) / (marks[-1] - marks[0]) * 1e9)
    if not windows:
        return {"status": "error", "error": f"too few frames received ({frames})",
                "frames": frames}
    rec = stats(np.concatenate(windows))
    med = rec["median"]
    fps = 1e9 / med if med else 0.0
    k = len(results)
    rec.update(unit="ns/frame per window", frames=frames, bad_stamps=bad,
               frames_per_s=fps, gb_per_s=fps * item.nbytes / 1e9,
               mean_frames_per_s=float(min(mean_fps)),
               aggregate_gb_per_s=fps * item.nbytes * k / 1e9,
               p99_gap_ns=float(np.percentile(np.concatenate(gaps), 99)))
    return rec


# ----------------------------------------------------------------------------------------------
# children


def _watchdog(parent: int, idle: Callable[[], float], limit: float) -> None:
    while True:
        time.sleep(0.5)
        if os.getppid() != parent or time.monotonic() - idle() > limit:
            os._exit(3)


def child_main(tname: str, index: int, shared: Any, conn: Any, parent: int,
               idle_limit: float) -> None:
    """Entry point of a spawned child: serve "run" commands until "exit"."""
    # Ctrl-C belongs to the parent: it tears the run down and kills what is left
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    last = [time.monotonic()]
    threading.Thread(target=_watchdog, args=(parent, lambda: last[0], idle_limit),
                     daemon=True).start()
    transport = T.get(tname)()
    conn.send(("hello", os.getpid()))
    while True:
        if not conn.poll(idle_limit):
            return
        msg = conn.recv()
        last[0] = time.monotonic()
        if msg[0] != "run":
            return
        _, item, info = msg
        role, sub = item.roles()[index]
        try:
            ep = transport.attach(item, role, sub, shared, info)
            conn.send(("ready",))
            if not conn.poll(idle_limit) or conn.recv()[0] != "go":
                transport.detach(ep)
                return
            last[0] = float("inf")  # a measurement is bounded by the parent's deadline
            if role in RECEIVERS:
                transport.arm(ep)
                conn.send(("armed",))
            result = getattr(transport, role)(ep, item)
            last[0] = time.monotonic()
            conn.send(("done", result))
            # Detach only when every child is done: a sender that closes early can take
            # frames still in flight with it (zmq drops what a full receiver has not read).
            if not conn.poll(idle_limit) or conn.recv()[0] != "detach":
                transport.detach(ep)
                return
            transport.detach(ep)
            conn.send(("detached",))
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which goes on
            last[0] = time.monotonic()
            tb = traceback.format_exc(limit=6)
            conn.send(("error", f"{type(exc).__name__}: {exc}", tb))


#: roles that start first: they are armed (ready to receive) before any sender gets "go"
RECEIVERS = ("echo", "consume")


@contextlib.contextmanager
def _cwd(path: str) -> Iterator[None]:
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


class Failure(Exception):
    def __init__(self, status: str, text: str) -> None:
        super().__init__(text)
        self.status = status


class Group:
    """The spawned children of one transport for a list of items with the same process count."""

    def __init__(self, transport: T.Transport, items: list[Item], run_id: str,
                 start_timeout: float = 60.0) -> None:
        self.t = transport
        self.items = items
        self.run_id = run_id
        self.start_timeout = start_timeout
        self.ctx = mp.get_context("spawn")
        self.procs: list[Any] = []
        self.conns: list[Any] = []
        self.shared: Any = None

    @property
    def alive(self) -> bool:
        return bool(self.procs)

    def start(self) -> None:
        n = self.items[0].nprocs
        self.shared = self.t.make_shared(self.ctx, self.items, self.run_id)
        try:
            with _cwd(CHILD_CWD):
                for i in range(n):
                    ours, theirs = self.ctx.Pipe()
                    p = self.ctx.Process(
                        target=child_main, name=f"bench-{self.t.name}-{i}", daemon=True,
                        args=(self.t.name, i, self.shared, theirs, os.getpid(),
                              max(120.0, 4 * self.start_timeout)))
                    p.start()
                    theirs.close()
                    self.procs.append(p)
                    self.conns.append(ours)
            self._expect("hello", self.start_timeout)
        except BaseException:
            self.kill()
            raise

    def _expect(self, what: str, timeout: float, among: list[int] | None = None) -> list[Any]:
        """One message `what` from every child (or those `among`), within `timeout` s in all;
        else Failure."""
        deadline = time.monotonic() + timeout
        out: list[Any] = [None] * len(self.conns)
        pending = set(range(len(self.conns)) if among is None else among)
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                names = ", ".join(f"child {i}" for i in sorted(pending))
                raise Failure("timeout", f"no {what!r} from {names} within {timeout:.0f} s")
            ready = multiprocessing.connection.wait([self.conns[i] for i in pending],
                                                    timeout=min(left, 0.5))
            for c in ready:
                i = self.conns.index(c)
                try:
                    msg = self.conns[i].recv()
                except (EOFError, OSError):
                    code = self.procs[i].exitcode
                    raise Failure("error", f"child {i} died (exit code {code})") from None
                if msg[0] == "error":
                    raise Failure("error", f"child {i}: {msg[1]}")
                if msg[0] != what:
                    raise Failure("error", f"child {i} sent {msg[0]!r}, expected {what!r}")
                out[i] = msg[1] if len(msg) > 1 else None
                pending.discard(i)
            for i in list(pending):
                if not self.procs[i].is_alive() and not self.conns[i].poll():
                    raise Failure("error", f"child {i} exited (code {self.procs[i].exitcode})")
        return out

    def run(self, item: Item, info: Any, timeout: float) -> list[Any]:
        for c in self.conns:
            c.send(("run", item, info))
        self._expect("ready", max(30.0, timeout))
        roles = [r for r, _ in item.roles()]
        receivers = [i for i, r in enumerate(roles) if r in RECEIVERS]
        for i in receivers:
            self.conns[i].send(("go",))
        self._expect("armed", max(30.0, timeout), receivers)
        for i, c in enumerate(self.conns):
            if i not in receivers:
                c.send(("go",))
        results = self._expect("done", timeout)
        for c in self.conns:
            c.send(("detach",))
        self._expect("detached", 30.0)
        return results

    def stop(self) -> None:
        for c in self.conns:
            with contextlib.suppress(OSError):
                c.send(("exit",))
        deadline = time.monotonic() + 10
        for p in self.procs:
            p.join(max(0.1, deadline - time.monotonic()))
        self.kill()

    def kill(self) -> None:
        for p in self.procs:
            if p.is_alive():
                p.kill()
        for p in self.procs:
            p.join(10)
        for c in self.conns:
            c.close()
        self.procs, self.conns = [], []
        if self.shared is not None:
            with contextlib.suppress(Exception):
                self.t.close_shared(self.shared)
            self.shared = None


# ----------------------------------------------------------------------------------------------
# the plan and its execution


@dataclass
class Plan:
    quick: bool = False
    duration: float | None = None
    sizes: list[str] | None = None  # overrides every workload's sizes
    only: list[str] = field(default_factory=list)
    transports: list[type[T.Transport]] = field(default_factory=lambda: list(T.ALL))
    workloads: tuple[str, ...] = ("latency", "throughput", "fanout", "wake")
    #: per-measurement timeout in seconds (default: from the duration)
    timeout: float | None = None

    @property
    def seconds(self) -> float:
        if self.duration is not None:
            return self.duration
        return 0.15 if self.quick else 1.5

    def selected(self, tname: str, workload: str) -> bool:
        if not self.only:
            return True
        hay = f"{tname}/{workload}".lower()
        return any(o.lower() in hay for o in self.only)

    def items(self, tname: str, fanout_ok: bool) -> list[list[Item]]:
        """Groups of items for one transport (items of one group share their children)."""
        d, q = self.seconds, self.quick
        groups: list[list[Item]] = []
        two: list[Item] = []
        if "latency" in self.workloads and self.selected(tname, "latency"):
            sizes = self.sizes or (QUICK_LATENCY_SIZES if q else LATENCY_SIZES)
            two += [make_item("latency", s, min(d, 1.0), q) for s in sizes]
        if "throughput" in self.workloads and self.selected(tname, "throughput"):
            sizes = self.sizes or (QUICK_THROUGHPUT_SIZES if q else THROUGHPUT_SIZES)
            two += [make_item("throughput", s, d, q) for s in sizes]
        if two:
            groups.append(two)
        if q and tname not in QUICK_FANOUT_TRANSPORTS:
            fanout_ok = False
        if "fanout" in self.workloads and fanout_ok:
            for k in (QUICK_FANOUT_SUBSCRIBERS if q else FANOUT_SUBSCRIBERS):
                if self.selected(tname, f"fanout-{k}"):
                    sizes = self.sizes or FANOUT_SIZES
                    groups.append([make_item("fanout", s, d, q, subscribers=k) for s in sizes])
        return groups

    def item_timeout(self, item: Item) -> float:
        if self.timeout is not None:
            return self.timeout
        # the producer stops at `duration`; then the consumers drain at most `capacity` frames
        return item.duration * 3 + 5


def run(plan: Plan, progress: Any = None, run_id: str | None = None) -> list[dict[str, Any]]:
    """Run every selected (transport, workload, size); one record each (see report.py)."""
    run_id = run_id or secrets.token_hex(3)
    records: list[dict[str, Any]] = []
    todo: list[tuple[T.Transport, list[list[Item]], str | None]] = []
    for cls in plan.transports:
        why = cls.unavailable()
        groups = plan.items(cls.name, cls.fanout)
        if groups:
            todo.append((cls(), groups, why))
    total = sum(len(g) for _, groups, _ in todo for g in groups)
    done = 0
    seq = 0
    for t, groups, why in todo:
        for items in groups:
            if why is not None:
                for item in items:
                    records.append(_record(t, item, status="unavailable", error=why))
                    done += 1
                continue
            group = Group(t, items, run_id)
            try:
                for item in items:
                    if progress is not None:
                        progress.update(done, total, f"{t.name} {item.workload_name} {item.size}")
                    seq += 1
                    records.append(_measure(t, group, item, run_id, seq, plan))
                    done += 1
            finally:
                group.stop()
    if progress is not None:
        progress.update(done, total, "done")
    return records


def _measure(t: T.Transport, group: Group, item: Item, run_id: str, seq: int,
             plan: Plan) -> dict[str, Any]:
    try:
        info, handle = t.setup(item, run_id, seq)
    except Exception as exc:  # noqa: BLE001 - a transport that fails is a record
        status = "skipped" if item.workload == "fanout" else "error"
        return _record(t, item, status=status, error=f"{type(exc).__name__}: {exc}")
    t0 = time.monotonic()
    try:
        if not group.alive:
            group.start()
        results = group.run(item, info, plan.item_timeout(item))
    except Failure as f:
        group.kill()
        return _record(t, item, status=f.status, error=str(f))
    except Exception as exc:  # noqa: BLE001 - a transport that fails is a record
        group.kill()
        return _record(t, item, status="error", error=f"{type(exc).__name__}: {exc}")
    finally:
        with contextlib.suppress(Exception):
            t.teardown(handle)
    wall = time.monotonic() - t0
    if item.workload == "latency":
        rec = latency_record(item, results[0])
    else:
        rec = throughput_record(item, results[1:])
        rec["sent"] = results[0]["sent"]
        lost = [r["count"] for r in results[1:] if r["count"] != rec["sent"]]
        if lost and rec.get("status", "ok") == "ok":
            rec["status"] = "lost"
            rec["error"] = f"{rec['sent']} frames sent, received {lost}"
    rec.setdefault("status", "ok")
    if rec.get("bad_stamps") and rec["status"] == "ok":
        rec["status"] = "corrupt"
        rec["error"] = f"{rec['bad_stamps']} frame(s) with a wrong sequence stamp"
    rec["wall_s"] = wall
    return _record(t, item, **rec)


def _record(t: T.Transport, item: Item, **kw: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "transport": t.name, "workload": item.workload_name, "size": item.size,
        "nbytes": item.nbytes, "subscribers": item.subscribers, "capacity": item.capacity,
        "duration_s": item.duration, "status": "ok", "error": None,
    }
    rec.update(kw)
    return rec


def fmt_ns(ns: float | None) -> str:
    if ns is None or not math.isfinite(ns):
        return "-"
    if ns < 1e3:
        return f"{ns:.0f} ns"
    if ns < 1e6:
        return f"{ns / 1e3:.3g} µs"
    if ns < 1e9:
        return f"{ns / 1e6:.3g} ms"
    return f"{ns / 1e9:.3g} s"
