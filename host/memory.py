"""A host-memory model for in-process DMA: an IOVA space where only mapped buffers exist.

The software device reaches host memory only through :class:`HostMemory`, which behaves like an IOMMU that
maps exactly the buffers the driver allocated: any access that is not entirely inside one mapped buffer
raises :class:`DmaFault` (as an IOMMU fault would) instead of silently touching a neighbour.  Buffers are
separated by unmapped guard gaps, so an off-by-one DMA past a buffer's end is always caught.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass

from host.transport import DmaBuffer

#: MSI-X messages are memory writes to this window (x86's interrupt address range, 0xFEEx_xxxx).
MSI_ADDRESS_BASE = 0xFEE0_0000
MSI_ADDRESS_SIZE = 0x10_0000


class DmaFault(Exception):
    """A device access outside every mapped buffer (what an IOMMU reports as a translation fault)."""


@dataclass
class DmaStats:
    """What a driver-side observer can count of a device's DMA: requests and bytes in each direction."""

    reads: int = 0
    writes: int = 0
    read_bytes: int = 0
    write_bytes: int = 0
    faults: int = 0
    msi_writes: int = 0


class HostMemory:
    """IOVA allocator plus bounds-checked device access.

    ``on_msi(address, data)`` is called for device writes into the MSI window, the way a root complex turns
    such a write into an interrupt.
    """

    def __init__(self, base: int = 0x1_0000_0000, guard: int = 4096) -> None:
        self._next_iova = base
        self._guard = guard
        self._starts: list[int] = []
        self._buffers: dict[int, DmaBuffer] = {}
        self.stats = DmaStats()
        self.on_msi: Callable[[int, int], None] | None = None

    # ---- driver side ------------------------------------------------------------------------------------
    def alloc(self, size: int, align: int = 4096) -> DmaBuffer:
        if size <= 0:
            raise ValueError("DMA buffer size must be positive")
        align = max(align, 16)
        iova = (self._next_iova + align - 1) // align * align
        self._next_iova = iova + size + self._guard
        buf = DmaBuffer(memoryview(bytearray(size)), iova, size)
        bisect.insort(self._starts, iova)
        self._buffers[iova] = buf
        return buf

    def free(self, buf: DmaBuffer) -> None:
        if self._buffers.pop(buf.iova, None) is not None:
            self._starts.remove(buf.iova)

    def mapped(self) -> list[DmaBuffer]:
        """Every buffer still mapped, by IOVA (what a leak check or a memory audit walks)."""
        return [self._buffers[iova] for iova in self._starts]

    def is_mapped(self, buf: DmaBuffer) -> bool:
        return self._buffers.get(buf.iova) is buf

    # ---- device side ------------------------------------------------------------------------------------
    def _locate(self, addr: int, length: int) -> tuple[DmaBuffer, int]:
        i = bisect.bisect_right(self._starts, addr) - 1
        if i >= 0:
            buf = self._buffers[self._starts[i]]
            offset = addr - buf.iova
            if offset >= 0 and offset + length <= buf.size:
                return buf, offset
        self.stats.faults += 1
        raise DmaFault(f"DMA of {length} bytes at {addr:#x} is outside every mapped buffer")

    async def dma_read(self, addr: int, length: int) -> bytes:
        buf, offset = self._locate(addr, length)
        self.stats.reads += 1
        self.stats.read_bytes += length
        return bytes(buf.mem[offset : offset + length])

    async def dma_write(self, addr: int, data: bytes) -> None:
        if MSI_ADDRESS_BASE <= addr < MSI_ADDRESS_BASE + MSI_ADDRESS_SIZE:
            if len(data) != 4:
                raise DmaFault(f"MSI write of {len(data)} bytes at {addr:#x}: must be one dword")
            self.stats.msi_writes += 1
            if self.on_msi is not None:
                self.on_msi(addr, int.from_bytes(data, "little"))
            return
        buf, offset = self._locate(addr, len(data))
        self.stats.writes += 1
        self.stats.write_bytes += len(data)
        buf.mem[offset : offset + len(data)] = data
