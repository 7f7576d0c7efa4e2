"""The simulation testbench: a cocotbext-pcie RootComplex with the (extended) UltraScale+ model around the DUT.

:class:`EndpointBench` builds the PCIe topology, resets the design, enumerates, and watches the buses:

* a :class:`BusCounters` monitor counts simulated cycles and the DMA traffic the DUT generates on RQ
  (memory read requests, memory write requests and their bytes), from the TLPs as they pass;
* optional *idle and back-pressure insertion*: random pauses on the model's sources (CQ, RC) and random
  ``tready`` drops on its sinks (CC, RQ), so the gateware sees the stalls a busy hard IP produces;
* :meth:`EndpointBench.add_function`: a second, pure-Python PCIe device (for example the software reference
  device) on its own root port of the same RootComplex, so both can be driven and compared in one run.
"""

from __future__ import annotations

import itertools
import logging
import random
from dataclasses import dataclass, field

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import RisingEdge, Timer
from cocotbext.axi import AxiStreamBus
from cocotbext.pcie.core import RootComplex

from sim.usp import VirtioUspDevice, quiet
from virtio_fpga import device_map

USER_CLK_MHZ = 250


@dataclass
class BusCounters:
    """What the DUT did on the PCIe buses (counted from the streams, not from the DUT's own counters)."""

    cycles: int = 0
    dma_read_requests: int = 0
    dma_write_requests: int = 0
    dma_read_bytes: int = 0
    dma_write_bytes: int = 0
    completions: int = 0
    #: (kind "R"/"W", byte address, bytes) of every RQ request, oldest first (capped at ``log_limit``)
    requests: list = field(default_factory=list)
    log_limit: int = 100_000

    def as_dict(self) -> dict:
        return {
            "sim_cycles": self.cycles,
            "dma_read_requests": self.dma_read_requests,
            "dma_write_requests": self.dma_write_requests,
            "dma_read_bytes": self.dma_read_bytes,
            "dma_write_bytes": self.dma_write_bytes,
        }


def _random_pauses(seed: int, probability: float):
    rng = random.Random(seed)
    while True:
        yield rng.random() < probability


class EndpointBench:
    """RootComplex + VirtioUspDevice around ``virtio_net_endpoint``."""

    def __init__(
        self,
        dut,
        *,
        backpressure: bool = False,
        seed: int = 1,
        log_level: int = logging.WARNING,
        max_payload_size: int = 256,
        max_read_request_size: int = 512,
    ) -> None:
        self.dut = dut
        dut.user_reset.value = 1  # before the model's clock starts: a floating reset would make X state
        self.log = logging.getLogger("cocotb.tb")
        self.log.setLevel(log_level)
        self.backpressure = backpressure
        self.seed = seed
        self.counters = BusCounters()
        self.data_width = len(dut.m_axis_cq_tdata)

        self.rc = RootComplex()
        self.rc.max_payload_size = (max_payload_size // 128 - 1).bit_length()
        self.rc.max_read_request_size = (max_read_request_size // 128 - 1).bit_length()

        self.dev = VirtioUspDevice(
            # 8 GT/s at 250 MHz: x4 for 128 bits, x8 for 256, x16 for 512 (PG213 "Supported Configurations")
            pcie_generation=3,
            pcie_link_width={128: 4, 256: 8, 512: 16}[self.data_width],
            user_clk_frequency=USER_CLK_MHZ * 1e6,
            alignment="dword",
            enable_client_tag=True,
            max_payload_size=1024,
            pf0_msi_enable=False,
            pf0_msix_enable=True,
            pf0_msix_table_size=device_map.NUM_MSIX_VECTORS - 1,
            pf0_msix_table_bir=device_map.BAR,
            pf0_msix_table_offset=device_map.MSIX_TABLE_OFFSET,
            pf0_msix_pba_bir=device_map.BAR,
            pf0_msix_pba_offset=device_map.MSIX_PBA_OFFSET,
            user_clk=dut.user_clk,
            user_reset=dut.user_reset,
            rq_bus=AxiStreamBus.from_prefix(dut, "s_axis_rq"),
            rc_bus=AxiStreamBus.from_prefix(dut, "m_axis_rc"),
            cq_bus=AxiStreamBus.from_prefix(dut, "m_axis_cq"),
            cc_bus=AxiStreamBus.from_prefix(dut, "s_axis_cc"),
            pcie_cq_np_req=dut.pcie_cq_np_req,
            pcie_rq_seq_num0=dut.pcie_rq_seq_num0,
            pcie_rq_seq_num_vld0=dut.pcie_rq_seq_num_vld0,
            pcie_rq_seq_num1=dut.pcie_rq_seq_num1,
            pcie_rq_seq_num_vld1=dut.pcie_rq_seq_num_vld1,
            cfg_max_payload=dut.cfg_max_payload,
            cfg_max_read_req=dut.cfg_max_read_req,
            cfg_interrupt_msix_enable=dut.cfg_interrupt_msix_enable,
            cfg_interrupt_msix_mask=dut.cfg_interrupt_msix_mask,
            cfg_interrupt_msix_address=dut.cfg_interrupt_msix_address,
            cfg_interrupt_msix_data=dut.cfg_interrupt_msix_data,
            cfg_interrupt_msix_int=dut.cfg_interrupt_msix_int,
            cfg_interrupt_msix_sent=dut.cfg_interrupt_msix_sent,
            cfg_interrupt_msix_fail=dut.cfg_interrupt_msix_fail,
            cfg_interrupt_msi_function_number=dut.cfg_interrupt_msi_function_number,
            cfg_ext_read_received=dut.cfg_ext_read_received,
            cfg_ext_write_received=dut.cfg_ext_write_received,
            cfg_ext_register_number=dut.cfg_ext_register_number,
            cfg_ext_function_number=dut.cfg_ext_function_number,
            cfg_ext_write_data=dut.cfg_ext_write_data,
            cfg_ext_write_byte_enable=dut.cfg_ext_write_byte_enable,
            cfg_ext_read_data=dut.cfg_ext_read_data,
            cfg_ext_read_data_valid=dut.cfg_ext_read_data_valid,
        )
        quiet(self.dev.log, level=log_level)
        # the RootComplex warns about every empty slot it probes during enumeration: keep only errors
        quiet(self.rc.log, level=max(log_level, logging.ERROR))
        for stream in (self.dev.rq_sink, self.dev.rc_source, self.dev.cq_source, self.dev.cc_sink):
            quiet(stream.log, level=log_level)

        fn = self.dev.functions[0]
        fn.vendor_id = device_map.VENDOR_ID
        fn.device_id = device_map.DEVICE_ID
        fn.subsystem_vendor_id = device_map.SUBSYSTEM_VENDOR_ID
        fn.subsystem_id = device_map.SUBSYSTEM_ID
        fn.revision_id = device_map.REVISION_ID
        fn.class_code = device_map.CLASS_CODE
        fn.configure_bar(device_map.BAR, device_map.BAR_SIZE, ext=True)

        self.rc.make_port().connect(self.dev)
        self.ep = None  # PciDevice of the DUT after init()
        self.extra_functions: list = []

        dut.loopback_enable.value = 1
        dut.eth_tx_tready.value = 1
        dut.eth_rx_tvalid.value = 0
        dut.eth_rx_tdata.value = 0
        dut.eth_rx_tkeep.value = 0
        dut.eth_rx_tlast.value = 0
        dut.eth_rx_tuser.value = 0

        if backpressure:
            self._apply_backpressure()
        cocotb.start_soon(self._monitor())

    @classmethod
    async def create(cls, dut, **kwargs) -> EndpointBench:
        """Construct after the design settled at time 0: the model samples its inputs from its first clock
        edge on, and at time 0 Icarus may not have evaluated the combinational outputs yet (X)."""
        dut.user_reset.value = 1
        await Timer(2, "ns")
        return cls(dut, **kwargs)

    # ---------------------------------------------------------------------------------------------
    def _apply_backpressure(self) -> None:
        seeds = itertools.count(self.seed * 101)
        for source in (self.dev.cq_source, self.dev.rc_source):
            source.set_pause_generator(_random_pauses(next(seeds), 0.3))
        for sink in (self.dev.cc_sink, self.dev.rq_sink):
            sink.set_pause_generator(_random_pauses(next(seeds), 0.3))

    async def _monitor(self) -> None:
        """Count cycles and RQ traffic on the clock, from the bus signals themselves."""
        dut = self.dut
        clk = RisingEdge(dut.user_clk)
        sop = True
        lbo = 8 if self.data_width == 512 else 4  # last_be position in the RQ sideband (PG213)
        while True:
            await clk
            self.counters.cycles += 1
            if int(dut.s_axis_rq_tvalid.value) and int(dut.s_axis_rq_tready.value):
                if sop:
                    data = int(dut.s_axis_rq_tdata.value)
                    dword_count = (data >> 64) & 0x7FF
                    req_type = (data >> 75) & 0xF
                    first_be = int(dut.s_axis_rq_tuser.value) & 0xF
                    last_be = (int(dut.s_axis_rq_tuser.value) >> lbo) & 0xF
                    nbytes = _be_bytes(dword_count, first_be, last_be)
                    addr = (data & ((1 << 64) - 4)) + ((first_be & -first_be).bit_length() - 1 if first_be else 0)
                    c = self.counters
                    if req_type == 0:
                        c.dma_read_requests += 1
                        c.dma_read_bytes += nbytes
                    elif req_type == 1:
                        c.dma_write_requests += 1
                        c.dma_write_bytes += nbytes
                    if req_type in (0, 1) and len(c.requests) < c.log_limit:
                        c.requests.append(("R" if req_type == 0 else "W", addr, nbytes))
                sop = bool(int(dut.s_axis_rq_tlast.value))

    # ---------------------------------------------------------------------------------------------
    async def reset(self) -> None:
        dut = self.dut
        dut.user_reset.value = 1
        await Timer(40, "ns")
        for _ in range(8):
            await RisingEdge(dut.user_clk)
        dut.user_reset.value = 0
        for _ in range(8):
            await RisingEdge(dut.user_clk)

    async def init(self, *, enable_bus_master: bool = True):
        """Reset, enumerate, enable memory decoding and bus mastering; returns the DUT's PciDevice."""
        await self.reset()
        await self.rc.enumerate()
        self.ep = self.rc.find_device(self.dev.functions[0].pcie_id)
        await self.ep.enable_device()
        if enable_bus_master:
            await self.ep.set_master()
        return self.ep

    def add_function(self, function):
        """Attach another PCIe function (e.g. :class:`sim.soft_peer.SoftVirtioPcieFunction`, any cocotbext-pcie
        ``Function``) as a device of its own on a new root port of the same RootComplex.

        Call before :meth:`init`, which enumerates everything.  Returns the function; after :meth:`init`,
        :meth:`find` gives its ``PciDevice`` (what :class:`sim.transport.CocotbPcieTransport` takes as ``ep``).
        """
        from cocotbext.pcie.core import Device

        device = function if isinstance(function, Device) else Device(function)
        self.rc.make_port().connect(device)
        self.extra_functions.append(device.functions[0])
        return device.functions[0]

    async def find(self, function):
        """The enumerated ``PciDevice`` of a function added with :meth:`add_function`, enabled as bus master."""
        ep = self.rc.find_device(function.pcie_id)
        await ep.enable_device()
        await ep.set_master()
        return ep

    async def cycles(self, n: int) -> None:
        for _ in range(n):
            await RisingEdge(self.dut.user_clk)


def _be_bytes(dword_count: int, first_be: int, last_be: int) -> int:
    """Bytes a request covers, from its dword count and byte enables (PCIe Base 2.2.5)."""
    if dword_count == 1:
        return bin(first_be).count("1")
    lead = (first_be & -first_be).bit_length() - 1 if first_be else 0
    tail = 4 - last_be.bit_length() if last_be else 0
    return dword_count * 4 - lead - tail


__all__ = ["BusCounters", "EndpointBench", "Clock"]
