"""The packed-ring engine (spec 2.8) and the virtio-net data path (5.1.6) of ``VirtioNetCore``.

One state machine serves both queues, one buffer chain at a time.  That is deliberate: each step waits for
the DMA engine, which is where the time goes, and a single owner of the DMA ports cannot reorder its own
requests, so used descriptors always follow the data they describe (PCIe keeps posted writes in order).

Per queue it keeps the device side of the ring, with Linux's names:

* ``next_avail_idx``/``avail_wrap_counter``: the head of the next chain to consume (2.8.1);
* ``parse_idx``/``parse_wrap``: the next descriptor to look at (runs ahead of the head inside a chain);
* ``used_idx``/``used_wrap_counter``: where the next used descriptor goes (2.8.2);
* a cache of up to ``CACHE_DESCS`` descriptors fetched in one DMA read (2.8.6: descriptors are read in
  bursts, but each one's AVAIL/USED flags are still checked against the wrap counter);
* the driver's last notification data (2.9: next_off/next_wrap, only a hint of how many to fetch),
  ``kick_pending`` and ``maybe_more`` (there may be descriptors beyond what was fetched);
* a pending used element, so that with IN_ORDER one used descriptor can stand for a batch (2.8.21.1).

Anything malformed (2.8.6-2.8.7 rules, DMA errors, a frame larger than the RX buffer) stops the engine:
DEVICE_NEEDS_RESET plus a configuration interrupt (2.1.2, 4.1.4.5), and no further DMA until reset.
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import memory

from hdl import layouts
from hdl.virtio.framebuf import BUFFER_BYTES, HDR_BYTES, RxFrameBuffer, TxFrameBuffer
from virtio_fpga import spec
from virtio_fpga.spec import DescFlag, EventFlags, Feature, Status

#: Descriptors fetched per DMA read at most (and held per queue); 8 x 16 bytes = one 128-byte read request.
CACHE_DESCS = 8
DESC_BYTES = spec.PACKED_DESC.size
RX_QUEUE = spec.NET_RX_QUEUE
TX_QUEUE = spec.NET_TX_QUEUE
NO_VECTOR = spec.VIRTIO_MSI_NO_VECTOR
_FLAG_BITS = {flag: int(flag).bit_length() - 1 for flag in DescFlag}


class QueueState:
    """The engine's per-queue state (the device side of one packed virtqueue)."""

    def __init__(self, index: int) -> None:
        def sig(name: str, shape=1, init: int = 0) -> Signal:
            return Signal(shape, init=init, name=f"q{index}_{name}")

        self.next_avail_idx = sig("next_avail_idx", 16)
        self.avail_wrap_counter = sig("avail_wrap_counter", 1, 1)
        self.parse_idx = sig("parse_idx", 16)
        self.parse_wrap = sig("parse_wrap", 1, 1)
        self.used_idx = sig("used_idx", 16)
        self.used_wrap_counter = sig("used_wrap_counter", 1, 1)
        self.kick_pending = sig("kick_pending")
        self.maybe_more = sig("maybe_more")
        self.hint_valid = sig("hint_valid")
        self.hint_off = sig("hint_off", 15)
        self.hint_wrap = sig("hint_wrap")
        self.cache_cnt = sig("cache_cnt", range(CACHE_DESCS + 1))
        self.cache_rd = sig("cache_rd", range(CACHE_DESCS))
        self.need_dev_event = sig("need_dev_event")
        self.used_pend = sig("used_pend")
        self.pend_id = sig("pend_id", 16)
        self.pend_len = sig("pend_len", 32)
        self.pend_count = sig("pend_count", 16)
        #: Used positions written since the last look at the driver's event suppression structure start at
        #: (ev_idx, ev_wrap); ev_pending says there are some.  One look covers a whole burst (2.8.10).
        self.ev_pending = sig("ev_pending")
        self.ev_idx = sig("ev_idx", 16)
        self.ev_wrap = sig("ev_wrap")

    def reset_statements(self) -> list:
        """The state of a fresh queue: both wrap counters 1, indices 0 (2.8.1, 2.8.2)."""
        return [
            self.next_avail_idx.eq(0),
            self.avail_wrap_counter.eq(1),
            self.parse_idx.eq(0),
            self.parse_wrap.eq(1),
            self.used_idx.eq(0),
            self.used_wrap_counter.eq(1),
            self.kick_pending.eq(0),
            self.maybe_more.eq(0),
            self.hint_valid.eq(0),
            self.cache_cnt.eq(0),
            self.cache_rd.eq(0),
            self.need_dev_event.eq(0),
            self.used_pend.eq(0),
            self.ev_pending.eq(0),
        ]


def advance(idx, wrap, count, size) -> tuple:
    """(idx, wrap) moved forward by ``count`` positions of a ring of ``size`` (any size, 2.8.10.1)."""
    total = idx + count
    over = total >= size
    return Mux(over, total - size, total)[0:16], Mux(over, ~wrap, wrap)


def build_engine(core, m: Module) -> None:
    """Add the ring engine and the frame buffers to ``core``'s module (after its registers)."""
    dw = core.data_width
    dwb = dw // 8
    per_beat = dw // (8 * DESC_BYTES)
    cache_words = CACHE_DESCS // per_beat
    queues = core.queues
    nq = len(queues)
    states = [QueueState(i) for i in range(nq)]
    core.queue_states = states
    rd = core.dma_rd
    wr = core.dma_wr

    # ---- frame buffers and the Ethernet ports ----
    m.submodules.txbuf = tx = TxFrameBuffer(dw)
    m.submodules.rxbuf = rx = RxFrameBuffer(dw)
    core.txbuf, core.rxbuf = tx, rx
    m.d.comb += [
        core.eth_tx.valid.eq(tx.tx_valid),
        tx.tx_ready.eq(core.eth_tx.ready),
        core.eth_tx.data.eq(tx.tx_data),
        core.eth_tx.keep.eq(tx.tx_keep),
        core.eth_tx.last.eq(tx.tx_last),
        core.eth_tx.user.eq(0),
        rx.rx_valid.eq(core.eth_rx.valid),
        core.eth_rx.ready.eq(rx.rx_ready),
        rx.rx_data.eq(core.eth_rx.data),
        rx.rx_keep.eq(core.eth_rx.keep),
        rx.rx_last.eq(core.eth_rx.last),
        rx.rx_user.eq(core.eth_rx.user),
    ]

    # ---- shared engine registers ----
    broken = Signal()  # DEVICE_NEEDS_RESET was raised: no more ring processing until device reset
    core.broken = broken
    cur_q = Signal(range(nq))
    last_q = Signal(range(nq))
    desc = Signal(layouts.PACKED_DESC)
    chain_len = Signal(16)
    byte_pos = Signal(range(BUFFER_BYTES + 2**16 + 1))
    rx_remaining = Signal(range(BUFFER_BYTES + 1))
    seg_addr = Signal(64)
    seg_len = Signal(16)
    fetch_n = Signal(range(CACHE_DESCS + 1))
    beat_idx = Signal(range(cache_words + 1))
    rd_left = Signal(17)
    rd_error = Signal()
    req_sent = Signal()
    wr_outstanding = Signal(4)
    tx_len = Signal(range(BUFFER_BYTES + 1))
    event = Signal(layouts.EVENT_SUPPRESS)
    # Statistics (visible to simulation; the PCIe half may expose them later).
    core.stat_tx_frames = stat_tx = Signal(32)
    core.stat_rx_frames = stat_rx = Signal(32)
    core.stat_desc_fetches = stat_fetch = Signal(32)

    def cur(name: str):
        return Array(getattr(s, name) for s in states)[cur_q]

    def creg(name: str):
        return Array(getattr(q, name) for q in queues)[cur_q]

    size = creg("size")
    driver_ok = core.device_status[Status.DRIVER_OK.bit_length() - 1]
    in_order = core.negotiated(Feature.IN_ORDER)
    event_idx = core.negotiated(Feature.EVENT_IDX)
    notif_data = core.negotiated(Feature.NOTIFICATION_DATA)

    # ---- descriptor cache: one memory, cache_words rows of DMA width per queue ----
    cache = memory.Memory(shape=unsigned(dw), depth=nq * cache_words, init=[])
    m.submodules.desc_cache = cache
    cache_w = cache.write_port()
    cache_r = cache.read_port(domain="comb")
    rd_slot = cur("cache_rd")
    slot_bits = max(0, (per_beat - 1).bit_length())
    m.d.comb += cache_r.addr.eq(cur_q * cache_words + (rd_slot >> slot_bits))
    cached_desc = cache_r.data.word_select(rd_slot[0:slot_bits], 128) if slot_bits else cache_r.data
    m.d.comb += [cache_w.addr.eq(cur_q * cache_words + beat_idx), cache_w.data.eq(rd.data)]

    # ---- DMA write bookkeeping: reads of the driver's area wait until our writes are out (2.8.10) ----
    wr_req_fire = wr.req_valid & wr.req_ready
    m.d.sync += wr_outstanding.eq(wr_outstanding + wr_req_fire - wr.done)

    flag = desc.flags
    is_avail = (flag[_FLAG_BITS[DescFlag.AVAIL]] == cur("parse_wrap")) & (
        flag[_FLAG_BITS[DescFlag.USED]] != cur("parse_wrap")
    )
    has_next = flag[_FLAG_BITS[DescFlag.NEXT]]
    is_write = flag[_FLAG_BITS[DescFlag.WRITE]]
    is_indirect = flag[_FLAG_BITS[DescFlag.INDIRECT]]

    # ---- scheduling inputs ----
    running = [q.enable & driver_ok & ~broken & ~q.reset_req & ~core.reset_pending for q in queues]
    has_work = [(s.cache_cnt != 0) | s.kick_pending | s.maybe_more for s in states]
    rx_go = running[RX_QUEUE] & rx.full & has_work[RX_QUEUE]
    tx_go = running[TX_QUEUE] & tx.can_accept & has_work[TX_QUEUE]
    # IN_ORDER (2.8.21.1): a TX used element may wait while more chains of the same fetch follow at once
    # (never while the wire holds TX back, so completions cannot wait on a stalled eth_tx).
    batching = [
        Const(0) if i == RX_QUEUE else (in_order & (s.cache_cnt != 0) & running[i] & tx.can_accept)
        for i, s in enumerate(states)
    ]
    m.d.comb += rx.accept.eq(running[RX_QUEUE])
    # More chains of this queue will be done right away: postpone the event-suppression read (and the
    # interrupt) to the end of the burst, as long as the unchecked range stays below half the ring.
    unchecked = []
    for q, s in zip(queues, states, strict=True):
        span = Signal(range(-(2**17), 2**17), name=f"q{q.index}_unchecked")
        m.d.comb += span.eq(s.used_idx + Mux(s.used_wrap_counter, 0, q.size) - s.ev_idx - Mux(s.ev_wrap, 0, q.size))
        unchecked.append(Mux(span < 0, span + (q.size << 1), span))
    imminent = [
        running[RX_QUEUE] & (states[RX_QUEUE].cache_cnt != 0) & rx.full,
        running[TX_QUEUE] & (states[TX_QUEUE].cache_cnt != 0) & tx.can_accept,
    ]
    imminent = [imm & (unchecked[i] < (queues[i].size >> 1)) for i, imm in enumerate(imminent)]

    # ---- fetch sizing ----
    pidx = cur("parse_idx")
    pwrap = cur("parse_wrap")
    ring_left = Signal(17)
    hint_dist = Signal(17)
    fetch_count = Signal(17)
    m.d.comb += ring_left.eq(size - pidx)
    hint_off = cur("hint_off")
    with m.If(cur("hint_wrap") == pwrap):
        m.d.comb += hint_dist.eq(Mux(hint_off >= pidx, hint_off - pidx, 0))
    with m.Else():
        m.d.comb += hint_dist.eq(Mux(size - pidx + hint_off > size, size, size - pidx + hint_off))
    use_hint = notif_data & cur("hint_valid")
    limit = Mux(ring_left < CACHE_DESCS, ring_left, CACHE_DESCS)
    m.d.comb += fetch_count.eq(Mux(use_hint & (hint_dist < limit), hint_dist, limit))

    # ---- event suppression decision (2.8.10, 2.8.14) ----
    two_size = Signal(18)
    m.d.comb += two_size.eq(size << 1)

    def linear(idx, wrap):
        return idx + Mux(wrap, 0, size)

    d_event = Signal(range(-(2**18), 2**18))
    d_new = Signal(range(-(2**18), 2**18))
    m.d.comb += [
        d_event.eq(linear(event.desc_event_off, event.desc_event_wrap) - linear(cur("ev_idx"), cur("ev_wrap"))),
        d_new.eq(linear(cur("used_idx"), cur("used_wrap_counter")) - linear(cur("ev_idx"), cur("ev_wrap"))),
    ]
    d_event_mod = Mux(d_event < 0, d_event + two_size, d_event)
    d_new_mod = Mux(d_new < 0, d_new + two_size, d_new)
    want_irq = Signal()
    with m.Switch(event.flags):
        with m.Case(EventFlags.DISABLE):
            m.d.comb += want_irq.eq(0)
        with m.Case(EventFlags.DESC):
            # Without EVENT_IDX the DESC value is reserved; be safe and notify.
            m.d.comb += want_irq.eq(~event_idx | (d_event_mod < d_new_mod))
        with m.Default():
            m.d.comb += want_irq.eq(1)

    isr_set = Signal(8)
    m.d.comb += core.isr_set.eq(isr_set)
    m.d.comb += tx.frame_len.eq(tx_len)

    app = tx.appender
    ext = rx.extractor
    m.d.comb += [app.init_pos.eq(0), app.init_acc.eq(0), app.data.eq(rd.data)]

    with m.FSM(name="engine") as fsm:
        with m.State("IDLE"):
            m.d.comb += core.engine_idle.eq(wr_outstanding == 0)
            with m.If(core.reset_pending):
                pass  # the register block completes the reset once the DMA engine is idle too
            with m.Elif(broken):
                m.d.comb += rx.consume.eq(rx.full)  # drop frames: the ring is dead until reset
            with m.Else():
                with m.If(Cat(q.reset_req for q in queues).any()):
                    # RING_RESET (2.6.1): the queue is between chains here; forget its state.
                    for q, s in zip(queues, states, strict=True):
                        with m.If(q.reset_req):
                            m.d.sync += q.reset_statements()
                            m.d.sync += s.reset_statements()
                with m.Else():
                    # Priority: our own event structure, pending used elements, then chains (round robin).
                    choices = []
                    for i, (q, s) in enumerate(zip(queues, states, strict=True)):
                        choices.append((s.need_dev_event & q.enable, i, "DEVEVT"))
                    for i, s in enumerate(states):
                        choices.append((s.used_pend & ~batching[i], i, "USED"))
                    for i, s in enumerate(states):
                        choices.append((s.ev_pending & ~s.used_pend & ~imminent[i], i, "EVENT_WAIT"))
                    for n, (cond, i, target) in enumerate(choices):
                        with (m.If if n == 0 else m.Elif)(cond):
                            m.d.sync += cur_q.eq(i)
                            m.next = target
                    with m.Elif(rx_go | tx_go):
                        pick_rx = rx_go & (~tx_go | (last_q == TX_QUEUE))
                        q_next = Mux(pick_rx, RX_QUEUE, TX_QUEUE)
                        m.d.sync += [cur_q.eq(q_next), last_q.eq(q_next)]
                        m.next = "CHAIN_START"

        with m.State("CHAIN_START"):
            m.d.sync += [chain_len.eq(0), byte_pos.eq(0), rx_remaining.eq(rx.frame_len + HDR_BYTES)]
            m.d.comb += app.restart.eq(cur_q == TX_QUEUE)
            m.next = "NEXT_DESC"

        with m.State("NEXT_DESC"):
            with m.If(core.reset_pending | creg("reset_req")):
                m.next = "NOT_AVAIL"  # abandon the chain; the reset forgets it anyway
            with m.Elif(cur("cache_cnt") == 0):
                m.next = "FETCH"
            with m.Else():
                m.d.sync += desc.eq(cached_desc)
                m.next = "CHECK"

        with m.State("FETCH"):
            m.d.sync += [
                fetch_n.eq(fetch_count),
                cur("kick_pending").eq(0),
                # Without a hint, keep fetching until a descriptor is not available; with one, until the hint.
                cur("maybe_more").eq(~use_hint | (hint_dist > fetch_count)),
                beat_idx.eq(0),
                rd_error.eq(0),
            ]
            with m.If(fetch_count == 0):
                m.next = "NOT_AVAIL"
            with m.Else():
                m.next = "FETCH_REQ"

        with m.State("FETCH_REQ"):
            m.d.comb += [
                rd.req_valid.eq(1),
                rd.req_addr.eq(creg("desc") + pidx * DESC_BYTES),
                rd.req_len.eq(fetch_n * DESC_BYTES),
            ]
            with m.If(rd.req_ready):
                m.d.sync += stat_fetch.eq(stat_fetch + 1)
                m.next = "FETCH_DATA"

        with m.State("FETCH_DATA"):
            m.d.comb += rd.data_ready.eq(1)
            with m.If(rd.data_valid):
                m.d.comb += cache_w.en.eq(beat_idx < cache_words)
                m.d.sync += beat_idx.eq(beat_idx + 1)
                with m.If(rd.data_last):
                    with m.If(rd.error):
                        m.next = "MALFORMED"
                    with m.Else():
                        m.d.sync += [cur("cache_cnt").eq(fetch_n), cur("cache_rd").eq(0)]
                        m.next = "NEXT_DESC"

        with m.State("CHECK"):
            nidx, nwrap = advance(pidx, pwrap, 1, size)
            with m.If(~is_avail):
                # Not (yet) made available (2.8.1): a hint can be early or wrong (2.9), wait for a kick.
                m.next = "NOT_AVAIL"
            with m.Else():
                m.d.sync += [
                    cur("cache_rd").eq(cur("cache_rd") + 1),
                    cur("cache_cnt").eq(cur("cache_cnt") - 1),
                    cur("parse_idx").eq(nidx),
                    cur("parse_wrap").eq(nwrap),
                    chain_len.eq(chain_len + 1),
                    seg_addr.eq(desc.addr),
                ]
                rx_seg = Mux(desc.len < rx_remaining, desc.len, rx_remaining)
                bad = (
                    (desc.len == 0)  # 2.8.4 / 2.8.7: a buffer has a length
                    | is_indirect  # INDIRECT_DESC is never offered (2.8.19)
                    | (has_next & (chain_len + 1 >= size))  # 2.8.6: a chain never exceeds the queue size
                    | Mux(cur_q == TX_QUEUE, is_write, ~is_write)  # 5.1.6: TX is read-only, RX write-only
                    | ((cur_q == TX_QUEUE) & (byte_pos + desc.len > BUFFER_BYTES))  # frame > MAX_FRAME_LEN
                )
                with m.If(bad):
                    m.next = "MALFORMED"
                with m.Elif(cur_q == TX_QUEUE):
                    m.d.sync += [seg_len.eq(desc.len), rd_left.eq(desc.len), rd_error.eq(0)]
                    m.next = "TX_REQ"
                with m.Elif(rx_seg != 0):
                    m.d.sync += seg_len.eq(rx_seg)
                    m.d.comb += [ext.start.eq(1), ext.pos.eq(byte_pos), ext.length.eq(rx_seg)]
                    m.next = "RX_XFER"
                with m.Else():
                    m.next = "DESC_DONE"  # the frame is already written: the rest of the chain stays unused

        with m.State("TX_REQ"):
            m.d.comb += [rd.req_valid.eq(1), rd.req_addr.eq(seg_addr), rd.req_len.eq(seg_len)]
            with m.If(rd.req_ready):
                m.next = "TX_DATA"

        with m.State("TX_DATA"):
            m.d.comb += [rd.data_ready.eq(1), app.nbytes.eq(Mux(rd_left < dwb, rd_left, dwb))]
            with m.If(rd.data_valid):
                m.d.comb += app.valid.eq(1)
                m.d.sync += rd_left.eq(rd_left - dwb)
                with m.If(rd.data_last):
                    m.d.sync += byte_pos.eq(byte_pos + seg_len)
                    m.next = "TX_END"
                    m.d.sync += rd_error.eq(rd.error)

        with m.State("TX_END"):
            with m.If(rd_error):
                m.next = "MALFORMED"
            with m.Else():
                m.next = "DESC_DONE"

        with m.State("RX_XFER"):
            m.d.comb += [
                wr.req_valid.eq(~req_sent),
                wr.req_addr.eq(seg_addr),
                wr.req_len.eq(seg_len),
                # Data beats follow the accepted request (DmaWritePort: "req ..., then ... beats").
                wr.data_valid.eq(ext.valid & req_sent),
                wr.data.eq(ext.data),
                wr.data_keep.eq(ext.keep),
                wr.data_last.eq(ext.last),
                ext.ready.eq(wr.data_ready & req_sent),
            ]
            with m.If(wr.req_valid & wr.req_ready):
                m.d.sync += req_sent.eq(1)
            with m.If(wr.data_valid & wr.data_ready & ext.last):
                m.d.sync += [
                    byte_pos.eq(byte_pos + seg_len),
                    rx_remaining.eq(rx_remaining - seg_len),
                    req_sent.eq(0),
                ]
                m.next = "DESC_DONE"

        with m.State("DESC_DONE"):
            with m.If(has_next):
                m.next = "NEXT_DESC"
            with m.Else():
                m.next = "CHAIN_DONE"

        with m.State("CHAIN_DONE"):
            # The buffer id is the last descriptor's (2.8.6); the chain is consumed.
            is_tx = cur_q == TX_QUEUE
            bad = Mux(is_tx, byte_pos < HDR_BYTES, rx_remaining != 0)  # RX: frame larger than the buffer
            with m.If(bad):
                m.next = "MALFORMED"
            with m.Else():
                used_len = Mux(is_tx, 0, byte_pos)  # 2.8.4: bytes the device wrote; TX writes none
                m.d.sync += [
                    cur("next_avail_idx").eq(pidx),
                    cur("avail_wrap_counter").eq(pwrap),
                    cur("used_pend").eq(1),
                    cur("pend_id").eq(desc.id),
                    cur("pend_len").eq(used_len),
                    cur("pend_count").eq(Mux(cur("used_pend"), cur("pend_count") + chain_len, chain_len)),
                ]
                with m.If(is_tx):
                    m.d.comb += app.flush.eq(1)
                    m.d.sync += tx_len.eq(byte_pos - HDR_BYTES)
                    m.next = "TX_SEND"
                with m.Else():
                    m.d.comb += rx.consume.eq(1)
                    m.d.sync += stat_rx.eq(stat_rx + 1)
                    m.next = "IDLE"

        with m.State("TX_SEND"):
            with m.If(tx_len != 0):  # a header-only chain carries no frame
                m.d.comb += tx.commit.eq(1)
                m.d.sync += stat_tx.eq(stat_tx + 1)
            m.next = "IDLE"

        with m.State("NOT_AVAIL"):
            # Start over from the chain head next time; only a new kick (or reset) wakes the queue.
            m.d.sync += [
                cur("cache_cnt").eq(0),
                cur("parse_idx").eq(cur("next_avail_idx")),
                cur("parse_wrap").eq(cur("avail_wrap_counter")),
                cur("maybe_more").eq(0),
            ]
            m.next = "IDLE"

        with m.State("USED"):
            # Write id, len and flags of the used descriptor in one 8-byte write at offset 8 (2.8.4: the
            # flags go last or together with the rest); addr is left as the driver wrote it.
            # 2.8.4/2.8.5: WRITE in a used descriptor says the device wrote Element Length bytes.
            wrap_flags = Mux(cur("used_wrap_counter"), DescFlag.AVAIL | DescFlag.USED, 0)
            write_flag = Mux(cur("pend_len") != 0, DescFlag.WRITE, 0)
            used_word = Cat(cur("pend_len"), cur("pend_id"), Const(0, 16) | wrap_flags | write_flag)
            m.d.comb += [
                wr.req_valid.eq(~req_sent),
                wr.req_addr.eq(creg("desc") + cur("used_idx") * DESC_BYTES + 8),
                wr.req_len.eq(8),
                wr.data_valid.eq(req_sent),
                wr.data.eq(used_word),
                wr.data_keep.eq(0xFF),
                wr.data_last.eq(1),
            ]
            with m.If(wr.req_valid & wr.req_ready):
                m.d.sync += req_sent.eq(1)
            with m.If(wr.data_valid & wr.data_ready):
                new_idx, new_wrap = advance(cur("used_idx"), cur("used_wrap_counter"), cur("pend_count"), size)
                m.d.sync += [
                    req_sent.eq(0),
                    cur("used_idx").eq(new_idx),
                    cur("used_wrap_counter").eq(new_wrap),
                    cur("used_pend").eq(0),
                    cur("ev_pending").eq(1),
                ]
                with m.If(~cur("ev_pending")):
                    m.d.sync += [cur("ev_idx").eq(cur("used_idx")), cur("ev_wrap").eq(cur("used_wrap_counter"))]
                m.next = "IDLE"  # IDLE looks at the driver's event structure unless more chains follow

        with m.State("EVENT_WAIT"):
            # The used descriptor must be visible before we sample the driver's wish (2.8.10).
            with m.If(wr_outstanding == 0):
                m.next = "EVENT_REQ"

        with m.State("EVENT_REQ"):
            m.d.comb += [rd.req_valid.eq(1), rd.req_addr.eq(creg("driver")), rd.req_len.eq(4)]
            with m.If(rd.req_ready):
                m.next = "EVENT_DATA"

        with m.State("EVENT_DATA"):
            m.d.comb += rd.data_ready.eq(1)
            with m.If(rd.data_valid & rd.data_last):
                m.d.sync += event.eq(rd.data[0:32])
                m.next = "EVENT_DECIDE"
                m.d.sync += rd_error.eq(rd.error)

        with m.State("EVENT_DECIDE"):
            m.d.sync += [
                cur("ev_pending").eq(0),
                cur("ev_idx").eq(cur("used_idx")),
                cur("ev_wrap").eq(cur("used_wrap_counter")),
            ]
            with m.If(rd_error):
                m.next = "MALFORMED"
            with m.Elif(want_irq):
                m.next = "QUEUE_IRQ"
            with m.Else():
                m.next = "IDLE"

        with m.State("QUEUE_IRQ"):
            vector = creg("msix_vector")
            with m.If(~core.msix_enabled):
                m.d.comb += isr_set.eq(spec.ISR_QUEUE)  # 4.1.4.5: INTx devices report through the ISR
                m.next = "IDLE"
            with m.Elif(vector == NO_VECTOR):
                m.next = "IDLE"
            with m.Else():
                m.d.comb += [core.irq.valid.eq(1), core.irq.vector.eq(vector)]
                with m.If(core.irq.ready):
                    m.next = "IDLE"

        with m.State("DEVEVT"):
            # Our own event suppression structure (2.8.10): notifications enabled, no descriptor offset.
            m.d.comb += [
                wr.req_valid.eq(~req_sent),
                wr.req_addr.eq(creg("device")),
                wr.req_len.eq(spec.EVENT_SUPPRESS.size),
                wr.data_valid.eq(req_sent),
                wr.data.eq(spec.EVENT_SUPPRESS.to_int(flags=EventFlags.ENABLE)),
                wr.data_keep.eq((1 << spec.EVENT_SUPPRESS.size) - 1),
                wr.data_last.eq(1),
            ]
            with m.If(wr.req_valid & wr.req_ready):
                m.d.sync += req_sent.eq(1)
            with m.If(wr.data_valid & wr.data_ready):
                m.d.sync += [req_sent.eq(0), cur("need_dev_event").eq(0)]
                m.next = "IDLE"

        with m.State("MALFORMED"):
            # 2.1.2: DEVICE_NEEDS_RESET, announced by a configuration change interrupt (4.1.4.5).
            m.d.comb += [core.set_needs_reset.eq(1), isr_set.eq(spec.ISR_CONFIG)]
            m.d.sync += broken.eq(1)
            m.next = "CONFIG_IRQ"

        with m.State("CONFIG_IRQ"):
            vector = core.config_msix_vector
            with m.If(~core.msix_enabled | (vector == NO_VECTOR)):
                m.next = "IDLE"
            with m.Else():
                m.d.comb += [core.irq.valid.eq(1), core.irq.vector.eq(vector)]
                with m.If(core.irq.ready):
                    m.next = "IDLE"

    core.engine_fsm = fsm

    # ---- queue enable, kicks and device reset (after the FSM: these take precedence) ----
    for q, s in zip(queues, states, strict=True):
        with m.If(q.enable_strobe):
            m.d.sync += s.reset_statements()
            m.d.sync += s.need_dev_event.eq(1)
        with m.If(q.kick):
            m.d.sync += s.kick_pending.eq(1)
            with m.If(q.kick_has_data):
                m.d.sync += [s.hint_valid.eq(1), s.hint_off.eq(q.kick_next_off), s.hint_wrap.eq(q.kick_next_wrap)]
            with m.Else():
                m.d.sync += s.hint_valid.eq(0)
    with m.If(core.device_reset):
        m.d.comb += rx.abort.eq(1)
        m.d.sync += broken.eq(0)
        for s in states:
            m.d.sync += s.reset_statements()
