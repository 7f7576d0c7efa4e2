"""``DescFetcher``: keeps a queue's descriptor FIFO filled ahead of the chain parser (spec 2.8).

Why a stage of its own: at a real host's read latency (~500 ns, 125 cycles at 250 MHz) a device that reads one
descriptor when it needs it spends most of its time waiting.  The fetcher issues several descriptor-ring reads
at once, each of up to ``max_burst`` descriptors, bounded by

* the ring end (a read never wraps),
* the room left in its FIFO (reserved when the read is issued, so returned data never waits; while the FIFO
  is half full or more a read waits until it can carry a full burst (at most a quarter of the FIFO) or
  everything up to the ring end or the hint, so a slowly drained FIFO is not refilled a descriptor at a time),
* with VIRTIO_F_NOTIFICATION_DATA, the driver's ``next_off``/``next_wrap`` (4.1.5.2, 2.9): nothing beyond what
  the driver announced is read; without it, reads go on in bursts, at most four in flight, until one returns
  a descriptor that is not available.

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
        #: the smallest read worth issuing while more is wanted: a full burst, at most a quarter of the FIFO
        self.min_read = max(1, min(max_burst, fifo_beats * self.per_beat // 4))
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
        # per read in flight: its FIFO beats and the descriptors of its last beat (its beats follow in order)
        read_entry = data.StructLayout({"beats": range(depth + 1), "last_cnt": range(pb + 1)})
        m.submodules.reqs = reqs = fifo.SyncFIFO(width=read_entry.size, depth=self.max_reads)

        # ---- issue side, compute then act.  Stage 1 (``plan``) works out the next read from this cycle's state
        # and registers it; stage 2 issues the registered plan.  The plan may be used only while ``fresh``: it
        # was made from the state that is still current.  Only an issue, a notification, the rollback after a
        # discard and ``clear`` can make a plan too large or outdated (the FIFO's free room, the read slots and
        # the hint otherwise only grow), and each of them makes the next cycle's plan stale; so a read goes
        # out at most every other cycle, which is far more than the ring needs (a read carries up to
        # ``max_burst`` descriptors).
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
        count = Signal(range(self.max_burst + 1))
        m.d.comb += count.eq(Mux(credit < lim_h, credit, lim_h))

        # While the FIFO is at least half full, a read goes out only when it carries ``min_read`` descriptors,
        # or all there is to read when that is less (up to the ring end or the hint).  Without this, a FIFO kept
        # nearly full by a slow consumer (1500-byte frames) refills in reads of the one or two descriptors just
        # freed: 0.42 reads per descriptor were measured without notification data (0.25 with it).  Below half
        # full any read goes (64-byte frames drain the FIFO faster than a round trip refills it).
        want_min = Signal(17)
        m.d.comb += want_min.eq(Mux(level < depth // 2, 1, Mux(lim_h < self.min_read, lim_h, self.min_read)))
        # Without the driver's hint every read after the first is a guess: all reads in flight past the first
        # descriptor that is not available come back to be discarded, and the fetch waits for them.  Four in
        # flight keep a queue fed at a real host's latency (7.2 cycles per 64-byte frame at +500 ns, 7.0 with
        # eight; two gave 8.6) and cost fewer discarded reads per batch than ``max_reads`` guesses.
        read_slots = Signal(range(self.max_reads + 1))
        m.d.comb += read_slots.eq(Mux(hinted, self.max_reads, min(4, self.max_reads)))
        plan_ok = Signal()  # a read of plan_count descriptors fits (count != 0, a read slot and a reqs entry free)
        plan_zero = Signal()  # the hint says nothing more is available
        plan_more = Signal()  # after this read, more may be available (no hint, or the hint reaches beyond it)
        plan_count = Signal.like(count)
        plan_entry = Signal(read_entry)
        plan_addr = Signal(64)
        plan_idx = Signal(16)
        plan_wrap = Signal()
        fresh = Signal()
        nidx, nwrap = advance(fetch_idx, fetch_wrap, count, size)
        m.d.sync += [
            plan_ok.eq((count != 0) & (credit >= want_min) & reqs.w_rdy & (reads_inflight < read_slots)),
            plan_zero.eq(hinted & (hint_dist == 0)),
            plan_more.eq(~hinted | (hint_dist > count)),
            plan_count.eq(count),
            plan_entry.beats.eq((count + pb - 1) // pb),
            plan_entry.last_cnt.eq(((count - 1) & (pb - 1)) + 1),
            plan_addr.eq(self.base + fetch_idx * DESC_BYTES),
            plan_idx.eq(nidx),
            plan_wrap.eq(nwrap),
            fresh.eq(1),
        ]
        want = (kick_pending | maybe_more) & self.run & ~discarding & ~dead & fresh
        m.d.comb += [
            self.rd.req.valid.eq(want & plan_ok),
            self.rd.req.payload.addr.eq(plan_addr),
            self.rd.req.payload.len.eq(plan_count * DESC_BYTES),
            reqs.w_data.eq(plan_entry),
        ]
        issue = self.rd.req.valid & self.rd.req.ready
        with m.If(want & plan_zero):
            # The driver's hint says nothing more is available: nothing to read until the next notification.
            m.d.sync += [kick_pending.eq(0), maybe_more.eq(0)]
        with m.Elif(issue):
            m.d.comb += reqs.w_en.eq(1)
            m.d.sync += [
                fetch_idx.eq(plan_idx),
                fetch_wrap.eq(plan_wrap),
                kick_pending.eq(0),
                maybe_more.eq(plan_more),
                self.reads.eq(self.reads + 1),
                fresh.eq(0),
            ]

        # ---- return side
        resp = self.rd.resp
        m.d.comb += resp.ready.eq(1)  # room was reserved at issue
        head = Signal(read_entry)
        m.d.comb += head.eq(reqs.r_data)
        # descriptors in this beat: a full beat, except the read's last one (its count was worked out at issue)
        cnt = Signal(range(pb + 1))
        m.d.comb += cnt.eq(Mux(resp.payload.last, head.last_cnt, pb))
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
        m.d.sync += [
            inflight_beats.eq(inflight_beats + Mux(issue, plan_entry.beats, 0) - Mux(last_in, head.beats, 0)),
            reads_inflight.eq(reads_inflight + issue - last_in),
        ]
        # discarding ends once nothing is in flight: fetch again from the first descriptor not available
        with m.If(discarding & (reads_inflight == 0) & ~issue):
            m.d.sync += [discarding.eq(0), fetch_idx.eq(ret_idx), fetch_wrap.eq(ret_wrap), fresh.eq(0)]

        # ---- output: one descriptor per cycle from the committed beats
        sel = Signal(range(pb))
        out_beat = Signal(entry)
        m.d.comb += [rp.addr.eq(r_ptr[: ptr_bits - 1]), out_beat.eq(rp.data)]
        have = commit_ptr != r_ptr
        out_desc = Signal(layouts.PACKED_DESC)
        m.d.comb += out_desc.eq(out_beat.beat.word_select(sel, 128) if pb > 1 else out_beat.beat)
        m.d.comb += [
            self.descs.valid.eq(have),
            self.descs.payload.desc.eq(out_desc),
            self.descs.payload.error.eq(out_beat.error),
        ]
        with m.If(self.descs.valid & self.descs.ready):
            with m.If(sel + 1 >= out_beat.count):
                m.d.sync += [sel.eq(0), r_ptr.eq(r_ptr + 1)]
            with m.Else():
                m.d.sync += sel.eq(sel + 1)

        m.d.comb += self.idle.eq(reads_inflight == 0)

        # ---- notifications and clear (after everything above: they take precedence)
        with m.If(self.kick):
            m.d.sync += [kick_pending.eq(1), fresh.eq(0)]
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
                fresh.eq(0),
            ]
        return m
