"""The plumbing of ``shmarray bench`` on tiny workloads: processes, records, table, JSON, plot.

No timing is asserted: only that every measurement produces a well-formed record, that a hung
measurement becomes "timeout" instead of hanging, and that nothing is left behind.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import pytest

from shmarray.cli import bench
from shmarray.cli.bench import floor, report, runner
from shmarray.cli.bench import transports as T


def tiny_plan(*transports: type[T.Transport],
              workloads: tuple[str, ...] = ("latency", "throughput"), **kw: Any) -> runner.Plan:
    kw.setdefault("duration", 0.05)
    kw.setdefault("timeout", 30.0)  # nothing here is timed: a loaded machine must not fail it
    return runner.Plan(quick=True, sizes=["64 B"], transports=list(transports),
                       workloads=workloads, **kw)


def check_ok(rec: dict[str, Any]) -> None:
    assert rec["status"] == "ok", (rec["transport"], rec["status"], rec["error"])
    assert rec["median"] > 0 and rec["p99"] >= rec["median"] and rec["spread"] >= 0
    assert rec["n"] > 0


def test_parse_size() -> None:
    assert runner.parse_size("64B") == "64 B"
    assert runner.parse_size("1080p") == "1080p"
    assert runner.parse_size("4K") == "4K"
    assert runner.parse_size("4096") == "4 KiB"
    assert runner.parse_size("2MiB") == "2 MiB"
    assert runner.SIZES["2 MiB"] == (2 << 20, (2 << 20,))
    with pytest.raises(ValueError, match="unknown size"):
        runner.parse_size("lots")


def test_stats() -> None:
    s = runner.stats(list(range(1, 101)))
    assert s["median"] == pytest.approx(50.5)
    assert s["p99"] == pytest.approx(99.01)
    assert s["spread"] == pytest.approx(49.5 / 50.5)
    assert s["n"] == 100
    assert runner.stats([])["median"] is None


def test_items_are_bounded() -> None:
    for quick in (False, True):
        plan = runner.Plan(quick=quick)
        for cls in T.ALL:
            for group in plan.items(cls.name, cls.fanout):
                assert len({it.nprocs for it in group}) == 1
                for it in group:
                    assert 0 < it.duration <= 2 and it.max_count > 0
                    assert it.capacity & (it.capacity - 1) == 0 and it.batch & (it.batch - 1) == 0
    plan = runner.Plan(only=["shmarray-loan/through"])
    assert plan.items("mp.Queue", True) == []
    [group] = plan.items("shmarray-loan", True)
    assert {it.workload for it in group} == {"throughput"}


def test_run_pipe_records_and_json(tmp_path: Any) -> None:
    recs = runner.run(tiny_plan(T.MpPipe))
    assert [(r["transport"], r["workload"], r["size"]) for r in recs] == [
        ("mp.Pipe", "latency", "64 B"), ("mp.Pipe", "throughput", "64 B")]
    for r in recs:
        check_ok(r)
    assert recs[1]["frames"] == recs[1]["sent"] > 0 and recs[1]["frames_per_s"] > 0

    fl = {"cacheline_one_way": {"status": "ok", "median": 50.0, "p99": 60.0},
          "memcpy": {"64": {"nbytes": 64, "c_memcpy_gbps": 10.0}}}
    report.annotate(recs, fl)
    mach = report.machine()
    path = tmp_path / "out.json"
    report.write_json(str(path), recs, fl, mach, "shmarray bench --test", 1.0)
    doc = json.loads(path.read_text())
    keys = [(r["transport"], r["workload"], r["size"]) for r in doc["records"]]
    assert len(keys) == len(set(keys)) == 2
    for r in doc["records"]:
        assert {"median", "p99", "spread", "floor_fraction", "vs_queue"} <= set(r)
    assert doc["machine"]["cpu"] and doc["floor"]["cacheline_one_way"]["median"] == 50.0


def test_run_shmarray_channel() -> None:
    pytest.importorskip("shmarray.channel")
    recs = runner.run(tiny_plan(T.ShmarraySend, T.ShmarrayLoan))
    assert len(recs) == 4
    for r in recs:
        check_ok(r)


def test_fanout_record_or_skip() -> None:
    pytest.importorskip("shmarray.channel")
    plan = tiny_plan(T.ShmarrayLoan, workloads=("fanout",))
    recs = runner.run(plan)
    assert {r["workload"] for r in recs} == {f"fanout-{k}" for k in
                                            runner.QUICK_FANOUT_SUBSCRIBERS}
    for r in recs:  # skipped where broadcast does not exist
        assert r["status"] in ("ok", "skipped"), (r["status"], r["error"])


def test_timeout_kills_the_group() -> None:
    # the producer streams for 30 s but the runner allows 1 s: killed, reported, not hung
    plan = tiny_plan(T.MpPipe, workloads=("throughput",), duration=30.0, timeout=1.0)
    t0 = time.monotonic()
    [rec] = runner.run(plan)
    assert rec["status"] == "timeout" and "within" in rec["error"]
    assert time.monotonic() - t0 < 20


def test_unavailable_transport(monkeypatch: pytest.MonkeyPatch) -> None:
    class Missing(T.MpPipe):
        name = "missing"
        requires = (("no_such_module_xyz", "no-such-package"),)

    [rec, _] = runner.run(tiny_plan(Missing))
    assert rec["status"] == "unavailable" and "pip install no-such-package" in rec["error"]


def _fake_records() -> list[dict[str, Any]]:
    recs = []
    for name, lat, fps in (("mp.Queue", 100_000.0, 1000.0), ("shmarray-send", 1000.0, 50_000.0)):
        recs.append({"transport": name, "workload": "latency", "size": "64 B", "nbytes": 64,
                     "subscribers": 1, "status": "ok", "error": None, "median": lat,
                     "p99": 2 * lat, "spread": 0.1})
        recs.append({"transport": name, "workload": "throughput", "size": "1080p",
                     "nbytes": 6220800, "subscribers": 1, "status": "ok", "error": None,
                     "median": 1e9 / fps, "p99": 2e9 / fps, "spread": 0.2, "frames_per_s": fps,
                     "gb_per_s": fps * 6220800 / 1e9})
    recs.append({"transport": "iceoryx2-spin", "workload": "latency", "size": "64 B",
                 "nbytes": 64, "subscribers": 1, "status": "timeout",
                 "error": "no 'done' from child 0 within 5 s"})
    return recs


def test_table_shows_floor_ratios_and_failures() -> None:
    recs = _fake_records()
    fl = {"cacheline_one_way": {"status": "ok", "median": 50.0, "p99": 80.0},
          "memcpy": {"6220800": {"nbytes": 6220800, "c_memcpy_gbps": 10.0,
                                 "numpy_copyto_gbps": 9.0}}}
    report.annotate(recs, fl)
    shm_lat = recs[2]
    assert shm_lat["vs_queue"] == pytest.approx(100.0)
    assert shm_lat["floor_fraction"] == pytest.approx(0.05)
    assert recs[3]["vs_queue"] == pytest.approx(50.0)
    assert recs[3]["floor_fraction"] == pytest.approx(50_000 * 6220800 / 1e9 / 10.0)
    text = report.table(recs, fl, report.machine(), "shmarray bench --quick", 12.0)
    for needle in ("Floor", "50 ns", "Latency", "Throughput", "vs mp.Queue", "100×", "50×",
                   "timeout: no 'done'", "machine:", "Notes:"):
        assert needle in text, needle


def test_plot_without_matplotlib(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(report.PlotUnavailable, match="pip install"):
        report.plot(str(tmp_path / "x.png"), _fake_records(), {}, report.machine())


def test_plot_png(tmp_path: Any) -> None:
    pytest.importorskip("matplotlib")
    recs = _fake_records()
    path = tmp_path / "x.png"
    report.plot(str(path), recs, {"cacheline_one_way": {"median": 50.0}}, report.machine())
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_floor() -> None:
    bw = floor.memcpy_bandwidth([64, 1 << 16], quick=True)
    assert bw[64]["numpy_copyto_gbps"] > 0
    if floor.probe_available():
        assert bw[1 << 16]["c_memcpy_gbps"] > 0
        cl = floor.cacheline_pingpong(quick=True)
        assert cl["status"] == "ok" and cl["median"] > 0


def test_progress_lines() -> None:
    import io

    buf = io.StringIO()
    p = report.Progress(buf)
    p.update(1, 4, "mp.Pipe latency 64 B")
    p.update(4, 4, "done")
    assert "[1/4]" in buf.getvalue() and "mp.Pipe latency 64 B" in buf.getvalue()
    quiet = io.StringIO()
    report.Progress(quiet, enabled=False).update(1, 2, "x")
    assert quiet.getvalue() == ""


def test_cli_list_and_bad_args(capsys: pytest.CaptureFixture[str]) -> None:
    from shmarray import cli

    assert cli.main(["bench", "--list"]) == 0
    out = capsys.readouterr().out
    for cls in T.ALL:
        assert cls.name in out
    assert cli.main(["bench", "--sizes", "lots"]) == 2
    assert "unknown size" in capsys.readouterr().err


def test_cli_end_to_end(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "b.json"
    rc = cli_main(["bench", "--quick", "--only", "mp.Pipe/latency", "--sizes", "64B",
                   "--duration", "0.05", "--json", str(path), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "Floor (this run)" in out and "mp.Pipe" in out
    doc = json.loads(path.read_text())
    assert [r["workload"] for r in doc["records"]] == ["latency"]
    assert doc["command"].startswith("shmarray bench --quick")


def cli_main(argv: list[str]) -> int:
    from shmarray import cli

    return cli.main(argv)


def test_bench_run_api() -> None:
    out = bench.run(tiny_plan(T.MpPipe, workloads=("latency",)))
    assert out["records"][0]["status"] == "ok"
    assert "Latency" in out["table"] and out["elapsed_s"] > 0


def test_wake_records_for_every_method() -> None:
    # not a timing assertion: every method runs, receives every frame and gives a record
    from shmarray.cli.bench import wake

    recs = wake.measure(samples=60, interval=0.002)
    assert [r["transport"] for r in recs] == list(wake.METHODS)
    for r in recs:
        assert r["status"] == "ok", r
        assert r["workload"] == "wake" and r["n"] >= 50 and 0 < r["median"] <= r["p99"]
    assert next(r for r in recs if r["transport"] == wake.BASELINE)["vs_eventfd"] == 1.0
    text = report.table(recs, {}, report.machine(), "test")
    assert "Await-wake" in text and "shmarray.aio" in text
