"""The simulated root complex's injected host read latency (sim.testbench.ReadLatency), measured on the bus.

One simulation with the PCIe test core: DMA copies at 0 (the model's own latency) and at 500 ns.  A single
read's round trip in cycles must grow by the latency (500 ns = 125 cycles at 250 MHz), and the eight reads of
a 4 KiB copy must be in flight together, so the copy's read phase grows by about one latency, not eight.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.rtl

CLOCK_MHZ = 250


def test_latency_adds_to_each_read_and_reads_stay_pipelined() -> None:
    from sim.runner import run_scenario

    r = run_scenario(
        "sim.latency_probe:read_round_trips", {"latencies_ns": [0, 500], "lengths": [64, 4096]}, core="test"
    )
    assert r["guard_bytes_ok"], r["guard_violations"]
    runs = {(x["latency_ns"], x["length"]): x for x in r["runs"]}
    assert all(x["ok"] for x in r["runs"]), r["runs"]
    assert r["delayed_reads"] > 0
    added = 500 * CLOCK_MHZ // 1000  # cycles

    small0, small500 = runs[(0, 64)], runs[(500, 64)]
    assert small0["reads"] == small500["reads"] == 1
    grown = small500["round_trips"][0] - small0["round_trips"][0]
    assert added - 2 <= grown <= added + 2, (small0, small500)
    assert small0["round_trips"][0] < 40  # the model alone answers in a few tens of cycles

    big0, big500 = runs[(0, 4096)], runs[(500, 4096)]
    assert big500["reads"] >= 4  # 4 KiB at Max_Read_Request_Size 512
    assert big500["in_flight_max"] >= 2
    # overlapping, not serialised: the whole read phase grows by about one latency (plus link time)
    assert big500["span"] - big0["span"] < 2 * added, (big0, big500)
    assert big500["span"] < big500["reads"] * added
    assert min(big500["round_trips"]) >= added
