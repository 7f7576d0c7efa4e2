"""Top level for the Intel P-tile Avalon-ST hard IP: the same virtio core behind the P-tile user interface.

The generated module (``virtio_net_endpoint``, as for the UltraScale+ build; a build targets one family) uses
the hard IP's port names without the ``_i``/``_o`` suffixes (683059 chapter 4 "Interfaces"), as cocotbext-pcie's
P-tile model does, so the Quartus wrapper (``boards/quartus.py``) and the testbench connect them one to one:

* ``coreclkout_hip``/``reset_status_n`` (683059 4.2 "Clocks and Resets");
* RX ``rx_st_*`` (in, ``rx_st_ready`` out) and TX ``tx_st_*`` (out, ``tx_st_ready`` in), one segment at 256
  bits (683059 4.3 "Avalon-ST Interface");
* ``rx_buffer_limit``/``rx_buffer_limit_tdm_idx`` (out) and ``tx_cdts_limit``/``tx_cdts_limit_tdm_idx`` (in),
  683059 4.3.3 "TX Flow Control Interface" and 4.3.1 "RX Flow Control";
* the configuration output bus ``tl_cfg_func/add/ctl`` (683059 4.9);
* the VirtIO PCI configuration access interface ``virtio_pcicfg_*`` (683059 3.2.2.4);
* the FLR interface ``flr_rcvd_pf`` (in: PF bits, high from the FLR until the application completes it) and
  ``flr_completed_pf`` (out: a one-cycle pulse per PF), 683059 4.2.2.2; PF0 goes through the same handshake as
  the UltraScale+ build (:func:`hdl.top.function_level_reset`);
* the Ethernet pair and ``loopback_enable`` exactly as on the UltraScale+ top (``hdl/top.py``).

Inside: :class:`~hdl.pcie.ptile.avst.RxSplitter` feeds the shared :class:`~hdl.pcie.completer.BarCompleter`
(CQ) and :class:`~hdl.pcie.dma.DmaEngine` (RC); their CC and RQ streams, and MSI-X writes from the shared
:class:`~hdl.pcie.msix.MsixBlock`, leave through :class:`~hdl.pcie.ptile.avst.TxArbiter`.  The virtio
capabilities are the hard IP's (VirtIO option): no configuration-space logic here, only the
``pci_cfg_data`` responder.

Tags and the completion buffer (683059 2.x "Completion buffer", cocotbext model: 1144 CPLH / 2888 CPLD
credits on port 0): the DMA engine keeps at most 32 reads of at most 512 bytes outstanding, i.e. 1024 CPLD
and (with a 64-byte RCB) 256 CPLH credits, so the hard IP's completion buffer can never overflow and
``rx_buffer_limit`` need not throttle completions.
"""

from __future__ import annotations

from collections.abc import Callable

from amaranth import ClockDomain, Module, ResetInserter, Signal
from amaranth.back import verilog
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hdl.ethwidth import connect_ethernet
from hdl.pcie.completer import BarCompleter
from hdl.pcie.dma import DmaEngine
from hdl.pcie.msix import MsixBlock
from hdl.pcie.ptile.avst import (
    ConfigOutput,
    RxSplitter,
    TxArbiter,
    TxFromDescriptor,
    VirtioPciCfgResponder,
    check_data_width,
)
from hdl.pcie.regmux import RegisterArbiter, RegisterDecoder, connect_register_bus
from virtio_fpga import device_map

MODULE_NAME = "virtio_net_endpoint"
ETH_WIDTH = 64
#: DMA reads in flight x largest read request, in completion data credits (16 bytes each): must fit the
#: hard IP's completion buffer (the smallest, port 3's, is 722 CPLD credits in the cocotbext model).
DMA_TAGS = 32
DMA_MAX_READ = 512
assert DMA_TAGS * DMA_MAX_READ // 16 <= 1444, "outstanding reads could overflow the P-tile completion buffer"


def ptile_top_ports(data_width: int = 256) -> list[tuple[str, str, int]]:
    """(name, "in"/"out", width) of every port of the P-tile build's ``virtio_net_endpoint``."""
    check_data_width(data_width)
    w = data_width
    ports: list[tuple[str, str, int]] = [
        ("coreclkout_hip", "in", 1),
        ("reset_status_n", "in", 1),
        ("rx_st_data", "in", w),
        ("rx_st_empty", "in", 3),
        ("rx_st_sop", "in", 1),
        ("rx_st_eop", "in", 1),
        ("rx_st_valid", "in", 1),
        ("rx_st_ready", "out", 1),
        ("rx_st_hdr", "in", 128),
        ("rx_st_tlp_prfx", "in", 32),
        ("rx_st_bar_range", "in", 3),
        ("rx_st_tlp_abort", "in", 1),
        ("rx_st_func_num", "in", 3),
        ("tx_st_data", "out", w),
        ("tx_st_sop", "out", 1),
        ("tx_st_eop", "out", 1),
        ("tx_st_valid", "out", 1),
        ("tx_st_ready", "in", 1),
        ("tx_st_err", "out", 1),
        ("tx_st_hdr", "out", 128),
        ("tx_st_tlp_prfx", "out", 32),
        ("rx_buffer_limit", "out", 12),
        ("rx_buffer_limit_tdm_idx", "out", 2),
        ("tx_cdts_limit", "in", 16),
        ("tx_cdts_limit_tdm_idx", "in", 3),
        ("tl_cfg_func", "in", 3),
        ("tl_cfg_add", "in", 5),
        ("tl_cfg_ctl", "in", 16),
        ("virtio_pcicfg_vfaccess", "in", 1),
        ("virtio_pcicfg_vfnum", "in", 11),
        ("virtio_pcicfg_pfnum", "in", 3),
        ("virtio_pcicfg_bar", "in", 8),
        ("virtio_pcicfg_length", "in", 32),
        ("virtio_pcicfg_baroffset", "in", 32),
        ("virtio_pcicfg_cfgdata", "in", 32),
        ("virtio_pcicfg_cfgwr", "in", 1),
        ("virtio_pcicfg_cfgrd", "in", 1),
        ("virtio_pcicfg_appvfnum", "out", 11),
        ("virtio_pcicfg_apppfnum", "out", 3),
        ("virtio_pcicfg_rdack", "out", 1),
        ("virtio_pcicfg_rdbe", "out", 4),
        ("virtio_pcicfg_data", "out", 32),
        ("flr_rcvd_pf", "in", 8),
        ("flr_completed_pf", "out", 8),
    ]
    for prefix, sink in (("eth_tx", False), ("eth_rx", True)):
        d_in, d_out = ("in", "out") if sink else ("out", "in")
        ports += [
            (f"{prefix}_tdata", d_in, ETH_WIDTH),
            (f"{prefix}_tkeep", d_in, ETH_WIDTH // 8),
            (f"{prefix}_tlast", d_in, 1),
            (f"{prefix}_tuser", d_in, 1),
            (f"{prefix}_tvalid", d_in, 1),
            (f"{prefix}_tready", d_out, 1),
        ]
    ports.append(("loopback_enable", "in", 1))
    return ports


class PtileVirtioNetEndpoint(wiring.Component):
    """P-tile user interface + shared PCIe blocks + virtio core (``core`` as in :class:`hdl.top.VirtioNetEndpoint`)."""

    def __init__(
        self,
        data_width: int = 256,
        core: str | Callable[[int], wiring.Component] = "virtio",
        dma_timeout_cycles: int = 1 << 16,
    ) -> None:
        from hdl.top import CORES

        check_data_width(data_width)
        self.data_width = data_width
        self._core_factory = CORES[core] if isinstance(core, str) else core
        self.dma_timeout_cycles = dma_timeout_cycles
        members = {}
        for name, direction, width in ptile_top_ports(data_width):
            members[name] = In(width) if direction == "in" else Out(width)
        super().__init__(members)

    def elaborate(self, platform: object) -> Module:
        m = Module()
        w = self.data_width
        m.domains.sync = cd = ClockDomain("sync")
        m.d.comb += [cd.clk.eq(self.coreclkout_hip), cd.rst.eq(~self.reset_status_n)]

        m.submodules.core = core = self._core_factory(w)
        m.submodules.rx = rx = RxSplitter(w)
        m.submodules.completer = completer = BarCompleter(w, bar=device_map.BAR)
        m.submodules.pcicfg = pcicfg = VirtioPciCfgResponder(device_map.BAR, device_map.BAR_SIZE)
        m.submodules.arbiter = arbiter = RegisterArbiter(2)
        m.submodules.decoder = decoder = RegisterDecoder(device_map.MSIX_TABLE_OFFSET)
        msix = MsixBlock(device_map.NUM_MSIX_VECTORS, device_map.MSIX_TABLE_OFFSET, device_map.MSIX_PBA_OFFSET)
        # The P-tile has no pcie_rq_seq_num: write visibility comes from the TX path itself (MSI-X is a memory
        # write behind the DMA writes), so the engine must not wait for sequence numbers that never come.
        m.submodules.dma = dma = DmaEngine(w, timeout_cycles=self.dma_timeout_cycles, seq_num_tracking=False)
        # ---- Function Level Reset (683059 4.2.2.2): as on the UltraScale+ top; the MSI-X table resets with it
        from hdl.top import function_level_reset

        flr_reset = function_level_reset(m, core, self.flr_rcvd_pf[0], self.flr_completed_pf[0])
        m.submodules.msix = ResetInserter(flr_reset)(msix)
        m.submodules.cc_tx = cc_tx = TxFromDescriptor(w, "cc")
        m.submodules.rq_tx = rq_tx = TxFromDescriptor(w, "rq")
        m.submodules.tx = tx = TxArbiter(w)
        m.submodules.cfg = cfg = ConfigOutput()

        # ---- RX: requests to the completer, completions to the DMA engine
        m.d.comb += [
            rx.rx_data.eq(self.rx_st_data),
            rx.rx_empty.eq(self.rx_st_empty),
            rx.rx_sop.eq(self.rx_st_sop),
            rx.rx_eop.eq(self.rx_st_eop),
            rx.rx_valid.eq(self.rx_st_valid),
            rx.rx_hdr.eq(self.rx_st_hdr),
            rx.rx_bar_range.eq(self.rx_st_bar_range),
            rx.rx_func_num.eq(self.rx_st_func_num),
            self.rx_st_ready.eq(rx.rx_ready),
        ]
        wiring.connect(m, rx.cq, completer.cq)
        wiring.connect(m, rx.rc, dma.rc)
        wiring.connect(m, completer.cc, cc_tx.s)
        wiring.connect(m, dma.rq, rq_tx.s)
        wiring.connect(m, cc_tx.out, tx.cc)
        wiring.connect(m, rq_tx.out, tx.rq)
        for conv in (cc_tx, rq_tx):
            m.d.comb += [conv.bus.eq(cfg.bus), conv.device.eq(cfg.device)]

        # ---- TX
        m.d.comb += [
            tx.bus.eq(cfg.bus),
            tx.device.eq(cfg.device),
            tx.rq_idle.eq(rq_tx.idle),
            tx.cdts_limit.eq(self.tx_cdts_limit),
            tx.cdts_idx.eq(self.tx_cdts_limit_tdm_idx),
            tx.tx_ready.eq(self.tx_st_ready),
            tx.bus_master.eq(cfg.bus_master),
            self.tx_st_data.eq(tx.tx_data),
            self.tx_st_hdr.eq(tx.tx_hdr),
            self.tx_st_sop.eq(tx.tx_sop),
            self.tx_st_eop.eq(tx.tx_eop),
            self.tx_st_valid.eq(tx.tx_valid),
            self.tx_st_err.eq(0),
            self.tx_st_tlp_prfx.eq(0),
            # RX flow control: the completion buffer cannot overflow (module docstring); advertise nothing
            self.rx_buffer_limit.eq(0),
            self.rx_buffer_limit_tdm_idx.eq(0),
        ]

        # ---- configuration output
        m.d.comb += [cfg.func.eq(self.tl_cfg_func), cfg.add.eq(self.tl_cfg_add), cfg.ctl.eq(self.tl_cfg_ctl)]

        # ---- register path: completer (priority) and the pci_cfg_data window -> arbiter -> decoder
        connect_register_bus(m, completer.regs, arbiter.m0)
        connect_register_bus(m, pcicfg.regs, arbiter.m1)
        connect_register_bus(m, arbiter.bus, decoder.bus)
        connect_register_bus(m, decoder.lo, core.regs)
        connect_register_bus(m, decoder.hi, msix.regs)
        m.d.comb += [
            pcicfg.pfnum.eq(self.virtio_pcicfg_pfnum),
            pcicfg.bar_num.eq(self.virtio_pcicfg_bar),
            pcicfg.length.eq(self.virtio_pcicfg_length),
            pcicfg.baroffset.eq(self.virtio_pcicfg_baroffset),
            pcicfg.cfgdata.eq(self.virtio_pcicfg_cfgdata),
            pcicfg.cfgwr.eq(self.virtio_pcicfg_cfgwr & ~self.virtio_pcicfg_vfaccess),
            pcicfg.cfgrd.eq(self.virtio_pcicfg_cfgrd & ~self.virtio_pcicfg_vfaccess),
            self.virtio_pcicfg_apppfnum.eq(pcicfg.apppfnum),
            self.virtio_pcicfg_appvfnum.eq(pcicfg.appvfnum),
            self.virtio_pcicfg_rdack.eq(pcicfg.rdack),
            self.virtio_pcicfg_rdbe.eq(pcicfg.rdbe),
            self.virtio_pcicfg_data.eq(pcicfg.data),
        ]

        # ---- MSI-X: the table's message becomes a memory write on TX (683059 4.6.3)
        wiring.connect(m, core.irq, msix.irq)
        msi_pending = Signal()
        msi_addr = Signal(64)
        msi_data = Signal(32)
        with m.If(msix.msix_int):
            m.d.sync += [msi_pending.eq(1), msi_addr.eq(msix.msix_address), msi_data.eq(msix.msix_data)]
        with m.Elif(tx.msi_ready):
            m.d.sync += msi_pending.eq(0)
        m.d.comb += [
            tx.msi_valid.eq(msi_pending),
            tx.msi_addr.eq(msi_addr),
            tx.msi_data.eq(msi_data),
            msix.msix_sent.eq(tx.msi_ready),
            msix.msix_fail.eq(0),
            msix.msix_enable.eq(cfg.msix_enable),
            # with Bus Master Enable off no message may be sent (PCIe Base 7.5.1.1.3): kept pending like a mask
            msix.msix_mask.eq(cfg.msix_mask | ~cfg.bus_master),
            core.msix_enabled.eq(cfg.msix_enable),
        ]

        # ---- DMA
        wiring.connect(m, core.dma_rd, dma.rd)
        wiring.connect(m, core.dma_wr, dma.wr)
        m.d.comb += [
            dma.max_payload.eq(cfg.max_payload),
            dma.max_read_req.eq(cfg.max_read_req),
            dma.requester_function.eq(0),
            # Without sequence numbers the engine's ``busy`` ends when a write's last beat left the engine; the
            # TLP may still wait in the TX converter (credits, tx_st_ready).  A reset reads back 0 only after
            # that (virtio 2.4.1, 4.1.4.3.2): the converter's ``idle`` counts too.
            core.dma_busy.eq(dma.busy | ~rq_tx.idle),
        ]

        # ---- Ethernet: loopback inside at the core's width, or the external ports (as hdl/top.py)
        connect_ethernet(m, core, self, ETH_WIDTH)
        return m


def generate_verilog(data_width: int = 256, core: str = "virtio") -> str:
    """Verilog of the P-tile build's ``virtio_net_endpoint``."""
    top = PtileVirtioNetEndpoint(data_width, core=core)
    return verilog.convert(top, name=MODULE_NAME, emit_src=False)
