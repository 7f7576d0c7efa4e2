"""``InterruptUnit`` in the Amaranth simulator (4.1.4.5, 4.1.5.1, 2.1.2): per-queue notification requests offered
with random gaps, the MSI-X request port taken with random ``ready`` drops.

Checked: with MSI-X every request becomes exactly one message with its queue's vector; VIRTIO_MSI_NO_VECTOR
requests are taken and signal nothing; without MSI-X each request sets the ISR queue bit once and no message is
sent; a configuration change sets the ISR configuration bit and sends ``config_msix_vector`` before any further
queue message; the request port keeps its vector stable while it waits (stream rule).
"""

from __future__ import annotations

import pytest
from stage_models import Bench, Source

from hdl.virtio.irq import NO_VECTOR, InterruptUnit
from virtio_fpga import spec

VECTORS = (3, 5)
CONFIG_VECTOR = 7


class IrqBench:
    def __init__(self, counts: tuple[int, int], seed: int, *, msix: bool, vectors=VECTORS, p_ready=0.5, gap=0.4):
        self.dut = dut = InterruptUnit(2)
        self.bench = Bench(dut, seed=seed)
        self.msix, self.vectors = msix, vectors
        gaps = gap if isinstance(gap, tuple) else (gap, gap)
        self.srcs = [Source(getattr(dut, f"q{i}"), [1] * counts[i], self.bench.fork(), gap=gaps[i]) for i in range(2)]
        self.rng = self.bench.fork()
        self.p_ready = p_ready
        self.irqs: list[tuple[int, int]] = []  # (cycle, vector)
        self.isr: list[tuple[int, int]] = []  # (cycle, isr_set) when nonzero
        self.config_cycles: list[int] = []
        self.bench.background(*self.srcs, self.monitor)

    async def monitor(self, ctx) -> None:
        irq = self.dut.irq
        held = None
        cycle = 0
        while True:
            ready = self.rng.random() < self.p_ready
            ctx.set(irq.ready, ready)
            _, _, valid, vector, isr = await ctx.tick().sample(irq.valid, irq.vector, self.dut.isr_set)
            cycle += 1
            if held is not None:
                assert valid and vector == held, (
                    f"cycle {cycle}: MSI-X request changed while waiting ({held}->{vector})"
                )
            held = vector if valid and not ready else None
            if valid and ready:
                self.irqs.append((cycle, vector))
            if isr:
                self.isr.append((cycle, isr))

    def run(self, body=None, cycles: int = 600) -> None:
        dut = self.dut

        async def tb(ctx):
            ctx.set(dut.msix_enabled, self.msix)
            ctx.set(dut.q0_vector, self.vectors[0])
            ctx.set(dut.q1_vector, self.vectors[1])
            ctx.set(dut.config_vector, CONFIG_VECTOR)
            if body:
                await body(ctx)
            for _ in range(cycles):
                await ctx.tick()
            assert all(s.sent == len(s.items) for s in self.srcs), "requests left untaken"

        self.bench.run(tb)


@pytest.mark.parametrize(("seed", "gaps"), [(1, (0.4, 0.4)), (2, (0.0, 0.9))])
def test_irq_msix_one_message_per_request(seed: int, gaps: tuple) -> None:
    """The second case has queue 1 ask rarely, so it often arrives while queue 0's message waits on the port
    (round robin must not swap the waiting message)."""
    ib = IrqBench((60, 30), seed, msix=True, gap=gaps, p_ready=0.3)
    ib.run(cycles=1200)
    vectors = [v for _, v in ib.irqs]
    assert vectors.count(VECTORS[0]) == 60 and vectors.count(VECTORS[1]) == 30 and len(vectors) == 90
    assert not ib.isr, "the ISR is not used with MSI-X"


def test_irq_no_vector_signals_nothing() -> None:
    ib = IrqBench((12, 14), 3, msix=True, vectors=(VECTORS[0], NO_VECTOR))
    ib.run()
    assert [v for _, v in ib.irqs] == [VECTORS[0]] * 12
    assert not ib.isr


def test_irq_isr_without_msix() -> None:
    """Without MSI-X (INTx): one ISR queue-bit pulse per request, the config bit with the config change."""
    ib = IrqBench((9, 11), 4, msix=False)
    config_at = []

    async def body(ctx):
        for _ in range(50):
            await ctx.tick()
        ctx.set(ib.dut.config, 1)
        await ctx.tick()
        ctx.set(ib.dut.config, 0)
        config_at.append(ib.srcs[0].cycle)

    ib.run(body)
    assert not ib.irqs, "an MSI-X message while MSI-X is off"
    queue_pulses = [c for c, isr in ib.isr if isr & spec.ISR_QUEUE]
    config_pulses = [c for c, isr in ib.isr if isr & spec.ISR_CONFIG]
    assert len(queue_pulses) == 20
    assert config_pulses == config_at


def test_irq_config_first() -> None:
    """Both queues keep asking; a configuration change is signalled before any queue message that was not
    already on the port, and every request is still served once."""
    ib = IrqBench((60, 60), 5, msix=True, gap=0.0, p_ready=0.4)
    pulse = []

    async def body(ctx):
        for _ in range(40):
            await ctx.tick()
        ctx.set(ib.dut.config, 1)
        await ctx.tick()
        ctx.set(ib.dut.config, 0)
        pulse.append(ib.srcs[0].cycle)

    ib.run(body)
    vectors = [v for _, v in ib.irqs]
    assert vectors.count(CONFIG_VECTOR) == 1
    at = vectors.index(CONFIG_VECTOR)
    before_cfg = [c for c, _ in ib.irqs[:at] if c > pulse[0]]
    assert len(before_cfg) <= 1, f"{len(before_cfg)} queue messages went before the config change"
    assert vectors.count(VECTORS[0]) == 60 and vectors.count(VECTORS[1]) == 60
