"""The whole endpoint (PCIe half + virtio core) in Icarus, driven by the project's host driver.

The driver (``host.driver`` via ``host.demo:run_demo``) runs on :class:`sim.transport.CocotbPcieTransport`:
enumeration and the capability walk go through the configuration-extend path, registers through CQ/CC,
rings and frames through the DMA engine, interrupts through MSI-X.  Every frame must come back intact and
no DMA may touch a guard byte.
"""

from __future__ import annotations

import pytest

from virtio_fpga import device_map, spec

pytestmark = pytest.mark.rtl


def _run(scenario: str, args: dict, **kw) -> dict:
    from sim.runner import run_scenario

    result = run_scenario(scenario, args, **kw)
    assert result["guard_bytes_ok"], result["guard_violations"]
    assert result["cfg_ext_timeouts"] == 0
    return result


def test_virtio_capabilities_from_the_gateware() -> None:
    r = _run("sim.scenarios:enumerate_and_walk", {})
    vendor = [c for c in r["caps"] if c["id"] == spec.PCI_CAP_ID_VNDR]
    assert [c["cfg_type"] for c in vendor] == [int(c.cfg_type) for c in device_map.VIRTIO_CAPS]
    for got, cap in zip(vendor, device_map.VIRTIO_CAPS, strict=True):
        assert (got["bar"], got["bar_offset"], got["length"]) == (cap.bar, cap.offset, cap.length)


def test_pci_cfg_window_reaches_common_config() -> None:
    """virtio spec 4.1.4.9: the config-space window reads and writes the same registers as BAR0."""
    r = _run("sim.scenarios:pci_cfg_probe", {})
    assert r["num_queues_cfg"] == r["num_queues_bar"] == device_map.NUM_QUEUES
    assert r["feature_hi_cfg"] == r["feature_hi_bar"] == device_map.DEVICE_FEATURES >> 32


def test_demo_loopback_every_frame_back() -> None:
    r = _run("host.demo:run_demo", {"frames": 24, "min_size": 60, "max_size": 1514, "seed": 3})
    assert r["errors"] == 0, r.get("error_messages")
    assert r["frames_sent"] == 24
    assert r["frames_received"] == r["frames_intact"] == 24
    assert r["dma_read_requests"] > 0 and r["dma_write_requests"] > 0
    assert r["sim_cycles"] > 0
    # the DMA monitor judged every request the bus counters saw, and every MSI-X message besides
    mon = r["dma_monitor"]
    # RX: one used element per frame; TX: IN_ORDER may fold several into one
    assert mon["violations"] == 0 and mon["msix_writes"] > 0 and mon["used_elements"] > 24
    assert (mon["reads_checked"], mon["writes_checked"] - mon["msix_writes"]) == (
        r["dma_read_requests"],
        r["dma_write_requests"],
    )


def test_demo_under_backpressure_with_chains() -> None:
    r = _run(
        "host.demo:run_demo",
        {"frames": 12, "min_size": 60, "max_size": 3000, "seed": 5, "rx_chain": 2, "tx_chain": 2},
        backpressure=True,
    )
    assert r["errors"] == 0, r.get("error_messages")
    assert r["frames_received"] == r["frames_intact"] == 12


@pytest.mark.parametrize("disable", ["NOTIFICATION_DATA", "EVENT_IDX,IN_ORDER"])
def test_demo_feature_subsets(disable: str) -> None:
    r = _run("host.demo:run_demo", {"frames": 8, "disable": disable, "seed": 6})
    assert r["errors"] == 0, r.get("error_messages")
    assert r["frames_received"] == r["frames_intact"] == 8
    for name in disable.split(","):
        assert name not in r["negotiated"]


def test_driver_without_ring_packed_is_refused() -> None:
    """This device implements packed rings only: FEATURES_OK does not stick without RING_PACKED (spec 3.1.1)."""
    r = _run("host.demo:run_demo", {"frames": 2, "disable": "RING_PACKED"})
    assert r["frames_received"] == 0
    assert any("FEATURES_OK" in m for m in r["error_messages"])


@pytest.mark.slow
def test_demo_jumbo_frames_many_wraps() -> None:
    r = _run("host.demo:run_demo", {"frames": 200, "min_size": 60, "max_size": 9000, "seed": 9, "queue_size": 16})
    assert r["errors"] == 0, r.get("error_messages")
    assert r["frames_received"] == r["frames_intact"] == 200


@pytest.mark.parametrize("width", [pytest.param(128, marks=pytest.mark.slow), 512])
def test_demo_other_interface_widths(width: int) -> None:
    r = _run("host.demo:run_demo", {"frames": 6, "min_size": 60, "max_size": 4000, "seed": 4}, data_width=width)
    assert r["errors"] == 0, r.get("error_messages")
    assert r["frames_received"] == r["frames_intact"] == 6
