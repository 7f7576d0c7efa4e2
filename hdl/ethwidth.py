"""Width converters between the core's frame path (DMA width) and the Ethernet MAC's port width.

Why at the port: the core moves frames at the DMA width (128/256/512 bits), so the MAC's port width (64 bits
for a 10/25G MAC, 512 for 100G) is what sets the line rate, not the core.  Both converters keep the
:class:`~hdl.signatures.EthernetStream` convention: packed beats (every beat but the last is full), ``keep``
has one bit per byte, ``user`` on the last beat marks a bad frame.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hdl.signatures import EthernetStream


class EthNarrower(wiring.Component):
    """A wide frame stream (``i``, ``in_width``) cut into ``out_width`` beats (``o``)."""

    def __init__(self, in_width: int, out_width: int) -> None:
        assert in_width % out_width == 0 and in_width >= out_width
        self.in_width = in_width
        self.out_width = out_width
        super().__init__({"i": In(EthernetStream(in_width)), "o": Out(EthernetStream(out_width))})

    def elaborate(self, platform) -> Module:
        m = Module()
        lanes = self.in_width // self.out_width
        ob = self.out_width // 8
        if lanes == 1:
            _pass_through(m, self.i, self.o)
            return m
        lane = Signal(range(lanes))
        keep = self.i.keep.word_select(lane, ob)
        next_keep = Signal()
        m.d.comb += next_keep.eq(Mux(lane == lanes - 1, 0, self.i.keep.bit_select((lane + 1) * ob, 1)))
        last_piece = ~next_keep
        m.d.comb += [
            self.o.valid.eq(self.i.valid),
            self.o.data.eq(self.i.data.word_select(lane, self.out_width)),
            self.o.keep.eq(keep),
            self.o.last.eq(self.i.last & last_piece),
            self.o.user.eq(self.i.user & last_piece),
            self.i.ready.eq(self.o.ready & last_piece),
        ]
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += lane.eq(Mux(last_piece, 0, lane + 1))
        return m


class EthWidener(wiring.Component):
    """A narrow frame stream (``i``, ``in_width``) gathered into ``out_width`` beats (``o``)."""

    def __init__(self, in_width: int, out_width: int) -> None:
        assert out_width % in_width == 0 and out_width >= in_width
        self.in_width = in_width
        self.out_width = out_width
        super().__init__({"i": In(EthernetStream(in_width)), "o": Out(EthernetStream(out_width))})

    def elaborate(self, platform) -> Module:
        m = Module()
        lanes = self.out_width // self.in_width
        ib = self.in_width // 8
        if lanes == 1:
            _pass_through(m, self.i, self.o)
            return m
        lane = Signal(range(lanes))
        data = Signal(self.out_width)
        keep = Signal(self.out_width // 8)
        full = Signal()  # ``o`` holds a beat
        last = Signal()
        user = Signal()
        m.d.comb += [
            self.o.valid.eq(full),
            self.o.data.eq(data),
            self.o.keep.eq(keep),
            self.o.last.eq(last),
            self.o.user.eq(user),
            self.i.ready.eq(~full | self.o.ready),
        ]
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += full.eq(0)
        with m.If(self.i.valid & self.i.ready):
            lane_data = [Mux(lane == k, self.i.data, data.word_select(k, self.in_width)) for k in range(lanes)]
            lane_keep = [Mux(lane == k, self.i.keep, Mux(lane == 0, 0, keep.word_select(k, ib))) for k in range(lanes)]
            done = self.i.last | (lane == lanes - 1)
            m.d.sync += [
                data.eq(Cat(*lane_data)),
                keep.eq(Cat(*lane_keep)),
                last.eq(self.i.last),
                user.eq(self.i.user),
                full.eq(done),
                lane.eq(Mux(done, 0, lane + 1)),
            ]
        return m


def _pass_through(m: Module, i, o) -> None:
    """Equal widths: wires.  (``wiring.connect`` cannot join a component's own input port to its output port:
    from inside, both are driven from outside the pair it sees, so it refuses them as two outputs.)"""
    m.d.comb += [o.valid.eq(i.valid), i.ready.eq(o.ready), o.data.eq(i.data), o.keep.eq(i.keep)]
    m.d.comb += [o.last.eq(i.last), o.user.eq(i.user)]


def connect_ethernet(m: Module, core, top, port_width: int) -> None:
    """Join the core's frame streams (DMA width) to a top level's ``eth_tx_t*``/``eth_rx_t*`` ports.

    ``top.loopback_enable`` set: the core's TX stream feeds its RX stream at the core's width (so loopback runs
    at the DMA width, not the port's) and the external ports are idle.  Clear: through width converters to the
    ``port_width``-bit MAC ports.  Shared by every PCIe family's top level.
    """
    core_width = len(core.eth_tx.data)
    if port_width <= core_width:
        tx_conv, rx_conv = EthNarrower(core_width, port_width), EthWidener(port_width, core_width)
    else:
        tx_conv, rx_conv = EthWidener(core_width, port_width), EthNarrower(port_width, core_width)
    m.submodules.eth_tx_conv = tx_conv
    m.submodules.eth_rx_conv = rx_conv
    fields = ("data", "keep", "last", "user")
    with m.If(top.loopback_enable):
        for f in fields:
            m.d.comb += getattr(core.eth_rx, f).eq(getattr(core.eth_tx, f))
        m.d.comb += [core.eth_rx.valid.eq(core.eth_tx.valid), core.eth_tx.ready.eq(core.eth_rx.ready)]
    with m.Else():
        for f in fields:
            m.d.comb += getattr(tx_conv.i, f).eq(getattr(core.eth_tx, f))
            m.d.comb += getattr(core.eth_rx, f).eq(getattr(rx_conv.o, f))
        m.d.comb += [
            tx_conv.i.valid.eq(core.eth_tx.valid),
            core.eth_tx.ready.eq(tx_conv.i.ready),
            core.eth_rx.valid.eq(rx_conv.o.valid),
            rx_conv.o.ready.eq(core.eth_rx.ready),
        ]
    for f in fields:
        m.d.comb += getattr(top, f"eth_tx_t{f}").eq(getattr(tx_conv.o, f))
        m.d.comb += getattr(rx_conv.i, f).eq(getattr(top, f"eth_rx_t{f}"))
    m.d.comb += [
        top.eth_tx_tvalid.eq(tx_conv.o.valid),
        tx_conv.o.ready.eq(top.eth_tx_tready),
        rx_conv.i.valid.eq(top.eth_rx_tvalid),
        top.eth_rx_tready.eq(rx_conv.i.ready),
    ]
