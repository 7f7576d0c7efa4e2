"""The in-process transport: the driver and the software device in one asyncio program.

It joins :class:`devices.softnet.SoftVirtioNet` to the driver through a :class:`host.memory.HostMemory`, and
plays the part of the platform: it programs the device's MSI-X table (as an OS or VFIO would) and turns the
device's MSI writes into per-vector latched events.
"""

from __future__ import annotations

import asyncio

from devices.softnet import SoftVirtioNet
from host.memory import MSI_ADDRESS_BASE, HostMemory
from host.transport import DmaBuffer
from virtio_fpga import device_map as dm
from virtio_fpga import spec


class InProcessTransport:
    """:class:`host.transport.Transport` for a software device living in this process."""

    def __init__(self, device: SoftVirtioNet | None = None, memory: HostMemory | None = None) -> None:
        self.name = "soft"
        self.memory = memory or HostMemory()
        self.device = device or SoftVirtioNet()
        self.device.dma = self.memory
        self.device.kick_hook = self._kick
        self.memory.on_msi = self._on_msi
        self._irq_counts: dict[int, int] = {}
        self._irq_latched: dict[int, int] = {}
        self._irq_events: dict[int, asyncio.Event] = {}
        self._tasks: set[asyncio.Task] = set()
        self.service_errors: list[BaseException] = []

    # ---- device side glue ---------------------------------------------------------------------------------
    def _kick(self) -> None:
        task = asyncio.get_running_loop().create_task(self.device.service())
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.service_errors.append(task.exception())

    def _on_msi(self, address: int, data: int) -> None:
        vector = data
        self._irq_counts[vector] = self._irq_counts.get(vector, 0) + 1
        self._irq_latched[vector] = self._irq_latched.get(vector, 0) + 1
        self._irq_events.setdefault(vector, asyncio.Event()).set()

    def dma_stats(self) -> dict[str, int]:
        """The device's DMA as the memory model counted it (requests and bytes each way, MSI writes)."""
        st = self.memory.stats
        return {
            "read_requests": st.reads,
            "write_requests": st.writes,
            "read_bytes": st.read_bytes,
            "write_bytes": st.write_bytes,
            "msi_writes": st.msi_writes,
        }

    async def settle(self) -> None:
        """Wait until the device has no service task running (tests use it to observe a quiescent device)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def quiesce_device(self) -> None:
        """The scenario runner's hook: let the in-process device finish its work before the driver looks.

        The device and the driver share one event loop, so a wall-clock bound on waiting for completions would
        measure the host's speed; waiting for the device's service tasks makes a trace independent of load.
        """
        await self.settle()

    # ---- Transport protocol -------------------------------------------------------------------------------
    async def config_read(self, offset: int, size: int) -> int:
        return await self.device.config_read(offset, size)

    async def config_write(self, offset: int, size: int, value: int) -> None:
        await self.device.config_write(offset, size, value)

    async def bar_read(self, bar: int, offset: int, size: int) -> int:
        if size not in (1, 2, 4, 8):
            raise ValueError(f"BAR access of {size} bytes")
        await asyncio.sleep(0)  # a read is a round trip: let the device's service task run meanwhile
        return await self.device.bar_read(bar, offset, size)

    async def bar_write(self, bar: int, offset: int, size: int, value: int) -> None:
        if size not in (1, 2, 4, 8):
            raise ValueError(f"BAR access of {size} bytes")
        await self.device.bar_write(bar, offset, size, value)

    def bar_size(self, bar: int) -> int:
        return dm.BAR_SIZE if bar == dm.BAR else 0

    def alloc_dma(self, size: int, align: int = 4096) -> DmaBuffer:
        return self.memory.alloc(size, align)

    def free_dma(self, buf: DmaBuffer) -> None:
        self.memory.free(buf)

    async def enable_msix(self, count: int) -> int:
        """Program the MSI-X table the way the OS would: vector k writes data k to the MSI window."""
        granted = min(count, dm.NUM_MSIX_VECTORS)
        cap = self.device.msix_cap
        table = await self.config_read(cap + 4, 4)
        bar, offset = table & 7, table & ~7
        for vector in range(granted):
            base = offset + vector * spec.MSIX_ENTRY.size
            await self.bar_write(bar, base + 0, 4, (MSI_ADDRESS_BASE + 4 * vector) & 0xFFFFFFFF)
            await self.bar_write(bar, base + 4, 4, 0)
            await self.bar_write(bar, base + 8, 4, vector)
            await self.bar_write(bar, base + 12, 4, 0)  # unmask
        control = await self.config_read(cap + 2, 2)
        await self.config_write(cap + 2, 2, control | 0x8000)
        return granted

    async def wait_irq(self, vector: int, timeout: float) -> bool:
        if self._irq_latched.get(vector):
            self._irq_latched[vector] = 0
            return True
        event = self._irq_events.setdefault(vector, asyncio.Event())
        event.clear()
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            return False
        self._irq_latched[vector] = 0
        return True

    def irq_count(self, vector: int) -> int:
        return self._irq_counts.get(vector, 0)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def close(self) -> None:
        await self.settle()
