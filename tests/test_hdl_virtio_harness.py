"""Simulation harness for ``VirtioNetCore`` (Amaranth simulator), plus tests of the harness itself.

The harness models what sits around the core on a real board, not the core: host memory behind the DMA
ports (a bytearray with a guard pattern, a configurable read latency, stalls, and a record of every access
so a test can prove the device never touched memory outside the buffers it was given), the MSI-X block
(accepts every interrupt request and records it), the BAR completer (one register access at a time), and
a small packed-ring *driver* that builds descriptors the way Linux does (spec 2.8.21-2.8.22).

Other ``test_hdl_virtio_*`` modules import it.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field

from amaranth.hdl import Elaboratable, Module
from amaranth.lib import wiring
from amaranth.sim import Simulator

from hdl.virtio.core import VirtioNetCore
from virtio_fpga import device_map, spec
from virtio_fpga.spec import DescFlag, Feature, Status

IOVA_BASE = 0x1_2340_0000  # above 4 GiB: the core must drive all 64 address bits
GUARD = 0xA5
CLOCK_PERIOD = 4e-9  # 250 MHz, the 256-bit Gen3 x8 user clock

C = spec.COMMON_CFG
COMMON = device_map.COMMON_CFG_OFFSET


def common_addr(name: str) -> int:
    return COMMON + C.offset_of(name)


def common_size(name: str) -> int:
    return C[name].byte_size


class LoopbackTop(Elaboratable):
    """The core with eth_tx looped to eth_rx, as the top level does when no MAC is attached."""

    def __init__(self, core: VirtioNetCore) -> None:
        self.core = core

    def elaborate(self, platform) -> Module:
        m = Module()
        m.submodules.core = self.core
        wiring.connect(m, self.core.eth_tx, self.core.eth_rx)
        return m


@dataclass
class DmaLog:
    reads: list[tuple[int, int]] = field(default_factory=list)
    writes: list[tuple[int, bytes]] = field(default_factory=list)
    write_cycles: list[int] = field(default_factory=list)
    read_requests: int = 0


class HostMemory:
    """Host memory seen through the DMA ports: ``size`` bytes at ``IOVA_BASE``, filled with a guard pattern.

    Reads outside the memory (or inside a region marked ``faulty``) complete with ``error`` on the last beat,
    as an Unsupported Request would.  Every write is logged so tests can check where the device wrote.
    """

    def __init__(self, size: int = 0x10000, *, read_latency: int = 6, stall: float = 0.0, seed: int = 1) -> None:
        self.size = size
        self.mem = bytearray([GUARD]) * size
        self.read_latency = read_latency
        self.stall = stall
        self.rng = random.Random(seed)
        self.log = DmaLog()
        self.faulty: list[tuple[int, int]] = []
        self.guards: list[tuple[int, int]] = []  # offsets into mem that must keep the guard pattern
        self.now = 0  # clock cycles since the simulation started
        self._next = 0

    # ---- allocation, like the driver's alloc_dma ----
    def alloc(self, size: int, align: int = 64, guard: int = 64) -> int:
        """Zeroed buffer with ``guard`` bytes of guard pattern before and after it; returns its IOVA."""
        start = (self._next + guard + align - 1) & ~(align - 1)
        if start + size + guard > self.size:
            raise MemoryError("host memory model exhausted")
        self.mem[start : start + size] = bytes(size)
        self.guards.append((start - guard, start))
        self.guards.append((start + size, start + size + guard))
        self._next = start + size
        return IOVA_BASE + start

    def inside(self, iova: int, length: int) -> bool:
        return iova >= IOVA_BASE and iova + length <= IOVA_BASE + self.size

    def read(self, iova: int, length: int) -> bytes:
        off = iova - IOVA_BASE
        return bytes(self.mem[off : off + length])

    def write(self, iova: int, data: bytes) -> None:
        off = iova - IOVA_BASE
        self.mem[off : off + len(data)] = data

    def _faulty(self, iova: int, length: int) -> bool:
        if not self.inside(iova, length):
            return True
        return any(iova < end and start < iova + length for start, end in self.faulty)

    # ---- the two DMA port models (background testbenches) ----
    def read_port_model(self, port, data_width: int):
        nbytes = data_width // 8

        async def model(ctx):
            queue: deque = deque()
            beats: deque = deque()
            cycle = 0
            ctx.set(port.req_ready, 1)
            while True:
                _, _, req_valid, req_addr, req_len, data_ready = await ctx.tick().sample(
                    port.req_valid, port.req_addr, port.req_len, port.data_ready
                )
                cycle += 1
                if ctx.get(port.data_valid) and data_ready:
                    beats.popleft()
                if req_valid and self._req_ready_was:
                    self.log.read_requests += 1
                    self.log.reads.append((req_addr, req_len))
                    queue.append((cycle + self.read_latency, req_addr, req_len))
                # Turn the oldest request whose latency has passed into beats (in order, 2.x: in-order port).
                if not beats and queue and queue[0][0] <= cycle:
                    _, addr, length = queue.popleft()
                    error = self._faulty(addr, length)
                    data = bytes(length) if error else self.read(addr, length)
                    for i in range(0, length, nbytes):
                        chunk = data[i : i + nbytes]
                        last = i + nbytes >= length
                        keep = (1 << len(chunk)) - 1
                        beats.append((int.from_bytes(chunk, "little"), keep, last, error and last))
                stall = self.stall and self.rng.random() < self.stall
                if beats and not stall:
                    value, keep, last, error = beats[0]
                    ctx.set(port.data_valid, 1)
                    ctx.set(port.data, value)
                    ctx.set(port.data_keep, keep)
                    ctx.set(port.data_last, last)
                    ctx.set(port.error, error)
                else:
                    ctx.set(port.data_valid, 0)
                self._req_ready_was = not (self.stall and self.rng.random() < self.stall)
                ctx.set(port.req_ready, self._req_ready_was)

        self._req_ready_was = True
        return model

    def write_port_model(self, port, data_width: int):
        nbytes = data_width // 8

        async def model(ctx):
            reqs: deque = deque()
            cur = None  # [addr, len, bytearray]
            done_queue: deque = deque()
            req_ready = True
            data_ready = True
            cycle = 0
            while True:
                self.now += 1
                _, _, req_valid, req_addr, req_len, d_valid, d_data, d_keep, d_last = await ctx.tick().sample(
                    port.req_valid,
                    port.req_addr,
                    port.req_len,
                    port.data_valid,
                    port.data,
                    port.data_keep,
                    port.data_last,
                )
                cycle += 1
                if req_valid and req_ready:
                    reqs.append((req_addr, req_len))
                if d_valid and data_ready:
                    if cur is None:
                        assert reqs, "DMA write data before its request"
                        addr, length = reqs.popleft()
                        cur = [addr, length, bytearray()]
                    addr, length, buf = cur
                    remaining = length - len(buf)
                    take = min(nbytes, remaining)
                    assert d_keep == (1 << take) - 1, f"write keep {d_keep:#x}, expected {take} bytes"
                    buf += d_data.to_bytes(nbytes, "little")[:take]
                    assert bool(d_last) == (len(buf) == length), "data_last must mark the final beat"
                    if d_last:
                        assert self.inside(addr, length), f"DMA write outside host memory: {addr:#x}+{length}"
                        self.write(addr, bytes(buf))
                        self.log.writes.append((addr, bytes(buf)))
                        self.log.write_cycles.append(self.now)
                        done_queue.append(cycle + 2)
                        cur = None
                if done_queue and done_queue[0] <= cycle:
                    done_queue.popleft()
                    ctx.set(port.done, 1)
                else:
                    ctx.set(port.done, 0)
                req_ready = not (self.stall and self.rng.random() < self.stall)
                data_ready = not (self.stall and self.rng.random() < self.stall)
                ctx.set(port.req_ready, req_ready)
                ctx.set(port.data_ready, data_ready)

        return model


class Registers:
    """BAR0 accesses as the completer performs them: one at a time, natural width (4.1.3.1)."""

    def __init__(self, core: VirtioNetCore) -> None:
        self.bus = core.regs

    async def read(self, ctx, addr: int, size: int) -> int:
        bus = self.bus
        ctx.set(bus.valid, 1)
        ctx.set(bus.write, 0)
        ctx.set(bus.addr, addr)
        ctx.set(bus.size, size.bit_length() - 1)
        await ctx.tick().until(bus.done)
        value = ctx.get(bus.rdata)
        ctx.set(bus.valid, 0)
        await ctx.tick()
        return value

    async def write(self, ctx, addr: int, size: int, value: int) -> None:
        bus = self.bus
        ctx.set(bus.valid, 1)
        ctx.set(bus.write, 1)
        ctx.set(bus.addr, addr)
        ctx.set(bus.size, size.bit_length() - 1)
        ctx.set(bus.wdata, value)
        await ctx.tick().until(bus.done)
        ctx.set(bus.valid, 0)
        await ctx.tick()

    async def common_read(self, ctx, name: str) -> int:
        return await self.read(ctx, common_addr(name), common_size(name))

    async def common_write(self, ctx, name: str, value: int) -> None:
        await self.write(ctx, common_addr(name), common_size(name), value)

    async def status(self, ctx) -> int:
        return await self.common_read(ctx, "device_status")


class IrqLog:
    """The MSI-X block: accepts every request (masking is its business) and records the vectors."""

    def __init__(self) -> None:
        self.vectors: list[tuple[int, int]] = []  # (cycle, vector)
        self.cycle = 0

    def model(self, port):
        async def model(ctx):
            ctx.set(port.ready, 1)
            while True:
                _, _, valid, vector = await ctx.tick().sample(port.valid, port.vector)
                self.cycle += 1
                if valid:
                    self.vectors.append((self.cycle, vector))

        return model

    def count(self, vector: int) -> int:
        return sum(1 for _, v in self.vectors if v == vector)


def make_sim(
    core: VirtioNetCore, *, loopback: bool = True, memory: HostMemory | None = None, msix: bool = True
) -> tuple[Simulator, HostMemory, IrqLog]:
    """A simulator with the memory, MSI-X and (optionally) Ethernet loopback around ``core``."""
    memory = memory or HostMemory()
    irqs = IrqLog()
    top = LoopbackTop(core) if loopback else core
    sim = Simulator(top)
    sim.add_clock(CLOCK_PERIOD)
    sim.add_testbench(memory.read_port_model(core.dma_rd, core.data_width), background=True)
    sim.add_testbench(memory.write_port_model(core.dma_wr, core.data_width), background=True)
    sim.add_testbench(irqs.model(core.irq), background=True)

    async def msix_enable(ctx):
        ctx.set(core.msix_enabled, int(msix))

    sim.add_testbench(msix_enable, background=True)
    return sim, memory, irqs


def run(sim: Simulator, testbench, vcd: str | None = None) -> None:
    sim.add_testbench(testbench)
    if vcd:
        with sim.write_vcd(vcd):
            sim.run()
    else:
        sim.run()


# --------------------------------------------------------------------------------------------------------
# A packed-ring driver model (the driver side of spec 2.8), enough to feed the core.
# --------------------------------------------------------------------------------------------------------


@dataclass
class Chain:
    head: int  # ring index of the first descriptor
    count: int
    buffer_id: int
    buffers: list[tuple[int, int, bool]]  # (iova, len, device-writable)


class DriverRing:
    """The driver's half of one packed virtqueue, spec 2.8 (names as in Linux's virtio_ring.c)."""

    def __init__(self, mem: HostMemory, size: int) -> None:
        self.mem = mem
        self.size = size
        self.desc = mem.alloc(size * spec.PACKED_DESC.size, align=16)
        self.driver_area = mem.alloc(spec.EVENT_SUPPRESS.size, align=4)
        self.device_area = mem.alloc(spec.EVENT_SUPPRESS.size, align=4)
        self.next_avail_idx = 0
        self.avail_wrap_counter = 1
        self.last_used_idx = 0
        self.used_wrap_counter = 1
        self.free_ids = list(range(size))
        self.outstanding: dict[int, Chain] = {}
        self.order: deque = deque()

    @property
    def free(self) -> int:
        return self.size - sum(c.count for c in self.outstanding.values())

    def add_chain(
        self, buffers: list[tuple[int, int, bool]], *, buffer_id: int | None = None, extra_flags: int = 0
    ) -> Chain:
        """Make a chain available (2.8.21): write every descriptor, the head's flags last."""
        assert len(buffers) <= self.free
        buffer_id = self.free_ids.pop(0) if buffer_id is None else buffer_id
        head = self.next_avail_idx
        head_flags = None
        idx = head
        wrap = self.avail_wrap_counter
        for i, (addr, length, writable) in enumerate(buffers):
            flags = extra_flags
            if i + 1 < len(buffers):
                flags |= DescFlag.NEXT
            if writable:
                flags |= DescFlag.WRITE
            flags |= DescFlag.AVAIL if wrap else DescFlag.USED
            raw = spec.PACKED_DESC.pack(addr=addr, len=length, id=buffer_id, flags=int(flags))
            if i == 0:
                head_flags = raw
                self.mem.write(self.desc + idx * 16, raw[:14] + bytes(2))  # flags written last
            else:
                self.mem.write(self.desc + idx * 16, raw)
            idx += 1
            if idx == self.size:
                idx = 0
                wrap ^= 1
        self.mem.write(self.desc + head * 16, head_flags)
        self.next_avail_idx = idx
        self.avail_wrap_counter = wrap
        chain = Chain(head, len(buffers), buffer_id, buffers)
        self.outstanding[buffer_id] = chain
        self.order.append(buffer_id)
        return chain

    @property
    def notify_data(self) -> int:
        """next_off/next_wrap for a notification (2.9): where the next descriptor will go."""
        return self.next_avail_idx | (self.avail_wrap_counter << 15)

    def set_driver_event(self, flags: int, off: int = 0, wrap: int = 0) -> None:
        self.mem.write(
            self.driver_area, spec.EVENT_SUPPRESS.pack(desc_event_off=off, desc_event_wrap=wrap, flags=flags)
        )

    def poll_used(self) -> list[tuple[Chain, int]]:
        """Collect used descriptors (2.8.5/2.8.6): (chain, len) in the order the device used them."""
        out = []
        while True:
            raw = self.mem.read(self.desc + self.last_used_idx * 16, 16)
            d = spec.PACKED_DESC.unpack(raw)
            avail = bool(d["flags"] & DescFlag.AVAIL)
            used = bool(d["flags"] & DescFlag.USED)
            if not (avail == used == bool(self.used_wrap_counter)):
                return out
            buffer_id = d["id"]
            assert buffer_id in self.outstanding, f"used id {buffer_id} is not outstanding"
            # With IN_ORDER a used element may stand for the whole batch up to it (2.8.21.1).
            while True:
                first = self.order.popleft()
                chain = self.outstanding.pop(first)
                self.free_ids.append(first)
                out.append((chain, d["len"] if first == buffer_id else 0))
                self.last_used_idx += chain.count
                if self.last_used_idx >= self.size:
                    self.last_used_idx -= self.size
                    self.used_wrap_counter ^= 1
                if first == buffer_id:
                    break


async def init_device(ctx, regs: Registers, features: int, rings: dict[int, DriverRing]) -> int:
    """The driver initialisation sequence of spec 3.1.1; returns the final device_status."""
    await regs.common_write(ctx, "device_status", 0)
    assert await regs.status(ctx) == 0
    await regs.common_write(ctx, "device_status", Status.ACKNOWLEDGE)
    await regs.common_write(ctx, "device_status", Status.ACKNOWLEDGE | Status.DRIVER)
    for sel in range(2):
        await regs.common_write(ctx, "driver_feature_select", sel)
        await regs.common_write(ctx, "driver_feature", (features >> (32 * sel)) & 0xFFFF_FFFF)
    await regs.common_write(ctx, "device_status", Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK)
    status = await regs.status(ctx)
    if not status & Status.FEATURES_OK:
        return status
    for q, ring in rings.items():
        await regs.common_write(ctx, "queue_select", q)
        await regs.common_write(ctx, "queue_size", ring.size)
        await regs.common_write(ctx, "queue_msix_vector", 1 + q)
        await regs.common_write(ctx, "queue_desc", ring.desc)
        await regs.common_write(ctx, "queue_driver", ring.driver_area)
        await regs.common_write(ctx, "queue_device", ring.device_area)
        await regs.common_write(ctx, "queue_enable", 1)
    await regs.common_write(ctx, "config_msix_vector", 0)
    await regs.common_write(
        ctx, "device_status", Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK | Status.DRIVER_OK
    )
    return await regs.status(ctx)


async def kick(ctx, regs: Registers, q: int, ring: DriverRing, with_data: bool) -> None:
    """Notify queue ``q`` (4.1.5.2): a 32-bit write with notification data, or a 16-bit write of the vqn."""
    addr = device_map.notify_address(q)
    if with_data:
        await regs.write(ctx, addr, 4, q | (ring.notify_data << 16))
    else:
        await regs.write(ctx, addr, 2, q)


BASE_FEATURES = spec.features_mask([Feature.VERSION_1, Feature.RING_PACKED, Feature.ACCESS_PLATFORM])


# --------------------------------------------------------------------------------------------------------
# Tests of the harness itself (a broken model would make every other test meaningless).
# --------------------------------------------------------------------------------------------------------


def test_host_memory_alloc_keeps_guards() -> None:
    mem = HostMemory(0x1000)
    a = mem.alloc(100, align=16)
    b = mem.alloc(100, align=16)
    assert a % 16 == 0 and b % 16 == 0
    assert b - (a + 100) >= 64
    assert mem.read(a, 100) == bytes(100)
    assert mem.read(a - 1, 1) == bytes([GUARD])
    assert mem.read(a + 100, 1) == bytes([GUARD])


def test_driver_ring_builds_packed_descriptors() -> None:
    mem = HostMemory(0x4000)
    ring = DriverRing(mem, 3)
    buf = mem.alloc(64)
    ring.add_chain([(buf, 10, False), (buf + 10, 20, True)])
    ring.add_chain([(buf, 5, False)])
    d = [spec.PACKED_DESC.unpack(mem.read(ring.desc + 16 * i, 16)) for i in range(3)]
    assert d[0]["flags"] == DescFlag.NEXT | DescFlag.AVAIL
    assert d[1]["flags"] == DescFlag.WRITE | DescFlag.AVAIL
    assert d[1]["id"] == 0 and d[2]["id"] == 1
    # The second chain's single descriptor is at index 2; the ring is now full and wraps.
    assert ring.next_avail_idx == 0 and ring.avail_wrap_counter == 0
    assert ring.notify_data == 0


# --------------------------------------------------------------------------------------------------------
# Traffic scenarios: a driver that keeps both rings busy, and the checks every scenario ends with.
# --------------------------------------------------------------------------------------------------------

RX_VECTOR = 1 + spec.NET_RX_QUEUE
TX_VECTOR = 1 + spec.NET_TX_QUEUE
CONFIG_VECTOR = 0
HDR = spec.NET_HDR.size


def split_lengths(total: int, pieces: int) -> list[int]:
    """``total`` bytes cut into at most ``pieces`` non-empty parts (first parts larger)."""
    pieces = max(1, min(pieces, total))
    base, extra = divmod(total, pieces)
    return [base + (1 if i < extra else 0) for i in range(pieces)]


class Scenario:
    """A core in a simulator with host memory, both rings and a driver loop around it."""

    def __init__(
        self,
        *,
        features: int = BASE_FEATURES,
        rx_size: int = 8,
        tx_size: int = 8,
        rx_buf_len: int = HDR + 1518,
        rx_pieces: int = 1,
        tx_pieces: int = 1,
        tx_split_header: bool = False,
        mem_size: int = 0x20000,
        read_latency: int = 6,
        stall: float = 0.0,
        loopback: bool = True,
        msix: bool = True,
        core: VirtioNetCore | None = None,
    ) -> None:
        self.core = core or VirtioNetCore()
        self.features = features
        self.notification_data = bool(features >> Feature.NOTIFICATION_DATA & 1)
        self.mem = HostMemory(mem_size, read_latency=read_latency, stall=stall)
        self.sim, _, self.irqs = make_sim(self.core, loopback=loopback, memory=self.mem, msix=msix)
        self.regs = Registers(self.core)
        self.rx = DriverRing(self.mem, rx_size)
        self.tx = DriverRing(self.mem, tx_size)
        self.rx_buf_len = rx_buf_len
        self.rx_pieces = rx_pieces
        self.tx_pieces = tx_pieces
        self.tx_split_header = tx_split_header
        slot = max(rx_buf_len, HDR + device_map.MAX_FRAME_LEN if mem_size > 0x40000 else HDR + 1518)
        self.rx_slots = [self.mem.alloc(rx_buf_len, align=8) for _ in range(rx_size)]
        self.tx_slots = [self.mem.alloc(slot, align=8) for _ in range(tx_size)]
        self.allowed_writes: list[tuple[int, int]] = [
            (self.rx.desc, self.rx.desc + 16 * rx_size),
            (self.tx.desc, self.tx.desc + 16 * tx_size),
            (self.rx.device_area, self.rx.device_area + 4),
            (self.tx.device_area, self.tx.device_area + 4),
        ]
        self.rx_free_slots = list(range(rx_size))
        self.rx_chain_slot: dict[int, int] = {}
        self.tx_free_slots = list(range(tx_size))
        self.tx_chain_slot: dict[int, int] = {}
        self.cycles = 0
        self.received: list[tuple[bytes, bytes]] = []  # (virtio_net_hdr, frame)
        self.tx_completed = 0
        self.kick_cycles: list[tuple[int, int]] = []

    # ---- helpers used inside testbenches ----
    async def tick(self, ctx, n: int = 1) -> None:
        for _ in range(n):
            await ctx.tick()
        self.cycles += n

    async def start(self, ctx) -> int:
        return await init_device(ctx, self.regs, self.features, {0: self.rx, 1: self.tx})

    def post_rx(self) -> int:
        posted = 0
        while self.rx_free_slots and self.rx.free >= self.rx_pieces:
            slot = self.rx_free_slots.pop(0)
            base = self.rx_slots[slot]
            bufs = []
            off = 0
            for n in split_lengths(self.rx_buf_len, self.rx_pieces):
                bufs.append((base + off, n, True))
                self.allowed_writes.append((base + off, base + off + n))
                off += n
            chain = self.rx.add_chain(bufs)
            self.rx_chain_slot[chain.buffer_id] = slot
            posted += 1
        return posted

    def post_tx(self, frame: bytes, header: bytes | None = None) -> None:
        slot = self.tx_free_slots.pop(0)
        base = self.tx_slots[slot]
        data = (header if header is not None else spec.NET_HDR.pack()) + frame
        self.mem.write(base, data)
        bufs = []
        off = 0
        if self.tx_split_header:
            bufs.append((base, HDR, False))
            off = HDR
        for n in split_lengths(len(data) - off, self.tx_pieces):
            bufs.append((base + off, n, False))
            off += n
        chain = self.tx.add_chain(bufs)
        self.tx_chain_slot[chain.buffer_id] = slot

    def tx_descs_needed(self, frame: bytes) -> int:
        total = HDR + len(frame) - (HDR if self.tx_split_header else 0)
        return min(self.tx_pieces, total) + (1 if self.tx_split_header else 0)

    def reap(self) -> None:
        for chain, length in self.tx.poll_used():
            assert length == 0, "TX used len must be 0: the device wrote nothing (2.8.4)"
            self.tx_free_slots.append(self.tx_chain_slot.pop(chain.buffer_id))
            self.tx_completed += 1
        for chain, length in self.rx.poll_used():
            total = sum(n for _, n, _ in chain.buffers)
            assert HDR < length <= total, f"RX used len {length} outside (12, {total}]"
            data = b""
            for addr, n, _ in chain.buffers:
                data += self.mem.read(addr, n)
            self.received.append((data[:HDR], data[HDR:length]))
            self.rx_free_slots.append(self.rx_chain_slot.pop(chain.buffer_id))

    async def kick(self, ctx, q: int) -> None:
        ring = self.rx if q == spec.NET_RX_QUEUE else self.tx
        self.kick_cycles.append((q, self.mem.now))
        await kick(ctx, self.regs, q, ring, self.notification_data)
        self.cycles += 2

    async def transfer(self, ctx, frames: list[bytes], *, timeout: int = 20000, batch: int = 1) -> int:
        """Send ``frames`` through TX, collect them from RX; returns the cycles it took."""
        start_cycles = self.cycles
        if self.post_rx():
            await self.kick(ctx, spec.NET_RX_QUEUE)
        pending = list(frames)
        expected = len(self.received) + len(frames)
        deadline = self.cycles + timeout
        while len(self.received) < expected:
            added = 0
            while pending and self.tx_free_slots and self.tx.free >= self.tx_descs_needed(pending[0]):
                self.post_tx(pending.pop(0))
                added += 1
                if added % batch == 0:
                    await self.kick(ctx, spec.NET_TX_QUEUE)
            if added % batch:
                await self.kick(ctx, spec.NET_TX_QUEUE)
            await self.tick(ctx, 8)
            self.reap()
            if self.post_rx():
                await self.kick(ctx, spec.NET_RX_QUEUE)
            status = await self.regs.status(ctx)
            self.cycles += 3
            assert not status & Status.DEVICE_NEEDS_RESET, "device flagged DEVICE_NEEDS_RESET"
            assert self.cycles < deadline, f"timeout: {len(self.received)}/{expected} frames back"
        return self.cycles - start_cycles

    def check_memory(self) -> None:
        """Every DMA write landed in a buffer the device was given; guard bytes are intact."""
        for addr, data in self.mem.log.writes:
            assert any(lo <= addr and addr + len(data) <= hi for lo, hi in self.allowed_writes), (
                f"DMA write {addr:#x}+{len(data)} outside the device's buffers"
            )
        for start, end in self.guard_ranges():
            assert self.mem.mem[start:end] == bytes([GUARD]) * (end - start), f"guard {start:#x} overwritten"

    def guard_ranges(self):
        """The 64-byte guard gaps HostMemory.alloc leaves before each allocation (offsets into mem)."""
        return self.mem.guards

    def run(self, testbench, vcd: str | None = None) -> None:
        run(self.sim, testbench, vcd)
