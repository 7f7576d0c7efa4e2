"""The transmit path: ``TxDataMover`` reads transmitq buffers into a frame ring, ``TxFrameSender`` puts the
frames on ``eth_tx``.

Why a ring and many reads: at 500 ns of host read latency one read in flight moves one frame per ~130 cycles.
The mover issues the read of every segment the parser hands it as long as the ring has room for its bytes
(reserved at issue, so returned data never waits), up to ``max_reads`` reads in flight.  The ``DmaReadPort``
completes requests in order, so the chains' bytes arrive in ring order and are simply appended: each chain
(virtio_net_hdr + frame, 5.1.6) starts at a row boundary of the ring.  Once a chain's last byte is in, the mover
hands the frame to the sender and the chain's used element to the used-element writer, so a used descriptor is
written only after all the data it describes has been read (the device is done with the buffer, 2.8.4).

A read error (UR/CA/poisoned/timeout) or a segment the parser marked malformed ends the queue with an
``error`` used element; such a chain's bytes are never sent.
"""

from __future__ import annotations

from amaranth.hdl import Const, Module, Mux, ResetInserter, Signal
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from hdl.signatures import EthernetStream
from hdl.virtio.framebuf import BUFFER_BYTES, HDR_BYTES, ByteAppender, ByteExtractor
from hdl.virtio.stream_types import SEGMENT, USED, ReadClient

PTR_BITS = 20  # free-running byte positions in the ring (ring index = low bits)

#: A chain's bytes in the ring: where it starts (row aligned), its length (header + frame), where the next
#: chain starts, and whether it is to be dropped instead of sent (header only, or failed).
FRAME = data.StructLayout({"start": PTR_BITS, "total": 16, "end": PTR_BITS, "drop": 1})
#: What the receive side expects for each segment it was handed, in issue order.
_EXPECT = data.StructLayout({"len": 16, "last": 1, "id": 16, "count": 16, "error": 1})


def round_up(value, row_bytes: int):
    return (value + row_bytes - 1) & ~Const(row_bytes - 1, len(value))


class TxDataMover(wiring.Component):
    """Segments in, buffer reads out, chain bytes into the ring (``write_port``), frames and used elements out."""

    def __init__(self, write_port, data_width: int, ring_bytes: int, max_reads: int = 32) -> None:
        self.wp = write_port
        self.data_width = data_width
        self.ring_bytes = ring_bytes
        self.max_reads = max_reads
        super().__init__(
            {
                "segs": In(stream.Signature(SEGMENT)),
                "rd": Out(ReadClient(data_width)),
                "frames": Out(stream.Signature(FRAME)),
                "used": Out(stream.Signature(USED)),
                "freed": In(PTR_BITS),  # ring bytes below this position are free again (from the sender)
                "run": In(1),  # may issue reads (queue running, not broken, no reset pending)
                "clear": In(1),  # forget the chain in progress (only while no read is in flight)
                "idle": Out(1),  # no read in flight
            }
        )

    def elaborate(self, platform) -> Module:
        m = Module()
        dwb = self.data_width // 8
        rb = dwb  # ring rows are one DMA beat wide
        m.submodules.appender = app = ByteAppender(self.wp, self.data_width, self.data_width)
        m.submodules.expect = expect = ResetInserter(self.clear)(
            fifo.SyncFIFO(width=_EXPECT.size, depth=self.max_reads)
        )

        # ---- issue: reserve ring room, then read
        res_ptr = Signal(PTR_BITS)  # end of the bytes reserved so far
        seg = self.segs.payload
        need = Signal(PTR_BITS + 1)
        m.d.comb += need.eq(Mux(seg.error, 0, seg.len) + rb)  # + one row of alignment slack
        used_space = Signal(PTR_BITS)
        m.d.comb += used_space.eq(res_ptr - self.freed)
        room = used_space + need <= self.ring_bytes
        needs_read = ~seg.error
        exp_in = Signal(_EXPECT)
        m.d.comb += [
            exp_in.len.eq(seg.len),
            exp_in.last.eq(seg.last),
            exp_in.id.eq(seg.id),
            exp_in.count.eq(seg.count),
            exp_in.error.eq(seg.error),
        ]
        # Frame hand-over queue, with room for every chain whose last read is issued.  Returned data must never
        # wait on this stage (the ReadMux delivers in order: a beat that waits here blocks every other queue's
        # reads behind it), so a chain's end must never wait for the sender: with a one-entry hand-over, a
        # sender held up by eth_tx (loopback into an RX queue that needs a ring read) stopped this stage in
        # END with the next chain's data at the ReadMux head, and the RX ring read behind it never came back:
        # a deadlock (seen after an RX queue reset under 1500-byte traffic with back-pressure).  The last
        # segment of a chain is therefore issued only when the queue has room for its frame.
        m.submodules.frame_q = frame_q = fifo.SyncFIFO(width=FRAME.size, depth=self.max_reads)
        unpushed = Signal(range(self.max_reads + 1))  # chains whose last read is issued, frame not yet queued
        frame_room = Signal()
        m.d.comb += frame_room.eq((unpushed + frame_q.r_level) < self.max_reads)
        counts = self.segs.payload.last & ~seg.error
        can = (
            self.segs.valid
            & self.run
            & expect.w_rdy
            & room
            & (~needs_read | self.rd.req.ready)
            & (~counts | frame_room)
        )
        m.d.comb += [
            self.segs.ready.eq(can),
            self.rd.req.valid.eq(
                self.segs.valid & self.run & needs_read & expect.w_rdy & room & (~counts | frame_room)
            ),
            self.rd.req.payload.addr.eq(seg.addr),
            self.rd.req.payload.len.eq(seg.len),
            expect.w_en.eq(can),
            expect.w_data.eq(exp_in),
        ]
        with m.If(can & ~seg.error):
            grown = Signal(PTR_BITS, name="res_grown")
            m.d.comb += grown.eq(res_ptr + seg.len)
            m.d.sync += res_ptr.eq(Mux(seg.last, round_up(grown, rb), grown))

        # ---- receive: append in order, then hand over frame and used element
        head = Signal(_EXPECT)
        m.d.comb += head.eq(expect.r_data)
        chain_start = Signal(PTR_BITS)
        chain_bytes = Signal(range(BUFFER_BYTES + 1))
        chain_err = Signal()
        started = Signal()
        end_id = Signal(16)
        end_count = Signal(16)
        rem = Signal(17)
        cur_rem = Signal(17)
        m.d.comb += cur_rem.eq(Mux(started, rem, head.len))
        resp = self.rd.resp
        frames = self.frames
        used = self.used
        outs_free = frame_q.w_rdy & (~used.valid | used.ready)
        frame_in = Signal(FRAME)
        m.d.comb += [
            frame_q.w_data.eq(frame_in),
            frames.valid.eq(frame_q.r_rdy),
            frames.payload.eq(frame_q.r_data),
            frame_q.r_en.eq(frames.ready),
        ]
        pushed = Signal()
        with m.If(used.valid & used.ready):
            m.d.sync += used.valid.eq(0)
        m.d.comb += [app.data.eq(resp.payload.data), app.init_acc.eq(0)]

        with m.FSM(name="tx_recv"):
            with m.State("RECV"):
                with m.If(expect.r_rdy & head.error):
                    # A malformed segment: the queue stops here (everything before it is complete).
                    with m.If(outs_free):
                        m.d.comb += expect.r_en.eq(1)
                        m.d.sync += [
                            used.valid.eq(1),
                            used.payload.error.eq(1),
                            used.payload.id.eq(head.id),
                            used.payload.len.eq(0),
                            used.payload.count.eq(head.count),
                        ]
                with m.Elif(expect.r_rdy):
                    m.d.comb += [resp.ready.eq(1), app.nbytes.eq(Mux(cur_rem < dwb, cur_rem, dwb))]
                    with m.If(resp.valid):
                        m.d.comb += app.valid.eq(1)
                        m.d.sync += [rem.eq(cur_rem - dwb), started.eq(1)]
                        with m.If(resp.payload.last):
                            m.d.comb += expect.r_en.eq(1)
                            m.d.sync += [
                                started.eq(0),
                                chain_bytes.eq(chain_bytes + head.len),
                                chain_err.eq(chain_err | resp.payload.error),
                            ]
                            with m.If(head.last):
                                m.d.sync += [end_id.eq(head.id), end_count.eq(head.count)]
                                m.next = "END"
            with m.State("END"):
                # Flush the chain's last partial row; the next chain starts at the next row boundary.
                total = chain_bytes
                end = Signal(PTR_BITS)
                m.d.comb += end.eq(round_up((chain_start + total)[:PTR_BITS], rb))
                with m.If(self.clear):
                    m.next = "RECV"  # a reset forgets the chain: nothing of it is handed on
                with m.Elif(outs_free):
                    m.d.comb += [app.flush.eq(1), app.restart.eq(1), app.init_pos.eq(end)]
                    m.d.comb += [
                        frame_q.w_en.eq(1),
                        pushed.eq(1),
                        frame_in.start.eq(chain_start),
                        frame_in.total.eq(total),
                        frame_in.end.eq(end),
                        frame_in.drop.eq(chain_err | (total <= HDR_BYTES)),
                    ]
                    m.d.sync += [
                        used.valid.eq(1),
                        used.payload.id.eq(end_id),
                        used.payload.count.eq(end_count),
                        used.payload.error.eq(chain_err),
                        used.payload.len.eq(0),  # 2.8.4: the device wrote nothing into a TX buffer
                        chain_start.eq(end),
                        chain_bytes.eq(0),
                        chain_err.eq(0),
                    ]
                    m.next = "RECV"
        m.d.sync += unpushed.eq(unpushed + (can & counts) - pushed)
        with m.If(self.clear):
            # Drop the chain in progress: its bytes were never handed on, so the ring space is reused.  Queued
            # frames stay (their used elements may be written); no read is in flight, so none is unpushed.
            m.d.sync += unpushed.eq(0)
            m.d.comb += [app.restart.eq(1), app.init_pos.eq(chain_start)]
            m.d.sync += [res_ptr.eq(chain_start), chain_bytes.eq(0), chain_err.eq(0), started.eq(0)]
        m.d.comb += self.idle.eq(~expect.r_rdy)
        return m


class TxFrameSender(wiring.Component):
    """Frames out of the ring (``read_port``) onto ``eth`` at the ring width, without the virtio_net_hdr
    (5.1.6.2: the header is for the device).  A frame once started is always finished: its used element may
    already be written, and a raised ``valid`` keeps its payload until accepted."""

    def __init__(self, read_port, data_width: int, ring_bytes: int) -> None:
        self.rp = read_port
        self.data_width = data_width
        self.ring_bytes = ring_bytes
        super().__init__(
            {
                "frames": In(stream.Signature(FRAME)),
                "eth": Out(EthernetStream(data_width)),
                "freed": Out(PTR_BITS),
                "sent": Out(32),  # frames put on the wire (statistics)
                "idle": Out(1),
            }
        )

    def elaborate(self, platform) -> Module:
        m = Module()
        rb = self.data_width // 8
        m.submodules.extractor = ext = ByteExtractor(self.rp, self.data_width)
        f = self.frames.payload
        sending = Signal()
        m.d.comb += [
            ext.base_row.eq(f.start[(rb - 1).bit_length() :]),
            ext.pos.eq(HDR_BYTES),
            ext.length.eq(f.total - HDR_BYTES),
            self.eth.valid.eq(ext.valid),
            self.eth.data.eq(ext.data),
            self.eth.keep.eq(ext.keep),
            self.eth.last.eq(ext.last),
            self.eth.user.eq(0),
            ext.ready.eq(self.eth.ready),
        ]
        with m.If(self.frames.valid & ~sending):
            with m.If(f.drop):
                m.d.comb += self.frames.ready.eq(1)
                m.d.sync += self.freed.eq(f.end)
            with m.Elif(~ext.busy):
                m.d.comb += ext.start.eq(1)
                m.d.sync += sending.eq(1)
        with m.If(sending & ext.valid & ext.ready & ext.last):
            m.d.comb += self.frames.ready.eq(1)
            m.d.sync += [sending.eq(0), self.freed.eq(f.end), self.sent.eq(self.sent + 1)]
        m.d.comb += self.idle.eq(~self.frames.valid)
        return m
