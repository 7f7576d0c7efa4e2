"""``RxDataMover``: writes received frames into receiveq buffer chains (5.1.6.3, 5.1.6.4).

A frame waits in the RX frame buffer (``hdl/virtio/framebuf.py``, stored behind a fresh virtio_net_hdr with
num_buffers = 1) until the parser has the next chain's segments.  Each segment gets ``min(len, bytes left)``
bytes in one DMA write (posted: no latency to wait for); a chain's remaining buffers stay unused.  Without
VIRTIO_NET_F_MRG_RXBUF the chain must hold the whole frame (5.1.6.3.1): a frame larger than the chain is a
driver error (DEVICE_NEEDS_RESET), never a silent truncation.  The chain's used element (length = bytes
written, 2.8.4) goes to the used-element writer after the last data beat was handed to the write port, so on
the link the used descriptor follows its data (posted writes stay in order, PCIe Base A2a).
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hdl.virtio.framebuf import BUFFER_BYTES, RxFrameBuffer
from hdl.virtio.skid import SkidBuffer
from hdl.virtio.stream_types import SEGMENT, USED, WriteClient

#: A segment as the mover keeps it: ``empty`` (its buffer has no byte) decided as it arrives.
_SEG_IN = data.StructLayout({"seg": SEGMENT, "empty": 1})


#: Writes whose ``done`` may be outstanding at once: the write mux and the DMA engine's write queue hold fewer.
_MAX_WRITES_OWED = 64


class RxDataMover(wiring.Component):
    """Segments in, frame bytes out through ``wr``, used elements out; drives ``rxbuf``'s extractor."""

    def __init__(self, rxbuf: RxFrameBuffer, data_width: int) -> None:
        self.rxbuf = rxbuf
        self.data_width = data_width
        super().__init__(
            {
                "segs": In(stream.Signature(SEGMENT)),
                "wr": Out(WriteClient(data_width)),
                "used": Out(stream.Signature(USED)),
                "run": In(1),  # may start a new write (queue running, not broken, no reset pending)
                "clear": In(1),
                "discard": In(1),  # the ring is dead (DEVICE_NEEDS_RESET): drop stored frames, do not hold the wire
                "idle": Out(1),  # no write owed: none to start, none whose ``done`` has not come
                "frames": Out(32),  # frames written into the ring (statistics)
            }
        )

    def elaborate(self, platform) -> Module:
        m = Module()
        rx = self.rxbuf
        ext = rx.extractor
        # Segments from the parser land in a skid buffer: ``segs.ready`` is a register, and the segment the
        # decisions below look at is one, with "no bytes" already decided on the way in.
        m.submodules.seg_in = seg_in = SkidBuffer(_SEG_IN)
        m.d.comb += [
            seg_in.i.valid.eq(self.segs.valid),
            seg_in.i.payload.seg.eq(self.segs.payload),
            seg_in.i.payload.empty.eq(self.segs.payload.len == 0),
            self.segs.ready.eq(seg_in.i.ready),
            seg_in.clear.eq(self.clear),
        ]
        seg = seg_in.o.payload.seg
        seg_valid = seg_in.o.valid
        byte_pos = Signal(range(BUFFER_BYTES + 1))
        remaining = Signal(range(BUFFER_BYTES + 1))
        fresh = Signal(init=1)  # no byte of the current frame written yet
        all_written = Signal()  # not fresh, and no byte of the frame left (kept as a register: no compare here)
        cur_rem = Signal(range(BUFFER_BYTES + 1))
        m.d.comb += cur_rem.eq(Mux(fresh, rx.frame_bytes, remaining))
        n = Signal(range(BUFFER_BYTES + 1))
        m.d.comb += n.eq(Mux(seg.len < cur_rem, seg.len, cur_rem))
        nothing = Signal()  # this segment gets no byte (n == 0)
        m.d.comb += nothing.eq(all_written | seg_in.o.payload.empty)
        req_pending = Signal()  # the write request of this transfer is not yet accepted (``wr.req.valid``)
        xfer_len = Signal(range(BUFFER_BYTES + 1))
        # Decided when a transfer starts, used when it ends: the bytes left after it, and whether that is none.
        left_after = Signal.like(remaining)
        finishes = Signal()
        end_id = Signal(16)
        end_count = Signal(16)
        end_bad = Signal()
        used = self.used
        with m.If(used.valid & used.ready):
            m.d.sync += used.valid.eq(0)

        # The write of a transfer: only in XFER are ``req_pending`` or the extractor's ``valid`` ever set, so
        # the port is driven from them directly (no state decode between the registers and the port).
        m.d.comb += [
            self.wr.req.valid.eq(req_pending),
            self.wr.req.payload.addr.eq(seg.addr),
            self.wr.req.payload.len.eq(xfer_len),
            self.wr.data.valid.eq(ext.valid & ~req_pending),
            self.wr.data.payload.data.eq(ext.data),
            self.wr.data.payload.keep.eq(ext.keep),
            self.wr.data.payload.last.eq(ext.last),
            ext.ready.eq(self.wr.data.ready & ~req_pending),
        ]

        # Writes handed to the write port whose ``done`` (last TLP taken by RQ) has not come.  The mover is done
        # with a write once its last beat is in the port, but its TLPs may still wait in the WriteMux and the DMA
        # engine's write queue; a queue reset must wait for them before queue_reset reads 0 (4.1.4.3.2), since
        # the driver may free the buffers as soon as it sees the 0.
        writes_owed = Signal(range(_MAX_WRITES_OWED + 1))
        m.d.sync += writes_owed.eq(writes_owed + (self.wr.req.valid & self.wr.req.ready) - self.wr.done)
        in_idle = Signal()
        m.d.comb += self.idle.eq(in_idle & (writes_owed == 0))

        with m.FSM(name="rx_move"):
            with m.State("IDLE"):
                # A segment waiting in the skid buffer is not owed: a reset drops it, as the parser's own.
                m.d.comb += in_idle.eq(1)
                with m.If(self.discard):
                    m.d.comb += rx.consume.eq(rx.full)
                with m.Elif(self.run & rx.full & seg_valid):
                    with m.If(seg.error):
                        with m.If(~used.valid):
                            m.d.comb += seg_in.o.ready.eq(1)
                            m.d.sync += [
                                used.valid.eq(1),
                                used.payload.error.eq(1),
                                used.payload.id.eq(seg.id),
                                used.payload.count.eq(seg.count),
                                used.payload.len.eq(0),
                            ]
                    with m.Elif(nothing):
                        # The frame is already written: the rest of the chain stays unused.
                        m.d.comb += seg_in.o.ready.eq(1)
                        with m.If(seg.last):
                            m.d.sync += [end_id.eq(seg.id), end_count.eq(seg.count), end_bad.eq(~all_written)]
                            m.next = "DONE"
                    with m.Elif(~ext.busy):
                        m.d.comb += [ext.start.eq(1), ext.pos.eq(byte_pos), ext.length.eq(n)]
                        m.d.sync += [
                            xfer_len.eq(n),
                            req_pending.eq(1),
                            left_after.eq(cur_rem - n),
                            finishes.eq(seg.len >= cur_rem),
                            fresh.eq(0),
                        ]
                        m.next = "XFER"
            with m.State("XFER"):
                with m.If(self.wr.req.valid & self.wr.req.ready):
                    m.d.sync += req_pending.eq(0)
                with m.If(self.wr.data.valid & self.wr.data.ready & ext.last):
                    m.d.comb += seg_in.o.ready.eq(1)
                    m.d.sync += [byte_pos.eq(byte_pos + xfer_len), remaining.eq(left_after), all_written.eq(finishes)]
                    with m.If(seg.last):
                        m.d.sync += [end_id.eq(seg.id), end_count.eq(seg.count), end_bad.eq(~finishes)]
                        m.next = "DONE"
                    with m.Else():
                        m.next = "IDLE"
            with m.State("DONE"):
                with m.If(~used.valid):
                    m.d.sync += [
                        used.valid.eq(1),
                        used.payload.error.eq(end_bad),  # the frame is larger than the chain (5.1.6.3.1)
                        used.payload.id.eq(end_id),
                        used.payload.count.eq(end_count),
                        used.payload.len.eq(byte_pos),
                        byte_pos.eq(0),
                        fresh.eq(1),
                        all_written.eq(0),
                    ]
                    with m.If(~end_bad):
                        m.d.comb += rx.consume.eq(1)
                        m.d.sync += self.frames.eq(self.frames + 1)
                    m.next = "IDLE"
        with m.If(self.clear):
            m.d.sync += [byte_pos.eq(0), fresh.eq(1), all_written.eq(0), used.valid.eq(0)]
        return m
