"""``shmarray demo``: a video pipeline over a broadcast channel.

A camera process synthesises frames (1080p RGB by default: a moving pattern with the frame
number written into the pixels) at a target rate, straight into the channel's slots
(``loan``: zero copy). Two subscriber processes read every frame without a copy:

- ``stats``: per-frame statistics (mean and range of a decimated frame) and a check that the
  frame number drawn in the pixels is the frame's sequence number (no frame torn or mixed);
- ``thumbs``: downsamples every Nth frame and writes it as a PNG (a minimal encoder: zlib and
  struct, no dependency), or appends it to an MP4 with ``--mp4`` when the optional ``video``
  extra (imageio, imageio-ffmpeg) is installed.

The parent process is the monitor: once a second it prints each stage's rate, latency (the
frame's commit timestamp to its receipt, CLOCK_MONOTONIC) and drops, read from a small shared
array the stages update; at the end it prints a summary and checks that nothing is left in
/dev/shm. Policy "drop" (the default) never lets a slow stage stall the camera: a stage that
falls a full ring behind loses frames and counts them; its zero-copy views are checked with
``frame.valid()`` after use. Policy "block" makes the camera wait for the slowest stage.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import struct
import tempfile
import time
import zlib
from typing import Any

import numpy as np

# shared stats array: one row per process (camera, stats, thumbs), these columns
COUNT, LOST, LAT_SUM_MS, LAT_N, LATE_OR_TORN, FILES, BAD, DONE = range(8)
ROWS = ("camera", "stats", "thumbs")
BITS = 32  # frame-number bits drawn into the top band of every frame


# ---------------------------------------------------------------------------------------------
# pixels


def png_bytes(img: np.ndarray, level: int = 6) -> bytes:  # type: ignore[type-arg]
    """Encode an 8-bit grey (H, W) or RGB (H, W, 3) / RGBA (H, W, 4) array as a PNG."""
    if img.dtype != np.uint8 or img.ndim not in (2, 3):
        raise ValueError(f"png_bytes needs uint8 (H, W[, C]), not {img.dtype}{list(img.shape)}")
    h, w = img.shape[:2]
    c = 1 if img.ndim == 2 else img.shape[2]
    color = {1: 0, 3: 2, 4: 6}[c]
    raw = np.zeros((h, 1 + w * c), np.uint8)  # each row: filter type 0, then the pixels
    raw[:, 1:] = np.ascontiguousarray(img).reshape(h, w * c)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw.tobytes(), level)) + chunk(b"IEND", b""))


def make_background(height: int, width: int) -> np.ndarray:  # type: ignore[type-arg]
    """A (height, 2 * width, 3) pattern; frame i shows a width-wide window of it, so the
    picture moves by a few pixels per frame without computing anything per pixel."""
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 4 * np.pi, 2 * width, dtype=np.float32)[None, :]
    r = 127 + 120 * np.sin(x + 3 * y)
    g = 127 + 120 * np.sin(0.5 * x - 2 * y)
    b = 255 * np.broadcast_to(y, r.shape)
    bg = np.stack([r, g, b], axis=-1).astype(np.uint8)
    for k in range(6):  # vertical bars: the motion is visible
        bg[:, k::width // 8] = 255
    return bg


def _block(width: int) -> int:
    return max(1, min(16, width // BITS))


def draw_number(frame: np.ndarray, n: int) -> None:  # type: ignore[type-arg]
    """Write ``n`` into the top band of ``frame`` as BITS black/white blocks."""
    b = _block(frame.shape[1])
    band = frame[:b, :BITS * b].reshape(b, BITS, b, 3)
    bits = (n >> np.arange(BITS)) & 1
    band[...] = (bits * 255).astype(np.uint8)[None, :, None, None]


def read_number(frame: np.ndarray) -> int:  # type: ignore[type-arg]
    """The number draw_number wrote (from the centre pixel of each block)."""
    b = _block(frame.shape[1])
    px = frame[b // 2, b // 2:BITS * b:b, 0]
    return int(((px > 127).astype(np.int64) << np.arange(BITS)).sum())


# ---------------------------------------------------------------------------------------------
# processes


def camera(name: str, stats_name: str, width: int, height: int, fps: float, seconds: float,
           policy: str, capacity: int, q: Any, go: Any) -> None:
    """Create the channel, wait for the stages, then stream frames at ``fps``."""
    import shmarray

    stats = shmarray.attach(stats_name, timeout=30)
    row = stats[0]
    bg = make_background(height, width)
    with shmarray.Channel.create(name, slot_bytes=height * width * 3, capacity=capacity,
                                 mode="broadcast", max_subscribers=4, policy=policy) as ch:
        q.put(("created", os.getpid()))
        if not go.wait(60):
            return
        period = 1.0 / fps
        t0 = time.monotonic()
        i = 0
        while True:
            due = t0 + i * period
            now = time.monotonic()
            if due - t0 >= seconds:
                break
            if now < due:
                time.sleep(due - now)
            elif now > due + period:
                row[LATE_OR_TORN] += 1  # we are behind: the camera could not keep the rate
            off = (i * 7) % width
            with ch.loan((height, width, 3), np.uint8, timeout=10) as out:
                np.copyto(out, bg[:, off:off + width])
                draw_number(out, i)
            i += 1
            row[COUNT] = i
        ch.end()
        row[DONE] = 1
        q.put(("camera", {"sent": i, "seconds": time.monotonic() - t0}))
        # the channel is unlinked here; the stages keep their mappings until they finish


def stage(kind: str, name: str, stats_name: str, every: int, out_dir: str, mp4: bool,
          q: Any) -> None:
    """A subscriber: ``stats`` checks and measures every frame; ``thumbs`` writes every
    ``every``-th frame. Zero copy: under policy "drop" each view is checked after use."""
    import shmarray

    stats = shmarray.attach(stats_name, timeout=30)
    row = stats[ROWS.index(kind)]
    ch = shmarray.Channel.open(name, timeout=30)
    assert isinstance(ch, shmarray.BroadcastChannel)
    sub = ch.subscribe()
    q.put(("ready", kind))
    lat: list[float] = []
    writer = None
    if mp4:
        import imageio.v2 as imageio  # type: ignore[import-not-found,unused-ignore]

        writer = imageio.get_writer(os.path.join(out_dir, "thumbs.mp4"), fps=max(1, 30 // every))
    means: list[float] = []
    error = ""
    try:
        while True:
            try:
                frame = sub.recv(timeout=10, copy=False)
            except shmarray.StreamEnded:
                break
            got = time.monotonic_ns()
            result: Any = None
            with frame as view:
                if kind == "stats":
                    small = view[::4, ::4]
                    result = (read_number(view), float(small.mean()), int(small.min()),
                              int(small.max()))
                elif frame.seq % every == 0:
                    result = (read_number(view), np.ascontiguousarray(view[::4, ::4]))
                if not frame.valid():  # overwritten while we read it (policy "drop")
                    row[LATE_OR_TORN] += 1
                    result = None
            ms = (got - frame.timestamp_ns) / 1e6
            lat.append(ms)
            row[LAT_SUM_MS] += ms
            row[LAT_N] += 1
            row[COUNT] += 1
            row[LOST] = sub.stats()["lost"] if frame.seq % 8 == 0 else row[LOST]
            if result is None:
                continue
            if result[0] != frame.seq % (1 << BITS):
                row[BAD] += 1
            if kind == "stats":
                means.append(result[1])
            else:
                thumb = result[1]
                if writer is not None:
                    writer.append_data(thumb)
                else:
                    path = os.path.join(out_dir, f"frame{frame.seq:06d}.png")
                    with open(path, "wb") as f:
                        f.write(png_bytes(thumb, level=1))
                row[FILES] += 1
    except shmarray.ShmArrayError as exc:
        error = f"{type(exc).__name__}: {exc}"
    finally:
        if writer is not None:
            writer.close()
        st = sub.stats()
        row[LOST] = st["lost"]
        row[DONE] = 1
        sub.close()
        ch.close()
    q.put((kind, {"received": st["received"], "lost": st["lost"], "lat": lat,
                  "mean": float(np.mean(means)) if means else 0.0, "error": error}))


# ---------------------------------------------------------------------------------------------
# the monitor


def _pct(xs: list[float], p: float) -> float:
    return float(np.percentile(xs, p)) if xs else float("nan")


def run(fps: float = 30.0, size: str = "1920x1080", seconds: float = 5.0, every: int = 30,
        out: str | None = None, policy: str = "drop", capacity: int = 8,
        mp4: bool = False) -> int:
    import shmarray
    from .._os import names as _names
    from .._os import registry as _registry

    width, height = (int(v) for v in size.lower().split("x"))
    if width < 2 * BITS or height < 16:
        raise SystemExit(f"--size {size}: at least {2 * BITS}x16")
    if mp4:
        try:
            import imageio.v2  # type: ignore[import-not-found,unused-ignore]  # noqa: F401
            import imageio_ffmpeg  # type: ignore[import-not-found,unused-ignore]  # noqa: F401
        except ImportError:
            raise SystemExit("--mp4 needs the optional 'video' extra: "
                             "pip install 'shmarray[video]' (imageio, imageio-ffmpeg)") from None
    out_dir = out or tempfile.mkdtemp(prefix="shmarray-demo-")
    os.makedirs(out_dir, exist_ok=True)
    name = _names.unique("demo-cam")
    ctx = mp.get_context("spawn")
    q, go = ctx.Queue(), ctx.Event()
    mb = width * height * 3 / 2**20
    print(f"shmarray demo: {width}x{height} RGB ({mb:.1f} MiB/frame) at {fps:g} fps for "
          f"{seconds:g} s through broadcast channel '{name}' (policy {policy}, {capacity} slots)")
    print(f"  camera -> stats (every frame) + thumbs (every {every}th frame -> "
          f"{'MP4' if mp4 else 'PNG'} in {out_dir})")
    procs: list[Any] = []
    reports: dict[str, Any] = {}
    ok = True
    stats_name = _names.unique("demo-stats")
    with shmarray.create(stats_name, shape=(len(ROWS), 8), dtype=np.float64) as stats:
        try:
            cam = ctx.Process(target=camera, args=(name, stats.name, width, height, fps,
                                                   seconds, policy, capacity, q, go))
            cam.start()
            procs.append(cam)
            msg = q.get(timeout=60)
            assert msg[0] == "created", msg
            for kind in ROWS[1:]:
                p = ctx.Process(target=stage, args=(kind, name, stats.name, every, out_dir,
                                                    mp4, q))
                p.start()
                procs.append(p)
            for _ in ROWS[1:]:
                msg = q.get(timeout=60)
                assert msg[0] == "ready", msg
            go.set()  # every stage subscribed before the first frame: each gets them all
            prev = stats.copy()
            t_prev = t_start = time.monotonic()
            deadline = t_start + seconds + 60
            while not all(stats[:, DONE]) and time.monotonic() < deadline:
                time.sleep(1.0)
                now = time.monotonic()
                cur = stats.copy()
                dt = now - t_prev
                parts = []
                for r, kind in enumerate(ROWS):
                    d = cur[r] - prev[r]
                    rate = d[COUNT] / dt
                    if r == 0:
                        parts.append(f"camera {rate:5.1f} fps" +
                                     (f" ({int(d[LATE_OR_TORN])} late)" if d[LATE_OR_TORN] else ""))
                        continue
                    lat = d[LAT_SUM_MS] / d[LAT_N] if d[LAT_N] else float("nan")
                    parts.append(f"{kind} {rate:5.1f} fps {lat:6.2f} ms lost {int(d[LOST]):3d}")
                print(f"  [{now - t_start:4.1f}s] " + " | ".join(parts), flush=True)
                prev, t_prev = cur, now
            while len(reports) < len(ROWS):
                kind, rep = q.get(timeout=60)
                reports[kind] = rep
        except KeyboardInterrupt:
            print("  interrupted")
            ok = False
        except Exception as exc:
            print(f"  failed: {type(exc).__name__}: {exc}")
            ok = False
        finally:
            go.set()
            for p in procs:
                p.join(30)
                if p.is_alive():
                    p.terminate()
                    p.join(10)
        final = stats.copy()
    if ok:
        cam_rep = reports["camera"]
        sent = cam_rep["sent"]
        print(f"  summary: camera sent {sent} frames in {cam_rep['seconds']:.1f} s "
              f"({sent / cam_rep['seconds']:.1f} fps, {int(final[0, LATE_OR_TORN])} late)")
        for r, kind in enumerate(ROWS[1:], 1):
            rep = reports[kind]
            lat = rep["lat"]
            extra = (f", mean brightness {rep['mean']:.1f}" if kind == "stats"
                     else f", {int(final[r, FILES])} {'MP4 frames' if mp4 else 'PNGs'}")
            print(f"    {kind:6s}: {rep['received']} received, {rep['lost']} lost, "
                  f"{int(final[r, LATE_OR_TORN])} overwritten while read, "
                  f"{int(final[r, BAD])} bad frame numbers; latency p50 {_pct(lat, 50):.2f} ms "
                  f"p99 {_pct(lat, 99):.2f} ms{extra}")
            if rep["error"]:
                print(f"    {kind}: {rep['error']}")
            ok = ok and not rep["error"] and not final[r, BAD]
            ok = ok and rep["received"] + rep["lost"] == sent
        print(f"  output: {out_dir}")
    left = [e.name for e in _registry.scan() if e.name in (name, stats_name)]
    print(f"  after exit: {'nothing left in /dev/shm' if not left else 'LEFT: ' + str(left)}")
    ok = ok and not left and all(p.exitcode == 0 for p in procs)
    return 0 if ok else 1


def add_parser(sub: Any) -> None:
    p = sub.add_parser("demo", help="run a video pipeline over a broadcast channel",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fps", type=float, default=30.0, help="camera frame rate (default 30)")
    p.add_argument("--size", default="1920x1080", help="frame size WxH (default 1920x1080)")
    p.add_argument("--seconds", type=float, default=5.0, help="how long to stream (default 5)")
    p.add_argument("--every", type=int, default=30, help="thumbnail every Nth frame (30)")
    p.add_argument("--out", default=None, help="output directory (default: a new temp dir)")
    p.add_argument("--policy", choices=("drop", "block"), default="drop",
                   help="slow-subscriber policy (default drop: the camera never waits)")
    p.add_argument("--capacity", type=int, default=8, help="slots in the ring (default 8)")
    p.add_argument("--mp4", action="store_true",
                   help="write thumbs.mp4 instead of PNGs (needs the 'video' extra)")
    p.set_defaults(func=lambda a: run(a.fps, a.size, a.seconds, a.every, a.out, a.policy,
                                      a.capacity, a.mp4))
