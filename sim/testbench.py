"""The simulation testbench: a cocotbext-pcie RootComplex with the (extended) UltraScale+ model around the DUT.

:class:`EndpointBench` builds the PCIe topology, resets the design, enumerates, and watches the buses:

* a :class:`BusCounters` monitor counts simulated cycles and the DMA traffic the DUT generates on RQ
  (memory read requests, memory write requests and their bytes), from the TLPs as they pass;
* a :class:`LinkCounters` tap on both ends of the DUT's simulated link counts every TLP and DLLP the model
  serialises, per direction, with the sizes the model charges link time for (``Tlp.get_wire_size``);
* the monitor also follows read tags (RQ read request -> RC completion with "request completed") to give the
  number of DMA reads in flight per cycle, and keeps a timed log of RQ requests for address-range accounting;
* a :class:`sim.dma_monitor.DmaMonitor` (``bench.dma_monitor``) on the DUT's link: every DMA request is
  judged against the virtio rules (rings, event suppression, outstanding buffers, resets, MSI-X);
* optional *host read latency* (``read_latency_ns``, env ``VIRTIO_FPGA_READ_LATENCY_NS`` through
  :mod:`sim.bench`): see :class:`ReadLatency`;
* optional *idle and back-pressure insertion*: random pauses on the model's sources (CQ, RC) and random
  ``tready`` drops on its sinks (CC, RQ), so the gateware sees the stalls a busy hard IP produces;
* :meth:`EndpointBench.external_ethernet`: loopback off, a cocotbext-axi sink on ``eth_tx`` and source on
  ``eth_rx`` (TX-only and RX-only benchmarks);
* :meth:`EndpointBench.add_function`: a second, pure-Python PCIe device (for example the software reference
  device) on its own root port of the same RootComplex, so both can be driven and compared in one run.

All of that except the bus decoding is :class:`BenchCommon`, which the P-tile bench (:mod:`sim.ptile`) shares.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
from dataclasses import dataclass, field

import cocotb
from cocotb.clock import Clock
from cocotb.simtime import get_sim_time
from cocotb.triggers import Event, RisingEdge, Timer
from cocotbext.axi import AxiStreamBus
from cocotbext.pcie.core import RootComplex
from cocotbext.pcie.core.tlp import Tlp, TlpType

from sim.dma_monitor import DmaMonitor
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

    #: DMA reads issued on RQ whose last completion has not come back on RC (by tag), now and at most
    reads_outstanding: int = 0
    reads_outstanding_max: int = 0
    #: sum over cycles of ``reads_outstanding``: the mean over a window is its difference / cycles
    reads_outstanding_sum: int = 0
    #: (cycle, kind "R"/"W", byte address, bytes) of every RQ request (capped at ``timed_log_limit``)
    timed_requests: list = field(default_factory=list)
    timed_log_limit: int = 500_000
    #: (issue cycle, cycle of the last completion) of every finished DMA read, oldest first (same cap)
    read_round_trips: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "sim_cycles": self.cycles,
            "dma_read_requests": self.dma_read_requests,
            "dma_write_requests": self.dma_write_requests,
            "dma_read_bytes": self.dma_read_bytes,
            "dma_write_bytes": self.dma_write_bytes,
        }


@dataclass
class LinkDirection:
    """What crossed the link in one direction, as cocotbext-pcie's link model serialised it."""

    tlps: int = 0
    #: header + payload + 8 bytes of framing/LCRC per TLP (``Tlp.get_wire_size``: what the model charges time for)
    tlp_wire_bytes: int = 0
    #: payload bytes (dword-padded, as the TLPs carry them) of memory writes and of completions with data
    write_payload_bytes: int = 0
    completion_payload_bytes: int = 0
    writes: int = 0
    completions: int = 0
    read_requests: int = 0
    dllps: int = 0
    dllp_bytes: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class LinkCounters:
    """Both directions of the DUT's link: ``to_host`` (upstream, the DUT transmits) and ``to_device``."""

    to_host: LinkDirection = field(default_factory=LinkDirection)
    to_device: LinkDirection = field(default_factory=LinkDirection)

    def as_dict(self) -> dict:
        return {"to_host": self.to_host.as_dict(), "to_device": self.to_device.as_dict()}


def _tap_link(port, direction: LinkDirection) -> None:
    """Count every packet ``port`` serialises (its ``handle_tx`` is where the link model spends wire time)."""
    original = port.handle_tx

    async def handle_tx(pkt) -> None:
        if isinstance(pkt, Tlp):
            direction.tlps += 1
            direction.tlp_wire_bytes += pkt.get_wire_size()
            if pkt.fmt_type in (TlpType.MEM_WRITE, TlpType.MEM_WRITE_64):
                direction.writes += 1
                direction.write_payload_bytes += pkt.get_payload_size()
            elif pkt.fmt_type in (TlpType.CPL_DATA, TlpType.CPL_LOCKED_DATA):
                direction.completions += 1
                direction.completion_payload_bytes += pkt.get_payload_size()
            elif pkt.fmt_type in (TlpType.CPL, TlpType.CPL_LOCKED):
                direction.completions += 1
            elif pkt.fmt_type in (TlpType.MEM_READ, TlpType.MEM_READ_64):
                direction.read_requests += 1
        else:
            direction.dllps += 1
            direction.dllp_bytes += pkt.get_wire_size()
        await original(pkt)

    port.handle_tx = handle_tx


class _CollectingRootComplex:
    """The RootComplex as its memory-read handler sees it, except that ``send`` collects the completions."""

    def __init__(self, rc: RootComplex) -> None:
        self._rc = rc
        self.completions: list = []

    def __getattr__(self, name: str):
        return getattr(self._rc, name)

    async def send(self, tlp) -> None:
        self.completions.append(tlp)


class ReadLatency:
    """Host memory read latency for cocotbext-pcie's RootComplex, which otherwise answers at once.

    Real hosts take 400-1000 ns from a device's memory read request to its completions; the model takes about
    nothing, which flatters a design that keeps few reads in flight.  With ``latency_ns > 0`` each memory read
    TLP that reaches the root complex is served at once (the memory is read on arrival, by the model's own
    handler, which also splits the completions as the model does) but its completions are held until
    ``arrival + latency_ns`` and then sent in order.  A delay line, not a lock: every read that arrives within
    the latency is in flight at the same time, so a device with many tags outstanding loses one latency, not
    one per read.  Completions of one request stay in order, and requests complete in the order they arrived
    (they all wait equally long).  ``latency_ns`` may be changed at run time (it applies to reads arriving
    afterwards); 0 restores the model's own behaviour exactly.
    """

    def __init__(self, rc: RootComplex, latency_ns: float = 0.0) -> None:
        self.rc = rc
        self.latency_ns = float(latency_ns)
        self.delayed_reads = 0
        self._queue: list[tuple[int, list]] = []  # (due time in ps, completions), oldest first
        self._wake = Event()
        self._original = {t: rc.rx_tlp_handler[t] for t in (TlpType.MEM_READ, TlpType.MEM_READ_64)}
        for t in self._original:
            rc.register_rx_tlp_handler(t, self._handle_read)
        cocotb.start_soon(self._run())

    async def _handle_read(self, tlp) -> None:
        if self.latency_ns <= 0:
            await self._original[tlp.fmt_type](tlp)
            return
        proxy = _CollectingRootComplex(self.rc)
        await type(self.rc).handle_mem_read_tlp(proxy, tlp)
        self.delayed_reads += 1
        due = get_sim_time("ps") + round(self.latency_ns * 1000)
        self._queue.append((due, proxy.completions))
        self._wake.set()

    async def _run(self) -> None:
        while True:
            while not self._queue:
                self._wake.clear()
                await self._wake.wait()
            due, completions = self._queue[0]
            now = get_sim_time("ps")
            if due > now:
                await Timer(due - now, "ps")
            self._queue.pop(0)
            for cpl in completions:
                await self.rc.send(cpl)


class BenchCommon:
    """What the benches of both families share, whatever their hard IP's user interface looks like.

    A family's bench builds ``self.rc`` and ``self.dev`` (a cocotbext-pcie device connected to a root port),
    sets ``self.clock`` (the user-side clock) and ``self.eth_reset``/``self.eth_reset_active_level`` (the reset
    the Ethernet ports run under), calls :meth:`_init_common`, and has its ``_monitor`` decode its own bus
    headers into :meth:`_count_request` / :meth:`_count_read_done` / :meth:`_count_cycle`, so that the
    bookkeeping (:class:`BusCounters`, read tags and round trips, ``rq_write_watchers``), the link taps, the
    host read latency and the external Ethernet ports are one code for both.
    """

    dut: object
    rc: RootComplex
    dev: object
    clock: object
    eth_reset: object
    eth_reset_active_level: bool = True
    log: logging.Logger

    def _attach(self, dut, read_latency_ns: float) -> None:
        """Give the model's function this device's identity and BAR (device_map), put it on a root port, start
        the shared bookkeeping, and idle the Ethernet ports (loopback on) until a test asks for them."""
        fn = self.dev.functions[0]
        fn.vendor_id = device_map.VENDOR_ID
        fn.device_id = device_map.DEVICE_ID
        fn.subsystem_vendor_id = device_map.SUBSYSTEM_VENDOR_ID
        fn.subsystem_id = device_map.SUBSYSTEM_ID
        fn.revision_id = device_map.REVISION_ID
        fn.class_code = device_map.CLASS_CODE
        fn.configure_bar(device_map.BAR, device_map.BAR_SIZE, ext=True)
        self.rc.make_port().connect(self.dev)
        self._init_common(read_latency_ns)
        dut.loopback_enable.value = 1
        dut.eth_tx_tready.value = 1
        for name in ("tvalid", "tdata", "tkeep", "tlast", "tuser"):
            getattr(dut, f"eth_rx_{name}").value = 0

    def _init_common(self, read_latency_ns: float) -> None:
        self.counters = BusCounters()
        #: Called as ``watch(addr, nbytes)`` for every memory-write TLP the DUT sends towards the host, in the
        #: order it sends them (e.g. :class:`sim.ordering.UsedAfterData`); MSI-X messages are not among them.
        self.rq_write_watchers: list = []
        self._open_tags: dict[int, int] = {}  # tag -> cycle its read request was issued
        self.link = LinkCounters()
        _tap_link(self.dev.upstream_port, self.link.to_host)
        _tap_link(self.dev.upstream_port.other, self.link.to_device)
        #: The DMA monitor (:mod:`sim.dma_monitor`): judges every request the device puts on the link against
        #: the virtio rules.  On for every virtio build; ``None`` only for the PCIe test core
        #: (``VIRTIO_FPGA_CORE=test``, set by :func:`sim.runner.run_cocotb`), which is not a virtio device.
        self.dma_monitor: DmaMonitor | None = None
        if os.environ.get("VIRTIO_FPGA_CORE", "virtio") != "test":
            self.dma_monitor = DmaMonitor.attach(self)
        #: host read latency; ``bench.read_latency.latency_ns`` may be changed while the simulation runs
        self.read_latency = ReadLatency(self.rc, read_latency_ns)
        self.eth_tx_sink = None  # cocotbext-axi AxiStreamSink / AxiStreamSource after external_ethernet()
        self.eth_rx_source = None
        self.ep = None  # PciDevice of the DUT after init()
        self.extra_functions: list = []

    # ---- bookkeeping, fed by the family's bus monitor -------------------------------------------
    def _count_request(self, kind: str, addr: int, nbytes: int, tag: int | None = None) -> None:
        """One DMA memory request (``kind`` "R" with its ``tag``, or "W") the DUT issued this cycle."""
        c = self.counters
        if kind == "R":
            c.dma_read_requests += 1
            c.dma_read_bytes += nbytes
            if tag is not None:
                self._open_tags[tag] = c.cycles
        else:
            c.dma_write_requests += 1
            c.dma_write_bytes += nbytes
            for watch in self.rq_write_watchers:
                watch(addr, nbytes)
        if len(c.requests) < c.log_limit:
            c.requests.append((kind, addr, nbytes))
        if len(c.timed_requests) < c.timed_log_limit:
            c.timed_requests.append((c.cycles, kind, addr, nbytes))

    def _count_read_done(self, tag: int) -> None:
        """The last completion (or an error completion) of the read with ``tag`` reached the DUT this cycle."""
        c = self.counters
        issued = self._open_tags.pop(tag, None)
        if issued is not None and len(c.read_round_trips) < c.timed_log_limit:
            c.read_round_trips.append((issued, c.cycles))

    def _count_cycle(self) -> None:
        """End of a monitored cycle: DMA reads in flight."""
        c = self.counters
        c.reads_outstanding = len(self._open_tags)
        c.reads_outstanding_sum += c.reads_outstanding
        if c.reads_outstanding > c.reads_outstanding_max:
            c.reads_outstanding_max = c.reads_outstanding

    # ---- shared user-facing API ------------------------------------------------------------------
    def external_ethernet(self, *, tx_pause=None):
        """Loopback off: frames leave on ``eth_tx`` into a cocotbext-axi sink and enter ``eth_rx`` from a source.

        Returns ``(sink, source)``; ``tx_pause`` is an optional pause generator for the sink (back-pressure).
        """
        from cocotbext.axi import AxiStreamSink, AxiStreamSource

        dut = self.dut
        dut.loopback_enable.value = 0
        if self.eth_tx_sink is None:
            kw = {"reset_active_level": self.eth_reset_active_level}
            self.eth_tx_sink = AxiStreamSink(AxiStreamBus.from_prefix(dut, "eth_tx"), self.clock, self.eth_reset, **kw)
            self.eth_rx_source = AxiStreamSource(
                AxiStreamBus.from_prefix(dut, "eth_rx"), self.clock, self.eth_reset, **kw
            )
            quiet(self.eth_tx_sink.log, self.eth_rx_source.log, level=self.log.level)
        if tx_pause is not None:
            self.eth_tx_sink.set_pause_generator(tx_pause)
        return self.eth_tx_sink, self.eth_rx_source

    def add_function(self, function):
        """Attach another PCIe function (e.g. :class:`sim.soft_peer.SoftVirtioPcieFunction`, any cocotbext-pcie
        ``Function``) as a device of its own on a new root port of the same RootComplex.

        Call before ``init``, which enumerates everything.  Returns the function; after ``init``,
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
            await RisingEdge(self.clock)


def _random_pauses(seed: int, probability: float):
    rng = random.Random(seed)
    while True:
        yield rng.random() < probability


class EndpointBench(BenchCommon):
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
        read_latency_ns: float = 0.0,
    ) -> None:
        self.dut = dut
        dut.user_reset.value = 1  # before the model's clock starts: a floating reset would make X state
        self.log = logging.getLogger("cocotb.tb")
        self.log.setLevel(log_level)
        self.backpressure = backpressure
        self.seed = seed
        self.data_width = len(dut.m_axis_cq_tdata)
        self.clock = dut.user_clk
        self.eth_reset = dut.user_reset
        self.eth_reset_active_level = True

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

        self._attach(dut, read_latency_ns)

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
        """Count cycles and RQ traffic on the clock, from the bus signals themselves; follow read tags."""
        dut = self.dut
        clk = RisingEdge(dut.user_clk)
        sop = True
        rc_sop = True
        lbo = 8 if self.data_width == 512 else 4  # last_be position in the RQ sideband (PG213)
        c = self.counters
        while True:
            await clk
            c.cycles += 1
            if int(dut.m_axis_rc_tvalid.value) and int(dut.m_axis_rc_tready.value):
                if rc_sop:
                    # RC descriptor (PG213 "Requester Completion Descriptor Format"): bit 30 request completed,
                    # tag in bits 71:64.  The last completion of a request (or an error completion) ends it.
                    data = int(dut.m_axis_rc_tdata.value)
                    if (data >> 30) & 1:
                        self._count_read_done((data >> 64) & 0xFF)
                rc_sop = bool(int(dut.m_axis_rc_tlast.value))
            if int(dut.s_axis_rq_tvalid.value) and int(dut.s_axis_rq_tready.value):
                if sop:
                    data = int(dut.s_axis_rq_tdata.value)
                    dword_count = (data >> 64) & 0x7FF
                    req_type = (data >> 75) & 0xF
                    first_be = int(dut.s_axis_rq_tuser.value) & 0xF
                    last_be = (int(dut.s_axis_rq_tuser.value) >> lbo) & 0xF
                    nbytes = _be_bytes(dword_count, first_be, last_be)
                    addr = (data & ((1 << 64) - 4)) + ((first_be & -first_be).bit_length() - 1 if first_be else 0)
                    if req_type == 0:
                        self._count_request("R", addr, nbytes, tag=(data >> 96) & 0xFF)
                    elif req_type == 1:
                        self._count_request("W", addr, nbytes)
                sop = bool(int(dut.s_axis_rq_tlast.value))
            self._count_cycle()

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


def _be_bytes(dword_count: int, first_be: int, last_be: int) -> int:
    """Bytes a request covers, from its dword count and byte enables (PCIe Base 2.2.5)."""
    if dword_count == 1:
        return bin(first_be).count("1")
    lead = (first_be & -first_be).bit_length() - 1 if first_be else 0
    tail = 4 - last_be.bit_length() if last_be else 0
    return dword_count * 4 - lead - tail


__all__ = ["BenchCommon", "BusCounters", "Clock", "EndpointBench", "LinkCounters", "LinkDirection", "ReadLatency"]
