"""The P-tile PCIe half with the stand-in core (``hdl.pcie.testcore``), as ``test_rtl_pcie.py`` does for UltraScale+.

The same scenarios, through the P-tile model: BAR TLPs through ``rx_st``/``tx_st`` and the shared completer,
DMA through the shared engine behind the RX splitter and TX arbiter, MSI-X as memory writes on ``tx_st``.
"""

from __future__ import annotations

import pytest

from virtio_fpga import device_map

pytestmark = pytest.mark.rtl


def scenario(name: str, args: dict | None = None, **kw) -> dict:
    from sim.runner import run_scenario

    result = run_scenario(f"sim.scenarios:{name}", args or {}, core="test", family="ptile", **kw)
    assert result["guard_bytes_ok"], result["guard_violations"]
    assert result["cfg_ext_timeouts"] == 0
    return result


def _check_copies(r: dict) -> None:
    for case in r["cases"]:
        assert case["ok"], case
        assert not case["error_bit"], case
        assert case["untouched_prefix"], case
        assert case["reads"]["problems"] == [], case
        assert case["writes"]["problems"] == [], case


def test_ptile_dma_copy_alignments_and_splits() -> None:
    """Reads split at MRRS and 4 KiB, completions realigned from dword 0 to the RC layout and reassembled,
    writes split at MPS and moved to dword 0 of tx_st_data."""
    r = scenario("testcore_dma_copy")
    _check_copies(r)
    assert r["mps"] == 256 and r["mrrs"] == 512
    assert r["dma_read_bytes"] == r["dma_write_bytes"] == sum(c["len"] for c in r["cases"])


def test_ptile_msix_delivery_and_masking() -> None:
    """Messages are memory writes on tx_st (683059 4.6.3); the per-vector mask and PBA are immediate, the
    Function Mask reaches the gateware through the configuration output bus (683059 4.9, up to 32 cycles):
    the scenario waits 0.5 us after setting it (see hdl/pcie/ptile/README.md)."""
    r = scenario("testcore_msix", {"mask_settle_us": 0.5})
    assert r["fired"] == [True] * device_map.NUM_MSIX_VECTORS and r["counts"] == [1] * device_map.NUM_MSIX_VECTORS
    assert r["spurious"] is False
    assert (r["masked_fired"], r["pba_while_masked"], r["unmasked_fired"], r["pba_after"]) == (False, 2, True, 0)
    assert r["function_masked_fired"] is False and r["function_unmasked_fired"] is True
    assert r["copy_irq"] is True


@pytest.mark.slow
def test_ptile_dma_under_backpressure() -> None:
    r = scenario("testcore_dma_stress", {"copies": 24, "max_len": 2500}, backpressure=True)
    _check_copies(r)


@pytest.mark.slow
def test_ptile_dma_errors_bus_master_off_and_timeout() -> None:
    """A UR completion ends the read with ``error``; with Bus Master Enable off the gateware drops its requests
    (the hard IP does not), so the read times out after ~65536 cycles and the engine keeps working."""
    r = scenario("testcore_dma_errors")
    assert r["unmapped_error_bit"] is True and r["after_unmapped_ok"] is True
    assert r["timeout_error_bit"] is True and 200 < r["timeout_us"] < 400
    assert r["dst_untouched"] is True and r["after_timeout_ok"] is True


@pytest.mark.slow
def test_ptile_bar_access_unsupported_and_pci_cfg_window() -> None:
    r = scenario("testcore_bar_access", {"count": 80})
    assert r["mismatches"] == [] and r["unmapped"] == 0
    r = scenario("testcore_unsupported")
    assert "Unsuccessful" in r["long_read_error"] and r["after_long_write"] == 0x0123456789ABCDEF
    r = scenario("testcore_pci_cfg_window")
    assert r["bar_after_cfg_write"] == 0x12345678 and r["cfg_read_2"] == 0x1122 and r["cfg_read_1"] == 0x55
    assert r["bar_after_byte_write"] == 0x112233445566EE88 and r["fields_readback"] == [3, 0x20, 4]
