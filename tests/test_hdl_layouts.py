"""The HDL layouts are the spec's structures: same sizes, same field offsets, derived not restated."""

from __future__ import annotations

import pytest

from hdl import layouts
from virtio_fpga import spec

PAIRS = [
    (layouts.PACKED_DESC, spec.PACKED_DESC, 16),  # 2.8.13
    (layouts.EVENT_SUPPRESS, spec.EVENT_SUPPRESS, 4),  # 2.8.14
    (layouts.NOTIFY_DATA, spec.NOTIFY_DATA, 4),  # 4.1.5.2
    (layouts.COMMON_CFG, spec.COMMON_CFG, 0x40),  # 4.1.4.3
    (layouts.NET_CONFIG, spec.NET_CONFIG, 12),  # 5.1.4 up to mtu
    (layouts.NET_HDR, spec.NET_HDR, 12),  # 5.1.6 with num_buffers (VERSION_1)
    (layouts.MSIX_ENTRY, spec.MSIX_ENTRY, 16),
]


@pytest.mark.parametrize(("layout", "struct", "size"), PAIRS, ids=[p[1].name for p in PAIRS])
def test_layout_matches_spec(layout, struct, size: int) -> None:
    assert layout.size == 8 * size == struct.width
    for f in struct.fields:
        member = layout[f.name]
        assert member.offset == f.offset, f.name
        assert member.width == f.width, f.name
    assert [name for name, _ in layout] == [f.name for f in struct.fields]


def test_layout_packs_like_spec() -> None:
    """A value packed by spec.py reads back field by field through the Amaranth view."""
    raw = spec.PACKED_DESC.to_int(addr=0x1122334455667788, len=0x9ABC, id=0x42, flags=0x8081)
    view = layouts.PACKED_DESC.from_bits(raw)
    assert (view.addr, view.len, view.id, view.flags) == (0x1122334455667788, 0x9ABC, 0x42, 0x8081)


def test_common_cfg_offsets_pinned() -> None:
    # Linux check_offsets() (drivers/virtio/virtio_pci_modern_dev.c) pins the same numbers.
    expect = {"device_status": 0x14, "queue_select": 0x16, "queue_desc": 0x20, "queue_reset": 0x3A}
    for name, byte in expect.items():
        assert layouts.COMMON_CFG[name].offset == 8 * byte
