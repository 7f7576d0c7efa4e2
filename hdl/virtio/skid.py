"""``SkidBuffer``: a register slice for an ``amaranth.lib.stream`` stream that cuts every combinational path.

Why: a stage whose ``ready`` is computed from its own comparators and adders, or whose ``valid`` is, adds
its depth to its neighbour's (``virtio-fpga synth --flows depth`` counts the path across both).  Behind a skid
buffer the upstream side sees a ``ready`` that is a register and the downstream side a ``valid`` and payload
that are registers; the downstream ``ready`` only reaches flip-flop enables through one LUT.  It passes one
item per cycle and holds at most two (the second while the output stalls); an item taken in cycle T is on the
output from cycle T + 1.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out


class SkidBuffer(wiring.Component):
    """``i`` -> ``o`` with registered ``i.ready``, ``o.valid`` and ``o.payload``; full rate, no bubble.

    The stream rules hold on both sides (``o.valid`` never depends on ``o.ready``; once raised it stays with
    its payload until taken).  ``clear`` (optional use) drops what it holds.
    """

    def __init__(self, shape) -> None:
        self.shape = shape
        super().__init__(
            {
                "i": In(stream.Signature(shape)),
                "o": Out(stream.Signature(shape)),
                "clear": In(1),
            }
        )

    def elaborate(self, platform) -> Module:
        m = Module()
        spare = Signal(self.shape, name="spare")  # the item taken while ``o`` stalled
        spare_valid = Signal()
        m.d.comb += self.i.ready.eq(~spare_valid)
        take = self.i.valid & ~spare_valid
        move = ~self.o.valid | self.o.ready  # the output register may load
        # The valid flags are set under conditions rather than copied, so that an input still undriven (X in an
        # RTL simulation) leaves them clear instead of locking the buffer at X.
        with m.If(move):
            m.d.sync += [
                self.o.valid.eq(0),
                self.o.payload.eq(Mux(spare_valid, spare, self.i.payload)),
                spare_valid.eq(0),
            ]
            with m.If(spare_valid | self.i.valid):
                m.d.sync += self.o.valid.eq(1)
        with m.Elif(take):
            m.d.sync += [spare_valid.eq(1), spare.eq(self.i.payload)]
        with m.If(self.clear):
            m.d.sync += [self.o.valid.eq(0), spare_valid.eq(0)]
        return m
