"""Register-bus plumbing: arbitration between masters and BAR0 decoding between slaves.

Two masters reach BAR0 registers: the BAR completer (host memory reads/writes) and the configuration-extend
responder (the VIRTIO_PCI_CAP_PCI_CFG window, virtio spec 4.1.4.9).  Only one access may be in flight on a
:class:`~hdl.signatures.RegisterBus` at a time, so a fixed-priority arbiter grants one master until ``done``.

Direction conventions: a *master* port here has ``valid/write/addr/size/wdata`` as outputs and
``rdata/done`` as inputs, which is ``In(RegisterBus())`` (RegisterBus is written from the slave's view).
"""

from __future__ import annotations

from amaranth import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hdl.signatures import RegisterBus

#: Signals a master drives (the rest, rdata/done, the slave drives).
MASTER_OUTPUTS = ("valid", "write", "addr", "size", "wdata")
SLAVE_OUTPUTS = ("rdata", "done")


def connect_register_bus(m: Module, master: object, slave: object) -> None:
    """Connect by meaning rather than by declared flow, so either declaration of a port works."""
    for name in MASTER_OUTPUTS:
        m.d.comb += getattr(slave, name).eq(getattr(master, name))
    for name in SLAVE_OUTPUTS:
        m.d.comb += getattr(master, name).eq(getattr(slave, name))


class RegisterArbiter(wiring.Component):
    """N masters onto one bus; master 0 has priority.  A grant lasts from ``valid`` until ``done``."""

    def __init__(self, n_masters: int = 2) -> None:
        self.n_masters = n_masters
        super().__init__(
            {
                **{f"m{i}": Out(RegisterBus()) for i in range(n_masters)},  # slave view: valid is an input
                "bus": In(RegisterBus()),  # master view towards the slaves
            }
        )

    def elaborate(self, platform: object) -> Module:
        m = Module()
        busy = Signal()
        grant = Signal(range(self.n_masters))
        masters = [getattr(self, f"m{i}") for i in range(self.n_masters)]

        with m.If(~busy):
            for i in reversed(range(self.n_masters)):
                with m.If(masters[i].valid):
                    m.d.sync += grant.eq(i)
                    m.d.sync += busy.eq(1)
        with m.Else():
            with m.If(self.bus.done):
                m.d.sync += busy.eq(0)

        for i, mst in enumerate(masters):
            with m.If(busy & (grant == i)):
                for name in MASTER_OUTPUTS:
                    m.d.comb += getattr(self.bus, name).eq(getattr(mst, name))
                m.d.comb += mst.done.eq(self.bus.done)
            m.d.comb += mst.rdata.eq(self.bus.rdata)
        return m


class RegisterDecoder(wiring.Component):
    """One master onto two slaves by address: ``addr >= split`` goes to ``hi``, the rest to ``lo``."""

    def __init__(self, split: int) -> None:
        self.split = split
        super().__init__({"bus": Out(RegisterBus()), "lo": In(RegisterBus()), "hi": In(RegisterBus())})

    def elaborate(self, platform: object) -> Module:
        m = Module()
        sel_hi = Signal()
        m.d.comb += sel_hi.eq(self.bus.addr >= self.split)
        for port, sel in ((self.lo, ~sel_hi), (self.hi, sel_hi)):
            for name in ("write", "addr", "size", "wdata"):
                m.d.comb += getattr(port, name).eq(getattr(self.bus, name))
            m.d.comb += port.valid.eq(self.bus.valid & sel)
        with m.If(sel_hi):
            m.d.comb += [self.bus.rdata.eq(self.hi.rdata), self.bus.done.eq(self.hi.done)]
        with m.Else():
            m.d.comb += [self.bus.rdata.eq(self.lo.rdata), self.bus.done.eq(self.lo.done)]
        return m
