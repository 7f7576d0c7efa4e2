"""Top level: the virtio-net endpoint on the Xilinx UltraScale+ PCIe integrated block's user interface.

The generated Verilog module ``virtio_net_endpoint`` has the plain port names of the ``pcie4_uscale_plus``
IP's user side (PG213 "Port Descriptions"), so it drops into a Vivado block design or a cocotbext-pcie
testbench without adapters:

* ``user_clk``/``user_reset``; CQ (``m_axis_cq_*``, in), CC (``s_axis_cc_*``, out), RQ (``s_axis_rq_*``,
  out), RC (``m_axis_rc_*``, in); ``pcie_cq_np_req`` (out, tied to 1: always ready for non-posted requests);
* ``pcie_rq_seq_num0/1`` and ``pcie_rq_seq_num_vld0/1`` (in): the sequence numbers of requester TLPs that
  have left the hard IP; the DMA engine's write ``visible`` waits for them;
* ``cfg_max_payload``, ``cfg_max_read_req``; the MSI-X external-table interface ``cfg_interrupt_msix_*``
  plus ``cfg_interrupt_msi_function_number``; the configuration-extend interface ``cfg_ext_*``;
* two 64-bit Ethernet AXI streams (``eth_tx_*`` out, ``eth_rx_*`` in) and ``loopback_enable``: when set, the
  core's transmit stream is fed back to its receive stream inside and the external ports are idle.

BAR 0 accesses at or above ``MSIX_TABLE_OFFSET`` go to the MSI-X block, the rest to the virtio core's
register bus.  The configuration-extend responder reaches the same registers (virtio spec 4.1.4.9).
"""

from __future__ import annotations

from collections.abc import Callable

from amaranth import ClockDomain, Module
from amaranth.back import verilog
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hdl.ethwidth import connect_ethernet
from hdl.pcie.cfgext import ConfigExtendResponder
from hdl.pcie.completer import BarCompleter
from hdl.pcie.dma import DmaEngine
from hdl.pcie.msix import MsixBlock
from hdl.pcie.regmux import RegisterArbiter, RegisterDecoder, connect_register_bus
from hdl.pcie.tlp import check_data_width, tuser_widths
from virtio_fpga import device_map

MODULE_NAME = "virtio_net_endpoint"
#: Default Ethernet port width: a 10/25G MAC's 64-bit AXI stream.  A build may choose 64..512 bits (512 for a
#: 100G MAC); the core's frame path runs at the DMA width and converters sit at the port, so the port sets
#: the line rate.
ETH_WIDTH = 64
ETH_WIDTHS = (64, 128, 256, 512)


def check_eth_width(eth_width: int) -> None:
    if eth_width not in ETH_WIDTHS:
        raise ValueError(f"Ethernet port width must be one of {ETH_WIDTHS}, not {eth_width}")


def top_ports(data_width: int = 256, eth_width: int = ETH_WIDTH) -> list[tuple[str, str, int]]:
    """(name, "in"/"out", width) of every port of ``virtio_net_endpoint``, in declaration order."""
    check_data_width(data_width)
    check_eth_width(eth_width)
    kw = data_width // 32
    ports: list[tuple[str, str, int]] = [("user_clk", "in", 1), ("user_reset", "in", 1)]

    def axis(prefix: str, sink: bool, width: int, keep: int, tuser: int) -> None:
        d_in, d_out = ("in", "out") if sink else ("out", "in")
        ports.extend(
            [
                (f"{prefix}_tdata", d_in, width),
                (f"{prefix}_tkeep", d_in, keep),
                (f"{prefix}_tlast", d_in, 1),
                (f"{prefix}_tuser", d_in, tuser),
                (f"{prefix}_tvalid", d_in, 1),
                (f"{prefix}_tready", d_out, 1),
            ]
        )

    tu = tuser_widths(data_width)
    axis("m_axis_cq", True, data_width, kw, tu["cq"])
    axis("s_axis_cc", False, data_width, kw, tu["cc"])
    axis("s_axis_rq", False, data_width, kw, tu["rq"])
    axis("m_axis_rc", True, data_width, kw, tu["rc"])
    ports += [
        ("pcie_cq_np_req", "out", 2),
        # sequence numbers of RQ TLPs that have left the hard IP (PG213 "Transmit Transaction Ordering")
        ("pcie_rq_seq_num0", "in", 6),
        ("pcie_rq_seq_num_vld0", "in", 1),
        ("pcie_rq_seq_num1", "in", 6),
        ("pcie_rq_seq_num_vld1", "in", 1),
        ("cfg_max_payload", "in", 2),
        ("cfg_max_read_req", "in", 3),
        ("cfg_interrupt_msix_enable", "in", 4),
        ("cfg_interrupt_msix_mask", "in", 4),
        ("cfg_interrupt_msix_address", "out", 64),
        ("cfg_interrupt_msix_data", "out", 32),
        ("cfg_interrupt_msix_int", "out", 1),
        ("cfg_interrupt_msix_sent", "in", 1),
        ("cfg_interrupt_msix_fail", "in", 1),
        ("cfg_interrupt_msi_function_number", "out", 8),
        ("cfg_ext_read_received", "in", 1),
        ("cfg_ext_write_received", "in", 1),
        ("cfg_ext_register_number", "in", 10),
        ("cfg_ext_function_number", "in", 8),
        ("cfg_ext_write_data", "in", 32),
        ("cfg_ext_write_byte_enable", "in", 4),
        ("cfg_ext_read_data", "out", 32),
        ("cfg_ext_read_data_valid", "out", 1),
    ]
    # Ethernet streams: keep has one bit per byte (not per dword as on the PCIe streams)
    axis("eth_tx", False, eth_width, eth_width // 8, 1)
    axis("eth_rx", True, eth_width, eth_width // 8, 1)
    ports.append(("loopback_enable", "in", 1))
    return ports


def _default_core(data_width: int) -> wiring.Component:
    from hdl.virtio.core import VirtioNetCore  # written by the virtio half; imported late on purpose

    return VirtioNetCore(data_width=data_width, device_features=device_map.DEVICE_FEATURES)


def pcie_test_core(data_width: int) -> wiring.Component:
    """The stand-in core (``hdl.pcie.testcore``) for PCIe-only tests."""
    from hdl.pcie.testcore import DmaTestCore

    return DmaTestCore(data_width)


CORES: dict[str, Callable[[int], wiring.Component]] = {"virtio": _default_core, "test": pcie_test_core}


def planted_bug_core(bug: str) -> Callable[[int], wiring.Component]:
    """TEST ONLY: a factory for the virtio core with a deliberate bug (``hdl.virtio.core.PLANTED_BUGS``).

    Not in :data:`CORES`, so no ``core=`` string (and no CLI option) reaches it: only the DMA monitor's tests
    build it, through ``sim.runner.build(planted_bug=...)``.
    """

    def factory(data_width: int) -> wiring.Component:
        from hdl.virtio.core import VirtioNetCore

        return VirtioNetCore(data_width=data_width, device_features=device_map.DEVICE_FEATURES, planted_bug=bug)

    return factory


class VirtioNetEndpoint(wiring.Component):
    """PCIe blocks + virtio core; ``core`` picks the core ("virtio", the product, or "test")."""

    def __init__(
        self,
        data_width: int = 256,
        core: str | Callable[[int], wiring.Component] = "virtio",
        dma_timeout_cycles: int = 1 << 16,
        eth_width: int = ETH_WIDTH,
    ) -> None:
        check_data_width(data_width)
        self.data_width = data_width
        self.eth_width = eth_width
        self._core_factory = CORES[core] if isinstance(core, str) else core
        self.dma_timeout_cycles = dma_timeout_cycles
        members = {}
        for name, direction, width in top_ports(data_width, eth_width):
            members[name] = In(width) if direction == "in" else Out(width)
        super().__init__(members)

    def elaborate(self, platform: object) -> Module:
        m = Module()
        w = self.data_width
        m.domains.sync = cd = ClockDomain("sync")
        m.d.comb += [cd.clk.eq(self.user_clk), cd.rst.eq(self.user_reset)]

        m.submodules.core = core = self._core_factory(w)
        m.submodules.completer = completer = BarCompleter(w, bar=device_map.BAR)
        m.submodules.cfgext = cfgext = ConfigExtendResponder()
        m.submodules.arbiter = arbiter = RegisterArbiter(2)
        m.submodules.decoder = decoder = RegisterDecoder(device_map.MSIX_TABLE_OFFSET)
        m.submodules.msix = msix = MsixBlock(
            device_map.NUM_MSIX_VECTORS, device_map.MSIX_TABLE_OFFSET, device_map.MSIX_PBA_OFFSET
        )
        m.submodules.dma = dma = DmaEngine(w, timeout_cycles=self.dma_timeout_cycles)

        # ---- completer (CQ/CC)
        for k in ("tdata", "tkeep", "tlast", "tuser", "tvalid"):
            m.d.comb += getattr(completer.cq, k).eq(getattr(self, f"m_axis_cq_{k}"))
            m.d.comb += getattr(self, f"s_axis_cc_{k}").eq(getattr(completer.cc, k))
        m.d.comb += [self.m_axis_cq_tready.eq(completer.cq.tready), completer.cc.tready.eq(self.s_axis_cc_tready)]
        m.d.comb += self.pcie_cq_np_req.eq(1)

        # ---- register path: completer (priority) and cfg-ext window -> arbiter -> decoder -> core | MSI-X
        connect_register_bus(m, completer.regs, arbiter.m0)
        connect_register_bus(m, cfgext.regs, arbiter.m1)
        connect_register_bus(m, arbiter.bus, decoder.bus)
        connect_register_bus(m, decoder.lo, core.regs)
        connect_register_bus(m, decoder.hi, msix.regs)

        # ---- configuration extend
        m.d.comb += [
            cfgext.read_received.eq(self.cfg_ext_read_received),
            cfgext.write_received.eq(self.cfg_ext_write_received),
            cfgext.register_number.eq(self.cfg_ext_register_number),
            cfgext.function_number.eq(self.cfg_ext_function_number),
            cfgext.write_data.eq(self.cfg_ext_write_data),
            cfgext.write_byte_enable.eq(self.cfg_ext_write_byte_enable),
            self.cfg_ext_read_data.eq(cfgext.read_data),
            self.cfg_ext_read_data_valid.eq(cfgext.read_data_valid),
        ]

        # ---- MSI-X
        wiring.connect(m, core.irq, msix.irq)
        m.d.comb += [
            msix.msix_enable.eq(self.cfg_interrupt_msix_enable[0]),
            msix.msix_mask.eq(self.cfg_interrupt_msix_mask[0]),
            msix.msix_sent.eq(self.cfg_interrupt_msix_sent),
            msix.msix_fail.eq(self.cfg_interrupt_msix_fail),
            self.cfg_interrupt_msix_address.eq(msix.msix_address),
            self.cfg_interrupt_msix_data.eq(msix.msix_data),
            self.cfg_interrupt_msix_int.eq(msix.msix_int),
            self.cfg_interrupt_msi_function_number.eq(0),
            core.msix_enabled.eq(self.cfg_interrupt_msix_enable[0]),
        ]

        # ---- DMA (RQ/RC)
        wiring.connect(m, core.dma_rd, dma.rd)
        wiring.connect(m, core.dma_wr, dma.wr)
        for k in ("tdata", "tkeep", "tlast", "tuser", "tvalid"):
            m.d.comb += getattr(self, f"s_axis_rq_{k}").eq(getattr(dma.rq, k))
            m.d.comb += getattr(dma.rc, k).eq(getattr(self, f"m_axis_rc_{k}"))
        m.d.comb += [dma.rq.tready.eq(self.s_axis_rq_tready), self.m_axis_rc_tready.eq(dma.rc.tready)]
        m.d.comb += [
            dma.max_payload.eq(self.cfg_max_payload),
            dma.max_read_req.eq(self.cfg_max_read_req),
            dma.requester_function.eq(0),
            dma.rq_seq_num0.eq(self.pcie_rq_seq_num0),
            dma.rq_seq_num_vld0.eq(self.pcie_rq_seq_num_vld0),
            dma.rq_seq_num1.eq(self.pcie_rq_seq_num1),
            dma.rq_seq_num_vld1.eq(self.pcie_rq_seq_num_vld1),
            core.dma_busy.eq(dma.busy),
        ]

        # ---- Ethernet: loopback inside at the core's width, or the external ports through width converters
        connect_ethernet(m, core, self, self.eth_width)
        return m


def generate_verilog(data_width: int = 256, core: str = "virtio", eth_width: int = ETH_WIDTH) -> str:
    """Verilog of ``virtio_net_endpoint`` for the given data and Ethernet port widths (the board scripts' entry)."""
    top = VirtioNetEndpoint(data_width, core=core, eth_width=eth_width)
    return verilog.convert(top, name=MODULE_NAME, emit_src=False)
