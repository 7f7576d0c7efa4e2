"""The host driver's :class:`host.transport.Transport` over cocotbext-pcie's RootComplex.

Every access goes through the simulated PCIe fabric to the RTL, with the exact width the driver asked for:
``bar_read(0, 0x14, 1)`` is one 1-byte memory read TLP (first_be 0b0001), which the BAR completer turns into
one 1-byte register access.  DMA memory comes from the RootComplex's memory pool; each buffer is surrounded
by guard bytes filled with a pattern, and :meth:`CocotbPcieTransport.guard_violations` reports any guard the
device wrote over (DMA outside a buffer).  Time is simulated time.
"""

from __future__ import annotations

from dataclasses import dataclass

from cocotb.simtime import get_sim_time
from cocotb.triggers import Event, SimTimeoutError, Timer, with_timeout

from host.transport import DmaBuffer, TransportError

GUARD_BYTES = 64
GUARD_PATTERN = 0xA5
#: A non-posted request (config or BAR read) without a completion after this long is a transport error
#: rather than a hang (the real platform would see a completion timeout, PCIe Base 2.8).
REQUEST_TIMEOUT_NS = 100_000


@dataclass
class _Allocation:
    region: object
    base: int  # bus address of region byte 0
    offset: int  # where the user's buffer starts inside the region
    size: int
    freed: bool = False


class CocotbPcieTransport:
    """Transport for the RTL endpoint in simulation (``name == "rtl"``)."""

    name = "rtl"

    def __init__(self, bench, ep=None) -> None:
        self.bench = bench
        self.rc = bench.rc
        self.ep = ep if ep is not None else bench.ep
        if self.ep is None:
            raise TransportError("the bench is not initialised (call EndpointBench.init() first)")
        self._allocs: list[_Allocation] = []
        self._irq_counts: dict[int, int] = {}
        self._irq_pending: dict[int, int] = {}
        self._irq_events: dict[int, Event] = {}
        self._nvec = 0

    # ---- configuration space --------------------------------------------------------------------
    async def config_read(self, offset: int, size: int) -> int:
        if size not in (1, 2, 4) or offset % size:
            raise TransportError(f"config read of {size} bytes at {offset:#x}")
        try:
            data = await self.ep.config_read(offset, size, timeout=REQUEST_TIMEOUT_NS, timeout_unit="ns")
        except Exception as exc:  # cocotbext raises plain Exceptions for timeouts and bad completions
            raise TransportError(f"config read of {size} bytes at {offset:#x}: {exc}") from exc
        return int.from_bytes(bytes(data), "little")

    async def config_write(self, offset: int, size: int, value: int) -> None:
        if size not in (1, 2, 4) or offset % size:
            raise TransportError(f"config write of {size} bytes at {offset:#x}")
        try:
            await self.ep.config_write(
                offset, int(value).to_bytes(size, "little"), timeout=REQUEST_TIMEOUT_NS, timeout_unit="ns"
            )
        except Exception as exc:
            raise TransportError(f"config write of {size} bytes at {offset:#x}: {exc}") from exc

    # ---- BARs ------------------------------------------------------------------------------------
    def _window(self, bar: int):
        window = self.ep.bar_window[bar] if 0 <= bar < 6 else None
        if window is None:
            raise TransportError(f"BAR {bar} is not implemented")
        return window

    async def bar_read(self, bar: int, offset: int, size: int) -> int:
        if size not in (1, 2, 4, 8):
            raise TransportError(f"BAR read of {size} bytes")
        window = self._window(bar)
        try:
            data = await window.read(offset, size, timeout=REQUEST_TIMEOUT_NS, timeout_unit="ns")
        except Exception as exc:
            raise TransportError(f"BAR{bar} read of {size} bytes at {offset:#x}: {exc}") from exc
        return int.from_bytes(bytes(data), "little")

    async def bar_write(self, bar: int, offset: int, size: int, value: int) -> None:
        if size not in (1, 2, 4, 8):
            raise TransportError(f"BAR write of {size} bytes")
        await self._window(bar).write(offset, int(value).to_bytes(size, "little"))

    def bar_size(self, bar: int) -> int:
        if not 0 <= bar < 6:
            return 0
        return int(self.ep.bar_size[bar] or 0)

    # ---- DMA memory ------------------------------------------------------------------------------
    def alloc_dma(self, size: int, align: int = 4096) -> DmaBuffer:
        if size <= 0:
            raise TransportError("DMA buffer size must be positive")
        align = max(1, align)
        total = size + 2 * GUARD_BYTES + align
        region = self.rc.mem_pool.alloc_region(total)
        base = region.get_absolute_address(0)
        offset = GUARD_BYTES + (-(base + GUARD_BYTES)) % align
        region.mem[0:total] = bytes([GUARD_PATTERN]) * total
        region.mem[offset : offset + size] = bytes(size)
        self._allocs.append(_Allocation(region, base, offset, size))
        return DmaBuffer(mem=memoryview(region.mem)[offset : offset + size], iova=base + offset, size=size)

    def free_dma(self, buf: DmaBuffer) -> None:
        for a in self._allocs:
            if a.base + a.offset == buf.iova and not a.freed:
                a.freed = True
                return
        raise TransportError(f"free of unknown DMA buffer {buf.iova:#x}")

    def guard_violations(self) -> list[str]:
        """Every guard byte the device overwrote, per buffer (empty list: all guards intact)."""
        bad = []
        for a in self._allocs:
            mem = a.region.mem
            end = a.offset + a.size
            total = len(mem)
            for lo, hi in ((0, a.offset), (end, total)):
                chunk = bytes(mem[lo:hi])
                if chunk != bytes([GUARD_PATTERN]) * (hi - lo):
                    first = next(i for i, b in enumerate(chunk) if b != GUARD_PATTERN) + lo
                    bad.append(
                        f"buffer {a.base + a.offset:#x}+{a.size}: guard byte at region offset {first} "
                        f"({first - a.offset:+d} from the buffer) changed"
                    )
        return bad

    # ---- interrupts ------------------------------------------------------------------------------
    async def enable_msix(self, count: int) -> int:
        if self._nvec:  # a driver bring-up after a reset: the vectors stay programmed, as with VFIO
            return min(self._nvec, count)
        granted = await self.ep.alloc_irq_vectors(1, count)
        if granted <= 0:
            raise TransportError("MSI-X could not be enabled")
        self._nvec = granted
        for v in range(granted):
            self._irq_counts[v] = 0
            self._irq_pending[v] = 0
            self._irq_events[v] = Event()
            self.ep.request_irq(v, self._make_handler(v))
        return granted

    def _make_handler(self, vector: int):
        async def handler() -> None:
            self._irq_counts[vector] += 1
            self._irq_pending[vector] += 1
            self._irq_events[vector].set()

        return handler

    async def wait_irq(self, vector: int, timeout: float) -> bool:
        if vector not in self._irq_events:
            raise TransportError(f"MSI-X vector {vector} is not enabled")
        if self._irq_pending[vector] == 0:
            event = self._irq_events[vector]
            event.clear()
            try:
                await with_timeout(event.wait(), max(1, round(timeout * 1e9)), "ns")
            except SimTimeoutError:
                return False
        self._irq_pending[vector] = 0
        return True

    def irq_count(self, vector: int) -> int:
        return self._irq_counts.get(vector, 0)

    # ---- time ------------------------------------------------------------------------------------
    async def sleep(self, seconds: float) -> None:
        await Timer(max(1, round(seconds * 1e12)), "ps")

    def now(self) -> float:
        return get_sim_time("ns") * 1e-9

    async def close(self) -> None:
        if self._nvec:
            await self.ep.free_irq_vectors()
            self._nvec = 0
