"""What the host driver needs from the platform it runs on, and nothing more.

The driver is written against :class:`Transport` only.  Every method that can take time is a coroutine the
driver awaits; the transport decides what awaiting means: an asyncio future (in-process software device,
VFIO eventfds) or a cocotb trigger (the RTL in simulation).  The driver never imports asyncio or cocotb
itself, never sleeps on its own, and never reads a clock except through the transport, which is what lets
one driver run under all three.

Access widths are exact: virtio requires natural-width accesses to its structures (spec 4.1.3.1 "The driver
MUST access each field using the 'natural' access method"), and the notification-data doorbell must be one
32-bit store (4.1.5.2).  A transport must never split or merge an access.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass
class DmaBuffer:
    """Host memory the device can reach: ``mem`` is the CPU's view, ``iova`` the address the device uses.

    Transports may keep guard bytes around ``mem``; the driver must only touch ``mem[0:size]``.
    """

    mem: memoryview
    iova: int
    size: int

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or offset + length > self.size:
            raise IndexError(f"DMA buffer access {offset}+{length} outside 0..{self.size}")
        return bytes(self.mem[offset : offset + length])

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        if offset < 0 or offset + len(data) > self.size:
            raise IndexError(f"DMA buffer access {offset}+{len(data)} outside 0..{self.size}")
        self.mem[offset : offset + len(data)] = data


class TransportError(Exception):
    """A transport-level failure (device gone, access refused, DMA mapping failed)."""


@runtime_checkable
class Transport(Protocol):
    """The platform under the virtio driver: one PCI function, its BARs, DMA memory and MSI-X vectors."""

    #: Human-readable name: "soft", "rtl", "vfio:0000:01:00.0", ...
    name: str

    async def config_read(self, offset: int, size: int) -> int:
        """Read ``size`` (1, 2 or 4) bytes of PCI configuration space, little endian."""
        ...

    async def config_write(self, offset: int, size: int, value: int) -> None:
        """Write ``size`` (1, 2 or 4) bytes of PCI configuration space."""
        ...

    async def bar_read(self, bar: int, offset: int, size: int) -> int:
        """One memory read of exactly ``size`` (1, 2, 4 or 8) bytes from a BAR."""
        ...

    async def bar_write(self, bar: int, offset: int, size: int, value: int) -> None:
        """One memory write of exactly ``size`` (1, 2, 4 or 8) bytes to a BAR (posted: may return early)."""
        ...

    def bar_size(self, bar: int) -> int:
        """Size of a BAR in bytes, 0 if the BAR is not implemented."""
        ...

    def alloc_dma(self, size: int, align: int = 4096) -> DmaBuffer:
        """Allocate zeroed DMA-able memory and map it for the device."""
        ...

    def free_dma(self, buf: DmaBuffer) -> None:
        """Unmap and release memory from :meth:`alloc_dma`."""
        ...

    async def enable_msix(self, count: int) -> int:
        """Set up MSI-X vectors 0..count-1 for :meth:`wait_irq`; returns how many the platform granted."""
        ...

    async def wait_irq(self, vector: int, timeout: float) -> bool:
        """Wait for MSI-X ``vector`` to fire (or have fired since the last wait); False on timeout.

        Interrupts are latched: one that arrives while nobody waits is not lost, and several that arrive
        before a wait are consumed by that one wait (like an eventfd's counter).
        """
        ...

    def irq_count(self, vector: int) -> int:
        """How many times ``vector`` has fired since :meth:`enable_msix` (for statistics and traces)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Let time pass (wall clock, or simulated time under cocotb)."""
        ...

    def now(self) -> float:
        """Seconds on the transport's clock (simulated time under cocotb)."""
        ...

    async def close(self) -> None:
        """Release everything: DMA mappings, interrupts, file descriptors."""
        ...
