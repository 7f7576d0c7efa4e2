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
from hdl.virtio.skid import SkidBuffer
from hdl.virtio.stream_types import DMA_REQ, SEGMENT, USED, ReadClient

PTR_BITS = 20  # free-running byte positions in the ring (ring index = low bits)

#: A chain's bytes in the ring: where it starts (row aligned), its length (header + frame), where the next
#: chain starts, and whether it is to be dropped instead of sent (header only, or failed).
FRAME = data.StructLayout({"start": PTR_BITS, "total": 16, "end": PTR_BITS, "drop": 1})
#: What the receive side expects for each segment it was handed, in issue order.
_EXPECT = data.StructLayout({"len": 16, "last": 1, "id": 16, "count": 16, "error": 1})


def round_up(value, row_bytes: int):
    return (value + row_bytes - 1) & ~Const(row_bytes - 1, len(value))


class TxDataMover(wiring.Component):
    """Segments in, buffer reads out, chain bytes into the ring (``write_port``), frames and used elements out.

    Why a register at every port: each decision here (ring room, the bytes of a beat, the end of a chain) is a
    comparator or an adder, and a neighbour's ``ready`` or ``valid`` that went straight into it, or came out of
    it, would add this block's depth to the neighbour's.  So ``segs``, ``rd.req`` and ``used`` pass through skid
    buffers (``hdl/virtio/skid.py``), ``frames`` leave from a FIFO, and the appender registers its command
    before it shifts.  ``rd.resp`` arrives from the ReadMux's register slice and is taken by a shallow
    ``ready`` (registers only), so it has no buffer here.  Full rate is kept: one segment and one data beat
    per cycle; a chain's end costs one cycle (the flush of its last row), as before.
    """

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
                "idle": Out(1),  # no read in flight or owed, no used element waiting
            }
        )

    def elaborate(self, platform) -> Module:
        m = Module()
        dwb = self.data_width // 8
        rb = dwb  # ring rows are one DMA beat wide
        m.submodules.appender = app = ByteAppender(self.wp, self.data_width, self.data_width)
        # One entry per read issued (or malformed segment), in issue order; its output is a register.
        m.submodules.expect = expect = ResetInserter(self.clear)(
            fifo.SyncFIFOBuffered(width=_EXPECT.size, depth=self.max_reads)
        )
        m.submodules.seg_in = seg_in = SkidBuffer(SEGMENT)
        m.submodules.req_out = req_out = SkidBuffer(DMA_REQ)
        # ``rd.resp`` comes straight from the ReadMux's register slice (valid and payload are registers there)
        # and this stage's ``ready`` is two LUT levels of its own registers, so it needs no buffer of its own:
        # a 290-bit skid buffer here cost 295 LUTs and 582 flip-flops for no level saved.
        resp_in = self.rd.resp
        m.submodules.used_out = used_out = SkidBuffer(USED)
        # Frames of complete chains; a reset does not drop them (their used elements may be written).  It has room
        # for every chain whose last read is issued (see ``frame_room``): returned data must never wait on this
        # stage, because the ReadMux delivers in request order and a beat held here blocks every other queue's
        # reads behind it.  With a short hand-over queue a sender held up by eth_tx (loopback into an RX queue
        # that needs a ring read) stopped this stage at a chain's end with the next chain's data at the ReadMux
        # head, and the RX ring read behind it never came back: a deadlock, seen by the reset campaign after an RX
        # queue reset under 1500-byte traffic with back-pressure.
        frame_depth = self.max_reads
        m.submodules.frame_q = frame_q = fifo.SyncFIFOBuffered(width=FRAME.size, depth=frame_depth)
        wiring.connect(m, wiring.flipped(self.segs), seg_in.i)
        wiring.connect(m, req_out.o, wiring.flipped(self.rd.req))
        wiring.connect(m, used_out.o, wiring.flipped(self.used))
        m.d.comb += [
            seg_in.clear.eq(self.clear),
            used_out.clear.eq(self.clear),
            self.frames.valid.eq(frame_q.r_rdy),
            self.frames.payload.eq(frame_q.r_data),
            frame_q.r_en.eq(self.frames.ready),
        ]
        # A frame must not reach the sender before the appender has written its last row: it leaves frame_q two
        # cycles after it went in at the earliest, and waits ``delay`` cycles before that.  Chains end at most
        # every other cycle, so one frame at a time is in the delay line; frame_q had room for it when it
        # entered (no other frame goes into frame_q in between).
        delay = ByteAppender.LATENCY - 1
        assert delay <= 1
        frame_push = Signal()
        frame_in = Signal(FRAME)
        frame_delayed = Signal(FRAME)
        frame_waiting = Signal()
        if delay:
            m.d.sync += [frame_waiting.eq(frame_push), frame_delayed.eq(frame_in)]
            m.d.comb += [frame_q.w_en.eq(frame_waiting), frame_q.w_data.eq(frame_delayed)]
        else:
            m.d.comb += [frame_q.w_en.eq(frame_push), frame_q.w_data.eq(frame_in)]

        # ---- issue: reserve ring room, then read
        res_ptr = Signal(PTR_BITS)  # end of the bytes reserved so far
        seg = seg_in.o.payload
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
        # A chain's last segment is issued only while frame_q will have room for its frame.  ``frame_room`` is a
        # register computed with one entry of margin: the count grows by at most one per cycle, so last cycle's
        # "below depth - 1" still means "below depth" now.
        ends_chain = seg.last & ~seg.error
        unpushed = Signal(range(frame_depth + 1))  # chains whose last read is issued, frame not yet in frame_q
        frame_room = Signal()
        m.d.sync += frame_room.eq((unpushed + frame_q.level) < frame_depth - 1)
        can = (
            seg_in.o.valid
            & self.run
            & expect.w_rdy
            & room
            & (~needs_read | req_out.i.ready)
            & (~ends_chain | frame_room)
        )
        m.d.sync += unpushed.eq(unpushed + (can & ends_chain) - frame_q.w_en)
        m.d.comb += [
            seg_in.o.ready.eq(can),
            expect.w_en.eq(can),
            expect.w_data.eq(exp_in),
            req_out.i.payload.addr.eq(seg.addr),
            req_out.i.payload.len.eq(seg.len),
            req_out.i.valid.eq(can & needs_read),
        ]
        with m.If(can & needs_read):
            grown = Signal(PTR_BITS, name="res_grown")
            m.d.comb += grown.eq(res_ptr + seg.len)
            m.d.sync += res_ptr.eq(Mux(seg.last, round_up(grown, rb), grown))

        # ---- receive: append in order, then hand over frame and used element
        head = Signal(_EXPECT)
        m.d.comb += head.eq(expect.r_data)
        beat = resp_in.payload
        chain_start = Signal(PTR_BITS)
        chain_bytes = Signal(range(BUFFER_BYTES + 1))
        chain_err = Signal()
        started = Signal()
        end_id = Signal(16)
        end_count = Signal(16)
        rem = Signal(17)
        cur_rem = Signal(17)
        m.d.comb += cur_rem.eq(Mux(started, rem, head.len))
        used_in = used_out.i.payload
        m.d.comb += [
            app.data.eq(beat.data),
            app.nbytes.eq(Mux(cur_rem < dwb, cur_rem, dwb)),
        ]

        with m.FSM(name="tx_recv"):
            with m.State("RECV"):
                with m.If(expect.r_rdy & head.error):
                    # A malformed segment: the queue stops here (everything before it is complete).
                    m.d.comb += [
                        used_in.error.eq(1),
                        used_in.id.eq(head.id),
                        used_in.count.eq(head.count),
                        used_in.len.eq(0),
                    ]
                    with m.If(used_out.i.ready):
                        m.d.comb += [expect.r_en.eq(1), used_out.i.valid.eq(1)]
                with m.Elif(expect.r_rdy & resp_in.valid):
                    m.d.comb += [resp_in.ready.eq(1), app.valid.eq(1)]
                    m.d.sync += [rem.eq(cur_rem - dwb), started.eq(1)]
                    with m.If(beat.last):
                        m.d.comb += expect.r_en.eq(1)
                        m.d.sync += [
                            started.eq(0),
                            chain_bytes.eq(chain_bytes + head.len),
                            chain_err.eq(chain_err | beat.error),
                        ]
                        with m.If(head.last):
                            m.d.sync += [end_id.eq(head.id), end_count.eq(head.count)]
                            m.next = "END"
            with m.State("END"):
                # Flush the chain's last partial row; the next chain starts at the next row boundary.
                total = chain_bytes
                end = Signal(PTR_BITS)
                m.d.comb += [
                    end.eq(round_up((chain_start + total)[:PTR_BITS], rb)),
                    frame_in.start.eq(chain_start),
                    frame_in.total.eq(total),
                    frame_in.end.eq(end),
                    frame_in.drop.eq(chain_err | (total <= HDR_BYTES)),
                    used_in.id.eq(end_id),
                    used_in.count.eq(end_count),
                    used_in.error.eq(chain_err),
                    # 2.8.4: the device wrote nothing into a TX buffer.  (Driven here with the other fields: a
                    # field driven only by a constant becomes an ``always @*`` that Icarus never runs, i.e. X.)
                    used_in.len.eq(0),
                ]
                with m.If(self.clear):
                    m.next = "RECV"  # a reset forgets the chain: nothing of it is handed on
                with m.Elif(frame_q.w_rdy & ~frame_waiting & used_out.i.ready):
                    m.d.comb += [
                        app.flush.eq(1),
                        app.restart.eq(1),
                        app.init_pos.eq(end),
                        frame_push.eq(1),
                        used_out.i.valid.eq(1),
                    ]
                    m.d.sync += [chain_start.eq(end), chain_bytes.eq(0), chain_err.eq(0)]
                    m.next = "RECV"
        with m.If(self.clear):
            # Drop the chain in progress: its bytes were never handed on, so the ring space is reused.  No read is
            # in flight (clear comes only when quiesced) and a frame entering frame_q now is counted there: none
            # is unpushed.
            m.d.sync += unpushed.eq(0)
            m.d.comb += [app.restart.eq(1), app.init_pos.eq(chain_start)]
            m.d.sync += [res_ptr.eq(chain_start), chain_bytes.eq(0), chain_err.eq(0), started.eq(0)]
        # ``idle`` is a register (the engine's reset logic sits behind it): idle now and nothing started this
        # cycle, so it may rise a cycle late but never claims idle while a read or a used element is owed.
        idle_now = (expect.level == 0) & ~used_out.o.valid & used_out.i.ready
        m.d.sync += self.idle.eq(idle_now & ~expect.w_en & ~used_out.i.valid)
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
