"""`shmarray top` against a live pipeline: the rates it shows are the rates the pipeline runs
at, read from outside without touching the channels."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

import shmarray
from helpers import run_py, start_py, stop

RATE = 200  # frames/s the producer keeps (deadline-paced: the average holds under load)
FRAME = 1 << 16  # bytes


def _pipeline(name: str, mode: str) -> tuple[Any, list[subprocess.Popen[str]]]:
    kw = {"max_subscribers": 2} if mode == "broadcast" else {}
    ch = shmarray.Channel.create(name, slot_bytes=FRAME, capacity=8, mode=mode, **kw)
    consumer = start_py(f"""
        import shmarray
        ch = shmarray.Channel.open({name!r}, timeout=10)
        rx = ch.subscribe() if ch.mode == "broadcast" else ch
        print("ready", flush=True)
        for view in rx:
            pass
    """)
    assert consumer.stdout is not None and consumer.stdout.readline().strip() == "ready"
    producer = start_py(f"""
        import time, numpy as np, shmarray
        ch = shmarray.Channel.open({name!r}, timeout=10)
        a = np.zeros({FRAME}, np.uint8)
        t = time.monotonic()
        end = t + 30
        while t < end:
            ch.send(a, timeout=10)
            t += 1 / {RATE}
            time.sleep(max(0.0, t - time.monotonic()))
    """)
    return ch, [producer, consumer]


@pytest.mark.parametrize("mode", ["one-to-one", "broadcast"])
def test_top_once_shows_the_rates_the_pipeline_runs_at(name: str, mode: str) -> None:
    ch, procs = _pipeline(name, mode)
    try:
        run_py("import time; time.sleep(1)")  # let the pipeline settle
        res = run_py("from shmarray.cli import main; main(['top', '--once', '--json', "
                     "'--interval', '2'])", timeout=60)
        doc = json.loads(res.stdout)
        mine = [c for c in doc["channels"] if c["name"] == name]
        assert len(mine) == 1, doc
        c = mine[0]
        assert c["mode"] == mode and c["capacity"] == 8 and not c["ended"]
        assert c["frames_per_s"] == pytest.approx(RATE, rel=0.2), c
        prod = [p for p in c["peers"] if p["role"] == "producer"]
        cons = [p for p in c["peers"] if p["role"] == "consumer"]
        assert len(prod) == 1 and len(cons) == 1 and all(p["alive"] for p in prod + cons)
        assert prod[0]["pid"] == procs[0].pid and cons[0]["pid"] == procs[1].pid
        for p in prod + cons:
            assert p["frames_per_s"] == pytest.approx(RATE, rel=0.2), p
            assert p["mb_per_s"] == pytest.approx(RATE * FRAME / 1e6, rel=0.2), p
        # the plain table names the channel, its participants and their rates
        res = run_py("from shmarray.cli import main; main(['top', '--once', "
                     "'--interval', '0.5'])", timeout=60)
        line = next(ln for ln in res.stdout.splitlines() if ln.startswith(name))
        assert (mode if mode != "broadcast" else "bcast block") in line
        assert "  producer #" in res.stdout and str(procs[1].pid) in res.stdout
    finally:
        for p in procs:
            stop(p)
        ch.close()
        ch.unlink()


def test_top_marks_a_dead_participant_and_the_end(name: str) -> None:
    ch = shmarray.Channel.create(name, slot_bytes=64, capacity=4)
    consumer = start_py(f"""
        import time, shmarray
        ch = shmarray.Channel.open({name!r}, timeout=10)
        ch.recv(timeout=10).release()
        print("got", flush=True)
        time.sleep(60)
    """)
    try:
        ch.send(b"x" * 8)
        assert consumer.stdout is not None and consumer.stdout.readline().strip() == "got"
        stop(consumer)  # SIGKILL
        ch.end()
        res = run_py("from shmarray.cli import main; main(['top', '--once', '--json', "
                     "'--interval', '0.2'])", timeout=60)
        c = next(c for c in json.loads(res.stdout)["channels"] if c["name"] == name)
        assert c["ended"]
        dead = [p for p in c["peers"] if p["pid"] == consumer.pid]
        assert dead and not dead[0]["alive"], c["peers"]
    finally:
        stop(consumer)
        ch.close()
        ch.unlink()


def test_the_rich_screen_renders_the_same_rows(name: str) -> None:
    pytest.importorskip("rich")
    from rich.console import Console

    from shmarray.cli import top

    with shmarray.Channel.create(name, slot_bytes=64, capacity=4) as ch:
        ch.send(b"x" * 8)
        rows = top.rates({}, top.sample())
        console = Console(record=True, width=160)
        console.print(top._render_rich(rows, 1.0))
        text = console.export_text()
        assert name in text and "producer #" in text and "q quits" in text


def test_a_participant_that_opens_again_never_shows_a_negative_rate(name: str) -> None:
    from shmarray.cli import top

    with shmarray.Channel.create(name, slot_bytes=64, capacity=256):
        rx = shmarray.Channel.open(name)
        p = shmarray.Channel.open(name)
        for _ in range(100):
            p.send(b"x" * 8)
        before = top.sample()
        p.close()
        p = shmarray.Channel.open(name)  # the same entry again, its counters from zero
        for _ in range(3):
            p.send(b"x" * 8)
        rows = top.rates(before, top.sample())
        c = next(c for c in rows if c["name"] == name)
        for peer in c["peers"]:
            assert peer["frames_per_s"] is None or peer["frames_per_s"] >= 0, peer
            assert peer["mb_per_s"] is None or peer["mb_per_s"] >= 0, peer
        assert c["mb_per_s"] is None or c["mb_per_s"] >= 0
        p.close()
        rx.close()
