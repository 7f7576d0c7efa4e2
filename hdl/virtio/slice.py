"""``StreamSlice``: a register slice for a valid/ready stream, so a path ends at the stage boundary.

Why: two stages joined directly by a stream form one combinational path from the producer's state through
``valid``/``payload`` into the consumer's decision, and another from the consumer's state through ``ready``
back into the producer's.  At 250 MHz on UltraScale+ only about 8 LUT levels fit in a cycle, so a stage may
spend its levels on its own logic only if its ports are registers.  A slice between two stages makes them so.

* ``forward=True`` (a full slice): ``o.valid`` and ``o.payload`` come from registers (the forward path ends at
  the slice's input) and ``i.ready`` comes from a register (the backward path ends at the slice's output).
  It still passes one item per cycle: while the consumer takes every cycle, items go straight through the
  output register; when the consumer stalls, the item offered in that cycle (``i.ready`` was already high)
  lands in a second, *skid* register and ``i.ready`` drops in the next cycle.  It holds up to two items and
  adds one cycle of latency.
* ``forward=False`` (a ready slice): only ``i.ready`` is a register.  An item goes through in the cycle it is
  offered (one 2:1 multiplexer on ``valid``/``payload``, no latency); when the consumer stalls it lands in the
  skid register.  For streams whose producer already drives registered ``valid``/``payload`` but whose
  consumer decides ``ready`` late: the backward path is cut without adding a cycle to the forward one.

``clear`` empties it (queue or device reset: whatever it holds belongs to the state being forgotten); ``busy``
says it holds something, which the engine counts as "in flight" when it quiesces a queue.  The stream rules
(``valid`` held with a stable payload until ``ready``; ``valid`` never depends on ``ready``) hold on both
sides.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, Value
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out


class StreamSlice(wiring.Component):
    """``i`` -> registers -> ``o`` for payloads of ``shape``; ``clear`` drops what it holds, ``busy`` if any."""

    def __init__(self, shape, *, forward: bool = True) -> None:
        self.shape = shape
        self.forward = forward
        super().__init__(
            {
                "i": In(stream.Signature(shape)),
                "o": Out(stream.Signature(shape)),
                "clear": In(1),
                "busy": Out(1),
            }
        )

    def elaborate(self, platform) -> Module:
        m = Module()
        i, o = self.i, self.o
        skid_valid = Signal()
        skid = Signal(self.shape, name="skid")
        in_ready = Signal(init=1)  # == ~skid_valid, kept as its own register so ``i.ready`` is one flop
        m.d.comb += i.ready.eq(in_ready)
        take = i.valid & in_ready
        if self.forward:
            m.d.comb += self.busy.eq(o.valid | skid_valid)
            load = ~o.valid | o.ready  # the output register is free (or empties) this cycle
            with m.If(load):
                # The skid item is older than anything offered now (``i.ready`` was low while it was held).
                m.d.sync += [
                    o.valid.eq(skid_valid | i.valid),
                    o.payload.eq(Mux(skid_valid, Value.cast(skid), Value.cast(i.payload))),
                    skid_valid.eq(0),
                    in_ready.eq(1),
                ]
            with m.Elif(take):
                m.d.sync += [skid.eq(i.payload), skid_valid.eq(1), in_ready.eq(0)]
        else:
            m.d.comb += [
                self.busy.eq(skid_valid),
                o.valid.eq(skid_valid | i.valid),
                o.payload.eq(Mux(skid_valid, Value.cast(skid), Value.cast(i.payload))),
            ]
            with m.If(skid_valid):
                with m.If(o.ready):
                    m.d.sync += [skid_valid.eq(0), in_ready.eq(1)]
            with m.Elif(take & ~o.ready):
                m.d.sync += [skid.eq(i.payload), skid_valid.eq(1), in_ready.eq(0)]
        with m.If(self.clear):
            m.d.sync += [skid_valid.eq(0), in_ready.eq(1)]
            if self.forward:
                m.d.sync += o.valid.eq(0)
        return m
