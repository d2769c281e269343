"""A video pipeline over a broadcast channel: one camera, two stages, every stage sees every frame.

    python examples/video_pipeline.py            # 3 s of 1080p at 30 fps; PNGs in a temp dir

The camera writes each frame straight into a slot of the channel (``loan``: no copy); each
stage reads it in place (``recv(copy=False)``: no copy either). The channel's policy is "drop":
the camera never waits for a slow stage; a stage that falls a full ring behind loses frames
(``sub.stats()["lost"]``), and since a slot may be rewritten while a stage reads it, each stage
checks ``frame.valid()`` after using a frame. ``shmarray demo`` is the same pipeline with a
live monitor and flags.
"""

import multiprocessing as mp
import os
import tempfile
import time

import numpy as np

import shmarray
from shmarray.cli.demo import draw_number, make_background, png_bytes, read_number

NAME, W, H, FPS, SECONDS = "camera0", 1920, 1080, 30, 3


def camera(ready):
    background = make_background(H, W)
    with shmarray.Channel.create(NAME, slot_bytes=H * W * 3, capacity=8, mode="broadcast",
                                 max_subscribers=4, policy="drop") as ch:
        ready.wait(60)  # both stages subscribed: each receives from the first frame
        t0 = time.monotonic()
        for i in range(FPS * SECONDS):
            time.sleep(max(0.0, t0 + i / FPS - time.monotonic()))
            with ch.loan((H, W, 3), np.uint8) as frame:  # committed at the end of the block
                frame[...] = background[:, (7 * i) % W:(7 * i) % W + W]
                draw_number(frame, i)
        ch.end()


def stage(kind, out_dir, ready, results):
    ch = shmarray.Channel.open(NAME, timeout=30)
    sub = ch.subscribe()
    ready.wait(60)
    latencies, brightness, bad = [], [], 0
    while True:
        try:
            frame = sub.recv(timeout=10, copy=False)  # zero copy: check valid() after use
        except shmarray.StreamEnded:
            break
        latencies.append((time.monotonic_ns() - frame.timestamp_ns) / 1e6)
        with frame as view:
            number = read_number(view)
            if kind == "stats":
                mean = view[::4, ::4].mean()
            elif frame.seq % FPS == 0:
                thumb = np.ascontiguousarray(view[::4, ::4])
        if not frame.valid():  # the camera lapped us while we read: discard what we computed
            continue
        bad += number != frame.seq
        if kind == "stats":
            brightness.append(mean)
        if kind == "thumbs" and frame.seq % FPS == 0:
            with open(os.path.join(out_dir, f"frame{frame.seq:04d}.png"), "wb") as f:
                f.write(png_bytes(thumb))
    st = sub.stats()
    sub.close()
    ch.close()
    results.put((kind, st["received"], st["lost"], bad, np.percentile(latencies, [50, 99]),
                 np.mean(brightness) if brightness else None))


if __name__ == "__main__":
    ctx = mp.get_context("spawn")
    ready = ctx.Barrier(3)
    results = ctx.Queue()
    out_dir = tempfile.mkdtemp(prefix="video-pipeline-")
    procs = [ctx.Process(target=camera, args=(ready,))]
    procs += [ctx.Process(target=stage, args=(k, out_dir, ready, results))
              for k in ("stats", "thumbs")]
    procs[0].start()
    time.sleep(0.5)  # let the camera create the channel (the stages would wait for it anyway)
    for p in procs[1:]:
        p.start()
    for _ in range(2):
        kind, received, lost, bad, (p50, p99), mean = results.get(timeout=60)
        print(f"{kind:6s}: {received} frames received, {lost} lost, {bad} bad; "
              f"latency p50 {p50:.2f} ms, p99 {p99:.2f} ms"
              + (f"; mean brightness {mean:.1f}" if mean is not None else ""))
    for p in procs:
        p.join(30)
    print(f"thumbnails: {sorted(os.listdir(out_dir))} in {out_dir}")
