"""The pipelined packed-ring engine (spec 2.8) and the virtio-net data path (5.1.6) of ``VirtioNetCore``.

Why stages: a hypervisor handles descriptors one at a time; hardware can work on many at once if it knows how
many are available, which is what notification data tells it (2.9).  Each queue is a pipeline of
``wiring.Component`` stages joined by valid/ready streams (``hdl/virtio/README.md`` draws it)::

    DescFetcher -> ChainParser -> TxDataMover -> (frame ring) -> TxFrameSender -> eth_tx     transmitq
                                               \\-> UsedWriter -> EventNotifier -\\
    eth_rx -> RxFrameBuffer -> RxDataMover <- ChainParser <- DescFetcher           receiveq
                                   \\-> UsedWriter -> EventNotifier -> InterruptUnit -> irq / ISR

TX and RX never wait for each other (they use opposite directions of the link); their DMA clients meet only in
:class:`~hdl.virtio.dmamux.ReadMux` and :class:`~hdl.virtio.dmamux.WriteMux`.

Ordering that a single state machine used to give for free, kept on purpose here:

* a used descriptor never overtakes its data: TX used elements are made only after the chain's last read
  completion is in; RX used elements only after the chain's last data beat went into the write port, and the
  write port keeps request order onto RQ (posted writes in order, PCIe Base A2a);
* the event-suppression read of a batch is issued only after the ``done`` of its used writes (so it is behind
  them on RQ, B2a), and an interrupt only after that read's completion came back (D2a): the MSI-X message,
  which the hard IP does not order with RQ traffic, cannot overtake the used descriptor it announces;
* queue reset and device reset stop every stage from issuing, wait until no read or write of it is in flight,
  then clear it, and only then read back 0 (2.4.1, 4.1.4.3.2).

Anything malformed (2.8.6-2.8.7 rules, DMA read errors, a frame larger than the RX chain) travels down its
queue's pipeline as an ``error`` element behind everything before it; when it reaches the used-element writer
the engine raises DEVICE_NEEDS_RESET and the configuration interrupt (2.1.2, 4.1.4.5), and no new DMA is
started until the driver resets the device.
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth.hdl import Cat, Module, Signal, unsigned
from amaranth.lib import memory, wiring

from hdl.virtio.chain import ChainParser
from hdl.virtio.dmamux import ReadMux, WriteMux
from hdl.virtio.fetch import DescFetcher
from hdl.virtio.framebuf import BUFFER_BYTES, RxFrameBuffer
from hdl.virtio.irq import InterruptUnit
from hdl.virtio.rxpath import RxDataMover
from hdl.virtio.slice import StreamSlice
from hdl.virtio.stream_types import SEGMENT, USED
from hdl.virtio.txpath import TxDataMover, TxFrameSender
from hdl.virtio.used import EventNotifier, UsedWriter
from virtio_fpga import spec
from virtio_fpga.spec import Feature, Status

RX_QUEUE = spec.NET_RX_QUEUE
TX_QUEUE = spec.NET_TX_QUEUE
DESC_BYTES = spec.PACKED_DESC.size
#: Bytes of the TX frame ring: room for the reads in flight at ~1 us of host latency plus two jumbo frames.
TX_RING_BYTES = 32 * 1024
assert TX_RING_BYTES >= 2 * (BUFFER_BYTES + 64)


def build_engine(core, m: Module) -> None:
    """Add the ring engine and the frame path to ``core``'s module (after its registers)."""
    dw = core.data_width
    queues = core.queues
    assert len(queues) == 2 and RX_QUEUE == 0 and TX_QUEUE == 1
    driver_ok = core.device_status[Status.DRIVER_OK.bit_length() - 1]
    broken = Signal()  # DEVICE_NEEDS_RESET was raised: no new DMA until device reset
    core.broken = broken

    # ---- stages
    fetch = [DescFetcher(dw) for _ in queues]
    parse = [ChainParser(device_writes=(q.index == RX_QUEUE)) for q in queues]
    used = [UsedWriter(dw) for _ in queues]
    events = [EventNotifier(dw) for _ in queues]
    # Ready slices on the streams whose producer already drives registered valid/payload (parser -> movers,
    # movers -> used writers): the consumer's late ``ready`` no longer runs back into the producer (and from
    # there into the fetcher), and no cycle is added (hdl/virtio/slice.py).  The fetcher's output goes to the
    # parser directly: the parser's ``ready`` is then one gate on registers.  What a slice holds belongs to its
    # queue and is dropped with the queue's ``clear``.
    seg_slices = [StreamSlice(SEGMENT, forward=False) for _ in queues]
    used_slices = [StreamSlice(USED, forward=False) for _ in queues]
    for i in range(len(queues)):
        m.submodules[f"q{i}_fetch"] = fetch[i]
        m.submodules[f"q{i}_parse"] = parse[i]
        m.submodules[f"q{i}_used"] = used[i]
        m.submodules[f"q{i}_event"] = events[i]
        m.submodules[f"q{i}_seg_slice"] = seg_slices[i]
        m.submodules[f"q{i}_used_slice"] = used_slices[i]
        wiring.connect(m, fetch[i].descs, parse[i].descs)
        wiring.connect(m, parse[i].segs, seg_slices[i].i)
        wiring.connect(m, used_slices[i].o, used[i].used)

    ring_mem = memory.Memory(shape=unsigned(dw), depth=TX_RING_BYTES // (dw // 8), init=[])
    m.submodules.tx_ring = ring_mem
    m.submodules.tx_mover = tx_mover = TxDataMover(ring_mem.write_port(), dw, TX_RING_BYTES)
    m.submodules.tx_sender = tx_sender = TxFrameSender(ring_mem.read_port(), dw, TX_RING_BYTES)
    m.submodules.rxbuf = rxbuf = RxFrameBuffer(dw, in_width=dw)
    m.submodules.rx_mover = rx_mover = RxDataMover(rxbuf, dw)
    m.submodules.irqs = irqs = InterruptUnit(len(queues))
    core.txbuf, core.rxbuf = tx_sender, rxbuf

    wiring.connect(m, seg_slices[TX_QUEUE].o, tx_mover.segs)
    wiring.connect(m, tx_mover.frames, tx_sender.frames)
    wiring.connect(m, tx_mover.used, used_slices[TX_QUEUE].i)
    m.d.comb += tx_mover.freed.eq(tx_sender.freed)
    if core.planted_bug == "rx_past_end":  # PLANTED BUG (test only): RX buffers look 64 bytes longer
        rx_segs, rx_in = seg_slices[RX_QUEUE].o, rx_mover.segs
        m.d.comb += [rx_in.valid.eq(rx_segs.valid), rx_segs.ready.eq(rx_in.ready), rx_in.payload.eq(rx_segs.payload)]
        m.d.comb += rx_in.payload.len.eq(rx_segs.payload.len + 64)
    else:
        wiring.connect(m, seg_slices[RX_QUEUE].o, rx_mover.segs)
    wiring.connect(m, rx_mover.used, used_slices[RX_QUEUE].i)

    # ---- DMA clients onto the core's ports
    m.submodules.rdmux = rdmux = ReadMux(5, dw)
    # The RX used writer (client 1) is never granted before a request of the RX data mover (client 0) that
    # waits in its slice: the used element it writes may describe that data (ordering rule 1).
    m.submodules.wrmux = wrmux = WriteMux(3, dw, ordered_after=((1, 0),))
    readers = [fetch[RX_QUEUE].rd, fetch[TX_QUEUE].rd, tx_mover.rd, events[RX_QUEUE].rd, events[TX_QUEUE].rd]
    for client, port in zip(readers, rdmux.clients(), strict=True):
        wiring.connect(m, client, port)
    writers = [rx_mover.wr, used[RX_QUEUE].wr, used[TX_QUEUE].wr]
    for client, port in zip(writers, wrmux.clients(), strict=True):
        wiring.connect(m, client, port)
    wiring.connect(m, wiring.flipped(core.dma_rd), rdmux.dma)
    wiring.connect(m, wiring.flipped(core.dma_wr), wrmux.dma)

    # ---- Ethernet: the frame path runs at the DMA width (the top level converts to the port width)
    wiring.connect(m, tx_sender.eth, wiring.flipped(core.eth_tx))
    m.d.comb += [
        rxbuf.rx_valid.eq(core.eth_rx.valid),
        core.eth_rx.ready.eq(rxbuf.rx_ready),
        rxbuf.rx_data.eq(core.eth_rx.data),
        rxbuf.rx_keep.eq(core.eth_rx.keep),
        rxbuf.rx_last.eq(core.eth_rx.last),
        rxbuf.rx_user.eq(core.eth_rx.user),
    ]

    # ---- per-queue control: running, reset, clear
    in_order = core.negotiated(Feature.IN_ORDER)
    running = []
    q_idle = []
    clears = []
    for i, q in enumerate(queues):
        run = Signal(name=f"q{i}_run")
        m.d.comb += run.eq(q.enable & driver_ok & ~broken & ~q.reset_req & ~core.reset_pending)
        running.append(run)
        mover_idle = rx_mover.idle if i == RX_QUEUE else tx_mover.idle
        idle = Signal(name=f"q{i}_idle")
        # A used element in its slice is not written yet (the used writer drops it while the queue is stopped).
        m.d.comb += idle.eq(fetch[i].idle & mover_idle & ~used_slices[i].busy & used[i].idle & events[i].idle)
        q_idle.append(idle)
        clear = Signal(name=f"q{i}_clear")
        clears.append(clear)
        # RING_RESET (2.6.1, 4.1.4.3.2): once nothing of the queue is in flight, forget its state.
        # ``idle`` is taken from a register (the stages' idle logic and the clear fan-out into every stage would
        # otherwise be one combinational path): idle in the previous cycle while the queue was not running means
        # idle now, since a stage starts work only while ``run`` is high, and ``run`` is low while reset_req is.
        idle_stopped = Signal(name=f"q{i}_idle_stopped")
        m.d.sync += idle_stopped.eq(idle & ~run)
        queue_reset_done = q.reset_req & idle_stopped & ~core.reset_pending
        with m.If(queue_reset_done):
            m.d.sync += q.reset_statements()
        m.d.comb += clear.eq(core.device_reset | q.enable_strobe | queue_reset_done)
        m.d.comb += [
            fetch[i].size.eq(q.size),
            fetch[i].base.eq(q.desc),
            fetch[i].run.eq(run),
            fetch[i].clear.eq(clear),
            fetch[i].use_hint.eq(core.negotiated(Feature.NOTIFICATION_DATA)),
            fetch[i].kick.eq(q.kick),
            fetch[i].kick_has_data.eq(q.kick_has_data),
            fetch[i].kick_next_off.eq(q.kick_next_off),
            fetch[i].kick_next_wrap.eq(q.kick_next_wrap),
            seg_slices[i].clear.eq(clear),
            used_slices[i].clear.eq(clear),
            parse[i].size.eq(q.size),
            parse[i].clear.eq(clear),
            used[i].size.eq(q.size),
            used[i].desc_base.eq(q.desc + (DESC_BYTES if core.planted_bug == "used_slot_off" else 0)),  # PLANTED
            used[i].device_area.eq(q.device),
            used[i].batch.eq(in_order if i == TX_QUEUE else 0),
            used[i].run.eq(run),
            used[i].clear.eq(clear),
            used[i].dev_event.eq(q.enable_strobe),
            used[i].dev_event_ok.eq(q.enable & ~broken & ~q.reset_req & ~core.reset_pending),
            events[i].size.eq(q.size),
            events[i].driver_area.eq(q.driver),
            events[i].event_idx.eq(core.negotiated(Feature.EVENT_IDX)),
            events[i].run.eq(run),
            events[i].clear.eq(clear),
            events[i].pub_idx.eq(used[i].pub_idx),
            events[i].pub_wrap.eq(used[i].pub_wrap),
        ]
        wiring.connect(m, events[i].notify, getattr(irqs, f"q{i}"))
        m.d.comb += getattr(irqs, f"q{i}_vector").eq(q.msix_vector)

    m.d.comb += [
        tx_mover.run.eq(running[TX_QUEUE]),
        tx_mover.clear.eq(clears[TX_QUEUE]),
        rx_mover.run.eq(running[RX_QUEUE]),
        rx_mover.clear.eq(clears[RX_QUEUE]),
        rxbuf.accept.eq(running[RX_QUEUE]),
    ]
    # A dead ring takes no frames: drop what the RX buffer holds so the wire is not held up.
    m.d.comb += rx_mover.discard.eq(broken & ~core.reset_pending)

    # ---- errors: DEVICE_NEEDS_RESET + configuration interrupt, once
    fatal = Cat(*(u.fatal for u in used), *(e.fatal for e in events)).any()
    with m.If(fatal & ~broken):
        m.d.comb += [core.set_needs_reset.eq(1), irqs.config.eq(1)]
        m.d.sync += broken.eq(1)
    m.d.comb += [
        irqs.config_vector.eq(core.config_msix_vector),
        irqs.msix_enabled.eq(core.msix_enabled),
        irqs.clear.eq(core.device_reset),
        core.isr_set.eq(irqs.isr_set),
    ]
    wiring.connect(m, irqs.irq, wiring.flipped(core.irq))

    # ---- device reset (2.4.1): reads back 0 once no stage has DMA in flight (the core checks dma_busy too)
    m.d.comb += core.engine_idle.eq(Cat(*q_idle).all() & (rdmux.outstanding == 0) & (wrmux.outstanding == 0))
    with m.If(core.device_reset):
        m.d.comb += rxbuf.abort.eq(1)
        m.d.sync += broken.eq(0)

    # ---- what tests and statistics look at
    core.queue_states = [
        SimpleNamespace(
            kick_pending=f.kick_pending, hint_valid=f.hint_valid, hint_off=f.hint_off, hint_wrap=f.hint_wrap
        )
        for f in fetch
    ]
    core.stat_tx_frames = tx_sender.sent
    core.stat_rx_frames = rx_mover.frames
    core.stat_desc_fetches = Signal(32)
    m.d.comb += core.stat_desc_fetches.eq(fetch[RX_QUEUE].reads + fetch[TX_QUEUE].reads)
    core.stages = SimpleNamespace(
        fetch=fetch,
        parse=parse,
        used=used,
        events=events,
        tx_mover=tx_mover,
        tx_sender=tx_sender,
        rx_mover=rx_mover,
        irqs=irqs,
        rdmux=rdmux,
        wrmux=wrmux,
    )
