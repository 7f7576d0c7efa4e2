"""A PCI function through Linux VFIO: :class:`host.transport.Transport` for real hardware, via ctypes.

Why VFIO: it is the one kernel interface that gives a user process a device's BARs, DMA through the IOMMU
and its MSI-X interrupts without a kernel driver of our own, so the same Python driver that runs against the
software device and the RTL also runs against a board (or QEMU's virtio-net in a VM, as the tests do).

Two IOMMU backends open the device:

* ``container``: the classic ``/dev/vfio/vfio`` container + ``/dev/vfio/<group>`` with the TYPE1 IOMMU
  (every kernel since 3.6; the only one Debian's 6.12 kernel offers, it has no CONFIG_IOMMUFD);
* ``iommufd``: the device cdev ``/dev/vfio/devices/vfioN`` bound to ``/dev/iommu`` with an IOAS (Linux
  6.6+ with CONFIG_IOMMUFD and CONFIG_VFIO_DEVICE_CDEV).  ``auto`` picks it when both exist.

Register access keeps the exact width the driver asks for (virtio 4.1.3.1; the notification-data doorbell is
one 32-bit store, 4.1.5.2): through an mmap of the BAR with a memoryview cast to the access's C type (one
load or store of that width) where VFIO allows mapping the region, otherwise one pread/pwrite of exactly
``size`` bytes, which vfio-pci turns into one ioread/iowrite of that width (8-byte accesses need a kernel whose
vfio-pci does 64-bit I/O; older ones split them, which is why the mmap path is preferred).

DMA memory comes in arenas (2 MiB hugepages when the system has free ones, else page-aligned anonymous
memory), each mapped once with VFIO_IOMMU_MAP_DMA (or IOMMU_IOAS_MAP) at an IOVA from a first-fit allocator
over the ranges the IOMMU reports; buffers are carved out of arenas, and an arena is unmapped and released
when its last buffer is freed (except the last one, kept mapped for the next allocation).  Mapping per arena
rather than per buffer keeps IOTLB invalidations (slow under an emulated IOMMU) and the kernel's DMA-entry
limit out of the driver's way.

Teardown (:meth:`VfioTransport.close`, also on any failure inside the constructor and at interpreter exit)
disables MSI-X, clears bus mastering, unmaps every arena and closes every file descriptor, in that order, so a
device can never DMA into memory that is being given back.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import fcntl
import mmap
import os
import re
import struct
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

from host import vfio_uapi as uapi
from host.transport import DmaBuffer, TransportError

SYSFS_PCI = Path("/sys/bus/pci/devices")
PAGE_SIZE = mmap.PAGESIZE
MAP_HUGETLB = 0x40000  # linux/mman.h; Python's mmap module does not export it
MAP_POPULATE = 0x8000
PCI_COMMAND = 0x04
PCI_COMMAND_MEMORY = 0x2
PCI_COMMAND_MASTER = 0x4
#: Never hand out IOVAs below this: a device that DMAs to a small or zero address is a bug worth a fault.
IOVA_FLOOR = 0x10_0000
_BDF_RE = re.compile(r"^(?:([0-9a-fA-F]{4}):)?([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])$")


class VfioError(TransportError):
    """A VFIO step failed; the message says which one and what to do about it."""


def normalize_bdf(bdf: str) -> str:
    """``01:00.0`` -> ``0000:01:00.0`` (the form sysfs and VFIO_GROUP_GET_DEVICE_FD use); ValueError if bad."""
    match = _BDF_RE.match(bdf.strip())
    if not match:
        raise ValueError(f"{bdf!r} is not a PCI address (DDDD:BB:DD.F)")
    domain, bus, dev, fn = match.groups()
    return f"{(domain or '0000').lower()}:{bus.lower()}:{dev.lower()}.{fn}"


def _ioctl(fd: int, request: int, arg: int | bytearray | ctypes.Structure | ctypes.Array, what: str) -> int:
    """ioctl with a message naming the step; returns the ioctl's return value (an fd for some requests)."""
    try:
        return fcntl.ioctl(fd, request, arg, True) if not isinstance(arg, int) else fcntl.ioctl(fd, request, arg)
    except OSError as exc:
        raise VfioError(f"{what}: {os.strerror(exc.errno or 0)} (errno {exc.errno})") from exc


def _walk_caps(buf: bytes | bytearray, first: int) -> dict[int, int]:
    """Capability chain of a VFIO info reply: ``{cap id: offset}`` (offsets are from the reply's start)."""
    caps: dict[int, int] = {}
    offset = first
    while offset and offset + ctypes.sizeof(uapi.vfio_info_cap_header) <= len(buf) and offset not in caps.values():
        header = uapi.vfio_info_cap_header.from_buffer_copy(buf, offset)
        caps.setdefault(header.id, offset)
        offset = header.next
    return caps


def _info_with_caps(fd: int, request: int, struct_type: type[ctypes.Structure], what: str, **fields: int) -> bytearray:
    """Issue an ``argsz`` info ioctl twice if needed: the kernel reports the size its capability chain needs."""
    size = ctypes.sizeof(struct_type)
    for _ in range(2):
        info = struct_type(argsz=size, **fields)
        buf = bytearray(size)
        buf[: ctypes.sizeof(struct_type)] = bytes(info)
        _ioctl(fd, request, buf, what)
        needed = struct_type.from_buffer(buf).argsz  # type: ignore[attr-defined]
        if needed <= size:
            return buf
        size = needed
    return buf


# ---- IOMMU backends ------------------------------------------------------------------------------------------
class _Backend:
    """What the transport needs from an IOMMU interface: a device fd, DMA (un)mapping and the usable IOVAs."""

    name = ""
    device_fd = -1

    def map_dma(self, vaddr: int, iova: int, size: int) -> None:
        raise NotImplementedError

    def unmap_dma(self, iova: int, size: int) -> None:
        raise NotImplementedError

    def iova_ranges(self) -> list[tuple[int, int]]:
        """Usable IOVA intervals, inclusive ends."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


def _open(path: str, what: str) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except PermissionError as exc:
        raise VfioError(f"{what}: permission denied opening {path} (run as root or chown it)") from exc
    except FileNotFoundError as exc:
        raise VfioError(f"{what}: {path} does not exist") from exc
    except OSError as exc:
        raise VfioError(f"{what}: cannot open {path}: {exc.strerror}") from exc


class _ContainerBackend(_Backend):
    """Container + group + TYPE1 IOMMU (``linux/vfio.h``, Documentation/driver-api/vfio.rst)."""

    name = "container"

    def __init__(self, bdf: str, group: int) -> None:
        self.container = self.group = self.device_fd = -1
        try:
            self.container = _open("/dev/vfio/vfio", "VFIO container")
            version = _ioctl(self.container, uapi.VFIO_GET_API_VERSION, 0, "VFIO_GET_API_VERSION")
            if version != uapi.VFIO_API_VERSION:
                raise VfioError(f"VFIO API version {version}, expected {uapi.VFIO_API_VERSION}")
            for iommu_type in (uapi.VFIO_TYPE1v2_IOMMU, uapi.VFIO_TYPE1_IOMMU):
                if _ioctl(self.container, uapi.VFIO_CHECK_EXTENSION, iommu_type, "VFIO_CHECK_EXTENSION"):
                    break
            else:
                raise VfioError("the VFIO container supports no TYPE1 IOMMU (is vfio_iommu_type1 loaded?)")
            self.group = _open(f"/dev/vfio/{group}", f"IOMMU group {group}")
            status = uapi.vfio_group_status(argsz=ctypes.sizeof(uapi.vfio_group_status))
            _ioctl(self.group, uapi.VFIO_GROUP_GET_STATUS, status, "VFIO_GROUP_GET_STATUS")
            if not status.flags & uapi.VFIO_GROUP_FLAGS_VIABLE:
                raise VfioError(
                    f"IOMMU group {group} is not viable: every device in it must be bound to vfio-pci "
                    f"(see /sys/kernel/iommu_groups/{group}/devices)"
                )
            _ioctl(
                self.group, uapi.VFIO_GROUP_SET_CONTAINER, bytearray(struct.pack("i", self.container)), "SET_CONTAINER"
            )
            _ioctl(self.container, uapi.VFIO_SET_IOMMU, iommu_type, "VFIO_SET_IOMMU")
            self.iommu_type = iommu_type
            self.device_fd = _ioctl(
                self.group, uapi.VFIO_GROUP_GET_DEVICE_FD, bytearray(bdf.encode() + b"\0"), f"open {bdf}"
            )
        except BaseException:
            self.close()
            raise

    def map_dma(self, vaddr: int, iova: int, size: int) -> None:
        req = uapi.vfio_iommu_type1_dma_map(
            argsz=ctypes.sizeof(uapi.vfio_iommu_type1_dma_map),
            flags=uapi.VFIO_DMA_MAP_FLAG_READ | uapi.VFIO_DMA_MAP_FLAG_WRITE,
            vaddr=vaddr,
            iova=iova,
            size=size,
        )
        _ioctl(self.container, uapi.VFIO_IOMMU_MAP_DMA, req, f"VFIO_IOMMU_MAP_DMA iova={iova:#x} size={size:#x}")

    def unmap_dma(self, iova: int, size: int) -> None:
        req = uapi.vfio_iommu_type1_dma_unmap(
            argsz=ctypes.sizeof(uapi.vfio_iommu_type1_dma_unmap), iova=iova, size=size
        )
        _ioctl(self.container, uapi.VFIO_IOMMU_UNMAP_DMA, req, f"VFIO_IOMMU_UNMAP_DMA iova={iova:#x}")
        if req.size != size:
            raise VfioError(f"VFIO_IOMMU_UNMAP_DMA iova={iova:#x} unmapped {req.size:#x} of {size:#x} bytes")

    def iova_ranges(self) -> list[tuple[int, int]]:
        buf = _info_with_caps(self.container, uapi.VFIO_IOMMU_GET_INFO, uapi.vfio_iommu_type1_info, "IOMMU_GET_INFO")
        info = uapi.vfio_iommu_type1_info.from_buffer_copy(buf)
        self.iova_pgsizes = info.iova_pgsizes
        caps = _walk_caps(buf, info.cap_offset if info.flags & uapi.VFIO_IOMMU_INFO_CAPS else 0)
        offset = caps.get(uapi.VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE)
        if offset is None:
            return [(0, (1 << 48) - 1)]  # old kernels: no report; 48 bits is what every x86 IOMMU offers
        cap = uapi.vfio_iommu_type1_info_cap_iova_range.from_buffer_copy(buf, offset)
        first = offset + ctypes.sizeof(cap)
        entry = ctypes.sizeof(uapi.vfio_iova_range)
        ranges = [uapi.vfio_iova_range.from_buffer_copy(buf, first + i * entry) for i in range(cap.nr_iovas)]
        return [(r.start, r.end) for r in ranges]

    def close(self) -> None:
        for attr in ("device_fd", "group", "container"):
            fd = getattr(self, attr)
            if fd >= 0:
                setattr(self, attr, -1)
                with contextlib.suppress(OSError):
                    os.close(fd)


class _IommufdBackend(_Backend):
    """Device cdev + ``/dev/iommu`` with one IOAS (``linux/iommufd.h``, Documentation/userspace-api/iommufd.rst)."""

    name = "iommufd"

    def __init__(self, bdf: str, cdev: str) -> None:
        self.iommufd = self.device_fd = -1
        self.ioas = 0
        try:
            self.iommufd = _open("/dev/iommu", "IOMMUFD")
            self.device_fd = _open(f"/dev/vfio/devices/{cdev}", f"VFIO device cdev of {bdf}")
            bind = uapi.vfio_device_bind_iommufd(
                argsz=ctypes.sizeof(uapi.vfio_device_bind_iommufd), iommufd=self.iommufd
            )
            _ioctl(self.device_fd, uapi.VFIO_DEVICE_BIND_IOMMUFD, bind, "VFIO_DEVICE_BIND_IOMMUFD")
            alloc = uapi.iommu_ioas_alloc(size=ctypes.sizeof(uapi.iommu_ioas_alloc))
            _ioctl(self.iommufd, uapi.IOMMU_IOAS_ALLOC, alloc, "IOMMU_IOAS_ALLOC")
            self.ioas = alloc.out_ioas_id
            attach = uapi.vfio_device_attach_iommufd_pt(
                argsz=ctypes.sizeof(uapi.vfio_device_attach_iommufd_pt), pt_id=self.ioas
            )
            _ioctl(self.device_fd, uapi.VFIO_DEVICE_ATTACH_IOMMUFD_PT, attach, "VFIO_DEVICE_ATTACH_IOMMUFD_PT")
        except BaseException:
            self.close()
            raise

    def map_dma(self, vaddr: int, iova: int, size: int) -> None:
        req = uapi.iommu_ioas_map(
            size=ctypes.sizeof(uapi.iommu_ioas_map),
            flags=uapi.IOMMU_IOAS_MAP_FIXED_IOVA | uapi.IOMMU_IOAS_MAP_READABLE | uapi.IOMMU_IOAS_MAP_WRITEABLE,
            ioas_id=self.ioas,
            user_va=vaddr,
            length=size,
            iova=iova,
        )
        _ioctl(self.iommufd, uapi.IOMMU_IOAS_MAP, req, f"IOMMU_IOAS_MAP iova={iova:#x} size={size:#x}")

    def unmap_dma(self, iova: int, size: int) -> None:
        req = uapi.iommu_ioas_unmap(
            size=ctypes.sizeof(uapi.iommu_ioas_unmap), ioas_id=self.ioas, iova=iova, length=size
        )
        _ioctl(self.iommufd, uapi.IOMMU_IOAS_UNMAP, req, f"IOMMU_IOAS_UNMAP iova={iova:#x}")

    def iova_ranges(self) -> list[tuple[int, int]]:
        ranges = (uapi.iommu_iova_range * 16)()
        req = uapi.iommu_ioas_iova_ranges(
            size=ctypes.sizeof(uapi.iommu_ioas_iova_ranges),
            ioas_id=self.ioas,
            num_iovas=len(ranges),
            allowed_iovas=ctypes.addressof(ranges),
        )
        _ioctl(self.iommufd, uapi.IOMMU_IOAS_IOVA_RANGES, req, "IOMMU_IOAS_IOVA_RANGES")
        return [(ranges[i].start, ranges[i].last) for i in range(min(req.num_iovas, len(ranges)))]

    def close(self) -> None:
        # Closing the device fd detaches and unbinds it; closing the iommufd frees the IOAS and its mappings.
        for attr in ("device_fd", "iommufd"):
            fd = getattr(self, attr)
            if fd >= 0:
                setattr(self, attr, -1)
                with contextlib.suppress(OSError):
                    os.close(fd)


# ---- IOVA space and DMA memory --------------------------------------------------------------------------------
class IovaAllocator:
    """First-fit over the IOMMU's usable ranges, with coalescing frees; alignment is honoured exactly."""

    def __init__(self, ranges: list[tuple[int, int]], floor: int = IOVA_FLOOR) -> None:
        self.free: list[tuple[int, int]] = []  # (start, end exclusive), sorted
        for start, last in sorted(ranges):
            start = max(start, floor)
            if last + 1 > start:
                self.free.append((start, last + 1))
        if not self.free:
            raise VfioError(f"the IOMMU reports no usable IOVA range above {floor:#x}: {ranges}")

    def alloc(self, size: int, align: int) -> int:
        for i, (start, end) in enumerate(self.free):
            base = (start + align - 1) // align * align
            if base + size <= end:
                pieces = [(s, e) for s, e in ((start, base), (base + size, end)) if e > s]
                self.free[i : i + 1] = pieces
                return base
        raise VfioError(f"IOVA space exhausted allocating {size:#x} bytes")

    def release(self, iova: int, size: int) -> None:
        self.free.append((iova, iova + size))
        self.free.sort()
        merged: list[tuple[int, int]] = []
        for start, end in self.free:
            if merged and merged[-1][1] == start:
                merged[-1] = (merged[-1][0], end)
            else:
                merged.append((start, end))
        self.free = merged


def _hugepage_size() -> int:
    try:
        match = re.search(r"Hugepagesize:\s+(\d+) kB", Path("/proc/meminfo").read_text())
    except OSError:
        return 0
    return int(match[1]) * 1024 if match else 0


@dataclass
class _Arena:
    """One mmap'd, IOMMU-mapped chunk of memory from which DMA buffers are carved."""

    mem: mmap.mmap
    view: memoryview
    vaddr: int
    iova: int
    size: int
    hugepage: bool
    free: list[tuple[int, int]] = field(default_factory=list)  # (offset, size), sorted
    used: int = 0

    def carve(self, size: int, align: int) -> int | None:
        for i, (offset, length) in enumerate(self.free):
            base = (self.iova + offset + align - 1) // align * align - self.iova
            if base + size <= offset + length:
                pieces = [
                    (o, n) for o, n in ((offset, base - offset), (base + size, offset + length - base - size)) if n
                ]
                self.free[i : i + 1] = pieces
                self.used += size
                return base
        return None

    def give_back(self, offset: int, size: int) -> None:
        self.used -= size
        self.free.append((offset, size))
        self.free.sort()
        merged: list[tuple[int, int]] = []
        for o, n in self.free:
            if merged and merged[-1][0] + merged[-1][1] == o:
                merged[-1] = (merged[-1][0], merged[-1][1] + n)
            else:
                merged.append((o, n))
        self.free = merged


# ---- regions ----------------------------------------------------------------------------------------------------
@dataclass
class RegionInfo:
    """A VFIO region: where it is in the device fd, what it allows, and which parts may be mmap'd."""

    index: int
    flags: int
    size: int
    offset: int
    mmap_areas: list[tuple[int, int]]  # (offset in region, size)

    @property
    def readable(self) -> bool:
        return bool(self.flags & uapi.VFIO_REGION_INFO_FLAG_READ)


class _Mapping:
    """One mmap'd area of a BAR with a view per access width: indexing a cast view is one load or store."""

    FORMATS = {1: "B", 2: "H", 4: "I", 8: "Q"}

    def __init__(self, fd: int, file_offset: int, start: int, size: int) -> None:
        self.start = start
        self.end = start + size
        self.mem = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=file_offset)
        self._raw = memoryview(self.mem)
        self.views = {width: self._raw.cast(fmt) for width, fmt in self.FORMATS.items()}

    def close(self) -> None:
        for view in self.views.values():
            view.release()
        self.views.clear()
        self._raw.release()
        with contextlib.suppress(BufferError):
            self.mem.close()


@dataclass
class _IrqState:
    fd: int
    event: asyncio.Event
    pending: int = 0


# ---- the transport ----------------------------------------------------------------------------------------------
class VfioTransport:
    """:class:`host.transport.Transport` for one PCI function bound to vfio-pci.

    ``backend`` is ``"auto"``, ``"container"`` or ``"iommufd"``; ``use_mmap=False`` forces pread/pwrite for
    every BAR access (slower, but useful to compare the two paths).
    """

    def __init__(
        self,
        bdf: str,
        *,
        backend: str = "auto",
        use_mmap: bool = True,
        hugepages: bool | None = None,
        arena_size: int | None = None,
    ) -> None:
        self.bdf = normalize_bdf(bdf)
        self.name = f"vfio:{self.bdf}"
        self._backend: _Backend | None = None
        self._mappings: dict[int, list[_Mapping]] = {}
        self._arenas: list[_Arena] = []
        self._buffers: dict[int, tuple[_Arena, int, int]] = {}  # iova -> (arena, offset, size)
        self._irqs: dict[int, _IrqState] = {}
        self._irq_totals: dict[int, int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self.stats = {"dma_maps": 0, "dma_unmaps": 0, "mmio_mmap": 0, "mmio_pio": 0, "resets": 0}
        try:
            self._backend = self._open_backend(backend)
            self.backend = self._backend.name
            self.device_fd = self._backend.device_fd
            self._device_info()
            self.regions = {}
            for index in range(min(self.num_regions, uapi.VfioPciRegion.VGA)):  # VGA (8) exists only on GPUs
                self.regions[index] = self._region_info(index)
            self.config = self.regions[uapi.VfioPciRegion.CONFIG]
            if use_mmap:
                self._map_bars()
            self.iova = IovaAllocator(self._backend.iova_ranges())
            huge = _hugepage_size()
            self.hugepage_size = huge
            self._try_hugepages = bool(huge) if hugepages is None else (hugepages and bool(huge))
            self.arena_size = arena_size or max(huge or 0, 2 << 20)
            self._set_command(PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER, True)
        except BaseException:
            self._teardown()
            raise
        _OPEN.add(self)

    # ---- opening --------------------------------------------------------------------------------------------
    def _open_backend(self, backend: str) -> _Backend:
        sysdev = SYSFS_PCI / self.bdf
        if not sysdev.exists():
            raise VfioError(f"no PCI device {self.bdf}")
        driver = sysdev / "driver"
        bound = driver.resolve().name if driver.exists() else None
        if bound != "vfio-pci":
            hint = f"bound to {bound}" if bound else "not bound to any driver"
            raise VfioError(f"{self.bdf} is {hint}, not vfio-pci (run: virtio-fpga bind {self.bdf})")
        cdevs = sorted(p.name for p in (sysdev / "vfio-dev").glob("vfio*")) if (sysdev / "vfio-dev").is_dir() else []
        iommufd_ok = bool(cdevs) and Path("/dev/iommu").exists()
        if backend == "iommufd" or (backend == "auto" and iommufd_ok):
            if not iommufd_ok:
                raise VfioError("the iommufd backend needs /dev/iommu and a VFIO device cdev (CONFIG_IOMMUFD)")
            return _IommufdBackend(self.bdf, cdevs[0])
        if backend not in ("auto", "container"):
            raise ValueError(f"unknown VFIO backend {backend!r} (auto, container, iommufd)")
        group_link = sysdev / "iommu_group"
        if not group_link.exists():
            raise VfioError(f"{self.bdf} is in no IOMMU group: enable the IOMMU (intel_iommu=on / amd_iommu=on)")
        return _ContainerBackend(self.bdf, int(group_link.resolve().name))

    def _device_info(self) -> None:
        info = uapi.vfio_device_info(argsz=ctypes.sizeof(uapi.vfio_device_info))
        _ioctl(self.device_fd, uapi.VFIO_DEVICE_GET_INFO, info, "VFIO_DEVICE_GET_INFO")
        if not info.flags & uapi.VFIO_DEVICE_FLAGS_PCI:
            raise VfioError(f"{self.bdf} is not a vfio-pci device (flags {info.flags:#x})")
        self.device_flags = info.flags
        self.num_regions = info.num_regions
        self.num_irqs = info.num_irqs

    def _region_info(self, index: int) -> RegionInfo:
        buf = _info_with_caps(
            self.device_fd, uapi.VFIO_DEVICE_GET_REGION_INFO, uapi.vfio_region_info, f"region {index} info", index=index
        )
        info = uapi.vfio_region_info.from_buffer_copy(buf)
        areas: list[tuple[int, int]] = []
        if info.flags & uapi.VFIO_REGION_INFO_FLAG_MMAP:
            caps = _walk_caps(buf, info.cap_offset if info.flags & uapi.VFIO_REGION_INFO_FLAG_CAPS else 0)
            sparse = caps.get(uapi.VFIO_REGION_INFO_CAP_SPARSE_MMAP)
            if sparse is None:
                areas = [(0, info.size)]
            else:
                cap = uapi.vfio_region_info_cap_sparse_mmap.from_buffer_copy(buf, sparse)
                first = sparse + ctypes.sizeof(cap)
                entry = ctypes.sizeof(uapi.vfio_region_sparse_mmap_area)
                for i in range(cap.nr_areas):
                    area = uapi.vfio_region_sparse_mmap_area.from_buffer_copy(buf, first + i * entry)
                    if area.size:
                        areas.append((area.offset, area.size))
        return RegionInfo(index, info.flags, info.size, info.offset, areas)

    def _map_bars(self) -> None:
        for bar in range(6):
            region = self.regions.get(bar)
            if region is None or not region.size:
                continue
            maps = []
            for start, size in region.mmap_areas:
                if start % PAGE_SIZE or size % PAGE_SIZE:
                    continue
                try:
                    maps.append(_Mapping(self.device_fd, region.offset + start, start, size))
                except OSError:
                    continue  # mmap refused (e.g. an I/O port BAR): pread/pwrite still work
            self._mappings[bar] = maps

    # ---- configuration space --------------------------------------------------------------------------------------
    def _pread(self, region: RegionInfo, offset: int, size: int) -> int:
        if offset < 0 or offset + size > region.size:
            raise TransportError(f"region {region.index} access {offset:#x}+{size} outside {region.size:#x}")
        try:
            data = os.pread(self.device_fd, size, region.offset + offset)
        except OSError as exc:
            raise VfioError(f"read region {region.index} at {offset:#x}: {exc.strerror}") from exc
        if len(data) != size:
            raise VfioError(f"short read of region {region.index} at {offset:#x}: {len(data)} of {size}")
        return int.from_bytes(data, "little")

    def _pwrite(self, region: RegionInfo, offset: int, size: int, value: int) -> None:
        if offset < 0 or offset + size > region.size:
            raise TransportError(f"region {region.index} access {offset:#x}+{size} outside {region.size:#x}")
        try:
            written = os.pwrite(self.device_fd, value.to_bytes(size, "little"), region.offset + offset)
        except OSError as exc:
            raise VfioError(f"write region {region.index} at {offset:#x}: {exc.strerror}") from exc
        if written != size:
            raise VfioError(f"short write of region {region.index} at {offset:#x}: {written} of {size}")

    def config_read_sync(self, offset: int, size: int) -> int:
        _check_size(size, (1, 2, 4))
        return self._pread(self.config, offset, size)

    def config_write_sync(self, offset: int, size: int, value: int) -> None:
        _check_size(size, (1, 2, 4))
        self._pwrite(self.config, offset, size, value)

    async def config_read(self, offset: int, size: int) -> int:
        return self.config_read_sync(offset, size)

    async def config_write(self, offset: int, size: int, value: int) -> None:
        self.config_write_sync(offset, size, value)

    def _set_command(self, bits: int, on: bool) -> None:
        command = self.config_read_sync(PCI_COMMAND, 2)
        new = command | bits if on else command & ~bits
        if new != command:
            self.config_write_sync(PCI_COMMAND, 2, new)

    def set_bus_master(self, enable: bool) -> None:
        """Allow (or stop) the function's DMA; VFIO leaves this to its user (PCI command register bit 2)."""
        self._set_command(PCI_COMMAND_MASTER, enable)

    # ---- BARs ----------------------------------------------------------------------------------------------------
    def _bar_region(self, bar: int) -> RegionInfo:
        region = self.regions.get(bar) if 0 <= bar < 6 else None
        if region is None or not region.size:
            raise TransportError(f"{self.name}: BAR {bar} is not implemented")
        return region

    def _mapping_for(self, bar: int, offset: int, size: int) -> _Mapping | None:
        for mapping in self._mappings.get(bar, ()):
            if mapping.start <= offset and offset + size <= mapping.end:
                return mapping
        return None

    def bar_read_sync(self, bar: int, offset: int, size: int) -> int:
        _check_size(size, (1, 2, 4, 8))
        region = self._bar_region(bar)
        mapping = self._mapping_for(bar, offset, size)
        if mapping is not None and offset % size == 0:
            self.stats["mmio_mmap"] += 1
            return mapping.views[size][(offset - mapping.start) // size]
        self.stats["mmio_pio"] += 1
        return self._pread(region, offset, size)

    def bar_write_sync(self, bar: int, offset: int, size: int, value: int) -> None:
        _check_size(size, (1, 2, 4, 8))
        if not 0 <= value < 1 << (8 * size):
            raise ValueError(f"value {value:#x} does not fit in {size} bytes")
        region = self._bar_region(bar)
        mapping = self._mapping_for(bar, offset, size)
        if mapping is not None and offset % size == 0:
            self.stats["mmio_mmap"] += 1
            mapping.views[size][(offset - mapping.start) // size] = value
            return
        self.stats["mmio_pio"] += 1
        self._pwrite(region, offset, size, value)

    async def bar_read(self, bar: int, offset: int, size: int) -> int:
        return self.bar_read_sync(bar, offset, size)

    async def bar_write(self, bar: int, offset: int, size: int, value: int) -> None:
        self.bar_write_sync(bar, offset, size, value)

    def bar_size(self, bar: int) -> int:
        region = self.regions.get(bar) if 0 <= bar < 6 else None
        return region.size if region else 0

    def bar_is_mmapped(self, bar: int) -> bool:
        return bool(self._mappings.get(bar))

    # ---- DMA -------------------------------------------------------------------------------------------------------
    def _new_arena(self, size: int) -> _Arena:
        assert self._backend is not None
        mem = None
        hugepage = False
        if self._try_hugepages:
            huge = self.hugepage_size
            length = (size + huge - 1) // huge * huge
            try:
                flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_HUGETLB | MAP_POPULATE
                mem = mmap.mmap(-1, length, flags=flags)
                hugepage = True
            except OSError:
                self._try_hugepages = False  # none free (or none reserved): stop asking
        if mem is None:
            length = (size + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE
            mem = mmap.mmap(-1, length, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_POPULATE)
        # A fork (subprocess, multiprocessing) would make these pages copy-on-write: the parent's next store
        # would land in a fresh copy while the IOMMU still points at the pinned original.  Keep them out of
        # children altogether, as DPDK does.
        with contextlib.suppress(OSError, AttributeError):
            mem.madvise(mmap.MADV_DONTFORK)
        anchor = ctypes.c_char.from_buffer(mem)
        vaddr = ctypes.addressof(anchor)
        del anchor
        align = self.hugepage_size if hugepage else PAGE_SIZE
        iova = self.iova.alloc(length, max(align, PAGE_SIZE))
        try:
            self._backend.map_dma(vaddr, iova, length)
        except BaseException:
            self.iova.release(iova, length)
            mem.close()
            raise
        self.stats["dma_maps"] += 1
        arena = _Arena(mem, memoryview(mem), vaddr, iova, length, hugepage, [(0, length)])
        self._arenas.append(arena)
        return arena

    def _release_arena(self, arena: _Arena) -> None:
        assert self._backend is not None
        self._arenas.remove(arena)
        try:
            self._backend.unmap_dma(arena.iova, arena.size)
            self.stats["dma_unmaps"] += 1
        finally:
            self.iova.release(arena.iova, arena.size)
            arena.view.release()
            with contextlib.suppress(BufferError):  # a caller still holds a view: the GC frees it later
                arena.mem.close()

    def alloc_dma(self, size: int, align: int = 4096) -> DmaBuffer:
        if self._closed:
            raise TransportError(f"{self.name} is closed")
        if size <= 0 or align <= 0 or align & (align - 1):
            raise ValueError(f"bad DMA allocation: size {size}, align {align}")
        rounded = (size + 63) // 64 * 64  # keep buffers on separate cache lines
        for arena in self._arenas:
            offset = arena.carve(rounded, align)
            if offset is not None:
                break
        else:
            arena = self._new_arena(max(self.arena_size, rounded + align))
            offset = arena.carve(rounded, align)
            assert offset is not None
        ctypes.memset(arena.vaddr + offset, 0, rounded)
        iova = arena.iova + offset
        self._buffers[iova] = (arena, offset, rounded)
        return DmaBuffer(arena.view[offset : offset + size], iova, size)

    def free_dma(self, buf: DmaBuffer) -> None:
        entry = self._buffers.pop(buf.iova, None)
        if entry is None:
            raise TransportError(f"{self.name}: IOVA {buf.iova:#x} was not allocated here (or freed twice)")
        arena, offset, rounded = entry
        with contextlib.suppress(ValueError):
            buf.mem.release()
        arena.give_back(offset, rounded)
        if arena.used == 0 and len(self._arenas) > 1:
            self._release_arena(arena)  # keep one arena warm: the next allocation needs no map

    def dma_summary(self) -> dict[str, int | bool]:
        return {
            "arenas": len(self._arenas),
            "mapped_bytes": sum(a.size for a in self._arenas),
            "hugepages": any(a.hugepage for a in self._arenas),
            "buffers": len(self._buffers),
        }

    # ---- interrupts ------------------------------------------------------------------------------------------------
    def irq_info(self, index: int = uapi.VfioPciIrq.MSIX) -> tuple[int, int]:
        """(flags, count) of a VFIO interrupt index."""
        info = uapi.vfio_irq_info(argsz=ctypes.sizeof(uapi.vfio_irq_info), index=index)
        _ioctl(self.device_fd, uapi.VFIO_DEVICE_GET_IRQ_INFO, info, f"VFIO_DEVICE_GET_IRQ_INFO {index}")
        return info.flags, info.count

    def _set_irqs(self, fds: list[int]) -> None:
        header = uapi.vfio_irq_set(
            argsz=ctypes.sizeof(uapi.vfio_irq_set) + 4 * len(fds),
            flags=(uapi.VFIO_IRQ_SET_DATA_EVENTFD if fds else uapi.VFIO_IRQ_SET_DATA_NONE)
            | uapi.VFIO_IRQ_SET_ACTION_TRIGGER,
            index=uapi.VfioPciIrq.MSIX,
            start=0,
            count=len(fds),
        )
        buf = bytearray(bytes(header) + struct.pack(f"{len(fds)}i", *fds))
        _ioctl(self.device_fd, uapi.VFIO_DEVICE_SET_IRQS, buf, f"VFIO_DEVICE_SET_IRQS MSI-X x{len(fds)}")

    def _drain(self, vector: int) -> None:
        state = self._irqs[vector]
        try:
            n = os.eventfd_read(state.fd)
        except BlockingIOError:
            return
        state.pending += n
        self._irq_totals[vector] = self._irq_totals.get(vector, 0) + n
        state.event.set()

    def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Have ``loop`` drain the eventfds (and own the wake-up events) from now on."""
        if self._loop is not None and self._loop is not loop and not self._loop.is_closed():
            for state in self._irqs.values():
                self._loop.remove_reader(state.fd)
        self._loop = loop
        for vector, state in self._irqs.items():
            state.event = asyncio.Event()  # an Event binds to the loop that first waits on it
            if state.pending:
                state.event.set()
            loop.add_reader(state.fd, self._drain, vector)

    async def enable_msix(self, count: int) -> int:
        """Idempotent: vectors already wired stay wired (a second driver bring-up, as after a reset, must not
        lose an interrupt in flight), and counts keep accumulating so per-scenario deltas stay meaningful."""
        loop = asyncio.get_running_loop()
        if self._irqs and len(self._irqs) >= count:
            if loop is not self._loop:
                self._watch(loop)
            return min(count, len(self._irqs))
        self.disable_msix()
        flags, available = self.irq_info(uapi.VfioPciIrq.MSIX)
        granted = min(count, available)
        if granted <= 0:
            return 0
        if not flags & uapi.VFIO_IRQ_INFO_EVENTFD:
            raise VfioError(f"{self.name}: MSI-X does not signal through eventfds (flags {flags:#x})")
        fds = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(granted)]
        try:
            self._set_irqs(fds)
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        self._irqs = {vector: _IrqState(fd, asyncio.Event()) for vector, fd in enumerate(fds)}
        self._loop = None
        self._watch(loop)
        return granted

    def disable_msix(self) -> None:
        if not self._irqs:
            return
        try:
            self._set_irqs([])
        finally:
            for state in self._irqs.values():
                if self._loop is not None and not self._loop.is_closed():
                    self._loop.remove_reader(state.fd)
                with contextlib.suppress(OSError):
                    os.close(state.fd)
            self._irqs.clear()

    async def wait_irq(self, vector: int, timeout: float) -> bool:
        state = self._irqs.get(vector)
        if state is None:
            raise TransportError(f"{self.name}: MSI-X vector {vector} is not enabled")
        self._drain(vector)
        if not state.pending:
            state.event.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(state.event.wait(), timeout)
            self._drain(vector)
        fired = state.pending > 0
        state.pending = 0
        state.event.clear()
        return fired

    def irq_count(self, vector: int) -> int:
        """Interrupts of ``vector`` since the transport was opened (across re-enables)."""
        if vector in self._irqs:
            self._drain(vector)
        return self._irq_totals.get(vector, 0)

    # ---- reset, time, teardown --------------------------------------------------------------------------------------
    def reset(self) -> None:
        """VFIO_DEVICE_RESET (a function-level reset where the device has one), then bus mastering again."""
        if not self.device_flags & uapi.VFIO_DEVICE_FLAGS_RESET:
            raise VfioError(f"{self.name}: the device offers no reset method")
        _ioctl(self.device_fd, uapi.VFIO_DEVICE_RESET, 0, "VFIO_DEVICE_RESET")
        self.stats["resets"] += 1
        self._set_command(PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER, True)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def now(self) -> float:
        return time.monotonic()

    def info(self) -> dict:
        """What was found, for reports: backend, regions, interrupts, DMA."""
        return {
            "bdf": self.bdf,
            "backend": self.backend,
            "reset": bool(self.device_flags & uapi.VFIO_DEVICE_FLAGS_RESET),
            "regions": {
                i: {"size": r.size, "flags": r.flags, "mmap": r.mmap_areas} for i, r in self.regions.items() if r.size
            },
            "bars_mmapped": [bar for bar, maps in self._mappings.items() if maps],
            "msix_vectors": self.irq_info()[1],
            "dma": self.dma_summary(),
            "stats": dict(self.stats),
        }

    def _teardown(self) -> None:
        """Interrupts off, DMA off, mappings gone, fds closed: each step independent of the others failing."""
        if self._closed:
            return
        self._closed = True
        errors: list[str] = []
        steps = [self.disable_msix]
        if self._backend is not None and self._backend.device_fd >= 0 and hasattr(self, "config"):
            steps.append(lambda: self.set_bus_master(False))
        for step in steps:
            try:
                step()
            except (OSError, TransportError) as exc:
                errors.append(str(exc))
        for arena in list(self._arenas):
            try:
                self._release_arena(arena)
            except (OSError, TransportError) as exc:
                errors.append(str(exc))
        self._buffers.clear()
        for maps in self._mappings.values():
            for mapping in maps:
                mapping.close()
        self._mappings.clear()
        if self._backend is not None:
            self._backend.close()
        if errors:
            raise VfioError(f"{self.name}: teardown: {'; '.join(errors)}")

    def close_sync(self) -> None:
        self._teardown()

    async def close(self) -> None:
        self._teardown()

    async def __aenter__(self) -> VfioTransport:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __enter__(self) -> VfioTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self._teardown()


#: Transports not yet closed: closed at interpreter exit so a device never outlives its DMA memory mapped.
_OPEN: weakref.WeakSet[VfioTransport] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for transport in list(_OPEN):
        with contextlib.suppress(Exception):
            transport.close_sync()


def _check_size(size: int, allowed: tuple[int, ...]) -> None:
    if size not in allowed:
        raise ValueError(f"access of {size} bytes (allowed: {allowed})")


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``vfio:BDF[,key=value...]`` -> (normalized BDF, options)."""
    if not spec.startswith("vfio:"):
        raise ValueError(f"{spec!r} is not a VFIO device spec (vfio:DDDD:BB:DD.F)")
    body = spec[len("vfio:") :]
    bdf, *opts = body.split(",")
    options = {}
    for opt in opts:
        key, sep, value = opt.partition("=")
        if not sep:
            raise ValueError(f"option {opt!r} in {spec!r} is not key=value")
        options[key.strip()] = value.strip()
    unknown = set(options) - {"backend", "mmap", "hugepages"}
    if unknown:
        raise ValueError(f"unknown VFIO options {sorted(unknown)} (backend, mmap, hugepages)")
    return normalize_bdf(bdf), options


def open_transport(spec: str) -> VfioTransport:
    """What ``virtio-fpga demo --device vfio:BDF`` calls: ``vfio:BDF[,backend=..][,mmap=off][,hugepages=off]``."""
    bdf, options = parse_spec(spec)

    def flag(name: str) -> bool | None:
        value = options.get(name)
        if value is None:
            return None
        if value.lower() in ("on", "1", "yes", "true"):
            return True
        if value.lower() in ("off", "0", "no", "false"):
            return False
        raise ValueError(f"{name}={value}: expected on or off")

    use_mmap = flag("mmap")
    return VfioTransport(
        bdf, backend=options.get("backend", "auto"), use_mmap=use_mmap is not False, hugepages=flag("hugepages")
    )


__all__ = ["IovaAllocator", "RegionInfo", "VfioError", "VfioTransport", "normalize_bdf", "open_transport"]
