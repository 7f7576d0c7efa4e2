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
    """N masters onto one bus; master 0 has priority.  A grant lasts from ``valid`` until ``done``.

    The bus side sees the request one cycle after the master raised ``valid``; the master sees ``done``
    (and ``rdata``) one cycle after the slave gave them.
    """

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
        grant = Signal(range(self.n_masters))
        masters = [getattr(self, f"m{i}") for i in range(self.n_masters)]
        # Registered both ways, so that no path runs from a master through the decoder into a register block
        # (or back): the granted request is copied into registers that drive ``bus``, and the answer is
        # copied into registers that drive the master's ``rdata``/``done`` one cycle after the slave's.
        req = {name: Signal.like(getattr(self.bus, name), name=f"req_{name}") for name in MASTER_OUTPUTS}
        rdata = Signal.like(self.bus.rdata)
        answer = Signal()  # the cycle the granted master sees ``done``
        for name in MASTER_OUTPUTS:
            m.d.comb += getattr(self.bus, name).eq(req[name])
        for i, mst in enumerate(masters):
            m.d.comb += [mst.rdata.eq(rdata), mst.done.eq(answer & (grant == i))]

        with m.FSM():
            with m.State("IDLE"):
                for i in reversed(range(self.n_masters)):  # master 0 last: it wins
                    with m.If(masters[i].valid):
                        m.d.sync += grant.eq(i)
                        for name in MASTER_OUTPUTS:
                            m.d.sync += req[name].eq(getattr(masters[i], name))
                        m.next = "BUSY"
            with m.State("BUSY"):
                with m.If(self.bus.done):
                    m.d.sync += [req["valid"].eq(0), rdata.eq(self.bus.rdata), answer.eq(1)]
                    m.next = "ANSWER"
            with m.State("ANSWER"):
                # The master drops ``valid`` after its ``done``: no new grant in this cycle.
                m.d.sync += answer.eq(0)
                m.next = "IDLE"
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
