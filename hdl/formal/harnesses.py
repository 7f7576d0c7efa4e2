"""Property harnesses: one stage of ``hdl/virtio`` as it ships, its environment, and one checked property.

Each harness takes ``check`` (which property to assert; the environment's assumptions are always there) and
``mutation`` (None, or the name of a planted bug: the stage instance is wired wrongly by the harness, which
shows that the property can fail and that the runner reports the trace).  Mutations never touch the stage's
source: they corrupt one port of the instance, the way a bug in that stage would look from outside.

Instances are smaller than the engine's (narrow data path, few reads in flight) so that the solver's state
space stays small; the logic is the same code with other parameters.  Queue sizes are free (1 .. 32768) unless
a harness says otherwise.
"""

from __future__ import annotations

from amaranth.hdl import Cat, ClockDomain, Elaboratable, Module, Mux, ResetInserter, Signal, Value
from amaranth.lib import fifo

from hdl.formal.env import Env
from hdl.virtio.chain import ChainParser
from hdl.virtio.dmamux import ReadMux, WriteMux
from hdl.virtio.fetch import DescFetcher
from hdl.virtio.framebuf import BUFFER_BYTES, HDR_BYTES
from hdl.virtio.rxpath import RxDataMover
from hdl.virtio.stream_types import SEGMENT
from hdl.virtio.txpath import TxDataMover
from hdl.virtio.used import UsedWriter
from virtio_fpga import spec

DESC = spec.PACKED_DESC.size
MAX_QUEUE = spec.MAX_PACKED_QUEUE_SIZE


class Harness(Elaboratable):
    """Base: a reset-less ``sync`` domain (registers start at their init values), an :class:`Env`."""

    checks: tuple[str, ...] = ()
    mutations: tuple[str, ...] = ()

    def __init__(self, check: str, mutation: str | None = None) -> None:
        self._MustUse__silence = True  # a harness is often built only to be listed or refused, never elaborated
        if check not in self.checks:
            raise ValueError(f"{type(self).__name__} has no check {check!r} (has {', '.join(self.checks)})")
        if mutation is not None and mutation not in self.mutations:
            raise ValueError(f"{type(self).__name__} has no mutation {mutation!r}")
        self.check = check
        self.mutation = mutation
        self.ports: list[Value] = []

    def elaborate(self, platform) -> Module:
        m = Module()
        m.domains.sync = cd = ClockDomain("sync", reset_less=True)
        env = Env(m)
        env.free(cd.clk)
        self.build(m, env)
        self.ports = env.ports
        return m

    def build(self, m: Module, env: Env) -> None:
        raise NotImplementedError

    def want(self, name: str) -> bool:
        return self.check == name


def queue_config(env: Env, size, base, name: str) -> None:
    """A queue as the driver configured it: size 1 .. 32768 (2.8.10.1), a 16-byte aligned ring (2.8.10.2)
    that does not wrap the address space, both constant while the harness runs."""
    env.stable(size, f"{name}_size")
    env.stable(base, f"{name}_base")
    env.assume((size >= 1) & (size <= MAX_QUEUE))
    env.assume((base[0:4] == 0) & (base[56:64] == 0))


# ============================================ DescFetcher ================================================
class FetcherHarness(Harness):
    """``DescFetcher`` reading a ring of free contents (any flags, any ids: a hostile driver)."""

    checks = ("ring_bounds", "run_gate", "quiet_after_clear", "descs_stream", "idle_means_quiesced")
    mutations = ("clear_lost",)

    def __init__(self, check: str, mutation: str | None = None, *, data_width: int = 128) -> None:
        super().__init__(check, mutation)
        self.data_width = data_width
        self.max_burst = 4
        self.max_reads = 2

    def build(self, m: Module, env: Env) -> None:
        dut = DescFetcher(self.data_width, fifo_beats=4, max_burst=self.max_burst, max_reads=self.max_reads)
        m.submodules.dut = dut
        clear = Signal(name="clear")
        env.free(dut.size, dut.base, dut.run, clear, dut.use_hint, dut.kick, dut.kick_has_data)
        env.free(dut.kick_next_off, dut.kick_next_wrap, dut.descs.ready)
        # planted bug "a read after reset": the stage never sees the clear, so a kick from before the reset
        # is still pending afterwards
        m.d.comb += dut.clear.eq(0 if self.mutation == "clear_lost" else clear)
        queue_config(env, dut.size, dut.base, "q")
        env.stable(dut.use_hint, "use_hint")
        outstanding = env.read_responder(dut.rd, self.data_width // 8, self.max_reads + 1)
        # the engine clears a queue only once nothing of it is in flight (engine.py: q_idle)
        env.assume(~clear | (dut.idle & (outstanding == 0) & ~dut.run))

        req = dut.rd.req
        if self.want("ring_bounds"):
            off = Signal(65)
            m.d.comb += off.eq(req.payload.addr - dut.base)
            env.check(
                ~req.valid
                | (
                    (req.payload.addr >= dut.base)
                    & (off[0:4] == 0)
                    & (req.payload.len[0:4] == 0)
                    & (req.payload.len != 0)
                    & (req.payload.len <= self.max_burst * DESC)
                    & ((off >> 4) + (req.payload.len >> 4) <= dut.size)
                ),
                "a ring read outside [desc, desc + 16 * size)",
            )
            env.reach(req.valid & req.ready & ((off >> 4) + (req.payload.len >> 4) == dut.size) & (dut.size > 1))
        if self.want("run_gate"):
            env.check(~req.valid | dut.run, "a ring read while the queue is not running")
            env.reach(req.valid & req.ready)
        if self.want("quiet_after_clear"):
            quiet = Signal(reset_less=True)  # a clear was seen and no notification since
            with m.If(clear):
                m.d.sync += quiet.eq(1)
            with m.Elif(dut.kick):
                m.d.sync += quiet.eq(0)
            env.check(~(quiet & req.valid), "a ring read after reset before any notification")
            seen_read = Signal(reset_less=True)  # the queue had read its ring before the clear
            with m.If(req.valid & req.ready):
                m.d.sync += seen_read.eq(1)
            env.reach(quiet & seen_read & dut.run & dut.kick)
        if self.want("descs_stream"):
            env.stream_rules(dut.descs, check=True, name="descs", reset=clear)
            env.reach(dut.descs.valid & ~dut.descs.ready)
        if self.want("idle_means_quiesced"):
            env.check(~dut.idle | (outstanding == 0), "idle while a ring read is still in flight")
            env.reach(outstanding == self.max_reads)


# ============================================ ChainParser ================================================
# (the engine clears a stage only while its queue is not running: ``clear`` implies ``~run`` in every harness)
class ChainHarness(Harness):
    """``ChainParser`` fed any descriptor sequence (free addresses, lengths, flags, ids, read errors)."""

    checks = ("segment_rules", "count_bound", "dead_after_error", "segs_stream")

    def __init__(self, check: str, mutation: str | None = None, *, device_writes: bool = False) -> None:
        super().__init__(check, mutation)
        self.device_writes = device_writes

    def build(self, m: Module, env: Env) -> None:
        m.submodules.dut = dut = ChainParser(self.device_writes)
        env.free(dut.size, dut.clear, dut.segs.ready)
        env.free_stream_in(dut.descs)
        env.stable(dut.size, "size")
        env.assume((dut.size >= 1) & (dut.size <= MAX_QUEUE))
        seg = dut.segs.payload
        out = dut.segs.valid
        if self.want("segment_rules"):
            ok = seg.len != 0
            if not self.device_writes:  # transmitq: the chain holds at most header + MAX_FRAME_LEN bytes
                ok = ok & (seg.pos + seg.len <= BUFFER_BYTES)
            env.check(~out | seg.error | ok, "a segment that breaks a descriptor rule passed without error")
            env.reach(out & ~seg.error & seg.last & (seg.count >= 2))
        if self.want("count_bound"):
            env.check(~out | ((seg.count >= 1) & (seg.count <= dut.size)), "a chain longer than the queue")
            env.reach(out & (seg.count == dut.size) & (dut.size >= 3))
        if self.want("dead_after_error"):
            dead = Signal(reset_less=True)
            with m.If(dut.clear):
                m.d.sync += dead.eq(0)
            with m.Elif(out & dut.segs.ready & seg.error):
                m.d.sync += dead.eq(1)
            env.check(~(dead & out), "a segment after an error segment, before clear")
            env.reach(dead & dut.descs.valid)
        if self.want("segs_stream"):
            env.stream_rules(dut.segs, check=True, name="segs", reset=dut.clear)
            env.reach(out & ~dut.segs.ready)


# ============================================ TxDataMover ================================================
class _FakeWritePort:
    """The frame ring's write port as plain signals: the ring contents do not matter to these properties."""

    def __init__(self, rows: int, width: int) -> None:
        self.addr = Signal(range(rows), name="ring_addr")
        self.data = Signal(width, name="ring_data")
        self.en = Signal(name="ring_en")


class TxMoverHarness(Harness):
    """``TxDataMover`` reading the buffers of the segments it is given."""

    checks = ("read_in_segment", "run_gate", "used_after_data")
    mutations = ("read_addr_off",)

    def __init__(self, check: str, mutation: str | None = None) -> None:
        super().__init__(check, mutation)
        self.dw = 128
        self.max_reads = 2

    def build(self, m: Module, env: Env) -> None:
        dwb = self.dw // 8
        ring_bytes = 4 * 2048
        wp = _FakeWritePort(ring_bytes // dwb, self.dw)
        m.submodules.dut = dut = TxDataMover(wp, self.dw, ring_bytes, self.max_reads)
        env.free(dut.freed, dut.run, dut.clear, dut.frames.ready, dut.used.ready)
        env.free_stream_in(dut.segs)
        seg = dut.segs.payload
        env.assume(seg.len[16:] == 0)  # the parser's frame limit keeps a TX buffer below 64 KiB
        env.assume(~seg.error | seg.last)  # the parser ends a chain at its error segment
        env.upstream_dead_after_error(dut.segs, dut.clear, "segs")
        # The checked port: the stage's read request, with the planted bug applied if asked.
        req_addr = Signal(64)
        m.d.comb += req_addr.eq(dut.rd.req.payload.addr + (1 if self.mutation == "read_addr_off" else 0))
        outstanding = env.read_responder(dut.rd, dwb, self.max_reads + 1)
        env.assume(~dut.clear | (dut.idle & (outstanding == 0) & ~dut.run))
        req = dut.rd.req
        if self.want("read_in_segment"):
            # The read must be exactly a buffer the stage holds, in order: the reads are the non-error segments
            # it accepted, each once (register slices may hold several between hand-over and issue), or the
            # segment on offer when none is held (a stage that issues at hand-over).
            held = ResetInserter(dut.clear)(fifo.SyncFIFO(width=64 + 17, depth=4))
            m.submodules.held = held
            taken = dut.segs.valid & dut.segs.ready & ~seg.error
            m.d.comb += [
                held.w_en.eq(taken),
                held.w_data.eq(Cat(seg.addr, seg.len[:17])),
                held.r_en.eq(req.valid & req.ready & held.r_rdy),
            ]
            head_addr, head_len = held.r_data[:64], held.r_data[64:]
            on_offer = dut.segs.valid & ~seg.error & (req_addr == seg.addr) & (req.payload.len == seg.len)
            in_order = held.r_rdy & (req_addr == head_addr) & (req.payload.len == head_len)
            env.check(~taken | held.w_rdy, "more segments held than the harness tracks")
            env.check(
                ~req.valid | in_order | (~held.r_rdy & on_offer),
                "a buffer read that is not the next buffer the stage was given",
            )
            env.reach(req.valid & req.ready)
        if self.want("run_gate"):
            # The mover's read requests leave through a two-entry register slice, so a read it issued while the
            # queue ran may still be offered after ``run`` fell (it is in flight: ``idle`` stays low for it).  A
            # read may newly appear on the port only while running, a cycle after (the slice's register), or
            # right behind one just taken (the slice's second entry moving up).
            held = env.prev(req.valid & ~req.ready, "tx_req_held")
            taken = env.prev(req.valid & req.ready, "tx_req_taken")
            was_running = env.prev(dut.run, "tx_was_running")
            appears = req.valid & ~held
            env.check(~appears | dut.run | was_running | taken, "a buffer read started while the queue is not running")
            env.reach(req.valid & req.ready)
        if self.want("used_after_data"):
            # A used element (not an error) only once every read of its chain has completed: count reads
            # issued when each chain's last segment is handed over, reads completed, and compare at the used.
            issued = env.pulse_counter(8, req.valid & req.ready, 0, "tx_issued")
            done_reads = env.pulse_counter(
                8, dut.rd.resp.valid & dut.rd.resp.ready & dut.rd.resp.payload.last, 0, "tx_completed"
            )
            ends = ResetInserter(dut.clear)(fifo.SyncFIFO(width=8, depth=4))  # forgets with the stage
            m.submodules.ends = ends
            hand = dut.segs.valid & dut.segs.ready & seg.last
            m.d.comb += [ends.w_en.eq(hand), ends.w_data.eq(issued + (req.valid & req.ready))]
            # checked when an element appears (it may then wait on ready, and outlive a clear: see README)
            appears = dut.used.valid & ~env.prev(dut.used.valid & ~dut.used.ready, "used_held")[0]
            m.d.comb += ends.r_en.eq(appears)
            behind = Signal(8)
            m.d.comb += behind.eq(ends.r_data - done_reads)
            env.check(~hand | ends.w_rdy, "more chains in flight than the harness tracks")
            env.check(
                ~(appears & ~dut.used.payload.error) | (ends.r_rdy & (behind[7] | (behind == 0))),
                "a used element before the reads of its chain completed",
            )
            env.reach(appears & ~dut.used.payload.error)


# ============================================ RxDataMover ================================================
class _FakeExtractor:
    """The RX frame buffer's byte extractor as free signals (the mover only starts it and forwards beats).

    The harness constrains them by the extractor's contract (``hdl/virtio/framebuf.py`` ``ByteExtractor``:
    IDLE -> PRIME -> RUN, ``busy`` in both, beats only in RUN until the one marked ``last``): the mover drives
    ``wr.data.valid`` from ``valid`` directly, so beats outside a transfer it started are not its concern.
    """

    def __init__(self, dw: int) -> None:
        self.start = Signal(name="ext_start")
        self.abort = Signal(name="ext_abort")
        self.pos = Signal(range(BUFFER_BYTES + dw // 8 + 1), name="ext_pos")
        self.length = Signal(range(BUFFER_BYTES + dw // 8 + 1), name="ext_length")
        self.busy = Signal(name="ext_busy")
        self.valid = Signal(name="ext_valid")
        self.ready = Signal(name="ext_ready")
        self.data = Signal(dw, name="ext_data")
        self.keep = Signal(dw // 8, name="ext_keep")
        self.last = Signal(name="ext_last")


class _FakeRxBuffer:
    def __init__(self, dw: int) -> None:
        self.extractor = _FakeExtractor(dw)
        self.full = Signal(name="rx_full")
        self.frame_len = Signal(range(BUFFER_BYTES - HDR_BYTES + 1), name="rx_frame_len")
        self.frame_bytes = Signal(range(BUFFER_BYTES + 1), name="rx_frame_bytes")  # header + frame, as stored
        self.consume = Signal(name="rx_consume")


class RxMoverHarness(Harness):
    """``RxDataMover`` writing frames of any length into the receive buffers it is given."""

    checks = ("write_in_buffer", "quiet_after_clear", "used_len_bound", "used_after_data")
    mutations = ("write_past_end",)

    def build(self, m: Module, env: Env) -> None:
        dw = 128
        rx = _FakeRxBuffer(dw)
        ext = rx.extractor
        m.submodules.dut = dut = RxDataMover(rx, dw)
        m.d.comb += rx.frame_bytes.eq(rx.frame_len + HDR_BYTES)
        env.assume(rx.frame_len <= BUFFER_BYTES - HDR_BYTES)  # the frame buffer stores at most this (its range)
        env.free(rx.full, rx.frame_len, ext.busy, ext.valid, ext.data, ext.keep, ext.last)
        env.free(dut.run, dut.clear, dut.discard, dut.used.ready)
        # the extractor's contract (see _FakeExtractor): beats only for a transfer it was started on (from the
        # cycle after ``start``) until the beat marked ``last`` is taken, and ``busy`` all that time
        ext_active = Signal(name="ext_active")
        with m.If(ext.start & ~ext.busy):
            m.d.sync += ext_active.eq(1)
        with m.Elif(ext.valid & ext.ready & ext.last):
            m.d.sync += ext_active.eq(0)
        env.assume(~ext.valid | ext_active)
        env.assume(~ext_active | ext.busy)
        env.free_stream_in(dut.segs)
        # the frame buffer's contract: a stored frame (full) stays, with its length, until consumed
        env.stable_while(rx.frame_len, rx.full & ~rx.consume, "frame_len")
        env.assume(~env.prev(rx.full & ~rx.consume, "rx_full")[0] | rx.full)
        seg = dut.segs.payload
        env.assume(~seg.error | seg.last)  # the parser ends a chain at its error segment
        env.upstream_dead_after_error(dut.segs, dut.clear, "segs")
        owed, _ = env.write_acceptor(dut.wr, 4)
        env.assume(~dut.clear | (dut.idle & (owed == 0) & ~dut.run))
        wlen = Signal(17)
        m.d.comb += wlen.eq(dut.wr.req.payload.len + (1 if self.mutation == "write_past_end" else 0))
        req = dut.wr.req
        if self.want("write_in_buffer"):
            # The mover takes segments through a two-entry register slice and works on one more, so a write
            # belongs to one of the last three segments it accepted (or the one on offer): it must lie inside one
            # of them.  ``clear`` (a reset, only while idle) forgets them.
            held = [Signal(len(Value.cast(seg)), reset_less=True, name=f"rx_seg{i}") for i in range(3)]
            held_ok = [Signal(name=f"rx_seg{i}_ok") for i in range(3)]
            with m.If(dut.clear):
                m.d.sync += [ok.eq(0) for ok in held_ok]
            with m.Elif(dut.segs.valid & dut.segs.ready):
                m.d.sync += [held[0].eq(seg), held_ok[0].eq(~seg.error)]
                m.d.sync += [held[i].eq(held[i - 1]) for i in range(1, 3)]
                m.d.sync += [held_ok[i].eq(held_ok[i - 1]) for i in range(1, 3)]

            def inside(s):
                return (req.payload.addr >= s.addr) & (req.payload.addr + wlen <= s.addr + s.len)

            on_offer = dut.segs.valid & ~seg.error & inside(seg)
            in_held = on_offer
            for h_seg, h_ok in zip(held, held_ok, strict=True):
                in_held = in_held | (h_ok & inside(SEGMENT(h_seg)))
            env.check(~req.valid | ((wlen != 0) & in_held), "a receive write outside the buffers it was given")
            env.reach(req.valid & req.ready)
        if self.want("quiet_after_clear"):
            stopped = Signal(reset_less=True)
            with m.If(dut.clear & ~dut.run):
                m.d.sync += stopped.eq(1)
            with m.Elif(dut.run):
                m.d.sync += stopped.eq(0)
            env.check(~(stopped & req.valid), "a receive write after reset before the queue runs again")
            env.reach(stopped & dut.segs.valid & rx.full)
        if self.want("used_len_bound"):
            # Sum the chain's buffer lengths as the stage is handed them; the used length must not exceed it.
            cap = Signal(34, reset_less=True)
            # in flight: two chains in the mover's input skid buffer and one in its used register
            chains = ResetInserter(dut.clear)(fifo.SyncFIFO(width=34 + 16 + 16, depth=4))
            m.submodules.chains = chains
            hand = dut.segs.valid & dut.segs.ready
            total = Signal(34)
            m.d.comb += total.eq(cap + seg.len)
            with m.If(hand):
                m.d.sync += cap.eq(Mux(seg.last, 0, total))
            with m.If(dut.clear):
                m.d.sync += cap.eq(0)
            m.d.comb += [chains.w_en.eq(hand & seg.last), chains.w_data.eq(Cat(total, seg.id, seg.count))]
            used = dut.used.payload
            used_fire = dut.used.valid & dut.used.ready
            m.d.comb += chains.r_en.eq(used_fire)
            env.check(~(hand & seg.last) | chains.w_rdy, "more chains in flight than the harness tracks")
            env.check(
                ~used_fire
                | (
                    chains.r_rdy
                    & (used.len <= chains.r_data[0:34])
                    & (used.id == chains.r_data[34:50])
                    & (used.count == chains.r_data[50:66])
                ),
                "a used element whose length exceeds its chain, or names another chain",
            )
            env.reach(used_fire & ~used.error & (used.len != 0))
        if self.want("used_after_data"):
            # checked when an element appears (it may then wait on ready while the next chain's data flows)
            appears = dut.used.valid & ~env.prev(dut.used.valid & ~dut.used.ready, "used_held")[0]
            env.check(~(appears & ~dut.used.payload.error) | (owed == 0), "a used element before its data")
            env.reach(appears & ~dut.used.payload.error)


# ============================================ UsedWriter =================================================
class UsedHarness(Harness):
    """``UsedWriter`` completing chains of any count 1 .. size, IN_ORDER folding on or off."""

    checks = ("ring_slots", "published_in_ring", "quiet_after_clear", "quiet_after_error")
    mutations = ("one_slot_off",)

    def build(self, m: Module, env: Env) -> None:
        m.submodules.dut = dut = UsedWriter(128, max_writes=2)
        desc_base = Signal(64, name="desc_base")
        env.free(dut.size, desc_base, dut.device_area, dut.batch, dut.dev_event, dut.dev_event_ok)
        env.free(dut.run, dut.clear)
        env.free_stream_in(dut.used)
        # planted bug "a used write one slot off": the stage computes slots from the wrong ring base
        m.d.comb += dut.desc_base.eq(desc_base + (DESC if self.mutation == "one_slot_off" else 0))
        queue_config(env, dut.size, desc_base, "q")
        env.stable(dut.device_area, "device_area")
        env.stable(dut.batch, "batch")
        rec = dut.used.payload
        env.assume(~dut.used.valid | rec.error | ((rec.count >= 1) & (rec.count <= dut.size)))
        owed, waiting = env.write_acceptor(dut.wr, 3)
        env.assume(~dut.clear | (dut.idle & (owed == 0) & (waiting == 0) & ~dut.run))
        req = dut.wr.req
        if self.want("ring_slots"):
            off = Signal(65)
            m.d.comb += off.eq(req.payload.addr - desc_base)
            slot = (req.payload.addr >= desc_base) & (off[0:4] == 8) & ((off >> 4) < dut.size)
            slot_write = slot & (req.payload.len == 8)
            event_write = (req.payload.addr == dut.device_area) & (req.payload.len == spec.EVENT_SUPPRESS.size)
            env.check(~req.valid | slot_write | event_write, "a used write outside the ring's used slots")
            env.reach(req.valid & req.ready & slot_write & ((off >> 4) == dut.size - 1) & (dut.size > 1))
        if self.want("published_in_ring"):
            env.check(dut.pub_idx < dut.size, "published used index outside the ring")
            env.reach(dut.pub_idx != 0)
        if self.want("quiet_after_clear"):
            stopped = Signal(reset_less=True)
            with m.If(dut.clear & ~dut.run):
                m.d.sync += stopped.eq(1)
            with m.Elif(dut.run):
                m.d.sync += stopped.eq(0)
            env.check(~(stopped & req.valid & (req.payload.len == 8)), "a used write after reset before run")
            env.reach(stopped & dut.used.valid)
        if self.want("quiet_after_error"):
            dead = Signal(reset_less=True)
            with m.If(dut.clear):
                m.d.sync += dead.eq(0)
            with m.Elif(dut.fatal):
                m.d.sync += dead.eq(1)
            env.check(~(dead & req.valid & (req.payload.len == 8)), "a used write after DEVICE_NEEDS_RESET")
            env.reach(dead & dut.used.valid & ~rec.error)


# ============================================ DMA muxes ==================================================
# Written without assuming how many cycles the mux takes (register slices may sit on any path): scoreboards
# remember what each client handed over, and what reaches the DMA port (or comes back from it) must be the
# oldest thing some client handed over, unchanged, in that client's order.


def _scoreboard(m: Module, env: Env, name: str, width: int, push, value, depth: int = 3):
    """A FIFO of what a client handed over; returns (consume, candidate, has): ``candidate`` is the oldest
    entry, or the value handed over in this very cycle when the FIFO is empty (a mux that passes it straight
    through); driving ``consume`` takes the candidate (the same-cycle value is then never stored)."""
    q = fifo.SyncFIFO(width=width, depth=depth)
    m.submodules[name] = q
    consume = Signal(name=f"{name}_consume")
    m.d.comb += [
        q.w_en.eq(push & ~(consume & ~q.r_rdy)),
        q.w_data.eq(value),
        q.r_en.eq(consume & q.r_rdy),
    ]
    env.check(~push | q.w_rdy, f"{name}: the mux holds more than the harness tracks")
    candidate = Mux(q.r_rdy, q.r_data, value)
    has = q.r_rdy | push
    return consume, candidate, has


def _match_requests(m: Module, env: Env, cl, req_fire, req_word, name: str):
    """Per-client request scoreboards; returns (matched any, index of the matched client).

    Each client's addresses carry its index in bits 62-63 (assumed): a mux routes by order, never by address,
    so this loses nothing, and it tells apart two clients that ask for the same bytes (which else could not
    be attributed from the port).
    """
    boards = []
    for i, c in enumerate(cl):
        env.assume(c.req.payload.addr[62:64] == i)
        word = Cat(c.req.payload.addr, c.req.payload.len)
        _consume, cand, has = _scoreboard(m, env, f"{name}_req{i}", len(word), c.req.valid & c.req.ready, word, 4)
        boards.append((_consume, cand, has))
    idx = Signal(range(len(cl)), name=f"{name}_match")
    any_match = Signal(name=f"{name}_matched")
    for i in reversed(range(len(cl))):
        _consume, cand, has = boards[i]
        with m.If(has & (cand == req_word)):
            m.d.comb += [idx.eq(i), any_match.eq(1)]
    for i, (consume, _cand, _has) in enumerate(boards):
        m.d.comb += consume.eq(req_fire & any_match & (idx == i))
    return any_match, idx, boards


class ReadMuxHarness(Harness):
    """``ReadMux`` of three clients: requests pass unchanged, data returns to the client that asked."""

    checks = ("req_integrity", "resp_routing")

    def build(self, m: Module, env: Env) -> None:
        n = 3
        m.submodules.dut = dut = ReadMux(n, 128, depth=4)
        cl = dut.clients()
        for i, c in enumerate(cl):
            env.free(c.req.valid, c.req.payload, c.resp.ready)
            env.stream_rules(c.req, check=False, name=f"c{i}_req")
        d = dut.dma
        env.free(d.req_ready, d.data_valid, d.data, d.data_keep, d.data_last, d.error)
        dfire = d.req_valid & d.req_ready
        dbeat = d.data_valid & d.data_ready
        # the DMA port: data only for requests it accepted
        inflight = env.pulse_counter(4, dfire, dbeat & d.data_last, "rd")
        env.assume(~d.data_valid | (inflight != 0))
        env.assume(~d.req_ready | (inflight < 6))
        matched, idx, _ = _match_requests(m, env, cl, dfire, Cat(d.req_addr, d.req_len), "rd")
        if self.want("req_integrity"):
            env.check(~dfire | matched, "a DMA read request that is not a client's oldest request, unchanged")
            env.reach(dfire & (idx == 2))
        if self.want("resp_routing"):
            order, who, has_order = _scoreboard(m, env, "rd_order", 2, dfire, idx, depth=8)
            beats, beat, has_beat = _scoreboard(m, env, "rd_beats", 129, dbeat, Cat(d.data, d.data_last), 4)
            got_any = 0
            for i, c in enumerate(cl):
                take = c.resp.valid & c.resp.ready
                got_any = got_any | take
                env.check(~c.resp.valid | (has_order & (who == i)), f"read data offered to client {i} out of turn")
                env.check(
                    ~take | (has_beat & (Cat(c.resp.payload.data, c.resp.payload.last) == beat)),
                    f"read data given to client {i} that is not the next beat from the DMA port, unchanged",
                )
            taken = Signal()
            last_taken = Signal()
            for c in cl:
                with m.If(c.resp.valid & c.resp.ready):
                    m.d.comb += [taken.eq(1), last_taken.eq(c.resp.payload.last)]
            m.d.comb += [beats.eq(taken), order.eq(last_taken)]
            env.reach(cl[2].resp.valid & cl[2].resp.ready & cl[2].resp.payload.last)


class WriteMuxHarness(Harness):
    """``WriteMux`` of two clients: a request's beats follow it unmixed, done goes back to its client."""

    checks = ("req_integrity", "beats_follow_request", "done_routing")

    def build(self, m: Module, env: Env) -> None:
        n = 2
        m.submodules.dut = dut = WriteMux(n, 128, depth=4)
        cl = dut.clients()
        for i, c in enumerate(cl):
            env.free(c.req.valid, c.req.payload, c.data.valid, c.data.payload)
            env.stream_rules(c.req, check=False, name=f"c{i}_req")
            env.stream_rules(c.data, check=False, name=f"c{i}_data")
        d = dut.dma
        env.free(d.req_ready, d.data_ready, d.done)
        dfire = d.req_valid & d.req_ready
        dbeat = d.data_valid & d.data_ready
        issued = env.pulse_counter(4, dfire, d.done, "wr")
        env.assume(~d.done | (issued != 0))
        env.assume(~d.req_ready | (issued < 6))
        matched, idx, _ = _match_requests(m, env, cl, dfire, Cat(d.req_addr, d.req_len), "wr")
        if self.want("req_integrity"):
            env.check(~dfire | matched, "a DMA write request that is not a client's oldest request, unchanged")
            env.reach(dfire & (idx == 1))
        if self.want("beats_follow_request"):
            # beats on the DMA port: those of the oldest request whose beats are not all out, from its client
            order, who, has_order = _scoreboard(m, env, "wr_order", 1, dfire, idx, depth=6)
            boards = []
            for i, c in enumerate(cl):
                word = Cat(c.data.payload.data, c.data.payload.last)
                boards.append(_scoreboard(m, env, f"wr_beats{i}", len(word), c.data.valid & c.data.ready, word, 6))
            out = Cat(d.data, d.data_last)
            ok = 0
            for i, (consume, cand, has) in enumerate(boards):
                ok = ok | ((who == i) & has & (cand == out))
                m.d.comb += consume.eq(dbeat & (who == i))
            m.d.comb += order.eq(dbeat & d.data_last)
            env.check(~dbeat | (has_order & ok), "a write beat that is not the next beat of the oldest write")
            env.reach(dbeat & d.data_last & (who == 1))
        if self.want("done_routing"):
            order, who, has_order = _scoreboard(m, env, "wr_order", 1, dfire, idx, depth=6)
            m.d.comb += order.eq(d.done)
            for i, c in enumerate(cl):
                # done pulses owed to client i (its write's done came from the DMA port, not yet passed on)
                owed = Signal(4, reset_less=True, name=f"done_owed{i}")
                now = d.done & has_order & (who == i)
                m.d.sync += owed.eq(owed + now - c.done)
                env.check(~c.done | (owed != 0) | now, f"a done pulse to client {i} for no write of its own")
            env.reach(cl[1].done)
