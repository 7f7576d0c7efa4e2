"""The register map of *this* device: design choices shared by the gateware and the software device.

The spec (``virtio_fpga.spec``) says what the structures look like; this module says where our device puts
them, how many queues and vectors it has, and which features it offers.  The RTL endpoint and the software
reference device both build their BAR decoding and their virtio capabilities from these numbers, so a
driver cannot tell them apart by layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from virtio_fpga import spec
from virtio_fpga.spec import CfgType, Feature, NetFeature, features_mask

# ---- PCI identity (spec 4.1.2) --------------------------------------------------------------------------
VENDOR_ID = spec.PCI_VENDOR_ID
DEVICE_ID = spec.PCI_DEVICE_ID_BASE + spec.VIRTIO_ID_NET  # 0x1041, modern virtio-net
SUBSYSTEM_VENDOR_ID = spec.PCI_VENDOR_ID
SUBSYSTEM_ID = 0x0001  # spec 4.1.2.1: "SHOULD have a PCI Subsystem Device ID of 0x40 or higher" is legacy-only
REVISION_ID = 0x01  # 4.1.2.1: non-transitional devices SHOULD have revision >= 1
CLASS_CODE = 0x020000  # network controller, Ethernet

# ---- BAR 0 layout -----------------------------------------------------------------------------------------
BAR = 0
BAR_SIZE = 0x10000  # 64 KiB, 64-bit non-prefetchable memory BAR
COMMON_CFG_OFFSET = 0x0000
COMMON_CFG_LENGTH = spec.COMMON_CFG.size  # 0x40
ISR_OFFSET = 0x1000
ISR_LENGTH = 4
DEVICE_CFG_OFFSET = 0x2000
DEVICE_CFG_LENGTH = spec.NET_CONFIG.size
NOTIFY_OFFSET = 0x3000
#: 4.1.4.4: with NOTIFICATION_DATA the multiplier must be 0 or a power of two that is a multiple of 4
#: (so a 32-bit notification word is naturally aligned).  4 puts each queue's doorbell on its own dword.
NOTIFY_OFF_MULTIPLIER = 4
#: Provisioning (management plane, not the virtio driver): a 64-bit mask ANDed into device_feature, writable
#: only while device_status is 0, as `vdpa dev add ... device_features` restricts a vDPA device.
PROVISION_OFFSET = 0x4000
PROVISION_LENGTH = 8
MSIX_TABLE_OFFSET = 0x8000
MSIX_PBA_OFFSET = 0xC000

# ---- Queues and vectors ---------------------------------------------------------------------------------
NUM_QUEUES = 2  # receiveq1 (0) and transmitq1 (1), spec 5.1.2
NOTIFY_LENGTH = NUM_QUEUES * NOTIFY_OFF_MULTIPLIER
MAX_QUEUE_SIZE = 256  # reported in queue_size after reset; the driver may write any size 1..MAX (2.8.10.1)
NUM_MSIX_VECTORS = 3  # one for configuration changes, one per queue

# ---- Device configuration (spec 5.1.4) ------------------------------------------------------------------
DEFAULT_MAC = bytes.fromhex("02fa11c0ffee")  # locally administered unicast
#: Largest frame (without virtio_net_hdr) the loopback path carries; bounds buffers in the hardware too.
MAX_FRAME_LEN = 9 * 1024 + 14 + 4
#: The MTU in the device configuration is a layer-3 size: the driver "MUST NOT transmit packets of size
#: exceeding the value of mtu (plus low level ethernet header length)" (spec 5.1.6.2), and Linux sends frames
#: of MTU + 14 bytes (+ 4 with a VLAN tag).  So the MTU leaves room for both inside MAX_FRAME_LEN: 9 KiB
#: payloads.  (It was 9230, which let Linux's TCP send 9244-byte frames that the device refused.)
DEFAULT_MTU = MAX_FRAME_LEN - 14 - 4

# ---- Features --------------------------------------------------------------------------------------------
#: Everything this device implements, in the gateware and in the software device alike.  A build may offer
#: fewer (a build-time parameter of the core), and the provisioning mask fewer still, never more.
IMPLEMENTED_FEATURES = features_mask(
    [
        Feature.VERSION_1,
        Feature.ACCESS_PLATFORM,
        Feature.RING_PACKED,
        Feature.IN_ORDER,
        Feature.ORDER_PLATFORM,
        Feature.NOTIFICATION_DATA,
        Feature.RING_RESET,
        Feature.EVENT_IDX,
        NetFeature.MAC,
        NetFeature.MTU,
        NetFeature.STATUS,
    ]
)
#: Features offered by default: all of them.
DEVICE_FEATURES = IMPLEMENTED_FEATURES
#: Features without which this device refuses FEATURES_OK (split rings and legacy are not implemented).
REQUIRED_FEATURES = features_mask([Feature.VERSION_1, Feature.RING_PACKED])


@dataclass(frozen=True)
class VirtioCap:
    """One virtio vendor capability as this device presents it (spec 4.1.4)."""

    cfg_type: CfgType
    bar: int
    offset: int
    length: int
    extra: dict[str, int] = field(default_factory=dict)

    @property
    def struct(self) -> spec.BitStruct:
        if self.cfg_type == CfgType.NOTIFY:
            return spec.VIRTIO_PCI_NOTIFY_CAP
        if self.cfg_type == CfgType.PCI:
            return spec.VIRTIO_PCI_CFG_CAP
        return spec.VIRTIO_PCI_CAP

    def to_bytes(self, cap_next: int) -> bytes:
        """The capability's bytes in config space, chained to ``cap_next`` (0 ends the list)."""
        return self.struct.pack(
            cap_vndr=spec.PCI_CAP_ID_VNDR,
            cap_next=cap_next,
            cap_len=self.struct.size,
            cfg_type=int(self.cfg_type),
            bar=self.bar,
            offset=self.offset,
            length=self.length,
            **self.extra,
        )


#: The capabilities, in the order the device lists them.  The PCI-config-access capability (cfg_type 5) is
#: required by 4.1.4.9 ("The device MUST present at least one VIRTIO_PCI_CAP_PCI_CFG capability"); its
#: bar/offset/length fields are the driver's window, so the device presents them as zero.
VIRTIO_CAPS: tuple[VirtioCap, ...] = (
    VirtioCap(CfgType.COMMON, BAR, COMMON_CFG_OFFSET, COMMON_CFG_LENGTH),
    VirtioCap(CfgType.NOTIFY, BAR, NOTIFY_OFFSET, NOTIFY_LENGTH, {"notify_off_multiplier": NOTIFY_OFF_MULTIPLIER}),
    VirtioCap(CfgType.ISR, BAR, ISR_OFFSET, ISR_LENGTH),
    VirtioCap(CfgType.DEVICE, BAR, DEVICE_CFG_OFFSET, DEVICE_CFG_LENGTH),
    VirtioCap(CfgType.PCI, 0, 0, 0),
)


def capability_chain(start: int, caps: tuple[VirtioCap, ...] = VIRTIO_CAPS, last_next: int = 0) -> dict[int, bytes]:
    """Lay the capabilities out back to back from ``start`` (dword aligned); returns {address: bytes}.

    ``last_next`` lets a caller chain the last capability to further ones (for example the MSI-X cap).
    """
    out: dict[int, bytes] = {}
    addr = start
    addrs = []
    for cap in caps:
        addrs.append(addr)
        addr += (cap.struct.size + 3) & ~3
    for i, cap in enumerate(caps):
        nxt = addrs[i + 1] if i + 1 < len(caps) else last_next
        out[addrs[i]] = cap.to_bytes(nxt)
    return out


def queue_notify_off(queue: int) -> int:
    """queue_notify_off for a queue: each queue gets its own doorbell slot (4.1.4.4)."""
    return queue


def notify_address(queue: int) -> int:
    """BAR offset of a queue's doorbell: cap.offset + queue_notify_off * notify_off_multiplier (4.1.4.4)."""
    return NOTIFY_OFFSET + queue_notify_off(queue) * NOTIFY_OFF_MULTIPLIER
