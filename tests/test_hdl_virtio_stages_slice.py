"""``StreamSlice`` alone in the Amaranth simulator: items in with random gaps, out with random ``ready`` drops.

What a register slice must keep: every item once, in order (the :class:`Sink` also checks the stream rule on
the output); one item per cycle when both sides are always willing; ``i.ready`` and ``o.valid`` are registers
(a change of ``o.ready`` or ``i.valid`` shows on them only after a clock edge); ``clear`` drops what it holds
and ``busy`` says whether it holds anything.
"""

from __future__ import annotations

import random

import pytest
from stage_models import Bench, Sink, Source, wait_until

from hdl.virtio.slice import StreamSlice
from hdl.virtio.stream_types import SEGMENT


@pytest.mark.parametrize("forward", [True, False])
@pytest.mark.parametrize(("gap", "p_ready"), [(0.0, 1.0), (0.3, 0.6), (0.0, 0.3), (0.7, 0.9)])
def test_slice_passes_every_item_in_order(gap: float, p_ready: float, forward: bool) -> None:
    rng = random.Random(int(gap * 10) * 7 + int(p_ready * 10))
    items = [rng.getrandbits(32) for _ in range(300)]
    dut = StreamSlice(32, forward=forward)
    bench = Bench(dut, seed=5)
    src = Source(dut.i, items, bench.fork(), gap=gap)
    sink = Sink(dut.o, 32, bench.fork(), p_ready=p_ready)
    bench.background(src, sink)

    async def tb(ctx) -> None:
        await wait_until(ctx, lambda: len(sink.items) == len(items), 20_000, "all items")
        for _ in range(5):
            await ctx.tick()
        assert not ctx.get(dut.busy)

    bench.run(tb)
    assert sink.items == items
    if gap == 0.0 and p_ready == 1.0:
        # full rate: one item per cycle once the first one is through
        assert sink.times[-1] - sink.times[0] == len(items) - 1


def test_slice_layout_payload_and_registered_handshake() -> None:
    """A ``lib.data`` payload passes unchanged; ``o.ready`` falling is seen on ``i.ready`` one cycle later (a
    register), and ``i.valid`` rising is seen on ``o.valid`` one cycle later."""
    dut = StreamSlice(SEGMENT)
    bench = Bench(dut)
    seg = SEGMENT.const({"addr": 0x1234_5678_9ABC, "len": 77, "pos": 12, "last": 1, "id": 9, "count": 3}).as_bits()

    async def tb(ctx) -> None:
        ctx.set(dut.o.ready, 0)
        ctx.set(dut.i.payload.as_value(), seg)
        ctx.set(dut.i.valid, 1)
        assert ctx.get(dut.i.ready) and not ctx.get(dut.o.valid)  # no combinational valid path
        await ctx.tick()
        assert ctx.get(dut.o.valid) and ctx.get(dut.o.payload.as_value()) == seg
        assert ctx.get(dut.i.ready)  # the output register is full, the skid register still free
        ctx.set(dut.i.payload.as_value(), seg ^ 1)
        await ctx.tick()  # second item into the skid register
        assert not ctx.get(dut.i.ready)
        ctx.set(dut.i.valid, 0)
        ctx.set(dut.o.ready, 1)
        assert not ctx.get(dut.i.ready)  # o.ready does not reach i.ready within the cycle
        await ctx.tick()
        assert ctx.get(dut.o.payload.as_value()) == seg ^ 1 and ctx.get(dut.i.ready)
        await ctx.tick()
        assert not ctx.get(dut.o.valid) and not ctx.get(dut.busy)

    bench.run(tb)


def test_ready_slice_zero_latency_registered_ready() -> None:
    """``forward=False``: an item offered while the consumer is ready passes in the same cycle; one offered while
    it stalls is held (skid) and ``i.ready`` falls only after the clock edge, and rises again only after the
    held item was taken."""
    dut = StreamSlice(16, forward=False)
    bench = Bench(dut)

    async def tb(ctx) -> None:
        ctx.set(dut.o.ready, 1)
        ctx.set(dut.i.payload, 7)
        ctx.set(dut.i.valid, 1)
        assert ctx.get(dut.o.valid) and ctx.get(dut.o.payload) == 7 and ctx.get(dut.i.ready)
        await ctx.tick()
        ctx.set(dut.i.payload, 8)
        ctx.set(dut.o.ready, 0)
        assert ctx.get(dut.i.ready)  # o.ready does not reach i.ready within the cycle
        await ctx.tick()  # 8 goes into the skid register
        assert not ctx.get(dut.i.ready) and ctx.get(dut.busy)
        ctx.set(dut.i.payload, 9)  # offered, not taken while the skid register is full
        assert ctx.get(dut.o.valid) and ctx.get(dut.o.payload) == 8
        ctx.set(dut.o.ready, 1)
        await ctx.tick()  # 8 leaves
        assert ctx.get(dut.i.ready) and not ctx.get(dut.busy)
        assert ctx.get(dut.o.valid) and ctx.get(dut.o.payload) == 9
        await ctx.tick()  # 9 passes
        ctx.set(dut.i.valid, 0)
        assert not ctx.get(dut.o.valid)

    bench.run(tb)


@pytest.mark.parametrize("forward", [True, False])
def test_slice_clear_drops_what_it_holds(forward: bool) -> None:
    dut = StreamSlice(16, forward=forward)
    bench = Bench(dut)

    async def tb(ctx) -> None:
        ctx.set(dut.o.ready, 0)
        ctx.set(dut.i.valid, 1)
        for v in (1, 2) if forward else (1,):
            ctx.set(dut.i.payload, v)
            await ctx.tick()
        ctx.set(dut.i.valid, 0)
        assert ctx.get(dut.busy) and not ctx.get(dut.i.ready)
        ctx.set(dut.clear, 1)
        await ctx.tick()
        ctx.set(dut.clear, 0)
        assert not ctx.get(dut.busy) and not ctx.get(dut.o.valid) and ctx.get(dut.i.ready)
        ctx.set(dut.i.payload, 3)
        ctx.set(dut.i.valid, 1)
        ctx.set(dut.o.ready, 1)
        if not forward:  # passes in the same cycle
            assert ctx.get(dut.o.valid) and ctx.get(dut.o.payload) == 3
        await ctx.tick()
        ctx.set(dut.i.valid, 0)
        if forward:
            assert ctx.get(dut.o.valid) and ctx.get(dut.o.payload) == 3

    bench.run(tb)
