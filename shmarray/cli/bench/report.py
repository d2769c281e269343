"""Output of ``shmarray bench``: the machine, the table, the JSON file, the plot, progress."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from typing import Any, TextIO

from . import transports as T
from .runner import SIZES, fmt_bytes, fmt_ns

# ----------------------------------------------------------------------------------------------
# the machine


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _loadavg() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def machine() -> dict[str, Any]:
    import numpy as np

    import shmarray

    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 0
    versions = {}
    for cls in T.ALL:
        if cls.unavailable() is None:
            v = cls.version()
            if v:
                versions[cls.name] = v
    return {
        "cpu": _cpu_model(), "cores": os.cpu_count(), "usable_cores": usable,
        "kernel": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "numpy": np.__version__, "shmarray": shmarray.__version__,
        "loadavg_at_start": _loadavg(),
        "transport_versions": versions,
    }


# ----------------------------------------------------------------------------------------------
# derived figures: ratios and fractions of the floor


def _find(records: list[dict[str, Any]], transport: str, workload: str,
          size: str) -> dict[str, Any] | None:
    for r in records:
        if (r["transport"], r["workload"], r["size"]) == (transport, workload, size) \
                and r["status"] == "ok":
            return r
    return None


def annotate(records: list[dict[str, Any]], floor: dict[str, Any]) -> None:
    """Add vs_queue (x, higher is better) and floor_fraction to every ok record."""
    one_way = (floor.get("cacheline_one_way") or {}).get("median")
    memcpy = floor.get("memcpy") or {}
    for r in records:
        r.setdefault("vs_queue", None)
        r.setdefault("floor_fraction", None)
        if r["status"] != "ok" or r["workload"] == "wake":  # wake: vs_eventfd (wake.py)
            continue
        base = _find(records, T.BASELINE, r["workload"], r["size"])
        if r["workload"] == "latency":
            if base:
                r["vs_queue"] = base["median"] / r["median"]
            if one_way:
                r["floor_fraction"] = one_way / r["median"]
        else:
            if base:
                r["vs_queue"] = r["frames_per_s"] / base["frames_per_s"]
            gbps = (memcpy.get(str(r["nbytes"])) or {}).get("c_memcpy_gbps")
            if gbps:
                r["floor_fraction"] = r["gb_per_s"] / gbps


# ----------------------------------------------------------------------------------------------
# the table


def _ratio(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.3g}×" if x < 100 else f"{x:.0f}×"


def _pct(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x * 100:.2g}%" if x < 0.1 else f"{x * 100:.0f}%"


def _rate(x: float) -> str:
    if x >= 1e6:
        return f"{x / 1e6:.3g} M"
    if x >= 1e3:
        return f"{x / 1e3:.3g} k"
    return f"{x:.3g}"


def _status(r: dict[str, Any]) -> str:
    text = str(r["status"])
    if r.get("error"):
        err = str(r["error"]).splitlines()[0]
        text += ": " + (err if len(err) <= 70 else err[:67] + "...")
    return text


def _grid(rows: list[list[str]], right: set[int]) -> list[str]:
    full = [r for r in rows if len(r) == len(rows[0])]
    widths = [max(len(r[i]) for r in full) for i in range(len(rows[0]))]
    out = []
    for r in rows:
        if len(r) < len(widths):  # a status line spans the remaining columns
            head = "  ".join(c.ljust(widths[i]) for i, c in enumerate(r[:-1]))
            out.append(f"{head}  {r[-1]}".rstrip())
            continue
        cells = [c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(r)]
        out.append("  ".join(cells).rstrip())
    return out


def _sizes_in(records: list[dict[str, Any]], workload: str) -> list[str]:
    seen = [r["size"] for r in records if r["workload"] == workload]
    order = list(SIZES)
    return sorted(set(seen), key=lambda s: order.index(s) if s in order else len(order))


def table(records: list[dict[str, Any]], floor: dict[str, Any], mach: dict[str, Any],
          command: str, elapsed: float | None = None) -> str:
    lines: list[str] = []
    lines.append(f"shmarray bench: {command}")
    lines.append(
        f"machine: {mach['cpu']}, {mach['cores']} cores ({mach['usable_cores']} usable), "
        f"{mach['kernel']}, {mach['python']}, numpy {mach['numpy']}, "
        f"shmarray {mach['shmarray']}")
    vers = ", ".join(sorted({v for v in mach["transport_versions"].values()
                             if v and not v.startswith(("CPython", "shmarray"))}))
    if vers:
        lines.append(f"peers: {vers}")
    missing = sorted({f"{r['transport']} ({r['error']})" for r in records
                      if r["status"] == "unavailable"})
    if missing:
        lines.append("not measured: " + "; ".join(missing))
    load = mach.get("loadavg_at_start")
    run = [f"run time: {elapsed:.0f} s"] if elapsed is not None else []
    if load is not None:
        busy = " (other processes were running: expect inflated figures)" \
            if load > 0.5 * (mach["usable_cores"] or 1) else ""
        run.append(f"load average at start: {load:.2f}{busy}")
    if run:
        lines.append("; ".join(run))

    # the tables show what ran; what could not run is named once above
    records = [r for r in records if r["status"] != "unavailable"]

    # floor
    lines.append("")
    lines.append("Floor (this run): what the machine can do")
    cl = floor.get("cacheline_one_way") or {}
    if cl.get("status") == "ok":
        lines.append(f"  cache-line hand-off between 2 processes, one way (C probe): "
                     f"{fmt_ns(cl['median'])} median, p99 {fmt_ns(cl['p99'])}")
    else:
        lines.append(f"  cache-line hand-off: {cl.get('status', 'not measured')}"
                     f" ({cl.get('error', '')})")
    mc = floor.get("memcpy") or {}
    if mc:
        keys = sorted(mc, key=int)
        rows = [["  single-core copy, GB/s"] + [_size_label(int(k)) for k in keys],
                ["  C memcpy"] + [_gb(mc[k].get("c_memcpy_gbps")) for k in keys],
                ["  numpy copyto"] + [_gb(mc[k].get("numpy_copyto_gbps")) for k in keys]]
        lines += _grid(rows, set(range(1, len(keys) + 1)))

    # latency
    lat = [r for r in records if r["workload"] == "latency"]
    if lat:
        lines.append("")
        lines.append("Latency: ping-pong between 2 processes, one way = round trip / 2 "
                     "(lower is better)")
        rows = [["size", "transport", "median", "p99", "IQR", "vs mp.Queue", "floor/this"]]
        for size in _sizes_in(records, "latency"):
            for r in (x for x in lat if x["size"] == size):
                if r["status"] != "ok":
                    rows.append([size, r["transport"], _status(r)])
                    continue
                rows.append([size, r["transport"], fmt_ns(r["median"]), fmt_ns(r["p99"]),
                             _pct(r["spread"]), _ratio(r["vs_queue"]),
                             _pct(r["floor_fraction"])])
        lines += _grid(rows, {2, 3, 4, 5, 6})

    # throughput
    tp = [r for r in records if r["workload"] == "throughput"]
    if tp:
        lines.append("")
        lines.append("Throughput: 1 producer -> 1 consumer that checks a stamp in every frame "
                     "(higher is better)")
        rows = [["size", "transport", "frames/s", "GB/s", "p99 gap", "IQR", "vs mp.Queue",
                 "vs memcpy"]]
        for size in _sizes_in(records, "throughput"):
            for r in (x for x in tp if x["size"] == size):
                if r["status"] != "ok":
                    rows.append([size, r["transport"], _status(r)])
                    continue
                rows.append([size, r["transport"], _rate(r["frames_per_s"]),
                             _gb(r["gb_per_s"]), fmt_ns(r.get("p99_gap_ns")),
                             _pct(r["spread"]),
                             _ratio(r["vs_queue"]), _pct(r["floor_fraction"])])
        lines += _grid(rows, {2, 3, 4, 5, 6, 7})

    # fan-out
    fo = [r for r in records if r["workload"].startswith("fanout")]
    if fo:
        lines.append("")
        lines.append("Fan-out: 1 producer -> N subscribers, each sees every frame "
                     "(per subscriber; higher is better)")
        rows = [["size", "N", "transport", "frames/s", "GB/s", "total GB/s", "vs mp.Queue",
                 "vs memcpy"]]
        for r in sorted(fo, key=lambda r: (r["size"], r["subscribers"])):
            head = [r["size"], str(r["subscribers"]), r["transport"]]
            if r["status"] != "ok":
                rows.append(head + [_status(r)])
                continue
            rows.append(head + [_rate(r["frames_per_s"]), _gb(r["gb_per_s"]),
                                _gb(r["aggregate_gb_per_s"]), _ratio(r["vs_queue"]),
                                _pct(r["floor_fraction"])])
        lines += _grid(rows, {1, 3, 4, 5, 6, 7})

    # await-wake
    wk = [r for r in records if r["workload"] == "wake"]
    if wk:
        lines.append("")
        lines.append(f"Await-wake: a sleeping consumer woken by a producer in another process, "
                     f"1 frame per {wk[0]['interval_s'] * 1e3:g} ms (lower is better)")
        rows = [["consumer", "median", "p99", "IQR", "vs eventfd"]]
        for r in wk:
            if r["status"] != "ok":
                rows.append([r["transport"], _status(r)])
                continue
            rows.append([r["transport"], fmt_ns(r["median"]), fmt_ns(r["p99"]),
                         _pct(r["spread"]), _ratio(r.get("vs_eventfd"))])
        lines += _grid(rows, {1, 2, 3, 4})

    # notes
    lines.append("")
    lines.append("Notes:")
    lines.append("  latency: median and p99 of round trips / 2. throughput: median of the rates "
                 "in ~15 equal windows of the run (IQR over the windows); p99 gap: 99th "
                 "percentile of the time between two frames. IQR = (p75 - p25) / median.")
    lines.append("  vs mp.Queue: speed-up over multiprocessing.Queue at the same size (>1 is "
                 "faster). floor/this: the C cache-line hand-off / this latency. vs memcpy: "
                 "GB/s / single-core C memcpy at this size (a zero-copy transport can pass 100%).")
    lines.append("  zero-copy rows (shmarray-loan, iceoryx2-*): the producer writes only the "
                 "stamp into the loaned slot, so GB/s counts bytes made visible to the consumer, "
                 "not bytes moved; compare their frames/s.")
    lines.append("  every frame carries a sequence stamp in its first and last byte, written by "
                 "the producer and checked by the consumer; capacity (ring slots, queue depth, "
                 "HWM) is the same for every transport: min(256, max(4, 64 MiB / frame)).")
    names = {r["transport"] for r in records if r["status"] != "unavailable"}
    for cls in T.ALL:
        if cls.name in names and cls.note:
            lines.append(f"  {cls.name}: {cls.note}.")
    skipped = [r for r in records if r["status"] == "skipped"]
    if skipped:
        lines.append(f"  fan-out skipped for {', '.join(sorted({r['transport'] for r in skipped}))}"
                     f": {skipped[0]['error']}")
    if wk:
        lines.append("  await-wake: the consumer's CLOCK_MONOTONIC when its code runs minus the "
                     "frame's commit timestamp, the methods taking turns frame by frame in one "
                     "producer and one event loop. shmarray.aio: await ch.recv() (doorbell FIFO); "
                     "run_in_executor: the sync recv in a thread, awaited; sync recv: futex, no "
                     "event loop; eventfd (bare): the floor, a coroutine awaiting a future that "
                     "an add_reader callback on an eventfd resolves (no channel); vs eventfd: "
                     "median / its median.")
    lines.append("  a noisy VM (shared cores) moves every figure between runs: compare ratios "
                 "within one run, not absolute numbers across runs.")
    return "\n".join(lines)


def _size_label(n: int) -> str:
    for label, (nb, _) in SIZES.items():
        if nb == n:
            return label
    return fmt_bytes(n)


def _gb(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:,.0f}" if x >= 999.5 else f"{x:.3g}"


# ----------------------------------------------------------------------------------------------
# JSON and plot


def write_json(path: str, records: list[dict[str, Any]], floor: dict[str, Any],
               mach: dict[str, Any], command: str, elapsed: float) -> None:
    doc = {"format": "shmarray-bench/1", "command": command, "elapsed_s": elapsed,
           "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": mach, "floor": floor,
           "records": records}
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


class PlotUnavailable(RuntimeError):
    pass


def plot(path: str, records: list[dict[str, Any]], floor: dict[str, Any],
         mach: dict[str, Any]) -> None:
    """A PNG: throughput (GB/s) against frame size, and latency per transport."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise PlotUnavailable(
            "--plot needs matplotlib, which is not installed: pip install 'shmarray[bench]' "
            "(or pip install matplotlib)") from exc
    wk = [r for r in records if r["workload"] == "wake" and r["status"] == "ok"]
    fig, axes = plt.subplots(1, 3 if wk else 2, figsize=(20 if wk else 14, 5.5))
    ax1, ax2 = axes[0], axes[1]
    # frames/s, not GB/s: a zero-copy row's GB/s counts bytes made visible, not moved, and
    # would dwarf every transport that moves them; frames/s compares like with like
    tp = [r for r in records if r["workload"] == "throughput" and r["status"] == "ok"]
    for name in [c.name for c in T.ALL]:
        pts = sorted((r["nbytes"], r["frames_per_s"]) for r in tp if r["transport"] == name)
        if pts:
            style = "-o" if name.startswith("shmarray") else "--."
            ax1.plot([p[0] for p in pts], [p[1] for p in pts], style, label=name)
    mc = floor.get("memcpy") or {}
    pts = sorted((int(k), v["c_memcpy_gbps"] * 1e9 / int(k)) for k, v in mc.items()
                 if v.get("c_memcpy_gbps"))
    if pts:
        ax1.plot([p[0] for p in pts], [p[1] for p in pts], ":", color="black",
                 label="floor: 1-core memcpy of each frame")
    ax1.set_xscale("log", base=2)
    ax1.set_yscale("log")
    ax1.set_xlabel("frame size (bytes)")
    ax1.set_ylabel("frames/s (median)")
    ax1.set_title("Throughput, 1 producer -> 1 consumer")
    ax1.grid(True, which="both", alpha=0.3)
    ax1.legend(fontsize=8)

    lat = [r for r in records if r["workload"] == "latency" and r["status"] == "ok"]
    sizes = _sizes_in(lat, "latency")
    names = [c.name for c in T.ALL if any(r["transport"] == c.name for r in lat)]
    width = 0.8 / max(1, len(sizes))
    for j, size in enumerate(sizes):
        vals = []
        for name in names:
            r = next((x for x in lat if x["transport"] == name and x["size"] == size), None)
            vals.append(r["median"] / 1e3 if r else 0.0)
        ax2.barh([i + j * width for i in range(len(names))], vals, height=width,
                 label=f"{size} frame")
    cl = (floor.get("cacheline_one_way") or {}).get("median")
    if cl:
        ax2.axvline(cl / 1e3, color="black", linestyle=":", label="floor: cache-line hand-off")
    ax2.set_yticks([i + width * (len(sizes) - 1) / 2 for i in range(len(names))])
    ax2.set_yticklabels(names)
    ax2.invert_yaxis()
    ax2.set_xscale("log")
    ax2.set_xlabel("one-way latency, µs (median of ping-pong / 2)")
    ax2.set_title("Latency")
    ax2.grid(True, axis="x", which="both", alpha=0.3)
    ax2.legend(fontsize=8)
    if wk:
        ax3 = axes[2]
        ax3.barh(range(len(wk)), [r["median"] / 1e3 for r in wk], label="median")
        ax3.plot([r["p99"] / 1e3 for r in wk], range(len(wk)), "k|", markersize=12,
                 label="p99")
        ax3.set_yticks(range(len(wk)))
        ax3.set_yticklabels([r["transport"] for r in wk])
        ax3.invert_yaxis()
        ax3.set_xlabel("wake latency, µs (commit to the consumer's code running)")
        ax3.set_title(f"Await-wake, 1 frame per {wk[0]['interval_s'] * 1e3:g} ms")
        ax3.grid(True, axis="x", alpha=0.3)
        ax3.legend(fontsize=8)
    fig.suptitle(f"shmarray bench: {mach['cpu']}, {mach['usable_cores']} cores, "
                 f"{mach['kernel']}, {mach['python']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# progress


class Progress:
    """A one-line progress bar on a terminal (\\r); one line per step elsewhere; or nothing."""

    def __init__(self, stream: TextIO | None = None, enabled: bool = True) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = time.monotonic()
        self.width = 0

    def update(self, done: int, total: int, label: str) -> None:
        if not self.enabled:
            return
        elapsed = time.monotonic() - self.t0
        if self.tty:
            n = 24
            filled = int(n * done / total) if total else n
            line = (f"\r[{'#' * filled}{'.' * (n - filled)}] {done}/{total} {elapsed:4.0f}s "
                    f"{label}")
            pad = max(0, self.width - len(line))
            self.width = len(line)
            self.stream.write(line + " " * pad)
            if label == "done":
                self.stream.write("\r" + " " * self.width + "\r")
        else:
            self.stream.write(f"bench [{done}/{total}] {elapsed:.0f}s {label}\n")
        self.stream.flush()

    def note(self, text: str) -> None:
        if self.tty and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.width = 0
        self.stream.write(text + "\n")
        self.stream.flush()
