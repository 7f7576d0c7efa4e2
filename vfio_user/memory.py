"""The client's memory as the device sees it: DMA windows from VFIO_USER_DMA_MAP, mmap'ed from their fds.

QEMU sends one DMA_MAP per guest RAM region (with the memfd behind ``memory-backend-memfd,share=on``) and
remaps them many times during boot, so a window is mapped into this process while it is valid and its mmap
and fd are both closed when the client unmaps it (the spec: release every reference before replying).  An
access that is not entirely inside mapped windows raises :class:`DmaFault`, as an IOMMU would fault it, and
never touches memory outside a window.
"""

from __future__ import annotations

import bisect
import errno
import mmap
import os
from dataclasses import dataclass

from vfio_user.protocol import DMA_MAP_FLAG_READ, DMA_MAP_FLAG_WRITE, ProtocolError


class DmaFault(Exception):
    """A device access to client memory that no DMA window (with the needed permission) covers."""


@dataclass
class DmaWindow:
    address: int
    size: int
    flags: int
    fd: int | None
    mm: mmap.mmap | None
    skew: int  # bytes between the mmap start and the window start (mmap offsets are page-aligned)

    @property
    def end(self) -> int:
        return self.address + self.size

    def close(self) -> None:
        if self.mm is not None:
            self.mm.close()
            self.mm = None
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class GuestMemory:
    """DMA windows keyed by client (guest-physical or IOVA) address; implements the device's DeviceDma."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._windows: dict[int, DmaWindow] = {}
        self.maps = self.unmaps = 0
        self.faults = 0

    # ---- the protocol's side -----------------------------------------------------------------------------
    def map(self, address: int, size: int, offset: int, flags: int, fd: int | None) -> DmaWindow:
        """Add a window; takes ownership of ``fd`` (closed on failure too)."""
        try:
            if size == 0 or address + size > 1 << 64:
                raise ProtocolError(errno.EINVAL, f"DMA window {address:#x}+{size:#x} is empty or wraps")
            if self._overlapping(address, size):
                raise ProtocolError(errno.EEXIST, f"DMA window {address:#x}+{size:#x} overlaps a mapped one")
            mm = None
            skew = 0
            if fd is not None:
                prot = (mmap.PROT_READ if flags & DMA_MAP_FLAG_READ else 0) | (
                    mmap.PROT_WRITE if flags & DMA_MAP_FLAG_WRITE else 0
                )
                skew = offset % mmap.ALLOCATIONGRANULARITY
                try:
                    mm = mmap.mmap(
                        fd, size + skew, flags=mmap.MAP_SHARED, prot=prot or mmap.PROT_READ, offset=offset - skew
                    )
                except (OSError, ValueError) as exc:
                    raise ProtocolError(errno.EINVAL, f"cannot mmap DMA window {address:#x}: {exc}") from exc
        except ProtocolError:
            if fd is not None:
                os.close(fd)
            raise
        window = DmaWindow(address, size, flags, fd, mm, skew)
        bisect.insort(self._starts, address)
        self._windows[address] = window
        self.maps += 1
        return window

    def unmap(self, address: int, size: int) -> int:
        """Remove every window inside [address, address + size); returns how many.

        The spec asks the client for exact ranges, but QEMU's vIOMMU (intel-iommu) tears an address space
        down with power-of-two ranges that cover several windows or none, as kernel VFIO (type1) allows: those
        succeed.  A range that would split a window is refused (EINVAL), as type1 refuses it.
        """
        end = address + size
        inside, split = [], []
        for window in self._windows.values():
            if window.address >= address and window.end <= end:
                inside.append(window)
            elif window.address < end and address < window.end:
                split.append(window)
        if split:
            w = split[0]
            raise ProtocolError(
                errno.EINVAL, f"unmap {address:#x}+{size:#x} would split the DMA window {w.address:#x}+{w.size:#x}"
            )
        for window in inside:
            self._remove(window)
        return len(inside)

    def unmap_all(self) -> None:
        for window in list(self._windows.values()):
            self._remove(window)

    def _remove(self, window: DmaWindow) -> None:
        del self._windows[window.address]
        self._starts.remove(window.address)
        window.close()
        self.unmaps += 1

    def _overlapping(self, address: int, size: int) -> bool:
        i = bisect.bisect_left(self._starts, address + size)
        return i > 0 and self._windows[self._starts[i - 1]].end > address

    @property
    def windows(self) -> list[DmaWindow]:
        return [self._windows[a] for a in self._starts]

    # ---- the device's side -------------------------------------------------------------------------------
    def _pieces(self, address: int, length: int, need: int):
        """(window, offset into its mmap, length) pieces covering [address, address+length), or DmaFault."""
        pieces = []
        while length > 0:
            i = bisect.bisect_right(self._starts, address) - 1
            window = self._windows[self._starts[i]] if i >= 0 else None
            if window is None or address >= window.end or window.mm is None or not window.flags & need:
                self.faults += 1
                raise DmaFault(f"DMA of {length} bytes at {address:#x}: not in a mapped, accessible window")
            n = min(length, window.end - address)
            pieces.append((window, window.skew + address - window.address, n))
            address += n
            length -= n
        return pieces

    def read(self, address: int, length: int) -> bytes:
        return b"".join(w.mm[o : o + n] for w, o, n in self._pieces(address, length, DMA_MAP_FLAG_READ))

    def write(self, address: int, data: bytes) -> None:
        pos = 0
        for w, o, n in self._pieces(address, len(data), DMA_MAP_FLAG_WRITE):
            w.mm[o : o + n] = data[pos : pos + n]
            pos += n

    async def dma_read(self, addr: int, length: int) -> bytes:
        return self.read(addr, length)

    async def dma_write(self, addr: int, data: bytes) -> None:
        self.write(addr, data)
