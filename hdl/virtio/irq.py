"""``InterruptUnit``: per-queue MSI-X vectors, the ISR when MSI-X is off, and the configuration interrupt.

4.1.4.5 / 4.1.5.1: with MSI-X enabled a queue's notification is its ``queue_msix_vector`` (none for
VIRTIO_MSI_NO_VECTOR); without MSI-X the device sets the ISR queue bit (INTx).  A configuration change
(here: DEVICE_NEEDS_RESET, 2.1.2) sets the ISR configuration bit and signals ``config_msix_vector``.  The
configuration interrupt goes first; queue requests are served round robin.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from hdl.signatures import InterruptPort
from virtio_fpga import spec

NO_VECTOR = spec.VIRTIO_MSI_NO_VECTOR


class InterruptUnit(wiring.Component):
    """``q{i}`` notification requests and the ``config`` pulse in; ``irq`` and ``isr_set`` out."""

    def __init__(self, n_queues: int) -> None:
        self.n = n_queues
        members = {f"q{i}": In(stream.Signature(1)) for i in range(n_queues)}
        members |= {f"q{i}_vector": In(16) for i in range(n_queues)}
        members |= {
            "config": In(1),
            "config_vector": In(16),
            "msix_enabled": In(1),
            "clear": In(1),
            "irq": Out(InterruptPort()),
            "isr_set": Out(8),
            "sent": Out(32),  # MSI-X requests made (statistics)
        }
        super().__init__(members)

    def elaborate(self, platform) -> Module:
        m = Module()
        config_pending = Signal()
        turn = Signal(range(max(2, self.n)))
        isr_queue = Signal()
        m.d.comb += self.isr_set.eq(Mux(self.config, spec.ISR_CONFIG, 0) | Mux(isr_queue, spec.ISR_QUEUE, 0))
        # A message on the port keeps its vector until accepted (stream rule, hdl/signatures.py): while one waits,
        # neither the configuration interrupt nor the round robin may replace it.
        waiting = Signal()
        waiting_cfg = Signal()
        waiting_q = Signal(range(max(2, self.n)))
        with m.If(self.irq.valid):
            m.d.sync += [waiting.eq(~self.irq.ready), waiting_cfg.eq(config_pending & ~(waiting & ~waiting_cfg))]
        with m.Else():
            m.d.sync += waiting.eq(0)
        with m.If(self.config):
            m.d.sync += config_pending.eq(1)
        with m.If(config_pending & ~(waiting & ~waiting_cfg)):
            vector = self.config_vector
            with m.If(~self.msix_enabled | (vector == NO_VECTOR)):
                m.d.sync += config_pending.eq(0)
            with m.Else():
                m.d.comb += [self.irq.valid.eq(1), self.irq.vector.eq(vector)]
                with m.If(self.irq.ready):
                    m.d.sync += [config_pending.eq(0), self.sent.eq(self.sent + 1)]
        with m.Else():
            for i in range(self.n):
                req = getattr(self, f"q{i}")
                vector = getattr(self, f"q{i}_vector")
                others_first = [getattr(self, f"q{j}").valid for j in range(self.n) if j != i]
                mine = req.valid & Mux(waiting, waiting_q == i, (turn == i) | ~_any(others_first))
                with m.If(mine):
                    with m.If(~self.msix_enabled):
                        m.d.comb += [isr_queue.eq(1), req.ready.eq(1)]
                    with m.Elif(vector == NO_VECTOR):
                        m.d.comb += req.ready.eq(1)
                    with m.Else():
                        m.d.comb += [self.irq.valid.eq(1), self.irq.vector.eq(vector), req.ready.eq(self.irq.ready)]
                        m.d.sync += waiting_q.eq(i)
                        with m.If(self.irq.ready):
                            m.d.sync += self.sent.eq(self.sent + 1)
                    with m.If(req.ready):
                        m.d.sync += turn.eq((i + 1) % self.n)
        with m.If(self.clear):
            m.d.sync += config_pending.eq(0)
        return m


def _any(signals: list):
    out = 0
    for s in signals:
        out = out | s
    return out
