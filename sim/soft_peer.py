"""The software reference device as a PCIe function on cocotbext-pcie's simulated bus.

It sits on the same RootComplex as the RTL endpoint, so the driver reaches both through the identical
transport: configuration TLPs, BAR reads and writes, DMA (memory read/write TLPs issued by the function)
and MSI-X (memory writes to the root complex's MSI window).  Everything virtio-specific is the unchanged
:class:`devices.softnet.SoftVirtioNet`; this module only translates TLPs.

Config space: cocotbext-pcie's function provides the header, the PM and PCI Express capabilities; the
virtio capabilities and the device's MSI-X capability follow them, served from the device's own config
image through one capability-list entry.
"""

from __future__ import annotations

import cocotb
from cocotbext.pcie.core import MemoryEndpoint
from cocotbext.pcie.core.caps import PciCap, PciCapId
from cocotbext.pcie.core.tlp import Tlp

from devices.softnet import Fault, SoftVirtioNet
from virtio_fpga import device_map as dm

#: Byte address of the first virtio capability: after cocotbext's PM (0x40) and PCIe (0x48..0x83) caps.
CAPS_START = 0x84


class _DeviceCapWindow(PciCap):
    """One entry of cocotbext's capability list that exposes a byte range of the device's config image.

    The range holds several capabilities already chained to each other, so the generic next-pointer patching
    of :class:`PciCap` is bypassed.
    """

    def __init__(self, device: SoftVirtioNet, start: int, end: int) -> None:
        super().__init__()
        self.cap_id = PciCapId.VNDR
        self.device = device
        self.start = start
        self.length = (end - start + 3) // 4

    async def read_register(self, reg: int) -> int:
        return await self.device.config_read(self.start + 4 * reg, 4)

    async def write_register(self, reg: int, data: int, mask: int) -> None:
        base = self.start + 4 * reg
        for k in range(4):
            if mask >> k & 1:
                await self.device.config_write(base + k, 1, (data >> (8 * k)) & 0xFF)


class SoftVirtioPcieFunction(MemoryEndpoint):
    """A PCIe endpoint function whose behaviour is :class:`SoftVirtioNet`."""

    def __init__(self, *args, faults: frozenset[Fault] = frozenset(), **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.device = SoftVirtioNet(self, faults=faults, caps_start=CAPS_START)
        self.device.kick_hook = self._kick
        self.vendor_id = dm.VENDOR_ID
        self.device_id = dm.DEVICE_ID
        self.subsystem_vendor_id = dm.SUBSYSTEM_VENDOR_ID
        self.subsystem_id = dm.SUBSYSTEM_ID
        self.revision_id = dm.REVISION_ID
        self.class_code = dm.CLASS_CODE
        self.add_region(dm.BAR_SIZE, read=self._bar_read, write=self._bar_write, ext=True)
        end = self.device.msix_cap + 12
        self.register_capability(_DeviceCapWindow(self.device, CAPS_START, end), offset=CAPS_START // 4)
        self.dma_reads = self.dma_writes = self.dma_read_bytes = self.dma_write_bytes = 0
        self._service_task = None

    # ---- DeviceDma for SoftVirtioNet: the function's own memory TLPs -------------------------------------
    async def dma_read(self, addr: int, length: int) -> bytes:
        if not self.bus_master_enable:
            raise PermissionError("bus mastering is disabled")
        self.dma_reads += 1
        self.dma_read_bytes += length
        return bytes(await self.mem_read(addr, length, timeout=100, timeout_unit="us"))

    async def dma_write(self, addr: int, data: bytes) -> None:
        if not self.bus_master_enable:
            raise PermissionError("bus mastering is disabled")
        self.dma_writes += 1
        self.dma_write_bytes += len(data)
        await self.mem_write(addr, data)

    def _kick(self) -> None:
        if self._service_task is None or self._service_task.done():
            self._service_task = cocotb.start_soon(self.device.service())

    # ---- BAR 0 --------------------------------------------------------------------------------------------
    async def _bar_read(self, addr: int, length: int) -> bytes:  # only used for reads we do not intercept
        return bytes(length)

    async def _bar_write(self, addr: int, data: bytes) -> None:
        await self.device.bar_write(dm.BAR, addr, len(data), int.from_bytes(data, "little"))

    async def handle_mem_read_tlp(self, tlp: Tlp) -> None:
        """BAR reads honour the byte enables: a 2-byte read of queue_select is a 2-byte register read."""
        bar = self.match_bar(tlp.address)
        if not bar:
            await self.send(Tlp.create_ur_completion_for_tlp(tlp, self.pcie_id))
            return
        _region, offset = bar
        first = tlp.get_first_be_offset()
        count = tlp.get_be_byte_count()
        data = bytearray(tlp.length * 4)
        if count in (1, 2, 4, 8):
            value = await self.device.bar_read(dm.BAR, offset + first, count)
            data[first : first + count] = value.to_bytes(count, "little")
        else:
            self.device.counters.bad_register_accesses += 1
        cpl = Tlp.create_completion_data_for_tlp(tlp, self.pcie_id)
        cpl.byte_count = count
        cpl.lower_address = (tlp.address + first) & 0x7F
        cpl.set_data(data)
        await self.send(cpl)

    def dma_stats(self) -> dict[str, int]:
        return {
            "read_requests": self.dma_reads,
            "write_requests": self.dma_writes,
            "read_bytes": self.dma_read_bytes,
            "write_bytes": self.dma_write_bytes,
        }
