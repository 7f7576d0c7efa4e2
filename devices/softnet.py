"""The software reference device: virtio-net over PCI with a packed ring, written as the hardware must behave.

It is the executable statement of what the RTL endpoint does: the same register map
(``virtio_fpga.device_map``), the same wire formats (``virtio_fpga.spec``), the same responses to malformed
input.  It is the device half only; it reaches host memory through a :class:`DeviceDma` (an in-process
:class:`host.memory.HostMemory`, or a cocotbext-pcie function's DMA when it sits on a simulated PCIe bus).

Concurrency: register accesses are coroutines that complete at once.  A notification only records that a
queue has work and calls :attr:`SoftVirtioNet.kick_hook`; the environment then runs :meth:`service` as a task
of its own (asyncio or cocotb).  The device never blocks the caller of a register write on DMA, exactly as
posted MMIO writes cannot wait for a device's DMA on a real bus.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from virtio_fpga import device_map as dm
from virtio_fpga import spec
from virtio_fpga.spec import COMMON_CFG, PACKED_DESC, CfgType, DescFlag, EventFlags, Feature, Status


class DeviceDma(Protocol):
    """What the device needs from the bus: memory reads and writes at bus addresses (MSI-X is a write)."""

    async def dma_read(self, addr: int, length: int) -> bytes: ...

    async def dma_write(self, addr: int, data: bytes) -> None: ...


# ---- errors the device reports (and records) when the driver breaks a rule ---------------------------------


class DeviceError(Exception):
    """The driver broke a rule: the device sets DEVICE_NEEDS_RESET (spec 2.1.2) and stops the data path."""

    kind = "device-error"


class MalformedDescriptor(DeviceError):
    kind = "malformed-descriptor"


class QueueConfigError(DeviceError):
    kind = "queue-config"


class DmaError(DeviceError):
    kind = "dma-fault"


class Fault(enum.Enum):
    """Behavioural bugs that can be planted on purpose, to prove that a comparison would catch them."""

    USED_LEN_OFF_BY_ONE = "used-len-off-by-one"  # RX used length one more than the bytes written
    IGNORE_EVENT_SUPPRESSION = "ignore-event-suppression"  # interrupt even when the driver disabled them
    FLIP_RX_BYTE = "flip-rx-byte"  # corrupt the first payload byte of every received frame


@dataclass
class QueueState:
    """One virtqueue as the device holds it; names follow spec 2.8 and Linux's virtio_ring.c."""

    index: int
    size: int = dm.MAX_QUEUE_SIZE
    msix_vector: int = spec.VIRTIO_MSI_NO_VECTOR
    enable: int = 0
    desc: int = 0
    driver: int = 0
    device: int = 0
    reset: int = 0  # queue_reset register: 1 while a queue reset is ongoing (spec 4.1.4.3.2)
    next_avail_idx: int = 0
    avail_wrap_counter: int = 1
    next_used_idx: int = 0
    used_wrap_counter: int = 1
    notify_hint: tuple[int, int] | None = None  # (next_off, next_wrap) from the last notification data
    epoch: int = 0  # bumped by every reset of the queue: work started before it is abandoned

    def clear(self) -> None:
        fresh = QueueState(self.index, epoch=self.epoch + 1)
        self.__dict__.update(fresh.__dict__)


@dataclass
class DeviceCounters:
    notifications: int = 0
    notifications_with_data: int = 0
    chains: int = 0
    descriptor_reads: int = 0
    empty_polls: int = 0  # descriptor reads that found nothing available
    used_writes: int = 0
    interrupts: int = 0
    interrupts_suppressed: int = 0
    frames_tx: int = 0
    frames_rx: int = 0
    frames_dropped: int = 0
    rx_descriptors: int = 0  # descriptors of the receive chains used (their layout shows how a driver posts)
    rx_chain_longest: int = 0
    bad_register_accesses: int = 0


@dataclass
class Chain:
    head: int
    buffer_id: int
    descriptors: list[dict[str, int]] = field(default_factory=list)


_COMMON_BY_OFFSET = {f.byte_offset: f for f in COMMON_CFG.fields}
_PER_QUEUE_ATTR = {
    "queue_size": "size",
    "queue_msix_vector": "msix_vector",
    "queue_enable": "enable",
    "queue_desc": "desc",
    "queue_driver": "driver",
    "queue_device": "device",
    "queue_reset": "reset",
}

CONFIG_SPACE_SIZE = 256
PCI_CAP_ID_EXP = 0x10
PCI_EXP_DEVCAP_FLR = 1 << 28


class SoftVirtioNet:
    """The device: PCI config space, BAR 0 registers, MSI-X, two packed virtqueues and a loopback port."""

    def __init__(
        self,
        dma: DeviceDma | None = None,
        *,
        device_features: int = dm.DEVICE_FEATURES,
        mac: bytes = dm.DEFAULT_MAC,
        mtu: int = dm.DEFAULT_MTU,
        faults: frozenset[Fault] = frozenset(),
        backlog_limit: int = 256,
        caps_start: int = 0x40,
        pcie_cap: bool = False,
    ) -> None:
        unsupported = device_features & ~dm.IMPLEMENTED_FEATURES
        if unsupported:
            raise ValueError(f"device_features offers unimplemented features: {spec.feature_names(unsupported)}")
        self.dma = dma
        self.device_features_built = device_features
        self.mac = mac
        self.mtu = mtu
        self.faults = faults
        self.backlog_limit = backlog_limit
        #: Where the virtio capabilities start in config space (a PCIe peer puts its own caps before them).
        self.caps_start = caps_start
        #: Whether the device presents its own PCI Express capability (with Function Level Reset).  A VMM that
        #: passes the device through needs it (Linux's vfio-pci resets functions by FLR); on the simulated
        #: bus the hard-IP model presents the PCIe capability instead.
        self.has_pcie_cap = pcie_cap
        self.kick_hook: Callable[[], None] | None = None
        #: Frames leaving the device when no loopback (an external port); None means loop back to RX.
        self.port_out: Callable[[bytes], None] | None = None
        #: Where interrupts go when the platform emulates the MSI-X table (a VMM does: QEMU's vfio-user client
        #: keeps the table itself and hands one eventfd per vector).  Called with the vector (or NO_VECTOR when
        #: only the ISR says why); None means the device writes MSI-X messages from its own table.
        self.irq_hook: Callable[[int], None] | None = None
        self.errors: list[DeviceError] = []
        self.counters = DeviceCounters()
        self._build_config_space()
        self.provision_mask = (1 << 64) - 1
        self.msix_table = [spec.MSIX_ENTRY.from_int(spec.MSIX_VECTOR_MASKED << 96) for _ in range(dm.NUM_MSIX_VECTORS)]
        self.msix_pending = 0
        self.queues = [QueueState(i) for i in range(dm.NUM_QUEUES)]
        self._generation = 0
        self._servicing = False
        self._reset_registers()

    # ============================================ PCI configuration space =====================================
    def _build_config_space(self) -> None:
        cs = bytearray(CONFIG_SPACE_SIZE)

        def put(offset: int, size: int, value: int) -> None:
            cs[offset : offset + size] = value.to_bytes(size, "little")

        put(0x00, 2, dm.VENDOR_ID)
        put(0x02, 2, dm.DEVICE_ID)
        put(0x06, 2, spec.PCI_STATUS_CAP_LIST)
        put(0x08, 1, dm.REVISION_ID)
        put(0x09, 3, dm.CLASS_CODE)
        put(0x10, 4, 0x4)  # BAR0: memory, 64-bit, non-prefetchable
        put(0x2C, 2, dm.SUBSYSTEM_VENDOR_ID)
        put(0x2E, 2, dm.SUBSYSTEM_ID)
        put(0x3D, 1, 1)  # INTA#, although only MSI-X is used
        chain = dm.capability_chain(self.caps_start, last_next=0)
        addrs = sorted(chain)
        self.msix_cap = (addrs[-1] + len(chain[addrs[-1]]) + 3) & ~3
        chain = dm.capability_chain(self.caps_start, last_next=self.msix_cap)
        for addr, data in chain.items():
            cs[addr : addr + len(data)] = data
        self.pci_cfg_cap = next(
            a for a, d in chain.items() if spec.VIRTIO_PCI_CAP.unpack(d[:16])["cfg_type"] == CfgType.PCI
        )
        put(spec.PCI_CAPABILITY_LIST, 1, self.caps_start)
        put(self.msix_cap + 0, 1, spec.PCI_CAP_ID_MSIX)
        put(self.msix_cap + 1, 1, 0)
        self.pcie_cap = 0
        if self.has_pcie_cap:
            # PCIe capability v2, endpoint (PCIe base spec 7.5.3): DevCap with FLR (bit 28) and 256-byte max
            # payload, link x1 Gen1 for the record; everything else reads zero.
            self.pcie_cap = self.msix_cap + 12
            put(self.msix_cap + 1, 1, self.pcie_cap)
            put(self.pcie_cap + 0, 1, PCI_CAP_ID_EXP)
            put(self.pcie_cap + 2, 2, 0x0002)  # version 2, device/port type 0 (PCI Express endpoint)
            put(self.pcie_cap + 4, 4, PCI_EXP_DEVCAP_FLR | 0x1)
            put(self.pcie_cap + 12, 4, 0x11)  # link capabilities: 2.5 GT/s, x1
            put(self.pcie_cap + 18, 2, 0x11)  # link status: 2.5 GT/s, x1
        put(self.msix_cap + 2, 2, dm.NUM_MSIX_VECTORS - 1)
        put(self.msix_cap + 4, 4, dm.MSIX_TABLE_OFFSET | dm.BAR)
        put(self.msix_cap + 8, 4, dm.MSIX_PBA_OFFSET | dm.BAR)
        self.config_space = cs

    @property
    def msix_control(self) -> int:
        return int.from_bytes(self.config_space[self.msix_cap + 2 : self.msix_cap + 4], "little")

    @property
    def msix_enabled(self) -> bool:
        return bool(self.msix_control & 0x8000)

    @property
    def msix_function_masked(self) -> bool:
        return bool(self.msix_control & 0x4000)

    async def config_read(self, offset: int, size: int) -> int:
        if offset < 0 or offset + size > CONFIG_SPACE_SIZE:
            return 0
        data_off = self.pci_cfg_cap + 16
        if offset == data_off and size in (1, 2, 4):
            return await self._pci_cfg_window(write=False)
        return int.from_bytes(self.config_space[offset : offset + size], "little")

    async def config_write(self, offset: int, size: int, value: int) -> None:
        data = value.to_bytes(size, "little")
        for i, byte in enumerate(data):
            await self._config_write_byte(offset + i, byte)
        if offset == self.pci_cfg_cap + 16:
            await self._pci_cfg_window(write=True)
        if self.msix_cap + 2 <= offset + size and offset < self.msix_cap + 4:
            await self._msix_deliver_pending()

    async def _config_write_byte(self, addr: int, byte: int) -> None:
        cs = self.config_space
        if addr in (0x04, 0x05):  # command: memory space, bus master, INTx disable
            cs[addr] = byte & (0x06 if addr == 0x04 else 0x04)
        elif 0x10 <= addr < 0x18:  # BAR0 (64-bit): size mask applied
            bar = int.from_bytes(cs[0x10:0x18], "little")
            shift = (addr - 0x10) * 8
            bar = (bar & ~(0xFF << shift)) | (byte << shift)
            bar = (bar & ~(dm.BAR_SIZE - 1) & ((1 << 64) - 1)) | 0x4
            cs[0x10:0x18] = bar.to_bytes(8, "little")
        elif addr == self.msix_cap + 3:  # MSI-X enable (bit 15) and function mask (bit 14)
            cs[addr] = byte & 0xC0
        elif self.pcie_cap and addr in (self.pcie_cap + 8, self.pcie_cap + 9):  # device control
            if addr == self.pcie_cap + 9 and byte & 0x80:  # Initiate Function Level Reset: reads back 0
                self.pci_reset()
                return
            cs[addr] = byte & (0xFF if addr == self.pcie_cap + 8 else 0x7F)
        elif self.pci_cfg_cap + 4 <= addr < self.pci_cfg_cap + 20 and addr not in range(
            self.pci_cfg_cap + 5, self.pci_cfg_cap + 8
        ):
            cs[addr] = byte  # virtio_pci_cfg_cap: bar, offset, length, pci_cfg_data are the driver's window

    async def _pci_cfg_window(self, *, write: bool) -> int:
        """VIRTIO_PCI_CAP_PCI_CFG (spec 4.1.4.9): access BAR ``bar`` at ``offset`` through ``pci_cfg_data``."""
        base = self.pci_cfg_cap
        fields = spec.VIRTIO_PCI_CFG_CAP.unpack(bytes(self.config_space[base : base + 20]))
        length = fields["length"]
        if fields["bar"] != dm.BAR or length not in (1, 2, 4) or fields["offset"] % length:
            return 0  # 4.1.4.9.1: other combinations are the driver's mistake; nothing happens
        if write:
            value = fields["pci_cfg_data"] & ((1 << (8 * length)) - 1)
            await self.bar_write(dm.BAR, fields["offset"], length, value)
            return 0
        value = await self.bar_read(dm.BAR, fields["offset"], length)
        self.config_space[base + 16 : base + 16 + length] = value.to_bytes(length, "little")
        return value

    def pci_reset(self) -> None:
        """Function-level reset (VFIO_USER_DEVICE_RESET, PCIe FLR): virtio reset plus config space and MSI-X."""
        self._generation += 1
        self._reset_registers()
        self._build_config_space()
        self.msix_table = [spec.MSIX_ENTRY.from_int(spec.MSIX_VECTOR_MASKED << 96) for _ in range(dm.NUM_MSIX_VECTORS)]
        self.msix_pending = 0  # provisioning (the management plane's mask) survives a reset of the function

    # ============================================ BAR 0 ======================================================
    async def bar_read(self, bar: int, offset: int, size: int) -> int:
        if bar != dm.BAR or offset < 0 or offset + size > dm.BAR_SIZE:
            self.counters.bad_register_accesses += 1
            return 0
        if dm.COMMON_CFG_OFFSET <= offset < dm.COMMON_CFG_OFFSET + dm.COMMON_CFG_LENGTH:
            return self._common_read(offset - dm.COMMON_CFG_OFFSET, size)
        if dm.ISR_OFFSET <= offset < dm.ISR_OFFSET + dm.ISR_LENGTH:
            isr, self.isr = self.isr, 0  # 4.1.4.5: reading the ISR clears it
            return isr if offset == dm.ISR_OFFSET else 0
        if dm.DEVICE_CFG_OFFSET <= offset < dm.DEVICE_CFG_OFFSET + dm.DEVICE_CFG_LENGTH:
            rel = offset - dm.DEVICE_CFG_OFFSET
            return int.from_bytes(self.net_config()[rel : rel + size], "little")
        if dm.PROVISION_OFFSET <= offset < dm.PROVISION_OFFSET + 8 and size in (4, 8):
            shift = (offset - dm.PROVISION_OFFSET) * 8
            return (self.provision_mask >> shift) & ((1 << (8 * size)) - 1)
        if dm.MSIX_TABLE_OFFSET <= offset < dm.MSIX_TABLE_OFFSET + 16 * dm.NUM_MSIX_VECTORS:
            rel = offset - dm.MSIX_TABLE_OFFSET
            entry = spec.MSIX_ENTRY.to_int(**self.msix_table[rel // 16])
            return (entry >> (8 * (rel % 16))) & ((1 << (8 * size)) - 1)
        if dm.MSIX_PBA_OFFSET <= offset < dm.MSIX_PBA_OFFSET + 8:
            return (self.msix_pending >> (8 * (offset - dm.MSIX_PBA_OFFSET))) & ((1 << (8 * size)) - 1)
        return 0

    async def bar_write(self, bar: int, offset: int, size: int, value: int) -> None:
        if bar != dm.BAR or offset < 0 or offset + size > dm.BAR_SIZE:
            self.counters.bad_register_accesses += 1
            return
        if dm.COMMON_CFG_OFFSET <= offset < dm.COMMON_CFG_OFFSET + dm.COMMON_CFG_LENGTH:
            await self._common_write(offset - dm.COMMON_CFG_OFFSET, size, value)
        elif dm.NOTIFY_OFFSET <= offset < dm.NOTIFY_OFFSET + dm.NOTIFY_LENGTH:
            await self._notify(offset - dm.NOTIFY_OFFSET, size, value)
        elif dm.PROVISION_OFFSET <= offset < dm.PROVISION_OFFSET + 8 and size in (4, 8):
            if self.status == 0:  # provisioning is for the management plane, before a driver binds
                shift = (offset - dm.PROVISION_OFFSET) * 8
                mask = ((1 << (8 * size)) - 1) << shift
                self.provision_mask = (self.provision_mask & ~mask) | ((value << shift) & mask)
        elif dm.MSIX_TABLE_OFFSET <= offset < dm.MSIX_TABLE_OFFSET + 16 * dm.NUM_MSIX_VECTORS:
            rel = offset - dm.MSIX_TABLE_OFFSET
            entry = spec.MSIX_ENTRY.to_int(**self.msix_table[rel // 16])
            shift = 8 * (rel % 16)
            mask = ((1 << (8 * size)) - 1) << shift
            entry = (entry & ~mask) | ((value << shift) & mask)
            self.msix_table[rel // 16] = spec.MSIX_ENTRY.from_int(entry)
            await self._msix_deliver_pending()
        else:
            self.counters.bad_register_accesses += 1

    # ---- common configuration (spec 4.1.4.3) ---------------------------------------------------------------
    @property
    def device_features(self) -> int:
        return self.device_features_built & self.provision_mask

    def negotiated(self, bit: int) -> bool:
        return bool(self.driver_features >> int(bit) & 1)

    def _reset_registers(self) -> None:
        self.status = 0
        self.device_feature_select = 0
        self.driver_feature_select = 0
        self.driver_features = 0
        self.config_msix_vector = spec.VIRTIO_MSI_NO_VECTOR
        self.config_generation = 0
        self.queue_select = 0
        self.isr = 0
        self.rx_backlog: deque[bytes] = deque()
        self._pending: list[int] = []
        for q in self.queues:
            q.clear()

    def _field_at(self, rel: int, size: int) -> tuple[str, int] | None:
        """Which common-config field an access hits, and the bit shift inside it (64-bit fields in halves)."""
        for base in (rel, rel - 4):
            f = _COMMON_BY_OFFSET.get(base)
            if f is None:
                continue
            if base == rel and size == f.byte_size:
                return f.name, 0
            if f.byte_size == 8 and size == 4:
                return f.name, 8 * (rel - base)
        return None

    def _queue(self) -> QueueState | None:
        return self.queues[self.queue_select] if self.queue_select < len(self.queues) else None

    def _common_read(self, rel: int, size: int) -> int:
        hit = self._field_at(rel, size)
        if hit is None:
            self.counters.bad_register_accesses += 1
            return 0
        name, shift = hit
        value = self._common_value(name)
        return (value >> shift) & ((1 << (8 * size)) - 1)

    def _common_value(self, name: str) -> int:
        q = self._queue()
        match name:
            case "device_feature_select":
                return self.device_feature_select
            case "device_feature":
                sel = self.device_feature_select
                return (self.device_features >> (32 * sel)) & 0xFFFFFFFF if sel < 2 else 0
            case "driver_feature_select":
                return self.driver_feature_select
            case "driver_feature":
                sel = self.driver_feature_select
                return (self.driver_features >> (32 * sel)) & 0xFFFFFFFF if sel < 2 else 0
            case "config_msix_vector":
                return self.config_msix_vector
            case "num_queues":
                return len(self.queues)
            case "device_status":
                return self.status
            case "config_generation":
                return self.config_generation
            case "queue_select":
                return self.queue_select
            case "queue_notify_off":
                return dm.queue_notify_off(q.index) if q else 0
            case "queue_notify_data":
                return q.index if q else 0  # 4.1.4.3: without NOTIF_CONFIG_DATA, the queue index
            case "admin_queue_index" | "admin_queue_num":
                return 0
        if q is None:
            return 0  # 4.1.4.3.2: a queue_select beyond num_queues reads queue_size 0
        return getattr(q, _PER_QUEUE_ATTR[name])

    async def _common_write(self, rel: int, size: int, value: int) -> None:
        hit = self._field_at(rel, size)
        if hit is None or hit[0] not in spec.COMMON_CFG_WRITABLE:
            self.counters.bad_register_accesses += 1
            return
        name, shift = hit
        q = self._queue()
        match name:
            case "device_feature_select":
                self.device_feature_select = value
            case "driver_feature_select":
                self.driver_feature_select = value
            case "driver_feature":
                sel = self.driver_feature_select
                if sel < 2 and not self.status & Status.FEATURES_OK:
                    mask = 0xFFFFFFFF << (32 * sel)
                    self.driver_features = (self.driver_features & ~mask) | (value << (32 * sel))
            case "config_msix_vector":
                self.config_msix_vector = value if value < dm.NUM_MSIX_VECTORS else spec.VIRTIO_MSI_NO_VECTOR
            case "device_status":
                await self._write_status(value)
            case "queue_select":
                self.queue_select = value
            case _:
                if q is None:
                    return
                await self._queue_write(q, name, shift, size, value)

    async def _write_status(self, value: int) -> None:
        if value == 0:
            self._generation += 1  # abandons whatever service() was doing (spec 2.4: device reset)
            self._reset_registers()
            return
        new_bits = value & ~self.status
        if new_bits & Status.FEATURES_OK:
            # 2.2.2 / 3.1.1: accept only a subset of what we offer that includes what we need.
            acceptable = (self.driver_features & ~self.device_features) == 0 and (
                self.driver_features & dm.REQUIRED_FEATURES
            ) == dm.REQUIRED_FEATURES
            if not acceptable:
                value &= ~Status.FEATURES_OK
        if self.status & Status.DEVICE_NEEDS_RESET:
            value |= Status.DEVICE_NEEDS_RESET
        self.status = value & 0xFF
        if new_bits & Status.DRIVER_OK:
            self._schedule(range(len(self.queues)))

    async def _queue_write(self, q: QueueState, name: str, shift: int, size: int, value: int) -> None:
        if name == "queue_reset":
            if value == 1 and self.negotiated(Feature.RING_RESET):
                # 4.1.4.3.2 (device): 1 is presented while the reset is ongoing and 0 in both queue_reset and
                # queue_enable once it completes.  Nothing is in flight between two awaits here, so the reset
                # completes at once and the driver's first read sees 0.
                q.clear()  # a service() task working on this queue abandons it at its next check (epoch)
                if q.index in self._pending:
                    self._pending.remove(q.index)
            return
        if name == "queue_enable":
            if value == 1 and not q.enable:
                await self._enable_queue(q)
            return  # 4.1.4.3.2: the driver MUST NOT write 0 to queue_enable; the device ignores it
        if q.enable:
            return  # 4.1.4.3.2: queue fields are configured before enabling; later writes are ignored
        attr = _PER_QUEUE_ATTR[name]
        if name == "queue_msix_vector":
            value = value if value < dm.NUM_MSIX_VECTORS else spec.VIRTIO_MSI_NO_VECTOR
        if COMMON_CFG[name].width == 64 and size == 4:  # Linux writes 64-bit fields as two dwords
            value = (getattr(q, attr) & ~(0xFFFFFFFF << shift)) | (value << shift)
        setattr(q, attr, value)

    async def _enable_queue(self, q: QueueState) -> None:
        if not self.status & Status.FEATURES_OK:
            await self._fail(QueueConfigError(f"queue {q.index} enabled before FEATURES_OK (spec 3.1.1 step 7)"))
            return
        if not 1 <= q.size <= dm.MAX_QUEUE_SIZE:
            await self._fail(QueueConfigError(f"queue {q.index} size {q.size} outside 1..{dm.MAX_QUEUE_SIZE}"))
            return
        if q.desc % spec.PACKED_DESC_ALIGN or q.driver % spec.EVENT_SUPPRESS_ALIGN or q.device % 4:
            await self._fail(QueueConfigError(f"queue {q.index} ring addresses misaligned (spec 2.8.10.1)"))
            return
        q.enable = 1
        q.reset = 0
        q.next_avail_idx = q.next_used_idx = 0
        q.avail_wrap_counter = q.used_wrap_counter = 1
        # The device's event suppression structure: notifications always wanted (ENABLE).
        try:
            await self._dma_write(q.device, spec.EVENT_SUPPRESS.pack(flags=EventFlags.ENABLE))
        except DeviceError as exc:
            await self._fail(exc)

    def net_config(self) -> bytes:
        status = spec.NET_S_LINK_UP
        return spec.NET_CONFIG.pack(
            mac=int.from_bytes(self.mac, "little"), status=status, max_virtqueue_pairs=1, mtu=self.mtu
        )

    # ---- notifications (spec 4.1.5.2) ----------------------------------------------------------------------
    async def _notify(self, rel: int, size: int, value: int) -> None:
        slot_queue = rel // dm.NOTIFY_OFF_MULTIPLIER
        self.counters.notifications += 1
        if self.negotiated(Feature.NOTIFICATION_DATA):
            if size != 4:
                self.counters.bad_register_accesses += 1
                return
            data = spec.NOTIFY_DATA.from_int(value)
            self.counters.notifications_with_data += 1
            vqn = data["vqn"]
            hint: tuple[int, int] | None = (data["next_off"], data["next_wrap"])
        else:
            vqn, hint = value & 0xFFFF, None
        if vqn >= len(self.queues) or vqn != slot_queue:
            self.counters.bad_register_accesses += 1
            return
        q = self.queues[vqn]
        if hint is not None and q.enable and hint[0] >= q.size:
            await self._fail(MalformedDescriptor(f"queue {vqn}: notification next_off {hint[0]} >= size {q.size}"))
            return
        q.notify_hint = hint
        self._schedule([vqn])

    def _schedule(self, queues) -> None:
        for index in queues:
            if index not in self._pending:
                self._pending.append(index)
        if self.kick_hook is not None:
            self.kick_hook()

    # ============================================ data path ==================================================
    async def service(self) -> None:
        """Process every queue with pending work until none is left (run as a task by the environment)."""
        if self._servicing:
            return
        self._servicing = True
        try:
            while self._pending:
                generation = self._generation
                index = self._pending.pop(0)
                if not self._running():
                    continue
                try:
                    if index == spec.NET_TX_QUEUE:
                        await self._process_tx(self.queues[index], generation)
                    await self._process_rx(self.queues[spec.NET_RX_QUEUE], generation)
                except _Abandoned:
                    continue
                except DeviceError as exc:
                    if generation == self._generation:
                        await self._fail(exc)
        finally:
            self._servicing = False

    def _running(self) -> bool:
        return bool(self.status & Status.DRIVER_OK) and not self.status & Status.DEVICE_NEEDS_RESET

    def _token(self, generation: int, q: QueueState) -> tuple[int, QueueState, int]:
        """What processing of ``q`` depends on: the device generation and the queue's reset epoch."""
        return generation, q, q.epoch

    def _check(self, token: tuple[int, QueueState, int]) -> None:
        generation, q, epoch = token
        if generation != self._generation or q.epoch != epoch or not self._running():
            raise _Abandoned

    async def _fail(self, exc: DeviceError) -> None:
        """Spec 2.1.2: enter DEVICE_NEEDS_RESET and tell the driver with a configuration change interrupt."""
        self.errors.append(exc)
        if self.status & Status.DEVICE_NEEDS_RESET:
            return
        self.status |= Status.DEVICE_NEEDS_RESET
        self.config_generation = (self.config_generation + 1) & 0xFF
        self.isr |= spec.ISR_CONFIG
        await self._interrupt(self.config_msix_vector)

    async def _dma_read(self, addr: int, length: int) -> bytes:
        if self.dma is None:
            raise DmaError("device has no DMA path")
        try:
            return await self.dma.dma_read(addr, length)
        except Exception as exc:  # the bus's own fault type: an IOMMU fault or an unsupported-request completion
            raise DmaError(f"DMA read of {length} bytes at {addr:#x} failed: {exc}") from exc

    async def _dma_write(self, addr: int, data: bytes) -> None:
        if self.dma is None:
            raise DmaError("device has no DMA path")
        try:
            await self.dma.dma_write(addr, data)
        except Exception as exc:
            raise DmaError(f"DMA write of {len(data)} bytes at {addr:#x} failed: {exc}") from exc

    def _is_available(self, q: QueueState, flags: int) -> bool:
        """Spec 2.8.1: available iff AVAIL matches the device's view of the driver's wrap counter, USED does not."""
        avail = bool(flags & DescFlag.AVAIL)
        used = bool(flags & DescFlag.USED)
        return avail == bool(q.avail_wrap_counter) and used != bool(q.avail_wrap_counter)

    async def _read_desc(self, q: QueueState, idx: int) -> dict[str, int]:
        raw = await self._dma_read(q.desc + idx * PACKED_DESC.size, PACKED_DESC.size)
        self.counters.descriptor_reads += 1
        return PACKED_DESC.unpack(raw)

    async def _next_chain(self, q: QueueState, token: tuple) -> Chain | None:
        """Read the next available chain, advancing next_avail_idx; None if the driver has made none."""
        head = q.next_avail_idx
        first = await self._read_desc(q, head)
        self._check(token)
        if not self._is_available(q, first["flags"]):
            self.counters.empty_polls += 1
            return None
        chain = Chain(head=head, buffer_id=0)
        desc = first
        idx, wrap = head, q.avail_wrap_counter
        while True:
            self._validate_desc(q, desc, len(chain.descriptors))
            chain.descriptors.append(desc)
            idx += 1
            if idx == q.size:
                idx, wrap = 0, wrap ^ 1
            if not desc["flags"] & DescFlag.NEXT:
                break
            if len(chain.descriptors) >= q.size:
                raise MalformedDescriptor(f"queue {q.index}: chain at {head} longer than the queue ({q.size})")
            desc = await self._read_desc(q, idx)
            self._check(token)
            # 2.8.6: every descriptor of a chain is made available with the same wrap counter
            avail = bool(desc["flags"] & DescFlag.AVAIL)
            if avail != bool(wrap) or bool(desc["flags"] & DescFlag.USED) == bool(wrap):
                raise MalformedDescriptor(f"queue {q.index}: chain at {head} continues into a descriptor not available")
        chain.buffer_id = chain.descriptors[-1]["id"]  # 2.8.6: the buffer ID is in the last descriptor
        q.next_avail_idx, q.avail_wrap_counter = idx, wrap
        self.counters.chains += 1
        return chain

    def _validate_desc(self, q: QueueState, desc: dict[str, int], position: int) -> None:
        if desc["flags"] & DescFlag.INDIRECT and not self.negotiated(Feature.INDIRECT_DESC):
            raise MalformedDescriptor(f"queue {q.index}: INDIRECT descriptor without VIRTIO_F_INDIRECT_DESC (2.8.8)")
        if desc["flags"] & DescFlag.INDIRECT:
            raise MalformedDescriptor(f"queue {q.index}: indirect descriptors are not supported by this device")
        if desc["len"] == 0:
            raise MalformedDescriptor(f"queue {q.index}: zero-length descriptor (element {position})")
        if desc["addr"] + desc["len"] > 1 << 64:
            raise MalformedDescriptor(f"queue {q.index}: buffer at {desc['addr']:#x} wraps the address space")

    async def _write_used(
        self, q: QueueState, buffer_id: int, length: int, written: bool, count: int, wrap: int | None = None
    ) -> None:
        """Write one used descriptor at next_used_idx and skip ``count`` ring slots (spec 2.8.6, 2.8.21).

        ``wrap`` is the wrap counter its AVAIL/USED flags carry: the device's own used_wrap_counter unless a
        misbehaving model (devices/lying.py) passes another."""
        if wrap is None:
            wrap = q.used_wrap_counter
        flags = (DescFlag.AVAIL | DescFlag.USED) if wrap else 0
        if written:
            flags |= DescFlag.WRITE
        # id and len first, then flags: a driver polling flags never sees a half-written element (2.8.6).
        slot = q.desc + q.next_used_idx * PACKED_DESC.size
        await self._dma_write(slot + 8, spec.PACKED_DESC.pack(len=length, id=buffer_id)[8:14])
        await self._dma_write(slot + 14, int(flags).to_bytes(2, "little"))
        self.counters.used_writes += 1
        q.next_used_idx += count
        if q.next_used_idx >= q.size:
            q.next_used_idx -= q.size
            q.used_wrap_counter ^= 1

    def _linear(self, q: QueueState, idx: int, wrap: int) -> int:
        return idx + (0 if wrap else q.size)

    async def _notify_used(self, q: QueueState, old: tuple[int, int]) -> None:
        """Used buffer notification unless the driver's event suppression says otherwise (spec 2.8.10, 2.8.14)."""
        raw = await self._dma_read(q.driver, spec.EVENT_SUPPRESS.size)
        event = spec.EVENT_SUPPRESS.unpack(raw)
        wanted = event["flags"] != EventFlags.DISABLE
        if event["flags"] == EventFlags.DESC and self.negotiated(Feature.EVENT_IDX):
            span = 2 * q.size
            start = self._linear(q, *old)
            end = self._linear(q, q.next_used_idx, q.used_wrap_counter)
            target = self._linear(q, event["desc_event_off"] % q.size, event["desc_event_wrap"])
            wanted = (target - start) % span < (end - start) % span
        if Fault.IGNORE_EVENT_SUPPRESSION in self.faults:
            wanted = True
        if not wanted:
            self.counters.interrupts_suppressed += 1
            return
        self.isr |= spec.ISR_QUEUE
        await self._interrupt(q.msix_vector)

    async def _process_tx(self, q: QueueState, generation: int) -> None:
        if not q.enable:
            return
        token = self._token(generation, q)
        old = (q.next_used_idx, q.used_wrap_counter)
        in_order = self.negotiated(Feature.IN_ORDER)
        batch: list[Chain] = []
        while True:
            chain = await self._next_chain(q, token)
            if chain is None:
                break
            frame = await self._gather_tx(q, chain, token)
            batch.append(chain)
            if not in_order:
                await self._write_used(q, chain.buffer_id, 0, False, len(chain.descriptors))
            if frame is not None:
                self._deliver(frame)
        if not batch:
            return
        if in_order:
            # 2.8.21: one used descriptor for the batch, with the last buffer's ID, skipping the whole batch.
            await self._write_used(q, batch[-1].buffer_id, 0, False, sum(len(c.descriptors) for c in batch))
        self._check(token)
        await self._notify_used(q, old)

    async def _gather_tx(self, q: QueueState, chain: Chain, token: tuple) -> bytes | None:
        data = bytearray()
        for desc in chain.descriptors:
            if desc["flags"] & DescFlag.WRITE:
                raise MalformedDescriptor(f"queue {q.index}: device-writable buffer on the transmit queue (5.1.6.2)")
            if len(data) + desc["len"] > spec.NET_HDR.size + dm.MAX_FRAME_LEN:
                raise MalformedDescriptor(f"queue {q.index}: frame longer than {dm.MAX_FRAME_LEN} bytes")
            data += await self._dma_read(desc["addr"], desc["len"])
            self._check(token)
        if len(data) < spec.NET_HDR.size:
            raise MalformedDescriptor(f"queue {q.index}: transmit buffer shorter than virtio_net_hdr")
        frame = bytes(data[spec.NET_HDR.size :])
        self.counters.frames_tx += 1
        if not frame:
            self.counters.frames_dropped += 1
            return None
        return frame

    def _deliver(self, frame: bytes) -> None:
        if self.port_out is not None:
            self.port_out(frame)
            return
        self.receive_frame(frame)

    def receive_frame(self, frame: bytes) -> None:
        """A frame arrives from the port (loopback or external): queued until an RX buffer is available."""
        if len(self.rx_backlog) >= self.backlog_limit:
            self.counters.frames_dropped += 1
            return
        self.rx_backlog.append(frame)
        self._schedule([spec.NET_RX_QUEUE])

    async def _process_rx(self, q: QueueState, generation: int) -> None:
        if not q.enable or not self.rx_backlog:
            return
        token = self._token(generation, q)
        old = (q.next_used_idx, q.used_wrap_counter)
        delivered = 0
        while self.rx_backlog:
            chain = await self._next_chain(q, token)
            if chain is None:
                break  # no buffer yet: the frame waits for the driver's next kick
            frame = self.rx_backlog.popleft()
            written = await self._scatter_rx(q, chain, frame, token)
            length = written + (1 if Fault.USED_LEN_OFF_BY_ONE in self.faults else 0)
            await self._write_used(q, chain.buffer_id, length, True, len(chain.descriptors))
            self.counters.frames_rx += 1
            self.counters.rx_descriptors += len(chain.descriptors)
            self.counters.rx_chain_longest = max(self.counters.rx_chain_longest, len(chain.descriptors))
            delivered += 1
        if delivered:
            self._check(token)
            await self._notify_used(q, old)

    async def _scatter_rx(self, q: QueueState, chain: Chain, frame: bytes, token: tuple) -> int:
        header = spec.NET_HDR.pack(num_buffers=1)  # 5.1.6.4: num_buffers is 1 without MRG_RXBUF
        if Fault.FLIP_RX_BYTE in self.faults:
            frame = bytes([frame[0] ^ 0xFF]) + frame[1:]
        payload = header + frame
        capacity = 0
        for desc in chain.descriptors:
            if not desc["flags"] & DescFlag.WRITE:
                raise MalformedDescriptor(f"queue {q.index}: device-readable buffer on the receive queue (5.1.6.3)")
            capacity += desc["len"]
        if capacity < len(payload):
            raise MalformedDescriptor(
                f"queue {q.index}: receive buffer of {capacity} bytes cannot hold a {len(frame)}-byte frame (5.1.6.3)"
            )
        offset = 0
        for desc in chain.descriptors:
            if offset >= len(payload):
                break
            part = payload[offset : offset + desc["len"]]
            await self._dma_write(desc["addr"], part)
            self._check(token)
            offset += len(part)
        return len(payload)

    # ============================================ MSI-X ======================================================
    async def _interrupt(self, vector: int) -> None:
        if self.irq_hook is not None:
            self.counters.interrupts += 1
            self.irq_hook(vector)
            return
        if vector == spec.VIRTIO_MSI_NO_VECTOR or vector >= dm.NUM_MSIX_VECTORS or not self.msix_enabled:
            return  # the ISR bit stays set for a driver that polls it
        entry = self.msix_table[vector]
        if self.msix_function_masked or entry["vector_control"] & spec.MSIX_VECTOR_MASKED:
            self.msix_pending |= 1 << vector
            return
        self.counters.interrupts += 1
        await self._dma_write(entry["msg_addr"], entry["msg_data"].to_bytes(4, "little"))

    async def _msix_deliver_pending(self) -> None:
        if not self.msix_enabled or self.msix_function_masked:
            return
        for vector in range(dm.NUM_MSIX_VECTORS):
            if self.msix_pending >> vector & 1 and not self.msix_table[vector]["vector_control"] & 1:
                self.msix_pending &= ~(1 << vector)
                self.counters.interrupts += 1
                entry = self.msix_table[vector]
                await self._dma_write(entry["msg_addr"], entry["msg_data"].to_bytes(4, "little"))


class _Abandoned(Exception):
    """Internal: a device reset (or NEEDS_RESET) happened while service() was waiting on DMA."""
