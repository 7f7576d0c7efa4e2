"""The environment of a stage under proof: free inputs, the engine's contract as ``Assume``, checks as ``Assert``.

Amaranth 0.5 has no ``Past``/``AnyConst``: "the value in the previous cycle" is a reset-less shadow register
(``prev``), and a configuration input is made constant by assuming it equals its shadow after the first cycle.
Free inputs are top-level ports of the converted design, which the model checker may set to anything in every
cycle; everything a harness does not assume about them is hostile input (a guest driver's ring contents, a
DMA completion's data and error bit, back-pressure at any time).
"""

from __future__ import annotations

from amaranth.hdl import Assert, Assume, Cover, Module, Signal, Value
from amaranth.lib import fifo


class Env:
    """Helpers bound to one harness module ``m``; ``ports`` collects the free inputs for conversion."""

    def __init__(self, m: Module) -> None:
        self.m = m
        self.ports: list[Value] = []
        #: 1 in the first cycle only (a reset-less register: its init value holds in the initial state).
        self.first = Signal(init=1, reset_less=True, name="env_first")
        m.d.sync += self.first.eq(0)

    # ---- free inputs --------------------------------------------------------------------------------------
    def free(self, *values) -> None:
        """Make ``values`` (signals, views, DUT input ports) free inputs of the design under proof."""
        for v in values:
            value = Value.cast(v)
            if not isinstance(value, Signal):  # a field of a payload: drive it from a free signal of its own
                port = Signal(len(value), name=f"free_{len(self.ports)}")
                self.m.d.comb += value.eq(port)
                value = port
            self.ports.append(value)

    def free_stream_in(self, s) -> None:
        """A stream the DUT consumes: free ``valid`` and payload, obeying the stream rules (assumed)."""
        self.free(s.valid, s.payload)
        self.stream_rules(s, check=False)

    # ---- contract helpers ---------------------------------------------------------------------------------
    def assume(self, cond) -> None:
        self.m.d.comb += Assume(cond)

    def check(self, cond, message: str | None = None) -> None:
        """Assert ``cond`` in every cycle (its source location, in the harness, names it in a failure)."""
        self.m.d.comb += Assert(cond, message, src_loc_at=1)

    def reach(self, cond) -> None:
        """Cover ``cond``: the runner shows it happens, so a proof is not vacuous (the checked event occurs)."""
        self.m.d.comb += Cover(cond, src_loc_at=1)

    def prev(self, value, name: str) -> Signal:
        """``value`` one cycle ago (0 in the first cycle)."""
        v = Value.cast(value)
        shadow = Signal(len(v), reset_less=True, name=f"prev_{name}")
        self.m.d.sync += shadow.eq(v)
        return shadow

    def stable(self, value, name: str) -> None:
        """Assume ``value`` never changes (a queue's configuration while the harness runs)."""
        self.assume(self.first | (Value.cast(value) == self.prev(value, name)))

    def stable_while(self, value, cond, name: str) -> None:
        """Assume ``value`` keeps its value in a cycle after one where ``cond`` held."""
        was = self.prev(cond, f"{name}_cond")
        self.assume(~was | (Value.cast(value) == self.prev(value, name)))

    def upstream_dead_after_error(self, s, clear, name: str) -> None:
        """Assume the chain parser's guarantee (proven as ``chain.dead_after_error``): after a segment with
        ``error`` nothing more arrives until ``clear``."""
        dead = Signal(reset_less=True, name=f"{name}_dead")
        with self.m.If(clear):
            self.m.d.sync += dead.eq(0)
        with self.m.Elif(s.valid & s.ready & s.payload.error):
            self.m.d.sync += dead.eq(1)
        self.assume(~(dead & s.valid))

    def stream_rules(self, s, *, check: bool, name: str = "s", reset=None) -> None:
        """Once ``valid`` is up it stays up with the same payload until ``ready`` (amaranth.lib.stream rules).

        ``check``: assert them (a stream the DUT drives), else assume them (one the environment drives).
        ``reset``: a signal after which the stream may be dropped (a stage's ``clear`` forgets its output).
        """
        hold = s.valid & ~s.ready
        if reset is not None:
            hold = hold & ~reset
        held = self.prev(hold, f"{name}_held")
        payload = self.prev(s.payload, f"{name}_payload")
        cond = ~held | (s.valid & (Value.cast(s.payload) == payload))
        if check:
            self.m.d.comb += Assert(cond, f"{name}: valid dropped or payload changed before ready", src_loc_at=1)
        else:
            self.assume(cond)

    def pulse_counter(self, width: int, inc, dec, name: str) -> Signal:
        """A wrapping up/down counter (for in-flight accounting in the harness)."""
        c = Signal(width, reset_less=True, name=name)
        self.m.d.sync += c.eq(c + inc - dec)
        return c

    # ---- DMA environments ---------------------------------------------------------------------------------
    def read_responder(self, rd, data_bytes: int, depth: int, name: str = "rd") -> Signal:
        """Serve a stage's :class:`~hdl.virtio.stream_types.ReadClient` the way the DMA read port does.

        Requests are accepted at will (but never more than ``depth`` outstanding, the port's own limit here);
        each request gets ``ceil(len / data_bytes)`` beats in request order with ``last`` on its final one;
        data, keep and the error bit are free (hostile host memory, failed completions).  Returns the number
        of requests outstanding (accepted, last beat not yet taken).
        """
        m = self.m
        self.free(rd.req.ready, rd.resp.valid, rd.resp.payload.data, rd.resp.payload.keep, rd.resp.payload.error)
        q = fifo.SyncFIFO(width=17, depth=depth)
        m.submodules[f"env_{name}_q"] = q
        shift = (data_bytes - 1).bit_length()
        beats = Signal(17, name=f"env_{name}_beats")
        length = rd.req.payload.len
        m.d.comb += beats.eq((length + data_bytes - 1) >> shift)
        fire = rd.req.valid & rd.req.ready
        m.d.comb += [q.w_en.eq(fire), q.w_data.eq(beats | (beats == 0))]
        self.assume(~rd.req.ready | q.w_rdy)
        got = Signal(17, reset_less=True, name=f"env_{name}_got")
        beat = rd.resp.valid & rd.resp.ready
        last = got + 1 == q.r_data
        self.assume(~rd.resp.valid | q.r_rdy)
        m.d.comb += rd.resp.payload.last.eq(last)
        with m.If(beat):
            m.d.sync += got.eq(got + 1)
            with m.If(last):
                m.d.comb += q.r_en.eq(1)
                m.d.sync += got.eq(0)
        self.stream_rules(rd.resp, check=False, name=f"{name}_resp")
        return q.r_level

    def write_acceptor(self, wr, depth: int, name: str = "wr") -> tuple[Signal, Signal]:
        """Serve a stage's :class:`~hdl.virtio.stream_types.WriteClient` the way the DMA write port does.

        Requests and beats are accepted at will; ``done`` pulses (free) only for a write whose last beat was
        taken and which has not had its ``done`` yet.  Returns (writes owing beats, writes waiting for done).
        """
        self.free(wr.req.ready, wr.data.ready, wr.done)
        req_fire = wr.req.valid & wr.req.ready
        last_fire = wr.data.valid & wr.data.ready & wr.data.payload.last
        owed = self.pulse_counter(8, req_fire, last_fire, f"env_{name}_owed")
        waiting = self.pulse_counter(8, last_fire, wr.done, f"env_{name}_waiting")
        self.assume(~wr.done | (waiting != 0))
        self.assume(~wr.req.ready | (owed + waiting < depth))
        return owed, waiting
