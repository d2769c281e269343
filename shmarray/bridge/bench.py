"""What the bridge costs: frames through ``shmarray bridge`` on loopback TCP, against a plain
pyzmq PUSH/PULL of the same arrays and a raw TCP socket, measured in the same run.

    from shmarray.bridge import bench
    figures = bench.run()              # about a minute; bench.run(quick=True): about 15 s
    print(bench.table(figures))

Three ways of moving N frames (1080p RGB by default) from one process to another over
127.0.0.1, each in freshly spawned processes, rounds interleaved, the median of the rounds:

- ``raw-tcp``: ``socket.sendall`` of the array / ``recv_into`` a preallocated array (the
  kernel's two copies and nothing else: the floor);
- ``pyzmq``: PUSH ``send(array, copy=False)`` / PULL ``recv(copy=False)`` then one copy into a
  preallocated array (what a careful user of pyzmq writes), SNDHWM = RCVHWM = 2 as in the bridge;
- ``bridge``: a producer loans slots of a one-to-one channel (and writes only the frame's
  stamp: as with the arrays of the others, the pixels are not rewritten), a Sender process
  relays them, a Receiver process copies each into a slot of another channel, and a consumer
  process reads it there (zero copy): four processes where the others have two.

Throughput is frames/s at the receiving end, from its first measured frame to its last (the
first WARMUP frames are not measured); each frame's stamp is checked there. Latency: a paced
stream (60 frames/s by default), capture (the producer's CLOCK_MONOTONIC just before commit or
send) to receipt by the consumer (after the receive copy for pyzmq), median and p99 of the
measured frames. One host, so one clock.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import platform
import socket
import statistics
import time
from typing import Any

import numpy as np

__all__ = ["run", "table", "TRANSPORTS"]

TRANSPORTS = ("raw-tcp", "pyzmq", "bridge")
SHAPE_1080P = (1080, 1920, 3)
_POOL = 8  # distinct source arrays per sender (raw-tcp, pyzmq)
_TIMEOUT = 120.0
WARMUP = 20  # frames sent first and not measured (connections, first buffers)


def _pool(shape: tuple[int, ...], n: int = _POOL) -> list[np.ndarray]:  # type: ignore[type-arg]
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, shape, dtype=np.uint8)
    out = []
    for k in range(n):
        a = base.copy()
        _stamp(a, k)
        out.append(a)
    return out


def _stamp(a: np.ndarray, value: int) -> None:  # type: ignore[type-arg]
    a.reshape(-1).view(np.uint8)[:8] = np.frombuffer(int(value).to_bytes(8, "little"), np.uint8)


def _read_stamp(a: Any) -> int:
    return int.from_bytes(bytes(memoryview(a).cast("B")[:8]), "little")


def _result(times: list[int], bad: int, lat: list[int] | None = None) -> dict[str, Any]:
    times, lat = times[WARMUP:], (lat or [])[WARMUP:]
    n = len(times)
    out: dict[str, Any] = {"frames": n, "bad": bad}
    if n > 1:
        out["fps"] = (n - 1) / ((times[-1] - times[0]) / 1e9)
    if lat:
        ms = np.array(lat) / 1e6
        out["p50_ms"] = float(np.percentile(ms, 50))
        out["p99_ms"] = float(np.percentile(ms, 99))
    return out


class _Tally:
    """Arrival times, latencies (paced: the stamp is the capture time) or stamp checks
    (frame i of a pool array carries i % _POOL) at a receiving end."""

    def __init__(self, paced: bool) -> None:
        self.paced = paced
        self.times: list[int] = []
        self.lat: list[int] = []
        self.bad = 0

    def arrived(self, i: int, buf: Any) -> None:
        now = time.monotonic_ns()
        self.times.append(now)
        stamp = _read_stamp(buf)
        if self.paced:
            self.lat.append(now - stamp)
        elif stamp != i % _POOL:
            self.bad += 1

    def result(self) -> dict[str, Any]:
        return _result(self.times, self.bad, self.lat)


# ---------------------------------------------------------------------------------------------
# raw TCP


def _raw_recv(shape: tuple[int, ...], n: int, paced: bool, q: Any) -> None:
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    q.put(("port", lsock.getsockname()[1]))
    conn, _ = lsock.accept()
    buf = np.empty(shape, np.uint8)
    view = buf.data.cast("B")
    size = buf.nbytes
    tally = _Tally(paced)
    for i in range(n):
        got = 0
        while got < size:
            k = conn.recv_into(view[got:], size - got)
            if k == 0:
                raise ConnectionError("raw-tcp: the sender closed early")
            got += k
        tally.arrived(i, buf)
    conn.close()
    lsock.close()
    q.put(("result", tally.result()))


def _raw_send(shape: tuple[int, ...], n: int, fps: float, port: int) -> None:
    pool = _pool(shape)
    s = socket.create_connection(("127.0.0.1", port))
    period = 1.0 / fps if fps else 0.0
    t0 = time.monotonic()
    for i in range(n):
        a = pool[i % _POOL]
        if period:
            _sleep_until(t0 + i * period)
            _stamp(a, time.monotonic_ns())
        s.sendall(a.data)
    s.close()


def _sleep_until(t: float) -> None:
    d = t - time.monotonic()
    if d > 0:
        time.sleep(d)


# ---------------------------------------------------------------------------------------------
# plain pyzmq


def _zmq_recv(shape: tuple[int, ...], n: int, paced: bool, q: Any) -> None:
    import zmq

    ctx = zmq.Context()
    s = ctx.socket(zmq.PULL)
    s.setsockopt(zmq.RCVHWM, 2)
    port = s.bind_to_random_port("tcp://127.0.0.1")
    q.put(("port", port))
    out = np.empty(shape, np.uint8)
    flat = out.reshape(-1)
    tally = _Tally(paced)
    for i in range(n):
        msg = s.recv(copy=False)
        np.copyto(flat, np.frombuffer(msg.buffer, np.uint8))  # the receive copy
        tally.arrived(i, out)
    s.close(0)
    ctx.term()
    q.put(("result", tally.result()))


def _zmq_send(shape: tuple[int, ...], n: int, fps: float, port: int) -> None:
    import zmq

    pool = _pool(shape)
    ctx = zmq.Context()
    s = ctx.socket(zmq.PUSH)
    s.setsockopt(zmq.SNDHWM, 2)
    s.setsockopt(zmq.LINGER, 30_000)
    s.connect(f"tcp://127.0.0.1:{port}")
    period = 1.0 / fps if fps else 0.0
    t0 = time.monotonic()
    trackers: list[Any] = [None] * _POOL  # a pool array is restamped (paced) only once zmq
    # is done with it
    for i in range(n):
        k = i % _POOL
        a = pool[k]
        if period:
            _sleep_until(t0 + i * period)
            if trackers[k] is not None:
                trackers[k].wait()
            _stamp(a, time.monotonic_ns())
        trackers[k] = s.send(a.data, copy=False, track=bool(period))
    s.close()
    ctx.term()


# ---------------------------------------------------------------------------------------------
# the bridge


def _bridge_producer(src: str, shape: tuple[int, ...], n: int, fps: float, q: Any,
                     go: Any) -> None:
    import shmarray

    with shmarray.Channel.create(src, slot_bytes=int(np.prod(shape)), capacity=8) as ch:
        q.put(("created", src))
        go.wait(_TIMEOUT)
        period = 1.0 / fps if fps else 0.0
        t0 = time.monotonic()
        for i in range(n):
            if period:
                _sleep_until(t0 + i * period)
            loan = ch.loan(shape, np.uint8, timeout=_TIMEOUT)
            _stamp(loan.array, i)
            loan.tag = time.monotonic_ns()  # capture, just before commit
            loan.commit()
        ch.end()
        # the owner waits for the stream to drain before it unlinks (the sender still reads)
        deadline = time.monotonic() + _TIMEOUT
        while ch.stats()["consumed"] < n and time.monotonic() < deadline:
            time.sleep(0.01)


def _bridge_sender(src: str, endpoint: str, q: Any) -> None:
    from shmarray.bridge import Sender

    with Sender(src, endpoint, open_timeout=_TIMEOUT) as s:
        q.put(("sender", s.run()))


def _bridge_receiver(dst: str, nbytes: int, q: Any) -> None:
    from shmarray.bridge import Receiver

    with Receiver(dst, "tcp://127.0.0.1:*", slot_bytes=nbytes, capacity=8) as r:
        q.put(("endpoint", r.endpoint))
        st = r.run()
        # leave the channel (and unlink it) only once the consumer has it all
        q.put(("receiver", st))
        time.sleep(0.5)


def _bridge_consumer(dst: str, n: int, paced: bool, q: Any) -> None:
    import shmarray

    ch = shmarray.Channel.open(dst, timeout=_TIMEOUT)
    q.put(("ready", dst))
    times, lat, bad = [], [], 0
    for i in range(n):
        f = ch.recv(timeout=_TIMEOUT)
        now = time.monotonic_ns()
        times.append(now)
        if paced:
            lat.append(now - f.tag)
        if _read_stamp(f.array) != i:
            bad += 1
        f.release()
    ch.close()
    q.put(("result", _result(times, bad, lat)))


# ---------------------------------------------------------------------------------------------


def _expect(q: Any, kind: str, procs: list[Any]) -> Any:
    """The next report from a child, which must be ``kind``; RuntimeError when a child
    failed (or nothing came within _TIMEOUT)."""
    import queue

    deadline = time.monotonic() + _TIMEOUT
    while True:
        try:
            tag, value = q.get(timeout=0.5)
            break
        except queue.Empty:
            failed = [p for p in procs if p.exitcode not in (None, 0)]
            if failed or time.monotonic() > deadline:
                raise RuntimeError(f"bench: no {kind!r} report: " + (
                    ", ".join(f"{p.name} exited with {p.exitcode}" for p in failed)
                    or "timed out")) from None
    if tag != kind:
        raise RuntimeError(f"bench: expected {kind!r} from a child, got {tag!r}: {value!r}")
    return value


def _join(procs: list[Any]) -> None:
    for p in procs:
        p.join(_TIMEOUT)
        if p.is_alive():
            p.terminate()
            p.join(10)


def _one(ctx: Any, transport: str, shape: tuple[int, ...], n: int, fps: float) -> dict[str, Any]:
    """One measurement in fresh processes; fps=0: as fast as possible."""
    q = ctx.Queue()
    procs: list[Any] = []
    paced = bool(fps)
    n += WARMUP

    def spawn(target: Any, *args: Any) -> None:
        proc = ctx.Process(target=target, args=args)
        proc.start()
        procs.append(proc)

    try:
        if transport in ("raw-tcp", "pyzmq"):
            recv, send = (_raw_recv, _raw_send) if transport == "raw-tcp" else (_zmq_recv,
                                                                               _zmq_send)
            spawn(recv, shape, n, paced, q)
            spawn(send, shape, n, fps, _expect(q, "port", procs))
            out: dict[str, Any] = _expect(q, "result", procs)
        else:
            tag = f"bench_bridge_{os.getpid()}_{time.monotonic_ns() % 10**9}"
            src, dst = tag + "_s", tag + "_d"
            go = ctx.Event()
            rq = ctx.Queue()  # receiver and sender reports
            spawn(_bridge_receiver, dst, int(np.prod(shape)), rq)
            endpoint = _expect(rq, "endpoint", procs)
            spawn(_bridge_consumer, dst, n, paced, q)
            _expect(q, "ready", procs)
            spawn(_bridge_producer, src, shape, n, fps, q, go)
            _expect(q, "created", procs)
            spawn(_bridge_sender, src, endpoint, rq)
            go.set()
            out = _expect(q, "result", procs)
            reports = dict(rq.get(timeout=_TIMEOUT) for _ in range(2))
            out["dropped"] = reports["receiver"]["dropped"] + reports["sender"]["dropped"]
            out["receiver_latency_ms"] = reports["receiver"]["latency_ms"]
        return out
    finally:
        _join(procs)


def run(*, frames: int = 300, repeats: int = 3, shape: tuple[int, ...] = SHAPE_1080P,
        fps: float = 60.0, latency_frames: int = 180, quick: bool = False,
        transports: tuple[str, ...] = TRANSPORTS,
        progress: Any = None) -> dict[str, Any]:
    """Measure every transport (see the module docstring); returns a dict of figures:

    ``throughput[t]``: fps and GB/s (medians over ``repeats`` rounds), the runs, frames with a
    wrong stamp ("bad"); ``latency_ms[t]``: p50 and p99 of a stream paced at ``fps``
    (pyzmq and bridge); ``ratios``: bridge / pyzmq and bridge / raw-tcp throughput;
    ``targets``: the issue's (bridge >= 90 % of pyzmq, paced p50 <= 5 ms) and whether they
    were met; ``machine``, ``elapsed_s``. ``quick``: 100 frames, one round, 60 paced frames.

    Spawns up to four processes at a time; needs pyzmq (ImportError otherwise). Raises
    RuntimeError when a child fails."""
    import zmq  # noqa: F401  (fail early, with ImportError, when pyzmq is missing)

    if quick:
        frames, repeats, latency_frames = 100, 1, 60
    ctx = mp.get_context("spawn")
    t0 = time.monotonic()
    nbytes = int(np.prod(shape))
    runs: dict[str, list[dict[str, Any]]] = {t: [] for t in transports}
    for rnd in range(repeats):
        for t in transports:  # interleaved: drift on a shared machine hits every one alike
            if progress is not None:
                progress(f"round {rnd + 1}/{repeats}: {t} throughput")
            runs[t].append(_one(ctx, t, shape, frames, 0.0))
    thr: dict[str, Any] = {}
    for t, rs in runs.items():
        fps_med = statistics.median(r.get("fps", 0.0) for r in rs)
        thr[t] = {"fps": round(fps_med, 1), "GBps": round(fps_med * nbytes / 1e9, 2),
                  "runs_fps": [round(r.get("fps", 0.0), 1) for r in rs],
                  "bad": sum(r["bad"] for r in rs),
                  "dropped": sum(r.get("dropped", 0) for r in rs)}
    lat: dict[str, Any] = {}
    for t in ("pyzmq", "bridge"):
        if t in transports and latency_frames > 0 and fps > 0:
            if progress is not None:
                progress(f"{t} latency at {fps:g} frames/s")
            r = _one(ctx, t, shape, latency_frames, fps)
            lat[t] = {"p50": round(r["p50_ms"], 3), "p99": round(r["p99_ms"], 3),
                      "frames": r["frames"], "fps": fps}
    ratios = {}
    if "bridge" in thr and "pyzmq" in thr and thr["pyzmq"]["fps"]:
        ratios["bridge_vs_pyzmq"] = round(thr["bridge"]["fps"] / thr["pyzmq"]["fps"], 3)
    if "bridge" in thr and "raw-tcp" in thr and thr["raw-tcp"]["fps"]:
        ratios["bridge_vs_raw_tcp"] = round(thr["bridge"]["fps"] / thr["raw-tcp"]["fps"], 3)
    targets: dict[str, Any] = {}
    if "bridge_vs_pyzmq" in ratios:
        targets["throughput_vs_pyzmq"] = {"want": ">= 0.90", "got": ratios["bridge_vs_pyzmq"],
                                          "met": ratios["bridge_vs_pyzmq"] >= 0.9}
    if "bridge" in lat:
        targets["paced_latency_p50_ms"] = {"want": "<= 5.0", "got": lat["bridge"]["p50"],
                                           "met": lat["bridge"]["p50"] <= 5.0}
    return {
        "shape": list(shape), "nbytes": nbytes, "frames": frames, "repeats": repeats,
        "throughput": thr, "latency_ms": lat, "ratios": ratios, "targets": targets,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(), "pyzmq": _zmq_versions()},
        "elapsed_s": round(time.monotonic() - t0, 1),
    }


def _zmq_versions() -> str:
    import zmq

    return f"pyzmq {zmq.__version__}, libzmq {zmq.zmq_version()}"


def table(fig: dict[str, Any]) -> str:
    """The figures of run() as a text table."""
    shape = "x".join(str(s) for s in fig["shape"])
    lines = [f"{fig['frames']} frames of {shape} uint8 ({fig['nbytes'] / 1e6:.1f} MB) over "
             f"127.0.0.1, median of {fig['repeats']} round(s); {fig['machine']['cpus']} CPUs, "
             f"Python {fig['machine']['python']}, {fig['machine']['pyzmq']}",
             "", f"{'transport':10} {'frames/s':>9} {'GB/s':>6} {'vs pyzmq':>9}  "
                 f"{'paced p50':>9} {'p99':>8}  runs"]
    thr, lat = fig["throughput"], fig["latency_ms"]
    base = thr.get("pyzmq", {}).get("fps") or 0.0
    for t, r in thr.items():
        rel = f"{r['fps'] / base:.2f}x" if base else "-"
        la = lat.get(t)
        lp = f"{la['p50']:.2f} ms {la['p99']:.2f} ms" if la else f"{'-':>9} {'-':>8}"
        extra = "" if not r["bad"] else f"  ({r['bad']} bad)"
        lines.append(f"{t:10} {r['fps']:9.1f} {r['GBps']:6.2f} {rel:>9}  {lp:>18}  "
                     f"{r['runs_fps']}{extra}")
    for name, tgt in fig["targets"].items():
        lines.append(f"target {name}: want {tgt['want']}, got {tgt['got']} -> "
                     f"{'met' if tgt['met'] else 'NOT met'}")
    return "\n".join(lines)
