"""The wire formats against the spec's numbers (what Linux's check_offsets() pins for the PCI structures)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from virtio_fpga import device_map as dm
from virtio_fpga import spec
from virtio_fpga.spec import COMMON_CFG, Feature, NetFeature, Status

# Spec 4.1.4.3 struct virtio_pci_common_cfg: byte offsets and sizes.
COMMON_OFFSETS = {
    "device_feature_select": (0x00, 4),
    "device_feature": (0x04, 4),
    "driver_feature_select": (0x08, 4),
    "driver_feature": (0x0C, 4),
    "config_msix_vector": (0x10, 2),
    "num_queues": (0x12, 2),
    "device_status": (0x14, 1),
    "config_generation": (0x15, 1),
    "queue_select": (0x16, 2),
    "queue_size": (0x18, 2),
    "queue_msix_vector": (0x1A, 2),
    "queue_enable": (0x1C, 2),
    "queue_notify_off": (0x1E, 2),
    "queue_desc": (0x20, 8),
    "queue_driver": (0x28, 8),
    "queue_device": (0x30, 8),
    "queue_notify_data": (0x38, 2),
    "queue_reset": (0x3A, 2),
    "admin_queue_index": (0x3C, 2),
    "admin_queue_num": (0x3E, 2),
}


@pytest.mark.parametrize("name", sorted(COMMON_OFFSETS))
def test_common_cfg_offsets(name: str) -> None:
    offset, size = COMMON_OFFSETS[name]
    assert COMMON_CFG.offset_of(name) == offset
    assert COMMON_CFG[name].byte_size == size


def test_common_cfg_has_exactly_the_spec_fields() -> None:
    assert [f.name for f in COMMON_CFG.fields] == list(COMMON_OFFSETS)
    assert COMMON_CFG.size == 0x40


def test_virtio_pci_cap_layouts() -> None:
    # 4.1.4: cap_vndr 0, cap_next 1, cap_len 2, cfg_type 3, bar 4, id 5, padding 6..7, offset 8, length 12.
    expected = {"cap_vndr": 0, "cap_next": 1, "cap_len": 2, "cfg_type": 3, "bar": 4, "id": 5, "offset": 8, "length": 12}
    for name, offset in expected.items():
        assert spec.VIRTIO_PCI_CAP.offset_of(name) == offset
    assert spec.VIRTIO_PCI_CAP.size == 16
    assert spec.VIRTIO_PCI_NOTIFY_CAP.size == 20
    assert spec.VIRTIO_PCI_NOTIFY_CAP.offset_of("notify_off_multiplier") == 16
    assert spec.VIRTIO_PCI_CFG_CAP.size == 20
    assert spec.VIRTIO_PCI_CFG_CAP.offset_of("pci_cfg_data") == 16
    assert [int(t) for t in spec.CfgType][:5] == [1, 2, 3, 4, 5]


def test_packed_ring_formats() -> None:
    # 2.8.13 struct pvirtq_desc and 2.8.14 struct pvirtq_event_suppress.
    assert spec.PACKED_DESC.size == 16
    assert [(f.name, f.byte_offset, f.byte_size) for f in spec.PACKED_DESC.fields] == [
        ("addr", 0, 8),
        ("len", 8, 4),
        ("id", 12, 2),
        ("flags", 14, 2),
    ]
    assert spec.EVENT_SUPPRESS.size == 4
    assert spec.EVENT_SUPPRESS["desc_event_wrap"].offset == 15
    assert spec.EVENT_SUPPRESS["flags"].offset == 16 and spec.EVENT_SUPPRESS["flags"].width == 2
    assert int(spec.DescFlag.AVAIL) == 0x80 and int(spec.DescFlag.USED) == 0x8000
    assert [int(e) for e in spec.EventFlags] == [0, 1, 2, 3]


def test_notification_data_layout() -> None:
    # 4.1.5.2: le32 { vqn : 16; next_off : 15; next_wrap : 1; }
    word = spec.NOTIFY_DATA.to_int(vqn=1, next_off=0x1234, next_wrap=1)
    assert word == 1 | 0x1234 << 16 | 1 << 31
    assert spec.NOTIFY_DATA.size == 4


def test_feature_and_status_numbers() -> None:
    assert (Feature.INDIRECT_DESC, Feature.EVENT_IDX, Feature.VERSION_1) == (28, 29, 32)
    assert (Feature.ACCESS_PLATFORM, Feature.RING_PACKED, Feature.IN_ORDER, Feature.ORDER_PLATFORM) == (33, 34, 35, 36)
    assert (Feature.NOTIFICATION_DATA, Feature.NOTIF_CONFIG_DATA, Feature.RING_RESET) == (38, 39, 40)
    assert (NetFeature.MTU, NetFeature.MAC, NetFeature.MRG_RXBUF, NetFeature.STATUS) == (3, 5, 15, 16)
    assert [int(s) for s in Status] == [1, 2, 4, 8, 0x40, 0x80]


def test_net_structures() -> None:
    # 5.1.4 virtio_net_config: mac[6] 0, status 6, max_virtqueue_pairs 8, mtu 10; 5.1.6 virtio_net_hdr: 12 bytes.
    assert [spec.NET_CONFIG.offset_of(n) for n in ("mac", "status", "max_virtqueue_pairs", "mtu")] == [0, 6, 8, 10]
    assert spec.NET_HDR.size == 12
    assert spec.NET_HDR.offset_of("num_buffers") == 10


def test_pci_ids_and_device_map() -> None:
    assert dm.VENDOR_ID == 0x1AF4 and dm.DEVICE_ID == 0x1041
    # 4.1.4.4: with NOTIFICATION_DATA the multiplier is 0 or a power of two that is a multiple of 4
    assert dm.NOTIFY_OFF_MULTIPLIER % 4 == 0 and dm.NOTIFY_OFF_MULTIPLIER & (dm.NOTIFY_OFF_MULTIPLIER - 1) == 0
    regions = [
        (dm.COMMON_CFG_OFFSET, dm.COMMON_CFG_LENGTH),
        (dm.ISR_OFFSET, dm.ISR_LENGTH),
        (dm.DEVICE_CFG_OFFSET, dm.DEVICE_CFG_LENGTH),
        (dm.NOTIFY_OFFSET, dm.NOTIFY_LENGTH),
        (dm.PROVISION_OFFSET, dm.PROVISION_LENGTH),
        (dm.MSIX_TABLE_OFFSET, 16 * dm.NUM_MSIX_VECTORS),
        (dm.MSIX_PBA_OFFSET, 8),
    ]
    regions.sort()
    for (a, n), (b, _) in zip(regions, regions[1:], strict=False):
        assert a + n <= b, "BAR regions overlap"
    assert regions[-1][0] + regions[-1][1] <= dm.BAR_SIZE
    assert dm.DEVICE_FEATURES & dm.REQUIRED_FEATURES == dm.REQUIRED_FEATURES


def test_capability_chain_is_linked_and_aligned() -> None:
    chain = dm.capability_chain(0x40)
    addrs = sorted(chain)
    for here, there in zip(addrs, addrs[1:] + [0], strict=True):
        cap = spec.VIRTIO_PCI_CAP.unpack(chain[here][:16])
        assert cap["cap_vndr"] == spec.PCI_CAP_ID_VNDR
        assert cap["cap_next"] == there and here % 4 == 0
        assert cap["cap_len"] == len(chain[here])
    types = [spec.VIRTIO_PCI_CAP.unpack(chain[a][:16])["cfg_type"] for a in addrs]
    assert types == [1, 2, 3, 4, 5]


def test_feature_names_round_trip() -> None:
    names = spec.feature_names(dm.DEVICE_FEATURES)
    assert "RING_PACKED" in names and "MAC" in names
    assert spec.features_mask(spec.feature_from_name(n) for n in names) == dm.DEVICE_FEATURES
    with pytest.raises(ValueError, match="unknown feature"):
        spec.feature_from_name("NO_SUCH_THING")


STRUCTS = [
    spec.PACKED_DESC,
    spec.EVENT_SUPPRESS,
    spec.NOTIFY_DATA,
    spec.VIRTIO_PCI_CAP,
    spec.VIRTIO_PCI_NOTIFY_CAP,
    spec.VIRTIO_PCI_CFG_CAP,
    COMMON_CFG,
    spec.NET_CONFIG,
    spec.NET_HDR,
    spec.MSIX_ENTRY,
]


@pytest.mark.parametrize("struct", STRUCTS, ids=lambda s: s.name)
@given(data=st.data())
def test_round_trip(struct: spec.BitStruct, data: st.DataObject) -> None:
    values = {f.name: data.draw(st.integers(0, f.mask), label=f.name) for f in struct.fields}
    raw = struct.pack(**values)
    assert len(raw) == struct.size
    assert struct.unpack(raw) == values


def test_out_of_range_field_is_an_error() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        spec.NOTIFY_DATA.pack(next_off=1 << 15)
    with pytest.raises(KeyError):
        spec.PACKED_DESC.pack(nope=1)
