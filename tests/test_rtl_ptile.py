"""The endpoint built for the Intel P-tile Avalon-ST hard IP, behind cocotbext-pcie's P-tile model extended with
the VirtIO option (``sim/ptile.py``), driven by the same host driver as the UltraScale+ build.

Here the virtio capabilities come from the (simulated) hard IP, at the addresses Intel 683059 3.2.2.5 gives,
filled from ``device_map``; the gateware serves the structures in BAR 0 and the ``pci_cfg_data`` window.
"""

from __future__ import annotations

import pytest

from virtio_fpga import device_map, spec

pytestmark = pytest.mark.rtl


def _run(scenario: str, args: dict, **kw) -> dict:
    from sim.runner import run_scenario

    result = run_scenario(scenario, args, family="ptile", **kw)
    assert result["guard_bytes_ok"], result["guard_violations"]
    assert result["cfg_ext_timeouts"] == 0
    return result


def test_ptile_capabilities_from_the_hard_ip() -> None:
    from sim.ptile import MSIX_CAP_ADDRESS, PCIE_CAP_ADDRESS, VIRTIO_CAP_ADDRESS

    r = _run("sim.scenarios:enumerate_and_walk", {})
    caps = r["caps"]
    # 683059 Table "PF/VF Capability Link List": PM, common, notify, PCIe, MSI-X, ISR, device, PCI cfg; no MSI
    assert [c["offset"] for c in caps] == [0x40, 0x48, 0x58, PCIE_CAP_ADDRESS, MSIX_CAP_ADDRESS, 0xBC, 0xCC, 0xDC]
    assert spec.PCI_CAP_ID_MSIX in [c["id"] for c in caps] and 0x05 not in [c["id"] for c in caps]
    vendor = [c for c in caps if c["id"] == spec.PCI_CAP_ID_VNDR]
    by_type = {c["cfg_type"]: c for c in vendor}
    assert sorted(by_type) == sorted(int(c.cfg_type) for c in device_map.VIRTIO_CAPS)
    for cap in device_map.VIRTIO_CAPS:
        got = by_type[int(cap.cfg_type)]
        assert got["offset"] == VIRTIO_CAP_ADDRESS[cap.cfg_type]
        assert (got["bar"], got["bar_offset"], got["length"]) == (cap.bar, cap.offset, cap.length)
    assert by_type[int(spec.CfgType.NOTIFY)]["notify_off_multiplier"] == device_map.NOTIFY_OFF_MULTIPLIER


def test_ptile_pci_cfg_window_through_virtio_pcicfg() -> None:
    """virtio spec 4.1.4.9 through the hard IP's virtio_pcicfg_* handshake (683059 3.2.2.4)."""
    r = _run("sim.scenarios:pci_cfg_probe", {})
    assert r["num_queues_cfg"] == r["num_queues_bar"] == device_map.NUM_QUEUES
    assert r["feature_hi_cfg"] == r["feature_hi_bar"] == device_map.DEVICE_FEATURES >> 32


def test_ptile_demo_loopback_every_frame_back() -> None:
    r = _run("host.demo:run_demo", {"frames": 24, "min_size": 60, "max_size": 1514, "seed": 3})
    assert r["errors"] == 0, r.get("error_messages")
    assert r["frames_sent"] == 24
    assert r["frames_received"] == r["frames_intact"] == 24
    assert r["dma_read_requests"] > 0 and r["dma_write_requests"] > 0
    assert sum(r["interrupts"].values()) > 0  # MSI-X writes from the gateware's table over tx_st
    # the DMA monitor judged every request the bus counters saw, and every MSI-X message besides
    mon = r["dma_monitor"]
    # RX: one used element per frame; TX: IN_ORDER may fold several into one
    assert mon["violations"] == 0 and mon["msix_writes"] > 0 and mon["used_elements"] > 24
    assert (mon["reads_checked"], mon["writes_checked"] - mon["msix_writes"]) == (
        r["dma_read_requests"],
        r["dma_write_requests"],
    )


def test_ptile_demo_under_backpressure_with_chains() -> None:
    r = _run(
        "host.demo:run_demo",
        {"frames": 12, "min_size": 60, "max_size": 3000, "seed": 5, "rx_chain": 2, "tx_chain": 2},
        backpressure=True,
    )
    assert r["errors"] == 0, r.get("error_messages")
    assert r["frames_received"] == r["frames_intact"] == 12


@pytest.mark.slow
def test_ptile_demo_jumbo_frames_many_wraps() -> None:
    r = _run("host.demo:run_demo", {"frames": 100, "min_size": 60, "max_size": 9000, "seed": 9, "queue_size": 16})
    assert r["errors"] == 0, r.get("error_messages")
    assert r["frames_received"] == r["frames_intact"] == 100


def test_ptile_rtl_matches_the_software_device_on_the_whole_library(capsys) -> None:
    """Issue 11: on the P-tile build too, the driver cannot tell the gateware from the software device."""
    import json

    from host.scenario import library
    from virtio_fpga.cli import main

    rc = main(["compare", "--family", "ptile", "--devices", "rtl,soft-pcie", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["scenarios"] == len(library())
    mismatches = [r for r in report["results"] if not r["match"]]
    assert not mismatches, mismatches[0]["first_difference"]
    assert rc == 0


def test_ptile_steady_state_ordered_at_500ns() -> None:
    """The steady-state bench on the P-tile build: 500 ns host read latency, used elements checked against their
    data from the tx_st headers (sim.ordering), reads in flight and round trips from the tags of tx_st/rx_st."""
    r = _run(
        "sim.throughput:steady_state",
        {"mode": "loopback", "frame_bytes": 256, "frames": 32, "warmup": 16, "check_order": True},
        read_latency_ns=500,
    )
    assert r["ok"], r["errors"]
    assert r["read_latency_ns"] == 500
    assert r["frames_bad"] == 0 and r["frames_lost"] == 0
    assert r["order"]["violations"] == []
    assert r["order"]["used_checked"] >= 32
    w = r["window"]
    assert w["reads_in_flight_max"] > 4
    # every read waited the injected 500 ns (125 cycles at 250 MHz) on top of the link
    assert w["read_round_trip_mean"] > 125
    assert w["requests"]["desc_reads"] > 0 and w["requests"]["used_writes"] > 0
    assert w["link"]["to_host"]["writes"] > 0 and w["link"]["to_device"]["completion_payload_bytes"] > 0
