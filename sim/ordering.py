"""A bus-level check that no used descriptor reaches the host before the data it describes (spec 2.8.4 + PCIe).

The pipelined engine keeps this on purpose (``hdl/virtio/README.md``, ordering rule 1); this checker watches it
from the outside.  It sees every write TLP on the requester stream in the order the PCIe core takes them (the
order the link keeps for posted writes, PCIe Base A2a) and follows one receive queue:

* a write outside the ring is data: the buffer it starts in is marked written;
* a write of 8 bytes at offset 8 of a ring slot is a used element: the slot still holds the driver's descriptor
  (the device writes only id, len and flags; the driver cannot reuse the slot before it has seen this write),
  so its ``addr`` names the buffer, and that buffer must have been written since its previous used element.

On a receive queue every used element has written bytes (at least the 12-byte virtio_net_hdr, 5.1.6.4).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from virtio_fpga import spec

DESC = spec.PACKED_DESC.size


@dataclass
class UsedAfterData:
    """Follows one device-writable ring: ``on_write(addr, nbytes)`` for every write TLP, in RQ order."""

    ring_iova: int
    ring_size: int
    read_desc: object  # callable(slot) -> bytes of the slot's 16-byte descriptor as host memory holds it now
    used_seen: int = 0
    violations: list[str] = field(default_factory=list)
    _written: set[int] = field(default_factory=set)

    def on_write(self, addr: int, nbytes: int) -> None:
        offset = addr - self.ring_iova
        if 0 <= offset < self.ring_size * DESC:
            if offset % DESC == 8 and nbytes == 8:
                slot = offset // DESC
                desc = spec.PACKED_DESC.unpack(self.read_desc(slot))
                self.used_seen += 1
                if desc["addr"] in self._written:
                    self._written.discard(desc["addr"])
                elif len(self.violations) < 20:
                    self.violations.append(
                        f"used element #{self.used_seen} (slot {slot}, buffer {desc['addr']:#x}) before its data"
                    )
            return
        self._written.add(addr)
