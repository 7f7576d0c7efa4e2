"""Virtio wire formats and constants, defined once for the gateware, the host driver and the software device.

Every number here comes from the virtio specification (OASIS virtio v1.2 / v1.3, "virtio-spec"); the section
that defines it is cited beside it.  The HDL turns the :class:`BitStruct` definitions into Amaranth
``data.StructLayout`` objects (``hdl/layouts.py``), the driver and the software device pack and unpack bytes
with them, and ``tests/test_spec.py`` pins every offset and size, as Linux's ``check_offsets()`` does in
``drivers/virtio/virtio_pci_modern_dev.c``.

Nothing in this module depends on Amaranth or cocotb: it must import anywhere.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# --------------------------------------------------------------------------------------------------------
# A tiny declarative struct: little-endian, fields listed from bit 0 upwards, no gaps.
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BitField:
    """One field of a little-endian structure: ``width`` bits starting at bit ``offset``."""

    name: str
    offset: int
    width: int

    @property
    def mask(self) -> int:
        return (1 << self.width) - 1

    @property
    def byte_offset(self) -> int:
        return self.offset // 8

    @property
    def byte_size(self) -> int:
        return self.width // 8


class BitStruct:
    """A little-endian wire structure whose fields are contiguous bit ranges.

    Fields are given in order from bit 0; reserved space must be listed as a field (conventionally named
    ``reserved*`` or ``padding*``) so that offsets are explicit and the HDL layout matches bit for bit.
    """

    def __init__(self, name: str, fields: Iterable[tuple[str, int]]):
        self.name = name
        offset = 0
        self.fields: tuple[BitField, ...] = ()
        parsed = []
        for field_name, width in fields:
            if width <= 0:
                raise ValueError(f"{name}.{field_name}: width must be positive")
            parsed.append(BitField(field_name, offset, width))
            offset += width
        if offset % 8:
            raise ValueError(f"{name}: {offset} bits is not a whole number of bytes")
        self.fields = tuple(parsed)
        self.width = offset
        self.size = offset // 8
        self._by_name = {f.name: f for f in self.fields}

    def __getitem__(self, name: str) -> BitField:
        return self._by_name[name]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __repr__(self) -> str:
        return f"BitStruct({self.name!r}, {self.size} bytes)"

    def offset_of(self, name: str) -> int:
        """Byte offset of a byte-aligned field (what C's ``offsetof`` gives)."""
        field = self._by_name[name]
        if field.offset % 8:
            raise ValueError(f"{self.name}.{name} is not byte aligned")
        return field.offset // 8

    def to_int(self, **values: int) -> int:
        """Pack field values into an integer; unnamed fields are zero, out-of-range values are errors."""
        word = 0
        for key, value in values.items():
            field = self._by_name.get(key)
            if field is None:
                raise KeyError(f"{self.name} has no field {key!r}")
            value = int(value)
            if value < 0 or value > field.mask:
                raise ValueError(f"{self.name}.{key}={value:#x} does not fit in {field.width} bits")
            word |= value << field.offset
        return word

    def from_int(self, word: int) -> dict[str, int]:
        return {f.name: (word >> f.offset) & f.mask for f in self.fields}

    def pack(self, **values: int) -> bytes:
        return self.to_int(**values).to_bytes(self.size, "little")

    def unpack(self, data: bytes | bytearray | memoryview) -> dict[str, int]:
        if len(data) != self.size:
            raise ValueError(f"{self.name} is {self.size} bytes, got {len(data)}")
        return self.from_int(int.from_bytes(data, "little"))

    def as_widths(self) -> Mapping[str, int]:
        """``{name: width}`` in bit order: the input Amaranth's ``data.StructLayout`` expects."""
        return {f.name: f.width for f in self.fields}


# --------------------------------------------------------------------------------------------------------
# Feature bits (spec 6 "Reserved Feature Bits", 5.1.3 "Feature bits" for the network device)
# --------------------------------------------------------------------------------------------------------


class Feature(enum.IntEnum):
    """Device-independent feature bits, spec 6."""

    INDIRECT_DESC = 28  # 2.8.19 indirect descriptors
    EVENT_IDX = 29  # 2.8.10 event suppression with descriptor offsets
    VERSION_1 = 32  # modern device; mandatory for the PCI transport we implement (4.1.2)
    ACCESS_PLATFORM = 33  # device uses the platform's IOMMU / address translation
    RING_PACKED = 34  # 2.8 packed virtqueue layout
    IN_ORDER = 35  # 2.8.21 used buffers in the order they were made available
    ORDER_PLATFORM = 36  # memory accesses ordered as the platform orders DMA (hardware devices)
    SR_IOV = 37
    NOTIFICATION_DATA = 38  # 2.9 / 4.1.5.2 the driver's kick carries next_off/next_wrap
    NOTIF_CONFIG_DATA = 39  # 4.1.4.3 the driver writes queue_notif_config_data instead of the vqn
    RING_RESET = 40  # 2.6.1 per-queue reset via queue_reset
    ADMIN_VQ = 41


class NetFeature(enum.IntEnum):
    """virtio-net feature bits, spec 5.1.3."""

    CSUM = 0
    GUEST_CSUM = 1
    CTRL_GUEST_OFFLOADS = 2
    MTU = 3
    MAC = 5
    GUEST_TSO4 = 7
    GUEST_TSO6 = 8
    GUEST_ECN = 9
    GUEST_UFO = 10
    HOST_TSO4 = 11
    HOST_TSO6 = 12
    HOST_ECN = 13
    HOST_UFO = 14
    MRG_RXBUF = 15
    STATUS = 16
    CTRL_VQ = 17
    CTRL_RX = 18
    CTRL_VLAN = 19
    GUEST_ANNOUNCE = 21
    MQ = 22
    CTRL_MAC_ADDR = 23
    HASH_REPORT = 57
    RSS = 60
    RSC_EXT = 61
    STANDBY = 62
    SPEED_DUPLEX = 63


VIRTIO_ID_NET_TYPE = 1  # spec 5: network device (also VIRTIO_ID_NET below)


def feature_bit(bit: int) -> int:
    return 1 << int(bit)


def features_mask(bits: Iterable[int]) -> int:
    mask = 0
    for bit in bits:
        mask |= 1 << int(bit)
    return mask


def is_device_specific_bit(bit: int) -> bool:
    """Spec 6: bits 0..23 and 50..127 are device-type specific, 24..49 are reserved for the transport/ring."""
    return bit < 24 or bit >= 50


def feature_names(features: int, device_type: int = VIRTIO_ID_NET_TYPE) -> list[str]:
    """Spell out a feature word: known names, unknown bits as ``bit<N>``, ascending bit order."""
    names = []
    for bit in range(64):
        if not features >> bit & 1:
            continue
        if is_device_specific_bit(bit):
            known = device_type == VIRTIO_ID_NET_TYPE and bit in NetFeature._value2member_map_
            names.append(NetFeature(bit).name if known else f"bit{bit}")
        elif bit in Feature._value2member_map_:
            names.append(Feature(bit).name)
        else:
            names.append(f"bit{bit}")
    return names


def feature_from_name(name: str) -> int:
    """Bit number for a feature name as printed by :func:`feature_names` (either enum, or ``bitN``)."""
    key = name.strip().upper()
    if key.startswith("VIRTIO_F_"):
        key = key[len("VIRTIO_F_") :]
    if key.startswith("VIRTIO_NET_F_"):
        key = key[len("VIRTIO_NET_F_") :]
    if key in Feature.__members__:
        return int(Feature[key])
    if key in NetFeature.__members__:
        return int(NetFeature[key])
    if key.startswith("BIT") and key[3:].isdigit() and int(key[3:]) < 64:
        return int(key[3:])
    raise ValueError(f"unknown feature name {name!r}")


# --------------------------------------------------------------------------------------------------------
# Device status, spec 2.1
# --------------------------------------------------------------------------------------------------------


class Status(enum.IntFlag):
    ACKNOWLEDGE = 1
    DRIVER = 2
    DRIVER_OK = 4
    FEATURES_OK = 8
    DEVICE_NEEDS_RESET = 0x40
    FAILED = 0x80


def status_names(status: int) -> str:
    if status == 0:
        return "RESET"
    return "|".join(s.name for s in Status if status & s) or f"{status:#x}"


# --------------------------------------------------------------------------------------------------------
# Packed virtqueue, spec 2.8
# --------------------------------------------------------------------------------------------------------


class DescFlag(enum.IntFlag):
    """Packed descriptor flags, spec 2.8.7 (NEXT/WRITE/INDIRECT are shared with the split ring, 2.7.5)."""

    NEXT = 1
    WRITE = 2
    INDIRECT = 4
    AVAIL = 1 << 7
    USED = 1 << 15


#: struct pvirtq_desc, spec 2.8.13: le64 addr, le32 len, le16 id, le16 flags.
PACKED_DESC = BitStruct("pvirtq_desc", [("addr", 64), ("len", 32), ("id", 16), ("flags", 16)])
PACKED_DESC_ALIGN = 16  # 2.8.10.1 "Structure Size and Alignment": descriptor ring aligned to 16 bytes

#: Largest packed queue size, spec 2.8.10.1 (Queue Size): 2^15.
MAX_PACKED_QUEUE_SIZE = 1 << 15


class EventFlags(enum.IntEnum):
    """pvirtq_event_suppress.flags, spec 2.8.14."""

    ENABLE = 0
    DISABLE = 1
    DESC = 2  # only with VIRTIO_F_EVENT_IDX
    RESERVED = 3


#: struct pvirtq_event_suppress, spec 2.8.14: le16 {desc_event_off:15, desc_event_wrap:1}, le16 {flags:2, reserved:14}.
EVENT_SUPPRESS = BitStruct(
    "pvirtq_event_suppress",
    [("desc_event_off", 15), ("desc_event_wrap", 1), ("flags", 2), ("reserved", 14)],
)
EVENT_SUPPRESS_ALIGN = 4  # 2.8.10.1: driver and device areas aligned to 4 bytes

#: Notification data for a packed ring, spec 4.1.5.2 / 2.9: le32 {vqn:16, next_off:15, next_wrap:1}.
#: With NOTIF_CONFIG_DATA the low 16 bits carry queue_notif_config_data instead of the vqn.
NOTIFY_DATA = BitStruct("virtio_pci_notify_data", [("vqn", 16), ("next_off", 15), ("next_wrap", 1)])


# --------------------------------------------------------------------------------------------------------
# PCI transport, spec 4.1
# --------------------------------------------------------------------------------------------------------

PCI_VENDOR_ID = 0x1AF4  # 4.1.2
PCI_DEVICE_ID_BASE = 0x1040  # 4.1.2: modern device ID = 0x1040 + virtio device type
PCI_CAP_ID_VNDR = 0x09
PCI_CAP_ID_MSIX = 0x11
PCI_STATUS_CAP_LIST = 0x10
PCI_CAPABILITY_LIST = 0x34

VIRTIO_ID_NET = 1  # 5 "Device Types"
VIRTIO_ID_BLOCK = 2
VIRTIO_ID_CONSOLE = 3
VIRTIO_ID_RNG = 4
VIRTIO_MSI_NO_VECTOR = 0xFFFF  # 4.1.5.1.2


class CfgType(enum.IntEnum):
    """virtio_pci_cap.cfg_type, spec 4.1.4."""

    COMMON = 1
    NOTIFY = 2
    ISR = 3
    DEVICE = 4
    PCI = 5
    SHARED_MEMORY = 8
    VENDOR = 9


#: struct virtio_pci_cap, spec 4.1.4.
VIRTIO_PCI_CAP = BitStruct(
    "virtio_pci_cap",
    [
        ("cap_vndr", 8),
        ("cap_next", 8),
        ("cap_len", 8),
        ("cfg_type", 8),
        ("bar", 8),
        ("id", 8),
        ("padding", 16),
        ("offset", 32),
        ("length", 32),
    ],
)

#: struct virtio_pci_notify_cap, spec 4.1.4.4: virtio_pci_cap + le32 notify_off_multiplier.
VIRTIO_PCI_NOTIFY_CAP = BitStruct(
    "virtio_pci_notify_cap", [*VIRTIO_PCI_CAP.as_widths().items(), ("notify_off_multiplier", 32)]
)

#: struct virtio_pci_cfg_cap, spec 4.1.4.9: virtio_pci_cap + u8 pci_cfg_data[4].
VIRTIO_PCI_CFG_CAP = BitStruct("virtio_pci_cfg_cap", [*VIRTIO_PCI_CAP.as_widths().items(), ("pci_cfg_data", 32)])

#: Valid BAR numbers in virtio_pci_cap.bar, spec 4.1.4 ("values 0x0 to 0x5 specify a BAR").
MAX_BAR = 5

#: struct virtio_pci_common_cfg, spec 4.1.4.3 (v1.3 names; queue_notify_data is queue_notif_config_data).
COMMON_CFG = BitStruct(
    "virtio_pci_common_cfg",
    [
        ("device_feature_select", 32),  # 0x00 RW
        ("device_feature", 32),  # 0x04 RO
        ("driver_feature_select", 32),  # 0x08 RW
        ("driver_feature", 32),  # 0x0C RW
        ("config_msix_vector", 16),  # 0x10 RW
        ("num_queues", 16),  # 0x12 RO
        ("device_status", 8),  # 0x14 RW
        ("config_generation", 8),  # 0x15 RO
        ("queue_select", 16),  # 0x16 RW
        ("queue_size", 16),  # 0x18 RW
        ("queue_msix_vector", 16),  # 0x1A RW
        ("queue_enable", 16),  # 0x1C RW
        ("queue_notify_off", 16),  # 0x1E RO
        ("queue_desc", 64),  # 0x20 RW
        ("queue_driver", 64),  # 0x28 RW
        ("queue_device", 64),  # 0x30 RW
        ("queue_notify_data", 16),  # 0x38 RO (queue_notif_config_data in v1.3)
        ("queue_reset", 16),  # 0x3A RW (VIRTIO_F_RING_RESET)
        ("admin_queue_index", 16),  # 0x3C RO (VIRTIO_F_ADMIN_VQ)
        ("admin_queue_num", 16),  # 0x3E RO
    ],
)
#: Registers of COMMON_CFG that the driver may write (everything else is read-only for it).
COMMON_CFG_WRITABLE = frozenset(
    {
        "device_feature_select",
        "driver_feature_select",
        "driver_feature",
        "config_msix_vector",
        "device_status",
        "queue_select",
        "queue_size",
        "queue_msix_vector",
        "queue_enable",
        "queue_desc",
        "queue_driver",
        "queue_device",
        "queue_reset",
    }
)
#: Registers that select a queue-specific window (4.1.4.3: "The device MUST present ... for queue_select").
COMMON_CFG_PER_QUEUE = frozenset(
    {
        "queue_size",
        "queue_msix_vector",
        "queue_enable",
        "queue_notify_off",
        "queue_desc",
        "queue_driver",
        "queue_device",
        "queue_notify_data",
        "queue_reset",
    }
)

#: ISR status bits, spec 4.1.4.5.
ISR_QUEUE = 0x1
ISR_CONFIG = 0x2

#: MSI-X table entry (PCI Local Bus 3.0 / PCIe 6.8.2): le64 msg_addr, le32 msg_data, le32 vector_control.
MSIX_ENTRY = BitStruct("msix_entry", [("msg_addr", 64), ("msg_data", 32), ("vector_control", 32)])
MSIX_VECTOR_MASKED = 1

# --------------------------------------------------------------------------------------------------------
# virtio-net, spec 5.1
# --------------------------------------------------------------------------------------------------------

#: struct virtio_net_config, spec 5.1.4 (fields up to mtu; later fields are not offered by this device).
NET_CONFIG = BitStruct(
    "virtio_net_config",
    [("mac", 48), ("status", 16), ("max_virtqueue_pairs", 16), ("mtu", 16)],
)
NET_S_LINK_UP = 1  # 5.1.4
NET_S_ANNOUNCE = 2

#: struct virtio_net_hdr, spec 5.1.6 (with VERSION_1 num_buffers is always present: 12 bytes).
NET_HDR = BitStruct(
    "virtio_net_hdr",
    [
        ("flags", 8),
        ("gso_type", 8),
        ("hdr_len", 16),
        ("gso_size", 16),
        ("csum_start", 16),
        ("csum_offset", 16),
        ("num_buffers", 16),
    ],
)
NET_HDR_F_NEEDS_CSUM = 1
NET_HDR_F_DATA_VALID = 2
NET_HDR_GSO_NONE = 0

NET_RX_QUEUE = 0  # 5.1.2: receiveq1 is queue 0, transmitq1 is queue 1
NET_TX_QUEUE = 1

ETH_MIN_FRAME = 14  # destination, source, ethertype
