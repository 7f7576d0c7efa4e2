"""``ChainParser``: turns a queue's available descriptors into buffer segments and checks every rule on the way.

It sees descriptors in ring order (the fetcher only passes available ones) and groups them into chains
(2.8.6: NEXT links a descriptor to the one after it; the chain's buffer id is its last descriptor's).  For each
descriptor it emits one :data:`~hdl.virtio.stream_types.SEGMENT` with the buffer's byte offset in the chain's
byte stream (virtio_net_hdr + frame, 5.1.6), or, when a rule is broken, one segment with ``error`` set, after
which it passes nothing until ``clear``.  The rules (all as the single-FSM engine had them):

* a buffer has a length (2.8.4: zero-length descriptors are not allowed here);
* no INDIRECT descriptors: VIRTIO_F_INDIRECT_DESC is never offered (2.8.19);
* a chain never has more descriptors than the queue (2.8.6, 2.8.10.1);
* transmitq buffers are device-readable, receiveq buffers device-writable (5.1.6, 2.8.2 WRITE flag);
* a transmitted chain holds at most virtio_net_hdr + MAX_FRAME_LEN bytes and at least the header (5.1.6.2);
* a descriptor whose read failed (UR/CA/poisoned/timeout) is an error, too.

The receive-side rule "the frame fits the chain" needs the frame, so the RX data mover checks it.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from hdl.virtio.framebuf import BUFFER_BYTES, HDR_BYTES
from hdl.virtio.stream_types import DESC_ENTRY, SEGMENT
from virtio_fpga.spec import DescFlag

_BIT = {flag: int(flag).bit_length() - 1 for flag in DescFlag}


class ChainParser(wiring.Component):
    """Descriptors in, segments out; ``device_writes`` selects receiveq (True) or transmitq (False) rules."""

    def __init__(self, device_writes: bool) -> None:
        self.device_writes = device_writes
        super().__init__(
            {
                "size": In(16),
                "clear": In(1),
                "descs": In(stream.Signature(DESC_ENTRY)),
                "segs": Out(stream.Signature(SEGMENT)),
                "descs_seen": Out(32),  # statistics: descriptors consumed
            }
        )

    def elaborate(self, platform) -> Module:
        m = Module()
        d = self.descs.payload.desc
        flags = d.flags
        has_next = flags[_BIT[DescFlag.NEXT]]
        is_write = flags[_BIT[DescFlag.WRITE]]
        is_indirect = flags[_BIT[DescFlag.INDIRECT]]
        chain_len = Signal(16)  # descriptors of the current chain before this one
        pos = Signal(range(BUFFER_BYTES + 2))  # bytes of the current chain before this one (saturating)
        dead = Signal()

        bad = Signal()
        wrong_dir = ~is_write if self.device_writes else is_write
        rules = (
            (d.len == 0)
            | is_indirect
            | (has_next & (chain_len + 1 >= self.size))
            | wrong_dir
            | self.descs.payload.error
        )
        if not self.device_writes:
            end = pos + d.len
            rules = rules | (end > BUFFER_BYTES) | (~has_next & (end < HDR_BYTES))
        m.d.comb += bad.eq(rules)

        out = self.segs
        take = self.descs.valid & (~out.valid | out.ready) & ~dead
        m.d.comb += self.descs.ready.eq((~out.valid | out.ready) & ~dead)
        with m.If(out.valid & out.ready):
            m.d.sync += out.valid.eq(0)
        with m.If(take):
            m.d.sync += [
                out.valid.eq(1),
                out.payload.addr.eq(d.addr),
                out.payload.len.eq(d.len),
                out.payload.pos.eq(pos),
                out.payload.last.eq(~has_next | bad),
                out.payload.id.eq(d.id),
                out.payload.count.eq(chain_len + 1),
                out.payload.error.eq(bad),
                self.descs_seen.eq(self.descs_seen + 1),
            ]
            with m.If(bad):
                m.d.sync += dead.eq(1)
            with m.Elif(has_next):
                grown = pos + d.len
                m.d.sync += [chain_len.eq(chain_len + 1), pos.eq(Mux(grown > BUFFER_BYTES, BUFFER_BYTES + 1, grown))]
            with m.Else():
                m.d.sync += [chain_len.eq(0), pos.eq(0)]
        with m.If(self.clear):
            m.d.sync += [chain_len.eq(0), pos.eq(0), dead.eq(0), out.valid.eq(0)]
        return m
