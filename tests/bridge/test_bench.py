"""The bridge's benchmark workload (what `shmarray bench` calls): it runs, checks every frame
and returns its figures. No timing is asserted."""

from __future__ import annotations

import pytest

pytest.importorskip("zmq")


def test_bench_run_returns_figures_for_every_transport() -> None:
    from shmarray.bridge import bench

    fig = bench.run(frames=20, repeats=1, shape=(48, 64, 3), fps=200.0, latency_frames=10)
    assert set(fig["throughput"]) == set(bench.TRANSPORTS)
    for t, r in fig["throughput"].items():
        assert r["fps"] > 0 and r["bad"] == 0 and r["dropped"] == 0, (t, r)
    assert set(fig["latency_ms"]) == {"pyzmq", "bridge"}
    assert all(v["frames"] == 10 and v["p50"] > 0 for v in fig["latency_ms"].values())
    assert set(fig["ratios"]) == {"bridge_vs_pyzmq", "bridge_vs_raw_tcp"}
    assert {"throughput_vs_pyzmq", "paced_latency_p50_ms"} <= set(fig["targets"])
    text = bench.table(fig)
    assert "bridge" in text and "raw-tcp" in text and "target" in text
