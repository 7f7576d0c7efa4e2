"""Amaranth views of the virtio wire formats, derived from :mod:`virtio_fpga.spec`.

Every layout here is built from the matching :class:`~virtio_fpga.spec.BitStruct` with ``as_widths()``, so a
field is defined exactly once (in ``spec.py``) and the gateware, the host driver and the software device can
never disagree on an offset.  ``tests/test_hdl_layouts.py`` pins the sizes against the spec.
"""

from __future__ import annotations

from amaranth.lib import data

from virtio_fpga import spec


def layout_of(struct: spec.BitStruct) -> data.StructLayout:
    """The ``StructLayout`` of a spec structure: same field names, same bit offsets (little endian)."""
    return data.StructLayout(dict(struct.as_widths()))


#: struct pvirtq_desc, spec 2.8.13 (also the used descriptor the device writes back, 2.8.4).
PACKED_DESC = layout_of(spec.PACKED_DESC)
#: struct pvirtq_event_suppress, spec 2.8.14.
EVENT_SUPPRESS = layout_of(spec.EVENT_SUPPRESS)
#: Notification data of a packed ring, spec 4.1.5.2 / 2.9.
NOTIFY_DATA = layout_of(spec.NOTIFY_DATA)
#: struct virtio_pci_common_cfg, spec 4.1.4.3.
COMMON_CFG = layout_of(spec.COMMON_CFG)
#: struct virtio_net_config, spec 5.1.4.
NET_CONFIG = layout_of(spec.NET_CONFIG)
#: struct virtio_net_hdr, spec 5.1.6.
NET_HDR = layout_of(spec.NET_HDR)
#: MSI-X table entry (PCIe base spec 6.8.2), for the PCIe half.
MSIX_ENTRY = layout_of(spec.MSIX_ENTRY)

__all__ = [
    "COMMON_CFG",
    "EVENT_SUPPRESS",
    "MSIX_ENTRY",
    "NET_CONFIG",
    "NET_HDR",
    "NOTIFY_DATA",
    "PACKED_DESC",
    "layout_of",
]
