"""Helpers for BAR register decoding: byte-lane arithmetic shared by every register window of the core.

The completer hands the core one access at a time (``RegisterBus``) with a byte address and a size of 1, 2,
4 or 8 bytes.  Virtio requires natural-width, naturally aligned accesses (spec 4.1.3.1), so no access
crosses a 64-bit boundary: each window is therefore decoded as an array of 64-bit words ("qwords"), a read
returns the addressed bytes of one qword, and a write replaces the addressed bytes of the fields it covers.
Decoding byte lanes instead of whole registers is what lets a 64-bit register (queue_desc) be written as
two 32-bit halves as well as in one 64-bit access, and lets Linux read the MAC byte by byte.
"""

from __future__ import annotations

from hdl.regbus import byte_enables, merge_bytes, size_mask
from virtio_fpga import spec

__all__ = ["byte_enables", "field_qword", "merge_bytes", "size_mask"]


def field_qword(struct: spec.BitStruct, name: str) -> tuple[int, int, int]:
    """(qword index, byte offset inside the qword, byte size) of a field; fields never straddle qwords."""
    field = struct[name]
    byte = struct.offset_of(name)
    size = field.byte_size
    assert byte // 8 == (byte + size - 1) // 8, f"{struct.name}.{name} straddles a qword"
    return byte // 8, byte % 8, size
