"""The contract between the PCIe half and the virtio half: directions as the register block sees them."""

from __future__ import annotations

from amaranth.back import rtlil
from amaranth.lib import wiring

from hdl.signatures import VirtioCoreSignature
from hdl.virtio.core import VirtioNetCore


def test_core_register_bus_directions() -> None:
    sig = VirtioCoreSignature(256)
    regs = sig.members["regs"].signature.members
    flow = {name: m.flow for name, m in regs.items()}
    # Seen from the core: the completer drives the request, the core answers.
    assert flow["valid"] == wiring.In and flow["addr"] == wiring.In and flow["wdata"] == wiring.In
    assert flow["rdata"] == wiring.Out and flow["done"] == wiring.Out


def test_core_converts_on_its_own() -> None:
    """No driver conflicts: the core is a self-contained netlist, as a board flow out of context needs."""
    text = rtlil.convert(VirtioNetCore(128))
    assert "regs__rdata" in text and "regs__valid" in text
