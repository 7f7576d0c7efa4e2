"""``EthWidener`` and ``EthNarrower`` (``hdl/ethwidth.py``) in the Amaranth simulator: a round trip port width ->
DMA width -> port width with random frame lengths, random gaps at the input and random ``ready`` drops at the
output.  Checked at both ends and in the middle: the frames are unchanged, every beat but a frame's last is full
(packed, ``keep`` contiguous), the bad-frame flag (``user``) stays on its frame, and the stream rule holds.
"""

from __future__ import annotations

import random

import pytest
from amaranth.hdl import ClockDomain, Elaboratable, Module
from amaranth.lib import wiring
from stage_models import Bench, EthSink, EthSource

from hdl.ethwidth import EthNarrower, EthWidener


class RoundTrip(Elaboratable):
    def __init__(self, port_width: int, core_width: int) -> None:
        self.widen = EthWidener(port_width, core_width)
        self.narrow = EthNarrower(core_width, port_width)

    def elaborate(self, platform) -> Module:
        m = Module()
        m.domains.sync = ClockDomain()  # equal widths are pure wires: the bench still needs its clock
        m.submodules.widen = self.widen
        m.submodules.narrow = self.narrow
        wiring.connect(m, self.widen.o, self.narrow.i)
        return m


@pytest.mark.parametrize(("port", "core", "seed"), [(64, 256, 1), (64, 512, 2), (128, 256, 3), (256, 256, 4)])
def test_eth_width_round_trip(port: int, core: int, seed: int) -> None:
    rng = random.Random(seed)
    lengths = [1, port // 8, port // 8 + 1, core // 8, core // 8 + 1, core // 8 - 1]
    lengths += [rng.randint(1, 300) for _ in range(40)]
    frames = [rng.randbytes(n) for n in lengths]
    bad = {3, 17, 30}
    dut = RoundTrip(port, core)
    bench = Bench(dut, seed=seed)
    src = EthSource(dut.widen.i, port, frames, bench.fork(), gap=0.3, bad=bad)
    sink = EthSink(dut.narrow.o, port, bench.fork(), p_ready=0.6)
    middle = EthSink(dut.widen.o, core, bench.fork(), passive=True)
    bench.background(src, sink, middle)

    async def tb(ctx):
        for _ in range(20000):
            await ctx.tick()
            if len(sink.frames) == len(frames):
                break
        for _ in range(20):
            await ctx.tick()

    bench.run(tb)
    want_bad = [i in bad for i in range(len(frames))]
    for mon in (middle, sink):
        assert mon.frames == frames
        assert mon.bad == want_bad
    assert middle.beats == sum(-(-n // (core // 8)) for n in lengths), "the wide side is not packed"
