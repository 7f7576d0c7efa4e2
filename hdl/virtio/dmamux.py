"""Merging the engine stages' DMA clients onto the core's one read port and one write port.

* :class:`ReadMux`: round-robin over the clients' requests; the client of every accepted request goes into an
  in-order *route FIFO*, because the ``DmaReadPort`` completes requests in issue order; returned beats go to
  the client at the head of that FIFO (the op-mux idea of Corundum's desc_op_mux, with order instead of tag
  bits).  Clients reserve room for their data before they ask, so returned data never waits on a client.
* :class:`WriteMux`: round-robin over the clients' write requests; the client of every granted request goes
  into the route FIFO (for its ``done``) and, once the DMA port has accepted the request, into a *data FIFO*
  whose head names the client whose beats flow now: a write's beats go to the DMA port together, after their
  request and in request order.  That is what keeps PCIe's posted-write order (PCIe Base, ordering rule A2a)
  meaningful: a client that writes data and then a used descriptor gets them onto the link in that order.
  Each client's beats wait in a small FIFO of its own until their request is through, so a client may hand
  over its beats before its request is granted; a client that learns "my data is out" from its ``data.ready``
  and tells another client (the RX data mover, whose used element goes to the used writer) must therefore not
  be overtaken by it: ``ordered_after`` holds the later client's requests while the earlier one has a request
  waiting.

Register slices (:class:`~hdl.virtio.slice.StreamSlice`) sit on every client's request stream, on the write
requests to the DMA engine (whose ``req_ready`` depends on the request's length) and on the returned read data
(write beats go to the DMA engine from the clients' FIFOs; its ``data_ready`` is a register's worth of logic):
no combinational path runs from one client through the arbitration into another client or into the DMA engine
(each such path used to add the depth of both ends).  A request held in a slice is counted in flight by the
client that issued it (its ``idle`` stays low until the request completes); ``outstanding`` counts from the
grant on, which the engine uses to quiesce DMA before a reset reads 0.
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Module, Mux, Signal
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from hdl.signatures import DmaReadPort, DmaWritePort
from hdl.virtio.slice import StreamSlice
from hdl.virtio.stream_types import DMA_REQ, ReadClient, WriteClient, read_beat, write_beat


def _arbitrate_requests(m: Module, reqs: list, out, route, may_issue, name: str) -> tuple:
    """Round robin over the request streams ``reqs`` onto the stream ``out``; (fire, grant) of this cycle.

    The requests come from register slices, which never withdraw an offered request, so the arbitration is
    one-hot and shallow: each client's "my turn" is one function of the others' ``valid`` and of the one-hot
    ``last`` grant, and the payload is an AND-OR.  A grant is held until its request is accepted (stable
    payload, stream rules).  An accepted request's client goes into ``route``.  ``may_issue`` gates every
    request (e.g. no request while the write mux's data FIFO is full); like ``route.w_rdy`` it only falls when
    a request is accepted, so an offered request stays offered.
    """
    n = len(reqs)
    valids = [r.valid for r in reqs]
    last = Signal(n, init=1 << (n - 1), name=f"{name}_last")  # one-hot: the client granted last
    held = Signal(n, name=f"{name}_held")  # one-hot: the client offered but not yet accepted (0: none)
    pick = Signal(n, name=f"{name}_pick")
    for k in range(n):
        turns = []
        for start in range(n):  # after ``start``, clients are served in the order start + 1, start + 2, ...
            before = [(start + 1 + j) % n for j in range((k - start - 1) % n)]
            idle_before = ~Cat(*(valids[b] for b in before)).any() if before else 1
            turns.append(last[start] & idle_before)
        m.d.comb += pick[k].eq(valids[k] & Cat(*turns).any())
    sel = Signal(n, name=f"{name}_sel")
    m.d.comb += sel.eq(Mux(held.any(), held, pick))
    grant = Signal(range(n), name=f"{name}_grant")
    for bit in range(len(grant)):
        m.d.comb += grant[bit].eq(Cat(*(sel[i] for i in range(n) if (i >> bit) & 1)).any())
    go = route.w_rdy & may_issue
    valid = (held.any() | Cat(*valids).any()) & go
    addr = 0
    length = 0
    for i, r in enumerate(reqs):
        addr = addr | Mux(sel[i], r.payload.addr, 0)
        length = length | Mux(sel[i], r.payload.len, 0)
        m.d.comb += r.ready.eq(sel[i] & go & out.ready)
    m.d.comb += [
        out.valid.eq(valid),
        out.payload.addr.eq(addr),
        out.payload.len.eq(length),
        route.w_data.eq(grant),
    ]
    fire = valid & out.ready
    with m.If(fire):
        m.d.comb += route.w_en.eq(1)
        m.d.sync += [held.eq(0), last.eq(sel)]
    with m.Elif(valid):
        m.d.sync += held.eq(sel)
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

    def _sliced_requests(self, m: Module) -> list:
        """Each client's ``req`` through a register slice of its own; the slices' outputs, to arbitrate over."""
        outs = []
        for i, c in enumerate(self.clients()):
            s = StreamSlice(DMA_REQ)
            m.submodules[f"c{i}_req"] = s
            m.d.comb += [s.i.valid.eq(c.req.valid), s.i.payload.eq(c.req.payload), c.req.ready.eq(s.i.ready)]
            outs.append(s.o)
        return outs

    def _dma_request_slice(self, m: Module):
        """The register slice in front of the DMA port's request (the request and its client); the slice."""
        layout = data.StructLayout({"addr": 64, "len": DMA_REQ["len"].shape, "client": range(self.n)})
        m.submodules.dma_req = s = StreamSlice(layout)
        m.d.comb += [
            self.dma.req_valid.eq(s.o.valid),
            self.dma.req_addr.eq(s.o.payload.addr),
            self.dma.req_len.eq(s.o.payload.len),
            s.o.ready.eq(self.dma.req_ready),
        ]
        return s


class ReadMux(_DmaMux):
    """``n`` :class:`ReadClient` ports (``c0`` .. ``c{n-1}``) onto one ``DmaReadPort`` (``dma``)."""

    def __init__(self, n: int, data_width: int, depth: int = 64) -> None:
        super().__init__(n, ReadClient(data_width), DmaReadPort(data_width), depth)

    def elaborate(self, platform) -> Module:
        m = Module()
        cl = self.clients()
        n = self.n
        route = self._route(m)
        # The read port's ``req_ready`` is a register of the DMA engine's request FIFOs and it takes the request
        # into RAM: the arbitration drives it directly (no slice, no cycle) from the clients' slices.
        dreq = stream.Signature(DMA_REQ).create(path=("rd_req",))
        m.d.comb += [
            self.dma.req_valid.eq(dreq.valid),
            self.dma.req_addr.eq(dreq.payload.addr),
            self.dma.req_len.eq(dreq.payload.len),
            dreq.ready.eq(self.dma.req_ready),
        ]
        _arbitrate_requests(m, self._sliced_requests(m), dreq, route, 1, "rd")
        # ---- returned data: into a register slice with the client it belongs to (the route FIFO's head), out of
        # it to that client
        beat = read_beat(self.dma.data.shape().width)
        m.submodules.resp = resp = StreamSlice(data.StructLayout({"beat": beat, "client": range(n)}))
        m.d.comb += [
            resp.i.valid.eq(self.dma.data_valid & route.r_rdy),
            resp.i.payload.beat.data.eq(self.dma.data),
            resp.i.payload.beat.keep.eq(self.dma.data_keep),
            resp.i.payload.beat.last.eq(self.dma.data_last),
            resp.i.payload.beat.error.eq(self.dma.error),
            resp.i.payload.client.eq(route.r_data),
            self.dma.data_ready.eq(resp.i.ready & route.r_rdy),
        ]
        with m.If(self.dma.data_valid & self.dma.data_ready & self.dma.data_last):
            m.d.comb += route.r_en.eq(1)
        to = resp.o.payload.client
        for i, c in enumerate(cl):
            m.d.comb += [c.resp.payload.eq(resp.o.payload.beat), c.resp.valid.eq(resp.o.valid & (to == i))]
        m.d.comb += resp.o.ready.eq(Array(c.resp.ready for c in cl)[to])
        return m


class WriteMux(_DmaMux):
    """``n`` :class:`WriteClient` ports (``c0`` .. ``c{n-1}``) onto one ``DmaWritePort`` (``dma``).

    Each client's request goes through a register slice and its beats through a small FIFO of its own, so a
    client hands over a request and its beats in consecutive cycles, as it would to the DMA port itself.
    Requests are granted round robin (up to ``data_depth`` writes may owe beats); a client enters the data FIFO
    when the DMA port accepts its request, and the beats are taken from the client at the head of that FIFO
    until its ``last``.

    ``ordered_after`` (client index pairs ``(later, earlier)``): ``later``'s requests are not granted while
    ``earlier`` has a request in its slice.  A client whose beats sit in its slice is not granted yet, so a
    stage that learns "the data is out" from ``data.ready`` (the RX data mover, whose used element then goes
    to the used writer, another client) must not be overtaken by what it caused: the engine passes
    ``(used writer, data mover)``.
    """

    def __init__(
        self, n: int, data_width: int, depth: int = 32, data_depth: int = 4, ordered_after: tuple = ()
    ) -> None:
        self.data_depth = data_depth
        self.ordered_after = tuple(ordered_after)
        super().__init__(n, WriteClient(data_width), DmaWritePort(data_width), depth)

    def elaborate(self, platform) -> Module:
        m = Module()
        cl = self.clients()
        n = self.n
        dw = self.dma.data.shape().width
        route = self._route(m)
        # Writes granted whose beats are not all taken yet: at most ``data_depth``, so ``owed`` never overflows.
        # A write's client enters ``owed`` when the DMA port accepts its request: its beats follow it.
        owing = Signal(range(self.data_depth + 1))
        m.submodules.owed = owed = fifo.SyncFIFO(width=max(1, (n - 1).bit_length()), depth=self.data_depth)
        dreq = self._dma_request_slice(m)
        req_slices = self._sliced_requests(m)
        offers = []
        for i, r in enumerate(req_slices):
            earlier = [e for later, e in self.ordered_after if later == i]
            if not earlier:
                offers.append(r)
                continue
            # the same stream with its valid masked while an earlier client still waits for its grant
            gated = stream.Signature(DMA_REQ).create(path=(f"c{i}_gated",))
            blocked = Cat(*(req_slices[e].valid for e in earlier)).any()
            m.d.comb += [
                gated.valid.eq(r.valid & ~blocked),
                gated.payload.eq(r.payload),
                r.ready.eq(gated.ready),
            ]
            offers.append(gated)
        fire, grant = _arbitrate_requests(m, offers, dreq.i, route, owing != self.data_depth, "wr")
        m.d.comb += dreq.i.payload.client.eq(grant)
        m.d.comb += [owed.w_en.eq(dreq.o.valid & dreq.o.ready), owed.w_data.eq(dreq.o.payload.client)]
        # ---- beats: each client's into a FIFO of its own (``data_depth`` beats, LUT RAM: its ``ready`` and
        # ``valid`` come from its level register, its data from the RAM), then from the oldest write still
        # owing beats.  The FIFO takes a client's beats while its request is still on the way to the DMA port
        # (two slices), so a client hands over a request and its beats back to back, as to the port itself.
        beat_layout = write_beat(dw)
        srcs = []
        for i, c in enumerate(cl):
            q = fifo.SyncFIFO(width=beat_layout.size, depth=self.data_depth)
            m.submodules[f"c{i}_data"] = q
            m.d.comb += [q.w_en.eq(c.data.valid), q.w_data.eq(c.data.payload), c.data.ready.eq(q.w_rdy)]
            srcs.append(q)
        data_idx = owed.r_data
        src_valid = Array(q.r_rdy for q in srcs)[data_idx]
        src = beat_layout(Array(q.r_data for q in srcs)[data_idx])
        # No slice in front of the port: the DMA engine's ``data_ready`` is two LUT levels of its registers
        # (``hdl/pcie/dma.py``), so it may run on into the FIFOs here.
        m.d.comb += [
            self.dma.data_valid.eq(owed.r_rdy & src_valid),
            self.dma.data.eq(src.data),
            self.dma.data_keep.eq(src.keep),
            self.dma.data_last.eq(src.last),
        ]
        take = self.dma.data_valid & self.dma.data_ready
        for i, q in enumerate(srcs):
            m.d.comb += q.r_en.eq(take & (data_idx == i))
        ended = take & src.last
        m.d.comb += owed.r_en.eq(ended)
        m.d.sync += owing.eq(owing + fire - ended)
        # ---- done pulses, in request order
        for i, c in enumerate(cl):
            m.d.comb += c.done.eq(self.dma.done & route.r_rdy & (route.r_data == i))
        with m.If(self.dma.done):
            m.d.comb += route.r_en.eq(1)
        return m
