"""Byte-lane arithmetic for :class:`hdl.signatures.RegisterBus` accesses, shared by every register block.

The completer hands a block one access at a time with a byte address and a size of 1, 2, 4 or 8 bytes.
Virtio requires natural-width, naturally aligned accesses (spec 4.1.3.1), so no access crosses a 64-bit
boundary: a block decodes its window as 64-bit words ("qwords"), a write carries its value shifted to its
byte lanes, and only the enabled bytes of a register change.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Mux, Value


def byte_enables(offset: Value, size: Value) -> Value:
    """8 byte-enable bits of a qword for an access of ``1 << size`` bytes at byte ``offset`` (0..7)."""
    lanes = Mux(size == 0, 0x01, Mux(size == 1, 0x03, Mux(size == 2, 0x0F, 0xFF)))
    return (Cat(lanes, Const(0, 8)) << offset)[0:8]


def size_mask(size: Value) -> Value:
    """Mask of the low ``1 << size`` bytes of a 64-bit read (read data is returned in the low bytes)."""
    return Mux(
        size == 0,
        Const(0xFF, 64),
        Mux(size == 1, Const(0xFFFF, 64), Mux(size == 2, Const(0xFFFF_FFFF, 64), Const((1 << 64) - 1, 64))),
    )


def merge_bytes(old: Value, wq: Value, be: Value, byte_off: int) -> Value:
    """``old`` with the bytes a write covers replaced: ``byte_off`` is the field's byte offset in its qword."""
    nbytes = len(old) // 8
    assert nbytes * 8 == len(old), "register fields are whole bytes"
    return Cat(*(Mux(be[byte_off + i], wq.word_select(byte_off + i, 8), old.word_select(i, 8)) for i in range(nbytes)))
