"""The virtio PCI transport, driver side (spec 4.1), over any :class:`host.transport.Transport`.

Discovery walks the vendor capabilities with the checks Linux's ``virtio_pci_modern_dev.c`` applies, then
initialisation follows spec 3.1.1 step by step.  Every register access goes through the transport at its
natural width (4.1.3.1); 64-bit fields are written as two 32-bit halves, low first, as Linux does, which a
device must accept.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

from host.transport import Transport
from virtio_fpga import spec
from virtio_fpga.spec import COMMON_CFG, CfgType, Feature, Status, feature_names, status_names


class VirtioError(Exception):
    """Base class of the driver's errors."""


class DiscoveryError(VirtioError):
    """The function is not a (modern) virtio device, or its capabilities are malformed."""


class FeatureNegotiationError(VirtioError):
    """The device refused FEATURES_OK (spec 3.1.1 step 6)."""


class DeviceNeedsReset(VirtioError):
    """The device set DEVICE_NEEDS_RESET (spec 2.1.2)."""


class DeviceTimeout(VirtioError):
    """The device did not respond in time (reset not completing, queue reset not completing)."""


class ConfigUnstable(DeviceTimeout):
    """config_generation changed across every retry of a device-configuration read (spec 4.1.4.3.1)."""


class DeviceStatusError(VirtioError):
    """device_status lost bits the driver set, or shows bits nobody set, without a reset (spec 2.1.2).

    A device only ever adds DEVICE_NEEDS_RESET (and clears FEATURES_OK when it refuses the features, which
    :meth:`VirtioPciDevice.initialize` checks itself); any other change is a device that cannot be trusted.
    """


@dataclass
class CapInfo:
    """One virtio structure as found in config space (spec 4.1.4)."""

    cfg_type: int
    cap_offset: int
    bar: int
    offset: int
    length: int
    extra: dict[str, int] = field(default_factory=dict)


#: Minimum lengths Linux accepts for each structure (virtio_pci_modern_dev.c: vp_modern_map_capability).
_MIN_LENGTH = {CfgType.COMMON: 0x38, CfgType.NOTIFY: 2, CfgType.ISR: 1, CfgType.DEVICE: 0}

#: Features this driver implements (the driver side of negotiation: spec 2.2 "driver_features =
#: device_features & supported").
DRIVER_SUPPORTED = spec.features_mask(
    [
        Feature.VERSION_1,
        Feature.ACCESS_PLATFORM,
        Feature.RING_PACKED,
        Feature.IN_ORDER,
        Feature.ORDER_PLATFORM,
        Feature.NOTIFICATION_DATA,
        Feature.RING_RESET,
        Feature.EVENT_IDX,
        spec.NetFeature.MAC,
        spec.NetFeature.MTU,
        spec.NetFeature.STATUS,
    ]
)


class VirtioPciDevice:
    """A modern virtio PCI function: capabilities, common configuration, status and feature negotiation."""

    #: Attempts at a consistent device-configuration read before :class:`ConfigUnstable` (4.1.4.3.1).
    CONFIG_RETRIES = 16

    def __init__(self, transport: Transport, *, reset_timeout: float = 1.0) -> None:
        self.transport = transport
        self.reset_timeout = reset_timeout
        self.caps: dict[int, CapInfo] = {}
        self.vendor_id = 0
        self.device_id = 0
        self.device_type = 0
        self.revision = 0
        self.class_code = 0
        self.subsystem = (0, 0)
        self.device_features = 0
        self.driver_features = 0
        self.msix_table_size = 0
        self.status_log: list[int] = []
        #: What the driver last wrote to device_status.  Status updates are built from this, never from a read
        #: back: a read-modify-write would copy whatever bits a misbehaving device shows into the driver's own
        #: write (Linux's virtio_add_status reads back; this driver only keeps DEVICE_NEEDS_RESET once seen,
        #: so that it never clears a bit the device set, 2.1.2).
        self.driver_status = 0
        self.needs_reset_seen = False
        self.cap_list: list[tuple[int, int]] = []  # (offset, cap id) in list order, for the lspci view

    # ---- discovery --------------------------------------------------------------------------------------
    async def probe(self) -> None:
        t = self.transport
        self.vendor_id = await t.config_read(0x00, 2)
        self.device_id = await t.config_read(0x02, 2)
        if self.vendor_id != spec.PCI_VENDOR_ID:
            raise DiscoveryError(f"vendor {self.vendor_id:#06x} is not virtio ({spec.PCI_VENDOR_ID:#06x})")
        if not spec.PCI_DEVICE_ID_BASE <= self.device_id <= spec.PCI_DEVICE_ID_BASE + 0x3F:
            # 4.1.2: 0x1000..0x103f are transitional (legacy) devices, which this driver does not support.
            raise DiscoveryError(f"device id {self.device_id:#06x} is not a modern virtio device (0x1040..0x107f)")
        self.device_type = self.device_id - spec.PCI_DEVICE_ID_BASE
        self.revision = await t.config_read(0x08, 1)
        self.class_code = await t.config_read(0x09, 1) | (await t.config_read(0x0A, 2)) << 8
        self.subsystem = (await t.config_read(0x2C, 2), await t.config_read(0x2E, 2))
        if not await t.config_read(0x06, 2) & spec.PCI_STATUS_CAP_LIST:
            raise DiscoveryError("no PCI capability list (status bit 4 clear)")
        await self._walk_capabilities()
        for needed in (CfgType.COMMON, CfgType.NOTIFY, CfgType.ISR):
            if needed not in self.caps:
                raise DiscoveryError(f"missing virtio capability {needed.name} (spec 4.1.4)")
        notify = self.caps[CfgType.NOTIFY]
        mult = notify.extra["notify_off_multiplier"]
        if mult and (mult & (mult - 1) or mult % 2):
            raise DiscoveryError(f"notify_off_multiplier {mult} is not 0 or an even power of two (4.1.4.4)")

    async def _walk_capabilities(self) -> None:
        t = self.transport
        pos = await t.config_read(spec.PCI_CAPABILITY_LIST, 1) & ~3
        seen: set[int] = set()
        while pos:
            if pos < 0x40 or pos > 0xFC or pos in seen or len(seen) >= 48:
                raise DiscoveryError(f"capability list is malformed at {pos:#x} (loop or out of range)")
            seen.add(pos)
            cap_id = await t.config_read(pos, 1)
            nxt = await t.config_read(pos + 1, 1) & ~3
            self.cap_list.append((pos, cap_id))
            if cap_id == spec.PCI_CAP_ID_MSIX:
                self.msix_table_size = (await t.config_read(pos + 2, 2) & 0x7FF) + 1
            if cap_id == spec.PCI_CAP_ID_VNDR:
                await self._parse_virtio_cap(pos)
            pos = nxt

    async def _parse_virtio_cap(self, pos: int) -> None:
        t = self.transport
        cap_len = await t.config_read(pos + 2, 1)
        cfg_type = await t.config_read(pos + 3, 1)
        bar = await t.config_read(pos + 4, 1)
        if cap_len < spec.VIRTIO_PCI_CAP.size or pos + cap_len > 0x100:
            return  # Linux skips vendor caps that are too short to be virtio's
        offset = await t.config_read(pos + 8, 4)
        length = await t.config_read(pos + 12, 4)
        extra: dict[str, int] = {}
        if cfg_type == CfgType.NOTIFY:
            if cap_len < spec.VIRTIO_PCI_NOTIFY_CAP.size:
                raise DiscoveryError(f"notify capability at {pos:#x} is {cap_len} bytes, needs 20 (4.1.4.4)")
            extra["notify_off_multiplier"] = await t.config_read(pos + 16, 4)
        if cfg_type in self.caps or cfg_type not in _MIN_LENGTH and cfg_type != CfgType.PCI:
            return  # 4.1.4.1: the driver uses the first capability of each type it understands
        if cfg_type == CfgType.PCI:
            self.caps[cfg_type] = CapInfo(cfg_type, pos, bar, offset, length, extra)
            return
        if bar > spec.MAX_BAR:
            return  # 4.1.4: reserved BAR values are ignored by the driver
        bar_size = t.bar_size(bar)
        if length < _MIN_LENGTH[CfgType(cfg_type)]:
            raise DiscoveryError(f"{CfgType(cfg_type).name} structure is {length} bytes, too short")
        if bar_size and offset + length > bar_size:
            raise DiscoveryError(
                f"{CfgType(cfg_type).name} structure {offset:#x}+{length:#x} lies outside BAR{bar} ({bar_size:#x})"
            )
        if cfg_type == CfgType.COMMON and offset % 4:
            raise DiscoveryError("common configuration is not dword aligned")
        self.caps[cfg_type] = CapInfo(cfg_type, pos, bar, offset, length, extra)

    # ---- register access --------------------------------------------------------------------------------
    async def read_common(self, name: str) -> int:
        cap = self.caps[CfgType.COMMON]
        f = COMMON_CFG[name]
        if f.byte_size == 8:
            lo = await self.transport.bar_read(cap.bar, cap.offset + f.byte_offset, 4)
            hi = await self.transport.bar_read(cap.bar, cap.offset + f.byte_offset + 4, 4)
            return lo | hi << 32
        return await self.transport.bar_read(cap.bar, cap.offset + f.byte_offset, f.byte_size)

    async def write_common(self, name: str, value: int) -> None:
        cap = self.caps[CfgType.COMMON]
        f = COMMON_CFG[name]
        if f.byte_size == 8:  # two dword writes, low half first (Linux: vp_iowrite64_twopart)
            await self.transport.bar_write(cap.bar, cap.offset + f.byte_offset, 4, value & 0xFFFFFFFF)
            await self.transport.bar_write(cap.bar, cap.offset + f.byte_offset + 4, 4, value >> 32)
            return
        await self.transport.bar_write(cap.bar, cap.offset + f.byte_offset, f.byte_size, value)
        if name == "device_status":
            self.driver_status = value & ~Status.DEVICE_NEEDS_RESET
            if value == 0:
                self.needs_reset_seen = False

    async def read_isr(self) -> int:
        cap = self.caps[CfgType.ISR]
        return await self.transport.bar_read(cap.bar, cap.offset, 1)

    async def read_device_config(self, offset: int, size: int) -> int:
        cap = self.caps.get(CfgType.DEVICE)
        if cap is None or offset + size > cap.length:
            raise VirtioError(f"device configuration {offset:#x}+{size} is outside the device's structure")
        return await self.transport.bar_read(cap.bar, cap.offset + offset, size)

    async def read_device_config_stable(self, offset: int, size: int) -> int:
        """Read device config consistently: retry while config_generation changes (spec 4.1.4.3.1).

        A device whose generation moves on every attempt is either broken or hostile; after ``CONFIG_RETRIES``
        attempts the driver gives up with :class:`ConfigUnstable` instead of spinning forever.
        """
        seen = []
        for _ in range(self.CONFIG_RETRIES):
            before = await self.read_common("config_generation")
            value = await self.read_device_config(offset, size)
            after = await self.read_common("config_generation")
            if after == before:
                return value
            seen.append(f"{before}->{after}")
        raise ConfigUnstable(
            f"config_generation never settled while reading device configuration {offset:#x}+{size}:"
            f" it changed on all {self.CONFIG_RETRIES} attempts ({', '.join(seen[:4])}, ...) (4.1.4.3.1)"
        )

    def notify_address(self, queue_notify_off: int) -> tuple[int, int]:
        cap = self.caps[CfgType.NOTIFY]
        offset = cap.offset + queue_notify_off * cap.extra["notify_off_multiplier"]
        if offset + 2 > cap.offset + cap.length:
            raise DiscoveryError(f"queue_notify_off {queue_notify_off} points outside the notify structure")
        return cap.bar, offset

    # ---- status and initialisation (spec 3.1.1) ---------------------------------------------------------
    async def get_status(self) -> int:
        """device_status as the device shows it, unchecked (reset polling and error paths need the raw value)."""
        status = await self.read_common("device_status")
        if status & Status.DEVICE_NEEDS_RESET:
            self.needs_reset_seen = True
        return status

    async def read_status(self) -> int:
        """device_status, checked against what the driver wrote: raises :class:`DeviceStatusError` on a lie.

        Allowed: exactly the driver's bits, plus DEVICE_NEEDS_RESET, which once shown stays until reset (2.1.2).
        """
        seen_before = self.needs_reset_seen
        status = await self.get_status()
        expected = self.driver_status
        missing = expected & ~status
        extra = status & ~expected & ~Status.DEVICE_NEEDS_RESET
        problems = []
        if missing:
            problems.append(f"lost {status_names(missing)}")
        if extra:
            problems.append(f"shows {status_names(extra)} that the driver never set")
        if seen_before and not status & Status.DEVICE_NEEDS_RESET:
            problems.append("cleared DEVICE_NEEDS_RESET without a reset")
        if problems:
            raise DeviceStatusError(
                f"device_status reads {status:#04x} after the driver wrote {expected:#04x}: "
                + "; ".join(problems)
                + " (2.1.2: only the driver changes these bits, the device only adds DEVICE_NEEDS_RESET)"
            )
        return status

    async def set_status(self, bits: int) -> None:
        """Add ``bits`` to the status the driver has written (never to a value read back from the device)."""
        value = self.driver_status | bits | (Status.DEVICE_NEEDS_RESET if self.needs_reset_seen else 0)
        await self.write_common("device_status", value)
        self.status_log.append(value)

    async def reset(self) -> None:
        """Write 0 and wait until the device reads back 0 (spec 2.4.2: the driver MUST wait)."""
        await self.write_common("device_status", 0)
        self.status_log.append(0)
        deadline = self.transport.now() + self.reset_timeout
        while await self.get_status() != 0:
            if self.transport.now() > deadline:
                raise DeviceTimeout(f"device did not complete reset within {self.reset_timeout} s")
            await self.transport.sleep(1e-6)
        self.needs_reset_seen = False  # a NEEDS_RESET polled while the reset was under way is gone with it

    async def read_device_features(self) -> int:
        features = 0
        for select in (0, 1):
            await self.write_common("device_feature_select", select)
            features |= await self.read_common("device_feature") << (32 * select)
        return features

    async def write_driver_features(self, features: int) -> None:
        for select in (0, 1):
            await self.write_common("driver_feature_select", select)
            await self.write_common("driver_feature", (features >> (32 * select)) & 0xFFFFFFFF)

    async def initialize(self, supported: int = DRIVER_SUPPORTED, mask: int = (1 << 64) - 1) -> int:
        """Steps 1-6 of spec 3.1.1; returns the negotiated features.  Queues and DRIVER_OK come after."""
        await self.reset()
        await self.set_status(Status.ACKNOWLEDGE)
        await self.set_status(Status.DRIVER)
        self.device_features = await self.read_device_features()
        if not self.device_features >> Feature.VERSION_1 & 1:
            await self.set_status(Status.FAILED)
            raise FeatureNegotiationError("device does not offer VIRTIO_F_VERSION_1 (legacy devices unsupported)")
        self.driver_features = self.device_features & supported & mask
        await self.write_driver_features(self.driver_features)
        await self.set_status(Status.FEATURES_OK)
        if not await self.get_status() & Status.FEATURES_OK:
            self.driver_status &= ~Status.FEATURES_OK  # refused: the device cleared it, as 3.1.1 step 6 allows
            await self.set_status(Status.FAILED)
            names = ", ".join(feature_names(self.driver_features, self.device_type)) or "none"
            raise FeatureNegotiationError(f"device refused FEATURES_OK for driver features [{names}]")
        await self.read_status()  # the other bits must read back as written
        return self.driver_features

    async def driver_ok(self) -> None:
        await self.set_status(Status.DRIVER_OK)

    async def fail(self) -> None:
        """Give up on the device: set FAILED (3.1.1 "SHOULD set the FAILED status bit"), best effort."""
        with contextlib.suppress(Exception):  # the device is already in trouble: the original error matters
            await self.set_status(Status.FAILED)

    async def check_needs_reset(self) -> None:
        if await self.read_status() & Status.DEVICE_NEEDS_RESET:
            raise DeviceNeedsReset("device set DEVICE_NEEDS_RESET")

    def negotiated(self, bit: int) -> bool:
        return bool(self.driver_features >> int(bit) & 1)
