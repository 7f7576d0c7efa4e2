"""Merging the engine stages' DMA clients onto the core's one read port and one write port.

* :class:`ReadMux`: round-robin over the clients' requests; the client of every accepted request goes into an
  in-order *route FIFO*, because the ``DmaReadPort`` completes requests in issue order; returned beats go to
  the client at the head of that FIFO (the op-mux idea of Corundum's desc_op_mux, with order instead of tag
  bits).  Clients reserve room for their data before they ask, so returned data never waits on a client.
* :class:`WriteMux`: round-robin over whole writes (request, then its beats); ``done`` pulses are routed back
  in request order the same way.  Keeping one client's request and beats together is what keeps PCIe's
  posted-write order (PCIe Base, ordering rule A2a) meaningful: a client that writes data and then a used
  descriptor gets them onto the link in that order.

Both count what is in flight (``outstanding``), which the engine uses to quiesce DMA before a reset reads 0.
"""

from __future__ import annotations

from amaranth.hdl import Array, Module, Mux, Signal
from amaranth.lib import fifo, wiring
from amaranth.lib.wiring import In, Out

from hdl.signatures import DmaReadPort, DmaWritePort
from hdl.virtio.stream_types import ReadClient, WriteClient


def _round_robin(m: Module, requests: list, last: Signal, name: str) -> tuple[Signal, Signal]:
    """(any, index): the first requesting client after ``last`` (fair round robin)."""
    n = len(requests)
    index = Signal(range(n), name=f"{name}_pick")
    any_req = Signal(name=f"{name}_any")
    for start in range(n):
        with m.If(last == start):
            order = [(start + 1 + k) % n for k in range(n)]
            for k in reversed(order):
                with m.If(requests[k]):
                    m.d.comb += [index.eq(k), any_req.eq(1)]
    return any_req, index


def _arbitrate_requests(m: Module, clients: list, dma, route, may_issue, name: str) -> tuple:
    """Round robin over the clients' ``req`` streams onto ``dma.req_*``; (fire, grant) of this cycle.

    A grant is held until its request is accepted (stable payload, stream rules), but only while its client
    still asks: a client may withdraw a request.  An accepted request's client goes into ``route``.
    ``may_issue`` gates every request (e.g. no request while a write still owes beats).
    """
    n = len(clients)
    last = Signal(range(n), name=f"{name}_last")
    held = Signal(name=f"{name}_held")
    held_idx = Signal(range(n), name=f"{name}_held_idx")
    any_req, pick = _round_robin(m, [c.req.valid for c in clients], last, name)
    hold_ok = held & Array(c.req.valid for c in clients)[held_idx]
    grant = Signal(range(n), name=f"{name}_grant")
    m.d.comb += grant.eq(Mux(hold_ok, held_idx, pick))
    req = Array(c.req for c in clients)[grant]
    valid = (hold_ok | any_req) & route.w_rdy & may_issue
    m.d.comb += [
        dma.req_valid.eq(valid),
        dma.req_addr.eq(req.payload.addr),
        dma.req_len.eq(req.payload.len),
        route.w_data.eq(grant),
    ]
    for i, c in enumerate(clients):
        m.d.comb += c.req.ready.eq(valid & dma.req_ready & (grant == i))
    fire = valid & dma.req_ready
    with m.If(fire):
        m.d.comb += route.w_en.eq(1)
        m.d.sync += [held.eq(0), last.eq(grant)]
    with m.Elif(valid):
        m.d.sync += [held.eq(1), held_idx.eq(grant)]
    return fire, grant


class _DmaMux(wiring.Component):
    """``n`` client ports ``c0`` .. ``c{n-1}`` of ``client_sig`` onto one ``dma`` port of ``port_sig``, with an
    in-order route FIFO of ``depth`` naming the client of every request in flight."""

    def __init__(self, n: int, client_sig, port_sig, depth: int) -> None:
        self.n = n
        self.depth = depth
        members = {f"c{i}": In(client_sig) for i in range(n)}
        members["dma"] = Out(port_sig)
        members["outstanding"] = Out(range(depth + 1))
        super().__init__(members)

    def clients(self) -> list:
        return [getattr(self, f"c{i}") for i in range(self.n)]

    def _route(self, m: Module):
        m.submodules.route = route = fifo.SyncFIFO(width=max(1, (self.n - 1).bit_length()), depth=self.depth)
        m.d.comb += self.outstanding.eq(route.r_level)
        return route


class ReadMux(_DmaMux):
    """``n`` :class:`ReadClient` ports (``c0`` .. ``c{n-1}``) onto one ``DmaReadPort`` (``dma``)."""

    def __init__(self, n: int, data_width: int, depth: int = 64) -> None:
        super().__init__(n, ReadClient(data_width), DmaReadPort(data_width), depth)

    def elaborate(self, platform) -> Module:
        m = Module()
        cl = self.clients()
        route = self._route(m)
        _arbitrate_requests(m, cl, self.dma, route, 1, "rd")
        # ---- returned data to the client at the head of the route FIFO
        head = route.r_data
        for i, c in enumerate(cl):
            m.d.comb += [
                c.resp.payload.data.eq(self.dma.data),
                c.resp.payload.keep.eq(self.dma.data_keep),
                c.resp.payload.last.eq(self.dma.data_last),
                c.resp.payload.error.eq(self.dma.error),
                c.resp.valid.eq(self.dma.data_valid & route.r_rdy & (head == i)),
            ]
        m.d.comb += self.dma.data_ready.eq(route.r_rdy & Array(c.resp.ready for c in cl)[head])
        with m.If(self.dma.data_valid & self.dma.data_ready & self.dma.data_last):
            m.d.comb += route.r_en.eq(1)
        return m


class WriteMux(_DmaMux):
    """``n`` :class:`WriteClient` ports (``c0`` .. ``c{n-1}``) onto one ``DmaWritePort`` (``dma``).

    A granted client's request goes first, then its beats up to ``last``; the next request may be granted in
    the cycle the last beat is accepted.
    """

    def __init__(self, n: int, data_width: int, depth: int = 32) -> None:
        super().__init__(n, WriteClient(data_width), DmaWritePort(data_width), depth)

    def elaborate(self, platform) -> Module:
        m = Module()
        cl = self.clients()
        n = self.n
        route = self._route(m)
        in_data = Signal()  # a granted request's beats are flowing
        data_idx = Signal(range(n))
        dclient = Array(c.data for c in cl)[data_idx]
        beat = in_data & dclient.valid & self.dma.data_ready
        ending = beat & dclient.payload.last
        m.d.comb += [
            self.dma.data_valid.eq(in_data & dclient.valid),
            self.dma.data.eq(dclient.payload.data),
            self.dma.data_keep.eq(dclient.payload.keep),
            self.dma.data_last.eq(dclient.payload.last),
        ]
        for i, c in enumerate(cl):
            m.d.comb += c.data.ready.eq(in_data & self.dma.data_ready & (data_idx == i))
        # A new request only when no beats are owed (or the last one goes this cycle).
        fire, grant = _arbitrate_requests(m, cl, self.dma, route, ~in_data | ending, "wr")
        with m.If(ending):
            m.d.sync += in_data.eq(0)
        with m.If(fire):
            m.d.sync += [in_data.eq(1), data_idx.eq(grant)]
        # ---- done pulses, in request order
        for i, c in enumerate(cl):
            m.d.comb += c.done.eq(self.dma.done & route.r_rdy & (route.r_data == i))
        with m.If(self.dma.done):
            m.d.comb += route.r_en.eq(1)
        return m
