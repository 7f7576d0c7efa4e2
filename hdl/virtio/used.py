"""``UsedWriter`` and ``EventNotifier``: used descriptors back to the ring, then whether to interrupt.

``UsedWriter`` (2.8.4-2.8.6): each completed chain becomes one 8-byte write of ``len, id, flags`` at offset 8 of
the used slot (one aligned quadword: the flags become visible together with id and len; ``addr`` is left as the
driver wrote it), and the used position moves on by the chain's descriptor count (2.8.6).  With
VIRTIO_F_IN_ORDER (2.8.21.1, ``batch``) consecutive elements that are already waiting are folded into one used
descriptor carrying the last buffer id; the pending element waits while an earlier used write is still in
flight, so that elements completing meanwhile join it.  The first time a queue is enabled it writes the
device's own event suppression structure (ENABLE, 2.8.10).  An ``error`` element stops the queue: ``fatal``
pulses once every element before it has been written, and everything after it is dropped until ``clear``.

``EventNotifier`` (2.8.10, 2.8.14): once used writes are out (their ``done`` came back, so a read issued now is
ordered behind them on RQ, PCIe Base B2a), it reads the driver's event suppression structure once for the whole
range of used positions published since the last look, and asks for an interrupt if the driver wants one
(ENABLE; DESC with VIRTIO_F_EVENT_IDX when the event offset lies in that range; never with DISABLE).  The
interrupt request is made only after that read's completion has come back, and a read completion cannot pass
the posted writes before it (PCIe Base D2a), so the MSI-X message, which leaves the hard IP on a path that is
not ordered with RQ (PG213 "Transmit Transaction Ordering"), can never reach the host before the used
descriptor it announces.  One read is in flight per queue; positions published meanwhile wait for the next.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from hdl import layouts
from hdl.virtio.stream_types import USED, ReadClient, WriteClient, advance, ring_distance
from virtio_fpga import spec
from virtio_fpga.spec import DescFlag, EventFlags

DESC_BYTES = spec.PACKED_DESC.size


class UsedWriter(wiring.Component):
    """Used elements in, used-descriptor writes out; ``pub_*`` is the used position known to be out."""

    def __init__(self, data_width: int, *, max_writes: int = 8) -> None:
        self.data_width = data_width
        self.max_writes = max_writes
        super().__init__(
            {
                "size": In(16),
                "desc_base": In(64),
                "device_area": In(64),
                "batch": In(1),  # IN_ORDER negotiated and this queue may fold elements
                "dev_event": In(1),  # pulse: queue enabled, write our event suppression structure
                "dev_event_ok": In(1),  # it may be written now (queue enabled, no reset, not broken)
                "run": In(1),  # may write (else pending and arriving elements are dropped: a reset is coming)
                "clear": In(1),
                "used": In(stream.Signature(USED)),
                "wr": Out(WriteClient(data_width)),
                "fatal": Out(1),  # pulse: an error element reached the head (DEVICE_NEEDS_RESET)
                "pub_idx": Out(16),  # used position up to which writes are out
                "pub_wrap": Out(1, init=1),
                "idle": Out(1),
                "writes": Out(32),  # used-descriptor writes (statistics)
            }
        )

    def elaborate(self, platform) -> Module:
        m = Module()
        used_idx = Signal(16)
        used_wrap = Signal(init=1)
        pend = Signal()
        pend_id = Signal(16)
        pend_len = Signal(32)
        pend_count = Signal(16)
        dead = Signal()
        need_dev_event = Signal()
        req_sent = Signal()
        m.submodules.inflight = inflight = fifo.SyncFIFO(width=17, depth=self.max_writes)
        rec = self.used.payload
        wr = self.wr
        size = self.size

        # ---- take elements: fold into the pending one (IN_ORDER) or make it pending
        writing = Signal()
        can_fold = pend & self.batch & ~rec.error & (pend_count + rec.count < (size >> 1) + 1)
        with m.If(dead | ~self.run):
            m.d.comb += self.used.ready.eq(1)  # the queue is stopped: drop what still arrives
        with m.Elif(~writing):
            with m.If(self.used.valid & rec.error & ~pend):
                m.d.comb += [self.used.ready.eq(1), self.fatal.eq(1)]
                m.d.sync += dead.eq(1)
            with m.Elif(self.used.valid & ~rec.error & (~pend | can_fold)):
                m.d.comb += self.used.ready.eq(1)
                m.d.sync += [
                    pend.eq(1),
                    pend_id.eq(rec.id),
                    pend_len.eq(rec.len),
                    pend_count.eq(Mux(pend, pend_count + rec.count, rec.count)),
                ]

        # ---- write: our event suppression structure first, then the pending element when nothing folds in
        wrap_flags = Mux(used_wrap, DescFlag.AVAIL | DescFlag.USED, 0)
        write_flag = Mux(pend_len != 0, DescFlag.WRITE, 0)  # 2.8.5: WRITE says len bytes were written
        used_word = Cat(pend_len, pend_id, Const(0, 16) | wrap_flags | write_flag)
        with m.FSM(name="used"):
            with m.State("IDLE"):
                m.d.comb += self.idle.eq((~pend | ~self.run) & ~inflight.r_rdy)
                with m.If(need_dev_event & self.dev_event_ok):
                    m.next = "DEVEVT"
                with m.Elif(~self.run):
                    m.d.sync += pend.eq(0)
                # With IN_ORDER the pending element also waits while an earlier used write is still on its way
                # (its ``done`` has not come back): elements that complete meanwhile fold into it, so under load
                # one write covers a batch instead of racing each chain to the link.
                with m.Elif(pend & ~(self.used.valid & can_fold) & inflight.w_rdy & ~(self.batch & inflight.r_rdy)):
                    m.d.comb += writing.eq(1)
                    m.next = "USED"
            with m.State("USED"):
                m.d.comb += [
                    writing.eq(1),
                    wr.req.valid.eq(~req_sent),
                    wr.req.payload.addr.eq(self.desc_base + used_idx * DESC_BYTES + 8),
                    wr.req.payload.len.eq(8),
                    wr.data.valid.eq(req_sent),
                    wr.data.payload.data.eq(used_word),
                    wr.data.payload.keep.eq(0xFF),
                    wr.data.payload.last.eq(1),
                ]
                with m.If(wr.req.valid & wr.req.ready):
                    m.d.sync += req_sent.eq(1)
                with m.If(wr.data.valid & wr.data.ready):
                    new_idx, new_wrap = advance(used_idx, used_wrap, pend_count, size)
                    m.d.comb += [inflight.w_en.eq(1), inflight.w_data.eq(Cat(new_idx, new_wrap))]
                    m.d.sync += [
                        req_sent.eq(0),
                        used_idx.eq(new_idx),
                        used_wrap.eq(new_wrap),
                        pend.eq(0),
                        self.writes.eq(self.writes + 1),
                    ]
                    m.next = "IDLE"
            with m.State("DEVEVT"):
                m.d.comb += [
                    writing.eq(1),
                    wr.req.valid.eq(~req_sent),
                    wr.req.payload.addr.eq(self.device_area),
                    wr.req.payload.len.eq(spec.EVENT_SUPPRESS.size),
                    wr.data.valid.eq(req_sent),
                    wr.data.payload.data.eq(spec.EVENT_SUPPRESS.to_int(flags=EventFlags.ENABLE)),
                    wr.data.payload.keep.eq((1 << spec.EVENT_SUPPRESS.size) - 1),
                    wr.data.payload.last.eq(1),
                ]
                with m.If(wr.req.valid & wr.req.ready):
                    m.d.sync += req_sent.eq(1)
                with m.If(wr.data.valid & wr.data.ready):
                    m.d.comb += [inflight.w_en.eq(1), inflight.w_data.eq(Cat(used_idx, used_wrap))]
                    m.d.sync += [req_sent.eq(0), need_dev_event.eq(0)]
                    m.next = "IDLE"
        # ---- writes out: the published position follows the done pulses (in request order)
        with m.If(wr.done):
            m.d.comb += inflight.r_en.eq(1)
            m.d.sync += [self.pub_idx.eq(inflight.r_data[0:16]), self.pub_wrap.eq(inflight.r_data[16])]
        with m.If(self.clear):
            m.d.sync += [
                need_dev_event.eq(0),
                used_idx.eq(0),
                used_wrap.eq(1),
                pend.eq(0),
                dead.eq(0),
                self.pub_idx.eq(0),
                self.pub_wrap.eq(1),
            ]
        with m.If(self.dev_event):
            m.d.sync += need_dev_event.eq(1)
        return m


class EventNotifier(wiring.Component):
    """Reads the driver's event suppression structure per batch and asks for the queue's interrupt."""

    def __init__(self, data_width: int) -> None:
        self.data_width = data_width
        super().__init__(
            {
                "size": In(16),
                "driver_area": In(64),
                "event_idx": In(1),  # VIRTIO_F_EVENT_IDX negotiated
                "run": In(1),
                "clear": In(1),
                "pub_idx": In(16),
                "pub_wrap": In(1),
                "rd": Out(ReadClient(data_width)),
                "notify": Out(stream.Signature(1)),  # the queue's interrupt is wanted
                "fatal": Out(1),  # the read failed: DEVICE_NEEDS_RESET
                "idle": Out(1),
                "reads": Out(32),
            }
        )

    def elaborate(self, platform) -> Module:
        m = Module()
        ev_idx = Signal(16)  # start of the range not yet looked at
        ev_wrap = Signal(init=1)
        tgt_idx = Signal(16)
        tgt_wrap = Signal()
        event = Signal(layouts.EVENT_SUPPRESS)
        err = Signal()
        size = self.size
        fresh = (self.pub_idx != ev_idx) | (self.pub_wrap != ev_wrap)
        d_event = ring_distance(ev_idx, ev_wrap, event.desc_event_off, event.desc_event_wrap, size)
        d_new = ring_distance(ev_idx, ev_wrap, tgt_idx, tgt_wrap, size)
        want = Signal()
        with m.Switch(event.flags):
            with m.Case(EventFlags.DISABLE):
                m.d.comb += want.eq(0)
            with m.Case(EventFlags.DESC):
                # Without EVENT_IDX the DESC value is reserved; be safe and notify.
                m.d.comb += want.eq(~self.event_idx | (d_event < d_new))
            with m.Default():
                m.d.comb += want.eq(1)
        with m.If(self.notify.valid & self.notify.ready):
            m.d.sync += self.notify.valid.eq(0)
        with m.FSM(name="event"):
            with m.State("IDLE"):
                m.d.comb += self.idle.eq(1)
                with m.If(fresh & self.run & ~self.notify.valid):
                    m.d.sync += [tgt_idx.eq(self.pub_idx), tgt_wrap.eq(self.pub_wrap)]
                    m.next = "REQ"
            with m.State("REQ"):
                m.d.comb += [
                    self.rd.req.valid.eq(1),
                    self.rd.req.payload.addr.eq(self.driver_area),
                    self.rd.req.payload.len.eq(spec.EVENT_SUPPRESS.size),
                ]
                with m.If(self.rd.req.ready):
                    m.d.sync += self.reads.eq(self.reads + 1)
                    m.next = "WAIT"
            with m.State("WAIT"):
                m.d.comb += self.rd.resp.ready.eq(1)
                with m.If(self.rd.resp.valid & self.rd.resp.payload.last):
                    m.d.sync += [event.eq(self.rd.resp.payload.data[0:32]), err.eq(self.rd.resp.payload.error)]
                    m.next = "DECIDE"
            with m.State("DECIDE"):
                m.d.sync += [ev_idx.eq(tgt_idx), ev_wrap.eq(tgt_wrap)]
                with m.If(err):
                    m.d.comb += self.fatal.eq(1)
                with m.Elif(want & self.run):
                    m.d.sync += self.notify.valid.eq(1)
                m.next = "IDLE"
        with m.If(self.clear):
            m.d.sync += [ev_idx.eq(0), ev_wrap.eq(1), self.notify.valid.eq(0)]
        return m
