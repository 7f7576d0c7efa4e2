"""``DescFetcher``: keeps a queue's descriptor FIFO filled ahead of the chain parser (spec 2.8).

Why a stage of its own: at a real host's read latency (~500 ns, 125 cycles at 250 MHz) a device that reads one
descriptor when it needs it spends most of its time waiting.  The fetcher issues several descriptor-ring reads
at once, each of up to ``max_burst`` descriptors, bounded by

* the ring end (a read never wraps),
* the room left in its FIFO (reserved when the read is issued, so returned data never waits),
* with VIRTIO_F_NOTIFICATION_DATA, the driver's ``next_off``/``next_wrap`` (4.1.5.2, 2.9): nothing beyond what
  the driver announced is read; without it, reads go on in bursts until one returns a descriptor that is not
  available.

Every returned descriptor's AVAIL/USED flags are still checked against the wrap counter of its position (the
hint is only a hint, 2.9; 2.8.1): the first one that is not available stops the fetch, the rest of that beat and
every later read still in flight are discarded, and the fetch position goes back to that descriptor until the
next notification.  A read that fails (UR/CA/poisoned/timeout) rolls back everything it wrote into the FIFO and
puts an ``error`` entry there instead, so a garbage descriptor never reaches the parser.

The FIFO holds whole DMA beats (``data_width / 128`` descriptors each) with a count; a beat is visible to the
output only once the read it came with has ended without error (commit pointer).  The output side hands out
one descriptor per cycle.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, fifo, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from hdl import layouts
from hdl.virtio.stream_types import DESC_ENTRY, ReadClient, advance
from virtio_fpga import spec
from virtio_fpga.spec import DescFlag

DESC_BYTES = spec.PACKED_DESC.size
AVAIL_BIT = int(DescFlag.AVAIL).bit_length() - 1
USED_BIT = int(DescFlag.USED).bit_length() - 1
FLAGS_AT = layouts.PACKED_DESC["flags"].offset  # bit offset of the flags in a descriptor


class DescFetcher(wiring.Component):
    """One queue's descriptor prefetcher: ring reads out on ``rd``, available descriptors out on ``descs``."""

    def __init__(self, data_width: int = 256, *, fifo_beats: int = 32, max_burst: int = 16, max_reads: int = 8):
        self.data_width = data_width
        self.per_beat = data_width // (8 * DESC_BYTES)
        assert max_burst % self.per_beat == 0 and fifo_beats >= max_burst // self.per_beat
        assert fifo_beats & (fifo_beats - 1) == 0
        self.fifo_beats = fifo_beats
        self.max_burst = max_burst
        self.max_reads = max_reads
        #: Notification state, visible to tests (4.1.5.2): a kick is pending; the hint and its validity.
        self.kick_pending = Signal(name="kick_pending")
        self.hint_valid = Signal(name="hint_valid")
        self.hint_off = Signal(15, name="hint_off")
        self.hint_wrap = Signal(name="hint_wrap")
        super().__init__(
            {
                # queue configuration and control (from the register block / engine)
                "size": In(16),
                "base": In(64),
                "run": In(1),  # may issue reads (queue enabled, DRIVER_OK, not broken, no reset pending)
                "clear": In(1),  # back to position 0, wrap 1, FIFO emptied (only while idle)
                "use_hint": In(1),  # VIRTIO_F_NOTIFICATION_DATA negotiated
                "kick": In(1),
                "kick_has_data": In(1),
                "kick_next_off": In(15),
                "kick_next_wrap": In(1),
                "descs": Out(stream.Signature(DESC_ENTRY)),
                "rd": Out(ReadClient(data_width)),
                "idle": Out(1),  # no read in flight
                "reads": Out(32),  # descriptor-ring read requests issued (statistics)
            }
        )

    def elaborate(self, platform) -> Module:
        m = Module()
        dw = self.data_width
        pb = self.per_beat
        depth = self.fifo_beats
        ptr_bits = depth.bit_length()  # one more than the index: full and empty differ
        entry = data.StructLayout({"beat": dw, "count": range(pb + 1), "error": 1})

        # ---- FIFO of beats with a commit pointer
        mem = memory.Memory(shape=unsigned(entry.size), depth=depth, init=[])
        m.submodules.mem = mem
        wp = mem.write_port()
        rp = mem.read_port(domain="comb")
        w_ptr = Signal(ptr_bits)
        commit_ptr = Signal(ptr_bits)
        r_ptr = Signal(ptr_bits)

        # ---- fetch state
        fetch_idx = Signal(16)
        fetch_wrap = Signal(init=1)
        ret_idx = Signal(16)
        ret_wrap = Signal(init=1)
        kick_pending = self.kick_pending
        maybe_more = Signal()
        hint_valid = self.hint_valid
        hint_off = self.hint_off
        hint_wrap = self.hint_wrap
        discarding = Signal()  # a not-available descriptor was seen: drop returns until no read is in flight
        stop_in_head = Signal()  # the stop happened in the read now returning (its error still counts)
        dead = Signal()  # a read failed: nothing more until clear
        inflight_beats = Signal(range(depth + 1))  # FIFO beats reserved by reads in flight
        reads_inflight = Signal(range(self.max_reads + 1))
        # per read in flight: descriptors asked for (its beats follow in order)
        m.submodules.reqs = reqs = fifo.SyncFIFO(width=16, depth=self.max_reads)

        # ---- issue side
        size = self.size
        ring_left = Signal(17)
        m.d.comb += ring_left.eq(size - fetch_idx)
        hint_dist = Signal(17)
        with m.If(hint_wrap == fetch_wrap):
            m.d.comb += hint_dist.eq(Mux(hint_off >= fetch_idx, hint_off - fetch_idx, 0))
        with m.Else():
            m.d.comb += hint_dist.eq(Mux(size - fetch_idx + hint_off > size, size, size - fetch_idx + hint_off))
        hinted = self.use_hint & hint_valid
        level = Signal(range(depth + 1))
        m.d.comb += level.eq((commit_ptr - r_ptr)[:ptr_bits])
        free_beats = Signal(range(depth + 1))
        m.d.comb += free_beats.eq(depth - level - inflight_beats)
        lim = Signal(17)
        m.d.comb += lim.eq(Mux(ring_left < self.max_burst, ring_left, self.max_burst))
        lim_h = Signal(17)
        m.d.comb += lim_h.eq(Mux(hinted & (hint_dist < lim), hint_dist, lim))
        credit = Signal(17)
        m.d.comb += credit.eq(free_beats * pb)
        count = Signal(17)
        m.d.comb += count.eq(Mux(credit < lim_h, credit, lim_h))
        want = (kick_pending | maybe_more) & self.run & ~discarding & ~dead
        can_issue = want & (count != 0) & reqs.w_rdy & (reads_inflight < self.max_reads)
        m.d.comb += [
            self.rd.req.valid.eq(can_issue),
            self.rd.req.payload.addr.eq(self.base + fetch_idx * DESC_BYTES),
            self.rd.req.payload.len.eq(count * DESC_BYTES),
            reqs.w_data.eq(count),
        ]
        issue = self.rd.req.valid & self.rd.req.ready
        beats_of = Signal(range(depth + 1))
        m.d.comb += beats_of.eq((count + pb - 1) // pb)
        with m.If(want & hinted & (hint_dist == 0)):
            # The driver's hint says nothing more is available: nothing to read until the next notification.
            m.d.sync += [kick_pending.eq(0), maybe_more.eq(0)]
        with m.Elif(issue):
            nidx, nwrap = advance(fetch_idx, fetch_wrap, count, size)
            m.d.comb += reqs.w_en.eq(1)
            m.d.sync += [
                fetch_idx.eq(nidx),
                fetch_wrap.eq(nwrap),
                kick_pending.eq(0),
                maybe_more.eq(~hinted | (hint_dist > count)),
                self.reads.eq(self.reads + 1),
            ]

        # ---- return side
        resp = self.rd.resp
        m.d.comb += resp.ready.eq(1)  # room was reserved at issue
        head_left = Signal(16)  # descriptors of the head read still to come
        head_started = Signal()
        head_n = Signal(16)
        m.d.comb += head_n.eq(Mux(head_started, head_left, reqs.r_data))
        cnt = Signal(range(pb + 1))
        m.d.comb += cnt.eq(Mux(head_n < pb, head_n, pb))
        descs = [resp.payload.data.word_select(j, 128) for j in range(pb)]
        avail = Signal(pb)
        for j, d in enumerate(descs):
            m.d.comb += avail[j].eq((d[FLAGS_AT + AVAIL_BIT] == ret_wrap) & (d[FLAGS_AT + USED_BIT] != ret_wrap))
        # leading available descriptors among the first cnt
        n_avail = Signal(range(pb + 1))
        for j in reversed(range(pb)):
            with m.If(~avail[j] & (j < cnt)):
                m.d.comb += n_avail.eq(j)
        with m.If(Cat(*(avail[j] | (j >= cnt) for j in range(pb))).all()):
            m.d.comb += n_avail.eq(cnt)
        beat_in = resp.valid & resp.ready
        last_in = beat_in & resp.payload.last
        stop_now = beat_in & ~discarding & (n_avail < cnt)
        write_beat = beat_in & ~discarding & ~dead & (n_avail != 0)
        m.d.comb += [
            wp.addr.eq(w_ptr[: ptr_bits - 1]),
            wp.data.eq(Cat(resp.payload.data, n_avail, Const(0, 1))),
            wp.en.eq(write_beat),
        ]
        with m.If(beat_in):
            m.d.sync += [head_left.eq(head_n - cnt), head_started.eq(~resp.payload.last)]
            with m.If(write_beat):
                m.d.sync += w_ptr.eq(w_ptr + 1)
            with m.If(~discarding):
                ridx, rwrap = advance(ret_idx, ret_wrap, n_avail, size)
                m.d.sync += [ret_idx.eq(ridx), ret_wrap.eq(rwrap)]
            with m.If(stop_now):
                m.d.sync += [discarding.eq(1), stop_in_head.eq(~resp.payload.last), maybe_more.eq(0)]
        with m.If(last_in):
            m.d.comb += reqs.r_en.eq(1)
            failed = resp.payload.error & (~discarding | stop_in_head) & ~dead
            with m.If(failed):
                # Roll back what this read wrote and report the failure in its place (read by the parser).
                m.d.comb += [
                    wp.addr.eq(commit_ptr[: ptr_bits - 1]),
                    wp.data.eq(Cat(Const(0, dw), Const(1, range(pb + 1)), Const(1, 1))),
                    wp.en.eq(1),
                ]
                m.d.sync += [w_ptr.eq(commit_ptr + 1), commit_ptr.eq(commit_ptr + 1), dead.eq(1)]
            with m.Else():
                m.d.sync += commit_ptr.eq(w_ptr + write_beat)
            with m.If(discarding):
                m.d.sync += stop_in_head.eq(0)

        # reads and reservations in flight
        reserved_of_head = Signal(range(depth + 1))
        m.d.comb += reserved_of_head.eq((reqs.r_data + pb - 1) // pb)
        m.d.sync += [
            inflight_beats.eq(inflight_beats + Mux(issue, beats_of, 0) - Mux(last_in, reserved_of_head, 0)),
            reads_inflight.eq(reads_inflight + issue - last_in),
        ]
        # discarding ends once nothing is in flight: fetch again from the first descriptor not available
        with m.If(discarding & (reads_inflight == 0) & ~issue):
            m.d.sync += [discarding.eq(0), fetch_idx.eq(ret_idx), fetch_wrap.eq(ret_wrap)]

        # ---- output: one descriptor per cycle from the committed beats
        sel = Signal(range(pb))
        head = Signal(entry)
        m.d.comb += [rp.addr.eq(r_ptr[: ptr_bits - 1]), head.eq(rp.data)]
        have = commit_ptr != r_ptr
        out_desc = Signal(layouts.PACKED_DESC)
        m.d.comb += out_desc.eq(head.beat.word_select(sel, 128) if pb > 1 else head.beat)
        m.d.comb += [
            self.descs.valid.eq(have),
            self.descs.payload.desc.eq(out_desc),
            self.descs.payload.error.eq(head.error),
        ]
        with m.If(self.descs.valid & self.descs.ready):
            with m.If(sel + 1 >= head.count):
                m.d.sync += [sel.eq(0), r_ptr.eq(r_ptr + 1)]
            with m.Else():
                m.d.sync += sel.eq(sel + 1)

        m.d.comb += self.idle.eq(reads_inflight == 0)

        # ---- notifications and clear (after everything above: they take precedence)
        with m.If(self.kick):
            m.d.sync += kick_pending.eq(1)
            with m.If(self.kick_has_data):
                m.d.sync += [hint_valid.eq(1), hint_off.eq(self.kick_next_off), hint_wrap.eq(self.kick_next_wrap)]
            with m.Else():
                m.d.sync += hint_valid.eq(0)
        with m.If(self.clear):
            m.d.sync += [
                fetch_idx.eq(0),
                fetch_wrap.eq(1),
                ret_idx.eq(0),
                ret_wrap.eq(1),
                kick_pending.eq(0),
                maybe_more.eq(0),
                hint_valid.eq(0),
                discarding.eq(0),
                stop_in_head.eq(0),
                dead.eq(0),
                w_ptr.eq(0),
                commit_ptr.eq(0),
                r_ptr.eq(0),
                sel.eq(0),
                head_started.eq(0),
            ]
        return m
