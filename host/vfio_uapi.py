"""The Linux VFIO and IOMMUFD user ABI, written out in Python (``include/uapi/linux/vfio.h``, ``iommufd.h``).

Why by hand and not generated or compiled: the host driver must import on any machine with nothing but the
standard library (no C extension, no headers), and the ABI is small and frozen.  ``tests/test_vfio_uapi.py``
compiles a C program against the kernel's own headers at test time and compares every size, offset and
ioctl number below with what the C compiler sees, so a typo here cannot survive the test suite.

Every VFIO and IOMMUFD ioctl is encoded as ``_IO(';', nr)`` (no direction or size bits: the structures carry
their own ``argsz``/``size`` field instead, which is what lets the kernel extend them), so the numbers are
simply ``0x3B00 | nr``.
"""

from __future__ import annotations

import ctypes
import enum

u8 = ctypes.c_uint8
u16 = ctypes.c_uint16
u32 = ctypes.c_uint32
s32 = ctypes.c_int32
u64 = ctypes.c_uint64


def _IO(type_: int, nr: int) -> int:  # noqa: N802 - the kernel's name, kept so the mapping is obvious
    """``_IO`` from ``asm-generic/ioctl.h``: direction 0 and size 0, so only type and number remain."""
    return (type_ << 8) | nr


# ---- vfio.h: API, IOMMU types, ioctl numbers ---------------------------------------------------------------
VFIO_API_VERSION = 0
VFIO_TYPE = ord(";")
VFIO_BASE = 100

VFIO_TYPE1_IOMMU = 1
VFIO_TYPE1v2_IOMMU = 3
VFIO_DMA_CC_IOMMU = 4
VFIO_NOIOMMU_IOMMU = 8
VFIO_UNMAP_ALL = 9
VFIO_UPDATE_VADDR = 10

VFIO_GET_API_VERSION = _IO(VFIO_TYPE, VFIO_BASE + 0)
VFIO_CHECK_EXTENSION = _IO(VFIO_TYPE, VFIO_BASE + 1)
VFIO_SET_IOMMU = _IO(VFIO_TYPE, VFIO_BASE + 2)
VFIO_GROUP_GET_STATUS = _IO(VFIO_TYPE, VFIO_BASE + 3)
VFIO_GROUP_SET_CONTAINER = _IO(VFIO_TYPE, VFIO_BASE + 4)
VFIO_GROUP_UNSET_CONTAINER = _IO(VFIO_TYPE, VFIO_BASE + 5)
VFIO_GROUP_GET_DEVICE_FD = _IO(VFIO_TYPE, VFIO_BASE + 6)
VFIO_DEVICE_GET_INFO = _IO(VFIO_TYPE, VFIO_BASE + 7)
VFIO_DEVICE_GET_REGION_INFO = _IO(VFIO_TYPE, VFIO_BASE + 8)
VFIO_DEVICE_GET_IRQ_INFO = _IO(VFIO_TYPE, VFIO_BASE + 9)
VFIO_DEVICE_SET_IRQS = _IO(VFIO_TYPE, VFIO_BASE + 10)
VFIO_DEVICE_RESET = _IO(VFIO_TYPE, VFIO_BASE + 11)
VFIO_DEVICE_GET_PCI_HOT_RESET_INFO = _IO(VFIO_TYPE, VFIO_BASE + 12)
VFIO_DEVICE_PCI_HOT_RESET = _IO(VFIO_TYPE, VFIO_BASE + 13)
VFIO_DEVICE_FEATURE = _IO(VFIO_TYPE, VFIO_BASE + 17)
VFIO_DEVICE_BIND_IOMMUFD = _IO(VFIO_TYPE, VFIO_BASE + 18)
VFIO_DEVICE_ATTACH_IOMMUFD_PT = _IO(VFIO_TYPE, VFIO_BASE + 19)
VFIO_DEVICE_DETACH_IOMMUFD_PT = _IO(VFIO_TYPE, VFIO_BASE + 20)
# Container ioctls reuse numbers of device ioctls; they are told apart by the file they are issued on.
VFIO_IOMMU_GET_INFO = _IO(VFIO_TYPE, VFIO_BASE + 12)
VFIO_IOMMU_MAP_DMA = _IO(VFIO_TYPE, VFIO_BASE + 13)
VFIO_IOMMU_UNMAP_DMA = _IO(VFIO_TYPE, VFIO_BASE + 14)
VFIO_IOMMU_ENABLE = _IO(VFIO_TYPE, VFIO_BASE + 15)
VFIO_IOMMU_DISABLE = _IO(VFIO_TYPE, VFIO_BASE + 16)

# ---- flags ----------------------------------------------------------------------------------------------------
VFIO_GROUP_FLAGS_VIABLE = 1 << 0
VFIO_GROUP_FLAGS_CONTAINER_SET = 1 << 1

VFIO_DEVICE_FLAGS_RESET = 1 << 0
VFIO_DEVICE_FLAGS_PCI = 1 << 1
VFIO_DEVICE_FLAGS_CAPS = 1 << 7

VFIO_REGION_INFO_FLAG_READ = 1 << 0
VFIO_REGION_INFO_FLAG_WRITE = 1 << 1
VFIO_REGION_INFO_FLAG_MMAP = 1 << 2
VFIO_REGION_INFO_FLAG_CAPS = 1 << 3
VFIO_REGION_INFO_CAP_SPARSE_MMAP = 1
VFIO_REGION_INFO_CAP_TYPE = 2
VFIO_REGION_INFO_CAP_MSIX_MAPPABLE = 3

VFIO_IRQ_INFO_EVENTFD = 1 << 0
VFIO_IRQ_INFO_MASKABLE = 1 << 1
VFIO_IRQ_INFO_AUTOMASKED = 1 << 2
VFIO_IRQ_INFO_NORESIZE = 1 << 3

VFIO_IRQ_SET_DATA_NONE = 1 << 0
VFIO_IRQ_SET_DATA_BOOL = 1 << 1
VFIO_IRQ_SET_DATA_EVENTFD = 1 << 2
VFIO_IRQ_SET_ACTION_MASK = 1 << 3
VFIO_IRQ_SET_ACTION_UNMASK = 1 << 4
VFIO_IRQ_SET_ACTION_TRIGGER = 1 << 5

VFIO_IOMMU_INFO_PGSIZES = 1 << 0
VFIO_IOMMU_INFO_CAPS = 1 << 1
VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE = 1
VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL = 3

VFIO_DMA_MAP_FLAG_READ = 1 << 0
VFIO_DMA_MAP_FLAG_WRITE = 1 << 1
VFIO_DMA_UNMAP_FLAG_ALL = 1 << 1


class VfioPciRegion(enum.IntEnum):
    """Fixed region indexes of a vfio-pci device (``VFIO_PCI_*_REGION_INDEX``)."""

    BAR0 = 0
    BAR1 = 1
    BAR2 = 2
    BAR3 = 3
    BAR4 = 4
    BAR5 = 5
    ROM = 6
    CONFIG = 7
    VGA = 8


VFIO_PCI_NUM_REGIONS = 9


class VfioPciIrq(enum.IntEnum):
    """Interrupt indexes of a vfio-pci device (``VFIO_PCI_*_IRQ_INDEX``)."""

    INTX = 0
    MSI = 1
    MSIX = 2
    ERR = 3
    REQ = 4


VFIO_PCI_NUM_IRQS = 5


# ---- vfio.h structures ---------------------------------------------------------------------------------------
class vfio_info_cap_header(ctypes.Structure):  # noqa: N801 - C names, so a reader can grep the header
    """Header of each capability in an info chain; ``next`` is an offset from the start of the info struct."""

    _fields_ = [("id", u16), ("version", u16), ("next", u32)]


class vfio_group_status(ctypes.Structure):  # noqa: N801
    _fields_ = [("argsz", u32), ("flags", u32)]


class vfio_device_info(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("argsz", u32),
        ("flags", u32),
        ("num_regions", u32),
        ("num_irqs", u32),
        ("cap_offset", u32),
        ("pad", u32),
    ]


class vfio_region_info(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("argsz", u32),
        ("flags", u32),
        ("index", u32),
        ("cap_offset", u32),
        ("size", u64),
        ("offset", u64),
    ]


class vfio_region_sparse_mmap_area(ctypes.Structure):  # noqa: N801
    _fields_ = [("offset", u64), ("size", u64)]


class vfio_region_info_cap_sparse_mmap(ctypes.Structure):  # noqa: N801
    """Followed in memory by ``nr_areas`` :class:`vfio_region_sparse_mmap_area` entries."""

    _fields_ = [("header", vfio_info_cap_header), ("nr_areas", u32), ("reserved", u32)]


class vfio_irq_info(ctypes.Structure):  # noqa: N801
    _fields_ = [("argsz", u32), ("flags", u32), ("index", u32), ("count", u32)]


class vfio_irq_set(ctypes.Structure):  # noqa: N801
    """Followed in memory by ``data[]``: ``count`` s32 eventfds with ``VFIO_IRQ_SET_DATA_EVENTFD``."""

    _fields_ = [("argsz", u32), ("flags", u32), ("index", u32), ("start", u32), ("count", u32)]


class vfio_iommu_type1_info(ctypes.Structure):  # noqa: N801
    _fields_ = [("argsz", u32), ("flags", u32), ("iova_pgsizes", u64), ("cap_offset", u32), ("pad", u32)]


class vfio_iova_range(ctypes.Structure):  # noqa: N801
    """One usable IOVA range, ``end`` inclusive."""

    _fields_ = [("start", u64), ("end", u64)]


class vfio_iommu_type1_info_cap_iova_range(ctypes.Structure):  # noqa: N801
    """Followed in memory by ``nr_iovas`` :class:`vfio_iova_range` entries."""

    _fields_ = [("header", vfio_info_cap_header), ("nr_iovas", u32), ("reserved", u32)]


class vfio_iommu_type1_info_dma_avail(ctypes.Structure):  # noqa: N801
    _fields_ = [("header", vfio_info_cap_header), ("avail", u32)]


class vfio_iommu_type1_dma_map(ctypes.Structure):  # noqa: N801
    _fields_ = [("argsz", u32), ("flags", u32), ("vaddr", u64), ("iova", u64), ("size", u64)]


class vfio_iommu_type1_dma_unmap(ctypes.Structure):  # noqa: N801
    _fields_ = [("argsz", u32), ("flags", u32), ("iova", u64), ("size", u64)]


class vfio_device_bind_iommufd(ctypes.Structure):  # noqa: N801
    _fields_ = [("argsz", u32), ("flags", u32), ("iommufd", s32), ("out_devid", u32)]


class vfio_device_attach_iommufd_pt(ctypes.Structure):  # noqa: N801
    _fields_ = [("argsz", u32), ("flags", u32), ("pt_id", u32)]


class vfio_device_detach_iommufd_pt(ctypes.Structure):  # noqa: N801
    _fields_ = [("argsz", u32), ("flags", u32)]


# ---- iommufd.h -------------------------------------------------------------------------------------------------
IOMMUFD_TYPE = ord(";")
IOMMUFD_CMD_BASE = 0x80
IOMMU_DESTROY = _IO(IOMMUFD_TYPE, 0x80)
IOMMU_IOAS_ALLOC = _IO(IOMMUFD_TYPE, 0x81)
IOMMU_IOAS_ALLOW_IOVAS = _IO(IOMMUFD_TYPE, 0x82)
IOMMU_IOAS_COPY = _IO(IOMMUFD_TYPE, 0x83)
IOMMU_IOAS_IOVA_RANGES = _IO(IOMMUFD_TYPE, 0x84)
IOMMU_IOAS_MAP = _IO(IOMMUFD_TYPE, 0x85)
IOMMU_IOAS_UNMAP = _IO(IOMMUFD_TYPE, 0x86)

IOMMU_IOAS_MAP_FIXED_IOVA = 1 << 0
IOMMU_IOAS_MAP_WRITEABLE = 1 << 1
IOMMU_IOAS_MAP_READABLE = 1 << 2


class iommu_destroy(ctypes.Structure):  # noqa: N801
    _fields_ = [("size", u32), ("id", u32)]


class iommu_ioas_alloc(ctypes.Structure):  # noqa: N801
    _fields_ = [("size", u32), ("flags", u32), ("out_ioas_id", u32)]


class iommu_iova_range(ctypes.Structure):  # noqa: N801
    """One allowed IOVA interval, ``last`` inclusive."""

    _fields_ = [("start", u64), ("last", u64)]


class iommu_ioas_iova_ranges(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("size", u32),
        ("ioas_id", u32),
        ("num_iovas", u32),
        ("reserved", u32),  # __reserved in C
        ("allowed_iovas", u64),
        ("out_iova_alignment", u64),
    ]


class iommu_ioas_map(ctypes.Structure):  # noqa: N801
    _fields_ = [
        ("size", u32),
        ("flags", u32),
        ("ioas_id", u32),
        ("reserved", u32),  # __reserved in C
        ("user_va", u64),
        ("length", u64),
        ("iova", u64),
    ]


class iommu_ioas_unmap(ctypes.Structure):  # noqa: N801
    _fields_ = [("size", u32), ("ioas_id", u32), ("iova", u64), ("length", u64)]


#: Every structure above with its C name and, where ctypes and C spell a field differently, the C spelling:
#: the table the header test walks.
STRUCTS: dict[str, type[ctypes.Structure]] = {
    cls.__name__: cls
    for cls in (
        vfio_info_cap_header,
        vfio_group_status,
        vfio_device_info,
        vfio_region_info,
        vfio_region_sparse_mmap_area,
        vfio_region_info_cap_sparse_mmap,
        vfio_irq_info,
        vfio_irq_set,
        vfio_iommu_type1_info,
        vfio_iova_range,
        vfio_iommu_type1_info_cap_iova_range,
        vfio_iommu_type1_info_dma_avail,
        vfio_iommu_type1_dma_map,
        vfio_iommu_type1_dma_unmap,
        vfio_device_bind_iommufd,
        vfio_device_attach_iommufd_pt,
        vfio_device_detach_iommufd_pt,
        iommu_destroy,
        iommu_ioas_alloc,
        iommu_iova_range,
        iommu_ioas_iova_ranges,
        iommu_ioas_map,
        iommu_ioas_unmap,
    )
}
C_FIELD_NAMES = {("iommu_ioas_iova_ranges", "reserved"): "__reserved", ("iommu_ioas_map", "reserved"): "__reserved"}

#: Every ioctl number and flag above by its C macro name (for the header test).
CONSTANTS: dict[str, int] = {
    name: value
    for name, value in globals().items()
    if (name.startswith(("VFIO_", "IOMMU_", "IOMMUFD_")) and isinstance(value, int) and not isinstance(value, bool))
}
