"""cocotbext-pcie's Intel P-tile model with the hard IP's VirtIO option, and the P-tile testbench.

cocotbext-pcie 0.2.16 models the P-tile Avalon-ST hard IP (``cocotbext.pcie.intel.ptile``) but not its VirtIO
option: the ``virtio_pcicfg_*`` ports are declared and left idle and no virtio capability is registered.
:class:`VirtioPtileDevice` adds what Intel document 683059 (P-Tile Avalon Streaming IP for PCI Express User
Guide) describes:

* **capabilities from parameters** (683059 3.2.2 "VirtIO Support", 5.x "VirtIO Parameters"): per PF, the
  common, notifications (with ``notify_off_multiplier``), ISR, device-specific and PCI configuration access
  capabilities, each with its BAR indicator, offset and length, at the places 683059 3.2.2.5 "Registers"
  Table "PF/VF Capability Link List" gives: PM 0x40, VirtIO common 0x48, notifications 0x58, PCI Express
  0x70, MSI-X 0xB0, ISR 0xBC, device-specific 0xCC, PCI configuration access 0xDC.  The model's own MSI
  capability is removed ("MSI is not supported with VirtIO", 683059 3.2.2.1) and its PCI Express and MSI-X
  capabilities are moved to 0x70 and 0xB0.  The list is linked in address order;
* **the PCI configuration access capability** (683059 3.2.2.4): ``cap.bar``, ``cap.offset`` and
  ``cap.length`` are stored by the hard IP; a driver write of ``pci_cfg_data`` pulses
  ``virtio_pcicfg_cfgwr`` for one cycle with ``virtio_pcicfg_bar``/``length``/``baroffset``/``cfgdata``; a
  read pulses ``virtio_pcicfg_cfgrd`` and completes with the bytes user logic returns on
  ``virtio_pcicfg_data`` with ``virtio_pcicfg_rdack`` (the bytes ``virtio_pcicfg_rdbe`` enables replace
  those of ``pci_cfg_data``).  No answer within :attr:`VirtioPtileDevice.pcicfg_timeout_cycles` counts in
  ``cfg_ext_timeouts`` (the name the US+ bench uses) and leaves ``pci_cfg_data`` unchanged.

What 683059 leaves open and what was assumed is listed in ``sim/README.md``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import cocotb
from cocotb.simtime import get_sim_time
from cocotb.triggers import Lock, RisingEdge, Timer
from cocotbext.pcie.core import RootComplex
from cocotbext.pcie.core.caps.common import PciCap
from cocotbext.pcie.core.tlp import FcType
from cocotbext.pcie.intel.ptile import PTilePcieDevice, PTileRxBus, PTileTxBus
from cocotbext.pcie.intel.ptile.ptile_model import PTilePcieFunction

from sim.flr import FunctionLevelReset
from sim.testbench import BenchCommon, _be_bytes, _random_pauses
from sim.usp import quiet
from virtio_fpga import device_map, spec
from virtio_fpga.spec import CfgType

#: 683059 3.2.2.5 Table "PF/VF Capability Link List": byte address of each capability with VirtIO enabled.
VIRTIO_CAP_ADDRESS = {
    CfgType.COMMON: 0x48,
    CfgType.NOTIFY: 0x58,
    CfgType.ISR: 0xBC,
    CfgType.DEVICE: 0xCC,
    CfgType.PCI: 0xDC,
}
PCIE_CAP_ADDRESS = 0x70
MSIX_CAP_ADDRESS = 0xB0


class VirtioVendorCap(PciCap):
    """One virtio vendor-specific capability (virtio spec 4.1.4) as the hard IP presents it."""

    def __init__(self, cap: device_map.VirtioCap, device: VirtioPtileDevice | None = None) -> None:
        super().__init__()
        self.cap_id = spec.PCI_CAP_ID_VNDR
        self.virtio = cap
        self.device = device
        self.image = bytearray(cap.to_bytes(0))
        self.length = (len(self.image) + 3) // 4

    async def _read_register(self, reg: int) -> int:
        if self.virtio.cfg_type == CfgType.PCI and reg == 4 and self.device is not None:
            await self.device.pcicfg_access(self, write=False)
        return int.from_bytes(self.image[reg * 4 : reg * 4 + 4], "little")

    async def _write_register(self, reg: int, data: int, mask: int) -> None:
        if self.virtio.cfg_type != CfgType.PCI:
            return  # 683059 3.2.2.1: "All fields of the VirtIO capability structure are read-only"
        if reg not in (1, 2, 3, 4):
            return
        cur = bytearray(self.image[reg * 4 : reg * 4 + 4])
        for i in range(4):
            if mask & (1 << i):
                if reg == 1 and i != 0:
                    continue  # only cap.bar is writable in dword 1 (padding and id are read-only)
                cur[i] = (data >> (8 * i)) & 0xFF
        self.image[reg * 4 : reg * 4 + 4] = cur
        if reg == 4 and self.device is not None:
            await self.device.pcicfg_access(self, write=True, byte_mask=mask)

    # window fields of the PCI configuration access capability (virtio spec 4.1.4.9)
    @property
    def window_bar(self) -> int:
        return self.image[4]

    @property
    def window_offset(self) -> int:
        return int.from_bytes(self.image[8:12], "little")

    @property
    def window_length(self) -> int:
        return int.from_bytes(self.image[12:16], "little")

    @property
    def cfg_data(self) -> int:
        return int.from_bytes(self.image[16:20], "little")


class VirtioPtileFunction(PTilePcieFunction):
    """A P-tile PF with the VirtIO option's configuration-space layout."""

    def enable_virtio(self, device: VirtioPtileDevice, caps: tuple[device_map.VirtioCap, ...]) -> None:
        if getattr(self, "msi_cap", None) is not None:
            self.deregister_capability(self.msi_cap)
        self.register_capability(self.pcie_cap, offset=PCIE_CAP_ADDRESS // 4)
        if self.msix_cap in self.capabilities.list:
            self.register_capability(self.msix_cap, offset=MSIX_CAP_ADDRESS // 4)
        self.virtio_caps = []
        for cap in caps:
            vc = VirtioVendorCap(cap, device)
            self.register_capability(vc, offset=VIRTIO_CAP_ADDRESS[cap.cfg_type] // 4)
            self.virtio_caps.append(vc)


#: What ``tx_cdts_limit`` carries at each ``tx_cdts_limit_tdm_idx`` (683059 4.3.3): (index, credit, field bits).
TX_CREDIT_TDM = ((0, "ph", 12), (1, "nph", 12), (2, "cplh", 12), (4, "pd", 16), (5, "npd", 16), (6, "cpld", 16))
#: The credits only the device spends (the model's own configuration completions spend CPLH/CPLD too).
_DEVICE_ONLY = {FcType.P: ("ph", "pd"), FcType.NP: ("nph", "npd")}


def _now_ns() -> str:
    try:
        return f"{get_sim_time('ns'):.0f}"
    except RuntimeError:  # used outside a simulation (unit tests)
        return "?"


class TxCreditThrottle:
    """A link partner that grants the device its transmit credits late and a few at a time.

    cocotbext-pcie's P-tile model shows the device the root port's real limits (64 headers and 1,024 data credits
    of each type), which the device never comes near, so its credit gating (683059 4.3.3; PCIe Base 2.6.1.2) is
    never exercised.  While :attr:`active`, the limit shown is instead ``consumed + min(available, cap)``: at most
    ``cap`` credits beyond what has reached the link; during the blocked stretches of ``pauses`` (one value per
    clock) the limit shown does not move at all, as when UpdateFC DLLPs are delayed.  The limit shown never
    decreases and never exceeds the real one, so this is legal behaviour of a link partner with small buffers.

    It also checks the device: every posted and non-posted TLP (only the device spends those credits) is
    counted as it leaves ``tx_st``, and a TLP that goes beyond the limit last shown is a violation.
    """

    def __init__(self) -> None:
        self.active = False
        self.cap: dict[str, int] = {}
        self.pauses: Iterator[bool] | None = None
        self.paused = False
        self.shown: dict[str, int] = {}
        self.sent = {name: 0 for _, name, _ in TX_CREDIT_TDM}
        self.violations: list[str] = []
        self.held_back = 0  # presentations where the limit shown was below the real one
        self.frozen_cycles = 0

    def start(self, cap: dict[str, int], pauses: Iterator[bool] | None = None) -> None:
        self.cap, self.pauses, self.active = dict(cap), pauses, True

    def stop(self) -> None:
        self.active, self.pauses, self.paused = False, None, False

    def clock(self) -> None:
        """Once per clock: the next value of the pause pattern."""
        self.paused = bool(self.active and self.pauses is not None and next(self.pauses))
        self.frozen_cycles += self.paused

    def limit(self, name: str, state, bits: int) -> int:
        """The limit to show for credit ``name`` (``state``: the port's FcStateData for it)."""
        mask, half = (1 << bits) - 1, 1 << (bits - 1)
        real = state.tx_credit_limit & mask
        if not self.active or state.tx_is_infinite() or name not in self.cap:
            self.shown[name] = real
            return real
        previous = self.shown.get(name)
        if self.paused and previous is not None:
            return previous
        consumed = state.tx_credits_consumed & mask
        want = (consumed + min((real - consumed) & mask, self.cap[name])) & mask
        if previous is None or ((want - previous) & mask) < half:  # never backwards
            self.shown[name] = want
        self.held_back += self.shown[name] != real
        return self.shown[name]

    def on_tlp(self, tlp) -> None:
        """A TLP the device sent: count what it spends, and check it against the limits shown."""
        names = _DEVICE_ONLY.get(tlp.get_fc_type())
        if names is None:
            return
        header, data = names
        self.sent[header] = (self.sent[header] + 1) & 0xFFF
        self.sent[data] = (self.sent[data] + tlp.get_data_credits()) & 0xFFFF
        if not self.active:
            return
        for name, bits in ((header, 12), (data, 16)):
            if name in self.shown and ((self.shown[name] - self.sent[name]) & ((1 << bits) - 1)) >= 1 << (bits - 1):
                self.violations.append(
                    f"{tlp.fmt_type.name} at {_now_ns()} ns: {name} spent {self.sent[name]} "
                    f"beyond the limit shown, {self.shown[name]}"
                )


class VirtioPtileDevice(FunctionLevelReset, PTilePcieDevice):
    """PTilePcieDevice + the VirtIO option for PF0 (capabilities from ``virtio_caps``, the pcicfg handshake)."""

    def __init__(self, *args, virtio_caps=device_map.VIRTIO_CAPS, pcicfg_timeout_cycles: int = 256, **kwargs):
        self.pcicfg_timeout_cycles = pcicfg_timeout_cycles
        self.cfg_ext_timeouts = 0  # the bench reports this name for both families
        self.pcicfg_reads = 0
        self.pcicfg_writes = 0
        self._pcicfg_lock = Lock()
        self.tx_credits = TxCreditThrottle()
        super().__init__(*args, **kwargs)
        self.virtio_enabled = self.virtio_pcicfg_cfgwr is not None and self.virtio_pcicfg_rdack is not None
        if self.virtio_enabled:
            self.functions[0].enable_virtio(self, tuple(virtio_caps))
        # FLR (683059 4.2.2.2): flr_rcvd_pf high from the FLR until the gateware pulses flr_completed_pf
        self.flr_setup(self.flr_rcvd_pf, self.flr_completed_pf, self.coreclkout_hip)

    async def _run_tx_fc_logic(self) -> None:
        """The model's TX credit presentation, through :attr:`tx_credits` (a pass-through unless started)."""
        edge = RisingEdge(self.coreclkout_hip)
        fc = self.upstream_port.fc_state[0]
        while True:
            for idx, name, bits in TX_CREDIT_TDM:
                self.tx_credits.clock()
                self.tx_cdts_limit.value = self.tx_credits.limit(name, getattr(fc, name), bits)
                self.tx_cdts_limit_tdm_idx.value = idx
                await edge

    async def _run_tx_logic(self) -> None:
        """The model's TX path, with each TLP checked against the credits shown before it goes to the link."""
        while True:
            frame = await self.tx_sink.recv()
            tlp = frame.to_tlp()
            self.tx_credits.on_tlp(tlp)
            await self.send(tlp)

    def make_function(self):  # noqa: ANN201 - same signature as the base class
        self.default_function = VirtioPtileFunction
        return super().make_function()

    async def pcicfg_access(self, cap: VirtioVendorCap, *, write: bool, byte_mask: int = 0xF) -> None:
        """One ``virtio_pcicfg`` handshake for a driver access to ``pci_cfg_data`` (683059 3.2.2.4)."""
        async with self._pcicfg_lock:
            edge = RisingEdge(self.coreclkout_hip)
            await edge
            self.virtio_pcicfg_vfaccess.value = 0
            self.virtio_pcicfg_vfnum.value = 0
            self.virtio_pcicfg_pfnum.value = 0
            self.virtio_pcicfg_bar.value = cap.window_bar
            self.virtio_pcicfg_length.value = cap.window_length & 0xFFFFFFFF
            self.virtio_pcicfg_baroffset.value = cap.window_offset & 0xFFFFFFFF
            self.virtio_pcicfg_cfgdata.value = cap.cfg_data
            strobe = self.virtio_pcicfg_cfgwr if write else self.virtio_pcicfg_cfgrd
            strobe.value = 1
            await edge
            strobe.value = 0
            if write:
                self.pcicfg_writes += 1
                return
            self.pcicfg_reads += 1
            for _ in range(self.pcicfg_timeout_cycles):
                await edge
                if int(self.virtio_pcicfg_rdack.value):
                    be = int(self.virtio_pcicfg_rdbe.value)
                    data = int(self.virtio_pcicfg_data.value)
                    for i in range(4):
                        if be & (1 << i):
                            cap.image[16 + i] = (data >> (8 * i)) & 0xFF
                    return
            self.cfg_ext_timeouts += 1
            self.log.error(
                "virtio_pcicfg read (bar %d offset %#x): no virtio_pcicfg_rdack", cap.window_bar, cap.window_offset
            )


USER_CLK_MHZ = 250


#: Avalon-ST header fields (683059 4.3: header dword 0 in bits 127:96, PCIe Base byte order in each dword)
TYPE_MEM = 0b00000
TYPE_CPL = 0b01010


class PtileEndpointBench(BenchCommon):
    """RootComplex + VirtioPtileDevice around the P-tile build (the API of :class:`sim.testbench.EndpointBench`).

    The shared parts (counters, read latency, link taps, external Ethernet) come from
    :class:`sim.testbench.BenchCommon`; what differs is :meth:`_monitor`, which decodes the TLP headers of
    ``tx_st`` (the DUT's requests) and ``rx_st`` (completions of its reads) instead of RQ/RC descriptors.
    """

    def __init__(self, dut, *, backpressure: bool = False, seed: int = 1, log_level: int = logging.WARNING,
                 max_payload_size: int = 256, max_read_request_size: int = 512,
                 read_latency_ns: float = 0.0) -> None:  # fmt: skip
        self.dut = dut
        self.log = logging.getLogger("cocotb.tb")
        self.log.setLevel(log_level)
        self.backpressure = backpressure
        self.seed = seed
        self.data_width = len(dut.rx_st_data)
        self.clock = dut.coreclkout_hip
        self.eth_reset = dut.reset_status_n
        self.eth_reset_active_level = False

        self.rc = RootComplex()
        self.rc.max_payload_size = (max_payload_size // 128 - 1).bit_length()
        self.rc.max_read_request_size = (max_read_request_size // 128 - 1).bit_length()

        self.dev = VirtioPtileDevice(
            port_num=0,
            # 256 bits: Gen4 x8 at 250 MHz (683059 Table "P-tile configurations"; cocotbext valid_configs)
            pcie_generation=4,
            pcie_link_width=8,
            pld_clk_frequency=USER_CLK_MHZ * 1e6,
            pf_count=1,
            max_payload_size=512,
            enable_extended_tag=True,
            pf0_msi_enable=False,
            pf0_msix_enable=True,
            pf0_msix_table_size=device_map.NUM_MSIX_VECTORS - 1,
            pf0_msix_table_bir=device_map.BAR,
            pf0_msix_table_offset=device_map.MSIX_TABLE_OFFSET,
            pf0_msix_pba_bir=device_map.BAR,
            pf0_msix_pba_offset=device_map.MSIX_PBA_OFFSET,
            reset_status_n=dut.reset_status_n,
            coreclkout_hip=dut.coreclkout_hip,
            rx_bus=PTileRxBus.from_prefix(dut, "rx_st"),
            tx_bus=PTileTxBus.from_prefix(dut, "tx_st"),
            rx_buffer_limit=dut.rx_buffer_limit,
            rx_buffer_limit_tdm_idx=dut.rx_buffer_limit_tdm_idx,
            tx_cdts_limit=dut.tx_cdts_limit,
            tx_cdts_limit_tdm_idx=dut.tx_cdts_limit_tdm_idx,
            tl_cfg_func=dut.tl_cfg_func,
            tl_cfg_add=dut.tl_cfg_add,
            tl_cfg_ctl=dut.tl_cfg_ctl,
            virtio_pcicfg_vfaccess=dut.virtio_pcicfg_vfaccess,
            virtio_pcicfg_vfnum=dut.virtio_pcicfg_vfnum,
            virtio_pcicfg_pfnum=dut.virtio_pcicfg_pfnum,
            virtio_pcicfg_bar=dut.virtio_pcicfg_bar,
            virtio_pcicfg_length=dut.virtio_pcicfg_length,
            virtio_pcicfg_baroffset=dut.virtio_pcicfg_baroffset,
            virtio_pcicfg_cfgdata=dut.virtio_pcicfg_cfgdata,
            virtio_pcicfg_cfgwr=dut.virtio_pcicfg_cfgwr,
            virtio_pcicfg_cfgrd=dut.virtio_pcicfg_cfgrd,
            virtio_pcicfg_appvfnum=dut.virtio_pcicfg_appvfnum,
            virtio_pcicfg_apppfnum=dut.virtio_pcicfg_apppfnum,
            virtio_pcicfg_rdack=dut.virtio_pcicfg_rdack,
            virtio_pcicfg_rdbe=dut.virtio_pcicfg_rdbe,
            virtio_pcicfg_data=dut.virtio_pcicfg_data,
            # FLR ports (the model declares them; sim.flr.FunctionLevelReset drives them)
            flr_rcvd_pf=dut.flr_rcvd_pf,
            flr_completed_pf=dut.flr_completed_pf,
        )
        quiet(self.dev.log, level=log_level)
        quiet(self.rc.log, level=max(log_level, logging.ERROR))
        for stream in (self.dev.rx_source, self.dev.tx_sink):
            quiet(stream.log, level=log_level)

        self._attach(dut, read_latency_ns)

        if backpressure:
            # the RX source may pause between beats; the TX sink may drop ready (the gateware honours the
            # 3-cycle ready latency)
            self.dev.rx_source.set_pause_generator(_random_pauses(seed * 101, 0.3))
            self.dev.tx_sink.set_pause_generator(_random_pauses(seed * 101 + 1, 0.3))
        cocotb.start_soon(self._monitor())

    @classmethod
    async def create(cls, dut, **kwargs) -> PtileEndpointBench:
        await Timer(2, "ns")
        return cls(dut, **kwargs)

    async def _monitor(self) -> None:
        """Count cycles, the DUT's memory requests on ``tx_st`` and the completions of its reads on ``rx_st``,
        from the TLP headers as they pass (one header per ``sop``; the build has a single segment)."""
        dut = self.dut
        clk = RisingEdge(dut.coreclkout_hip)
        c = self.counters
        while True:
            await clk
            c.cycles += 1
            # rx_st valid is asserted only where the DUT's ready allowed it (ready latency): valid + sop is a TLP
            if int(dut.rx_st_valid.value) and int(dut.rx_st_sop.value):
                hdr = int(dut.rx_st_hdr.value)
                dw0, dw1, dw2 = hdr >> 96, (hdr >> 64) & 0xFFFFFFFF, (hdr >> 32) & 0xFFFFFFFF
                if (dw0 >> 24) & 0x1F == TYPE_CPL:
                    # completion header (PCIe Base 2.2.9): status dw1[15:13], byte count dw1[11:0] = bytes left
                    # including this completion, tag dw2[15:8], lower address dw2[6:0].  The last completion of
                    # a request carries all the bytes left; an unsuccessful one ends the request too.
                    has_data = (dw0 >> 30) & 1
                    length = ((dw0 & 0x3FF) or 1024) if has_data else 0
                    byte_count = (dw1 & 0xFFF) or 4096
                    status = (dw1 >> 13) & 0x7
                    if status != 0 or byte_count <= length * 4 - (dw2 & 0x3):
                        self._count_read_done((dw2 >> 8) & 0xFF)
            if int(dut.tx_st_valid.value) and int(dut.tx_st_sop.value):
                hdr = int(dut.tx_st_hdr.value)
                dw0, dw1 = hdr >> 96, (hdr >> 64) & 0xFFFFFFFF
                fmt, typ = dw0 >> 29, (dw0 >> 24) & 0x1F
                if typ == TYPE_MEM:
                    length = (dw0 & 0x3FF) or 1024
                    first_be, last_be = dw1 & 0xF, (dw1 >> 4) & 0xF
                    dw2, dw3 = (hdr >> 32) & 0xFFFFFFFF, hdr & 0xFFFFFFFF
                    addr = (dw2 << 32 | dw3) if fmt & 1 else dw2
                    addr = (addr & ~3) + (((first_be & -first_be).bit_length() - 1) if first_be else 0)
                    nbytes = _be_bytes(length, first_be, last_be)
                    if not fmt & 2:
                        self._count_request("R", addr, nbytes, tag=(dw1 >> 8) & 0xFF)
                    elif not (length == 1 and self._is_msix(addr)):  # MSI-X messages are not DMA
                        self._count_request("W", addr, nbytes)
            self._count_cycle()

    def _is_msix(self, addr: int) -> bool:
        region = getattr(self.rc, "msi_region", None)
        if region is None:
            return False
        base = 0x8000_0000  # where RootComplex registers its MSI region (cocotbext.pcie.core.rc)
        return base <= addr < base + region.size

    async def reset(self) -> None:
        clk = RisingEdge(self.dut.coreclkout_hip)
        while str(self.dut.reset_status_n.value) != "1":
            await clk
        for _ in range(8):
            await clk

    async def init(self, *, enable_bus_master: bool = True):
        await self.reset()
        await self.rc.enumerate()
        self.ep = self.rc.find_device(self.dev.functions[0].pcie_id)
        await self.ep.enable_device()
        if enable_bus_master:
            await self.ep.set_master()
        # the configuration output bus is time-multiplexed (32 cycles per function): let it show the new state
        for _ in range(64):
            await RisingEdge(self.dut.coreclkout_hip)
        return self.ep

    def max_sizes(self) -> tuple[int, int]:
        """(Max_Payload_Size, Max_Read_Request_Size) in bytes as the host programmed them in Device Control: what
        the hard IP reports to the gateware on the configuration output bus (683059 4.9, register 0x00)."""
        cap = self.dev.functions[0].pcie_cap
        return 128 << cap.max_payload_size, 128 << cap.max_read_request_size


__all__ = ["PtileEndpointBench", "VirtioPtileDevice", "VirtioPtileFunction", "VirtioVendorCap"]
