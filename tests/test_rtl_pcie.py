"""The PCIe half in Icarus, through cocotbext-pcie's RootComplex and the (extended) UltraScale+ model.

These runs use the stand-in core (``hdl.pcie.testcore``: scratch registers, a DMA copy engine, an interrupt
trigger) so that they test the PCIe blocks on their own; ``test_rtl_endpoint.py`` runs the virtio core.
Every check goes through the simulated link: configuration TLPs through the cfg_ext interface, BAR TLPs
through CQ/CC, DMA through RQ/RC, interrupts through ``cfg_interrupt_msix_*`` into the RootComplex.
"""

from __future__ import annotations

import pytest

from hdl.pcie import cfgext
from virtio_fpga import device_map, spec

pytestmark = pytest.mark.rtl


def scenario(name: str, args: dict | None = None, **kw) -> dict:
    from sim.runner import run_scenario

    result = run_scenario(f"sim.scenarios:{name}", args or {}, core="test", **kw)
    assert result["guard_bytes_ok"], result["guard_violations"]
    assert result["cfg_ext_timeouts"] == 0
    return result


def test_enumeration_and_capability_walk() -> None:
    """Identity from the hard IP, the virtio capabilities from the gateware via cfg_ext (spec 4.1.4)."""
    r = scenario("enumerate_and_walk")
    assert (r["vendor_id"], r["device_id"]) == (device_map.VENDOR_ID, device_map.DEVICE_ID)
    assert r["class_code"] == device_map.CLASS_CODE
    assert r["bar0_size"] == device_map.BAR_SIZE
    caps = r["caps"]
    # the hard IP's own list (PM 0x40, MSI-X 0x60, PCIe 0x70), then the chain into the user window
    assert [(c["id"], c["offset"]) for c in caps[:3]] == [(0x01, 0x40), (spec.PCI_CAP_ID_MSIX, 0x60), (0x10, 0x70)]
    assert caps[2]["next"] == cfgext.FIRST_CAP_OFFSET
    vendor = caps[3:]
    assert len(vendor) == len(device_map.VIRTIO_CAPS)
    image = cfgext.VIRTIO_CAP_LAYOUT
    for i, ((addr, cap), got) in enumerate(zip(image, vendor, strict=True)):
        nxt = image[i + 1][0] if i + 1 < len(image) else 0
        assert got["cap_offset"] == addr
        assert bytes.fromhex(got["raw"]) == cap.to_bytes(nxt), f"capability at {addr:#x}"
        assert got["cfg_type"] == cap.cfg_type
    notify = next(c for c in vendor if c["cfg_type"] == spec.CfgType.NOTIFY)
    assert notify["notify_off_multiplier"] == device_map.NOTIFY_OFF_MULTIPLIER


def test_bar_register_access() -> None:
    """Random 1/2/4/8-byte BAR reads and writes agree with a byte model; unmapped registers read 0."""
    r = scenario("testcore_bar_access", {"count": 160})
    assert r["mismatches"] == []
    assert r["unmapped"] == 0


def test_pci_cfg_capability_window() -> None:
    """VIRTIO_PCI_CAP_PCI_CFG really reaches the BAR (virtio spec 4.1.4.9)."""
    r = scenario("testcore_pci_cfg_window")
    assert r["bar_after_cfg_write"] == 0x12345678
    assert r["cfg_read_4"] == 0x55667788
    assert r["cfg_read_2"] == 0x1122
    assert r["cfg_read_1"] == 0x55
    assert r["bar_after_byte_write"] == 0x112233445566EE88
    assert r["cfg_read_bad_bar"] != 0xCAFEF00D  # BAR 3 does not exist: no access happened
    assert r["fields_readback"] == [3, 0x20, 4]


def test_unsupported_requests_never_hang() -> None:
    """A 16-byte read gets an Unsupported Request completion; a 16-byte write is dropped (PCIe Base 2.3.1)."""
    r = scenario("testcore_unsupported")
    assert "long_read_error" in r and "Unsuccessful" in r["long_read_error"]
    assert r["after_long_write"] == 0x0123456789ABCDEF
    assert r["still_alive"] == 0  # the completer still answers; nothing in flight


def _check_copies(r: dict) -> None:
    for case in r["cases"]:
        assert case["ok"], case
        assert not case["error_bit"], case
        assert case["untouched_prefix"], case
        assert case["reads"]["problems"] == [], case
        assert case["writes"]["problems"] == [], case


def test_dma_copy_alignments_and_splits() -> None:
    """Reads split at MRRS and 4 KiB, completions reassembled and realigned, writes split at MPS and 4 KiB."""
    r = scenario("testcore_dma_copy")
    _check_copies(r)
    assert r["mps"] == 256 and r["mrrs"] == 512  # what the RootComplex programmed
    big = next(c for c in r["cases"] if c["len"] == 9000)
    assert big["reads"]["count"] >= 9000 // 512
    assert big["writes"]["count"] >= 9000 // 256
    assert r["dma_read_bytes"] == r["dma_write_bytes"] == sum(c["len"] for c in r["cases"])


def test_dma_under_backpressure() -> None:
    """Random idle cycles on CQ/RC and tready drops on CC/RQ do not change a single byte."""
    r = scenario("testcore_dma_stress", {"copies": 24, "max_len": 2500}, backpressure=True)
    _check_copies(r)


@pytest.mark.parametrize("width", [128, 512])
def test_other_interface_widths(width: int) -> None:
    """The same blocks at 128 bits (Gen3 x4) and 512 bits (Gen3 x16), 250 MHz: BAR access, the capability
    walk and DMA copies at awkward alignments."""
    r = scenario(
        "testcore_dma_copy", {"cases": [[1, 3, 5], [3, 0, 64], [5, 2, 513], [2, 4094, 4100]]}, data_width=width
    )
    _check_copies(r)
    r = scenario("testcore_bar_access", {"count": 40}, data_width=width)
    assert r["mismatches"] == []


def test_msix_delivery_and_masking() -> None:
    """Vectors arrive through cfg_interrupt_msix_*; masked ones stay pending (PBA) until unmasked."""
    r = scenario("testcore_msix")
    assert r["granted"] == device_map.NUM_MSIX_VECTORS
    assert r["fired"] == [True] * device_map.NUM_MSIX_VECTORS
    assert r["counts"] == [1] * device_map.NUM_MSIX_VECTORS
    assert r["spurious"] is False
    assert r["masked_fired"] is False
    assert r["pba_while_masked"] == 1 << 1
    assert r["unmasked_fired"] is True
    assert r["pba_after"] == 0
    assert r["function_masked_fired"] is False
    assert r["function_unmasked_fired"] is True
    assert r["table_entry0"][3] == 0  # unmasked by the RootComplex
    assert r["table_entry0_q"] == r["table_entry0"][0] | (r["table_entry0"][1] << 32)
    assert r["copy_irq"] is True


def test_scenario_failure_is_reported() -> None:
    """run_scenario raises when the cocotb side fails (here: the scenario itself raises)."""
    from sim.runner import SimulationError, run_scenario

    with pytest.raises(SimulationError):
        run_scenario("sim.scenarios:does_not_exist", {}, core="test")
    # a scenario that does not finish within its simulated-time limit fails instead of hanging
    with pytest.raises(SimulationError, match="failed"):
        run_scenario("sim.scenarios:stall", {"seconds": 1.0}, core="test", sim_timeout_ms=0.05)


def test_second_function_on_the_same_root_complex() -> None:
    """The software reference device sits beside the RTL on the RootComplex and is driven the same way."""
    r = scenario("enumerate_and_walk", target="soft")
    assert (r["vendor_id"], r["device_id"]) == (device_map.VENDOR_ID, device_map.DEVICE_ID)
    types = [c["cfg_type"] for c in r["caps"] if c["id"] == spec.PCI_CAP_ID_VNDR]
    assert sorted(types) == sorted(int(c.cfg_type) for c in device_map.VIRTIO_CAPS)


def test_waves_on_request() -> None:
    from pathlib import Path

    r = scenario("testcore_bar_access", {"count": 4}, waves=True)
    assert r["mismatches"] == []
    assert Path(r["waves"]).stat().st_size > 1000


def test_dma_completion_errors_and_timeout() -> None:
    """UR completion from the RootComplex and a dropped request (bus mastering off) both end the read with
    ``error``; the timeout fires after ~65536 cycles (262 us at 250 MHz) and the engine keeps working."""
    r = scenario("testcore_dma_errors")
    assert r["unmapped_error_bit"] is True
    assert r["after_unmapped_ok"] is True
    assert r["timeout_error_bit"] is True
    assert 200 < r["timeout_us"] < 400
    assert r["dst_untouched"] is True
    assert r["after_timeout_ok"] is True


def test_host_driver_on_the_transport() -> None:
    """The project's driver, on CocotbPcieTransport, against the software device on the same RootComplex:
    checks the transport itself (exact-width config/BAR access, DMA buffers with guards, latched MSI-X)."""
    from sim.runner import run_scenario

    r = run_scenario("host.demo:run_demo", {"frames": 8, "seed": 2}, core="test", target="soft")
    assert r["errors"] == 0, r.get("error_messages")
    assert r["frames_received"] == r["frames_intact"] == 8
    assert r["guard_bytes_ok"]
    assert sum(r["interrupts"].values()) > 0


def test_dma_batch_many_reads_in_flight() -> None:
    """48 copies of 64 bytes and 12 of 1500 with every request issued as soon as the DMA engine takes it: all
    data right, many reads outstanding at once, and the copy's MSI-X after its last write became visible
    (pcie_rq_seq_num came back from the model)."""
    r = scenario("testcore_dma_batch", {"count": 48, "length": 64, "stride": 128})
    assert all(r["ok"]) and not r["error_bit"] and r["irq"]
    assert r["max_reads_outstanding"] >= 8
    assert r["read_tlps"] == 48 and r["write_tlps"] == 48
    r = scenario("testcore_dma_batch", {"count": 12, "length": 1500, "stride": 1536}, backpressure=True)
    assert all(r["ok"]) and not r["error_bit"] and r["irq"]
    assert r["max_reads_outstanding"] >= 2


def test_dma_read_after_write_fence_chain() -> None:
    """Copy i reads what copy i-1 wrote, its read requested right after that write: with req_after_writes the
    read waits for the write's TLPs, so the data propagates down the whole chain; without it the reads overtake
    the writes and the chain breaks (the check can fail)."""
    r = scenario("testcore_dma_batch", {"count": 10, "length": 300, "stride": 512, "fence": True, "chain": True})
    assert all(r["ok"]) and r["irq"]
    r = scenario("testcore_dma_batch", {"count": 10, "length": 300, "stride": 512, "fence": False, "chain": True})
    assert not all(r["ok"])
