"""Stream and DMA-client models for the unit tests of the ring engine's stages (``tests/test_hdl_virtio_stages*.py``).

Every stage of ``hdl/virtio/engine.py`` talks through ``amaranth.lib.stream`` valid/ready ports and DMA
*client* ports (``hdl/virtio/stream_types.py``).  These models stand in for its neighbours in the Amaranth
simulator, each driven by a seeded ``random.Random`` so a failure repeats:

* :class:`Source` offers items with random gaps (``valid`` low for a while, never dropped once raised);
* :class:`Sink` takes items with random ``ready`` drops and checks the stream rule the stage must keep
  (once ``valid`` is high it stays high with the same payload until ``ready``);
* :class:`ReadServer` answers a :class:`~hdl.virtio.stream_types.ReadClient`: random ``req.ready``, a random
  latency per request, several requests outstanding, completion in issue order, random gaps between beats,
  an ``error`` on the last beat of the requests a test chooses to fail;
* :class:`WriteServer` takes a :class:`~hdl.virtio.stream_types.WriteClient`'s request and beats with random
  ``ready`` and pulses ``done`` per request, in order, after a random delay.

They are the neighbours' *behaviour as the docstrings promise it*, not copies of the stages: a test checks
the stage's outputs against what that behaviour allows.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from amaranth.hdl import Shape
from amaranth.sim import Simulator

CLOCK_PERIOD = 4e-9


def _raw(payload):
    """A payload's bits: a ``lib.data`` view as its underlying value, a plain signal as it is."""
    return payload.as_value() if hasattr(payload, "as_value") else payload


def bits(layout, **fields) -> int:
    """A ``lib.data`` layout's constant as an int (so ``ctx.set`` on the payload's bits is exact)."""
    return layout.const(fields).as_bits()


class Source:
    """Offers ``items`` (payload bit patterns) on a stream, with random idle cycles between them."""

    def __init__(self, stream, items: list[int], rng: random.Random, gap: float = 0.3):
        self.stream = stream
        self.items = list(items)
        self.rng = rng
        self.gap = gap
        self.cycle = 0
        self.sent = 0
        self.times: list[int] = []

    def push(self, item: int) -> None:
        self.items.append(item)

    async def run(self, ctx) -> None:
        s = self.stream
        offering = False
        while True:
            if not offering and self.sent < len(self.items) and self.rng.random() >= self.gap:
                ctx.set(_raw(s.payload), self.items[self.sent])
                offering = True
            ctx.set(s.valid, offering)
            _, _, ready = await ctx.tick().sample(s.ready)
            self.cycle += 1
            if offering and ready:
                self.times.append(self.cycle)
                self.sent += 1
                offering = False


class Sink:
    """Takes items from a stream with ``ready`` high with probability ``p_ready``; checks payload stability."""

    def __init__(self, stream, layout, rng: random.Random, p_ready: float = 0.7):
        self.stream = stream
        self.layout = layout
        self.rng = rng
        self.p_ready = p_ready
        self.cycle = 0
        self.items: list = []
        self.times: list[int] = []
        self.enabled = True  # False: ready stays low and a pending item may vanish (the test clears the stage)

    def decode(self, raw: int):
        return self.layout.from_bits(raw) if not isinstance(self.layout, int) else raw

    async def run(self, ctx) -> None:
        s = self.stream
        held = None
        payload = _raw(s.payload)
        while True:
            ready = self.enabled and self.rng.random() < self.p_ready
            ctx.set(s.ready, ready)
            _, _, valid, raw = await ctx.tick().sample(s.valid, payload)
            self.cycle += 1
            if held is not None and not self.enabled:
                held = None  # the stage is being cleared (a reset may drop valid)
            if held is not None:
                assert valid, "stream rule broken: valid dropped before ready"
                assert raw == held, f"stream rule broken: payload changed while waiting ({held:#x} -> {raw:#x})"
            if valid and ready:
                self.items.append(self.decode(raw))
                self.times.append(self.cycle)
                held = None
            elif valid:
                held = raw


@dataclass
class ReadRecord:
    addr: int
    length: int
    issued: int  # cycle the request was accepted
    done: int = -1  # cycle its last beat was accepted
    error: bool = False


@dataclass
class WriteRecord:
    addr: int
    data: bytes
    issued: int
    last_beat: int
    done: int = -1
    tag: object = None


class ReadServer:
    """The DMA read side of one client: in-order completion, random latency, several requests in flight.

    ``memory(addr, length)`` returns the bytes a request reads (called when its first beat is due, as a host
    answers from memory at completion time); ``fail(record)`` says whether a request completes with
    ``error`` (its data is then still sent, so a client that ignores ``error`` is caught).
    """

    def __init__(
        self,
        port,
        data_width: int,
        memory: Callable[[int, int], bytes],
        rng: random.Random,
        *,
        latency: tuple[int, int] = (2, 30),
        p_req_ready: float = 0.7,
        p_gap: float = 0.2,
        fail: Callable[[ReadRecord], bool] | None = None,
        on_request: Callable[[ReadRecord], None] | None = None,
        max_len: int = 1 << 16,
    ) -> None:
        self.port = port
        self.nb = data_width // 8
        self.memory = memory
        self.rng = rng
        self.cycle = 0
        self.latency = latency
        self.p_req_ready = p_req_ready
        self.p_gap = p_gap
        self.fail = fail or (lambda rec: False)
        self.on_request = on_request
        self.max_len = max_len
        self.records: list[ReadRecord] = []
        self.max_inflight = 0
        self.inflight = 0

    async def run(self, ctx) -> None:
        req, resp = self.port.req, self.port.resp
        pending: deque = deque()  # (due cycle, record)
        beats: deque = deque()
        current: ReadRecord | None = None
        showing = False
        last_due = 0
        while True:
            req_ready = self.rng.random() < self.p_req_ready
            ctx.set(req.ready, req_ready)
            if not showing and beats and self.rng.random() >= self.p_gap:
                data, keep, last, error = beats[0]
                ctx.set(
                    resp.payload.as_value(),
                    data | keep << (self.nb * 8) | last << (self.nb * 9) | error << (self.nb * 9 + 1),
                )
                showing = True
            ctx.set(resp.valid, showing)
            _, _, r_valid, r_addr, r_len, d_ready = await ctx.tick().sample(
                req.valid, req.payload.addr, req.payload.len, resp.ready
            )
            self.cycle += 1
            now = self.cycle
            if showing and d_ready:
                beats.popleft()
                showing = False
                if not beats:
                    current.done = now
                    self.inflight -= 1
                    current = None
            if r_valid and req_ready:
                assert 0 < r_len <= self.max_len, f"read length {r_len}"
                rec = ReadRecord(r_addr, r_len, now)
                self.records.append(rec)
                if self.on_request:
                    self.on_request(rec)
                last_due = max(last_due, now + self.rng.randint(*self.latency))
                pending.append((last_due, rec))
                self.inflight += 1
                self.max_inflight = max(self.max_inflight, self.inflight)
            if current is None and pending and pending[0][0] <= now:
                _, current = pending.popleft()
                current.error = bool(self.fail(current))
                data = self.memory(current.addr, current.length)
                assert len(data) == current.length
                for i in range(0, current.length, self.nb):
                    chunk = data[i : i + self.nb]
                    last = i + self.nb >= current.length
                    beats.append(
                        (int.from_bytes(chunk, "little"), (1 << len(chunk)) - 1, int(last), int(current.error and last))
                    )


class WriteServer:
    """The DMA write side of one client: request, then exactly its beats (packed, ``last`` on the final one);
    ``done`` pulses per request in order, ``latency`` cycles (random) after its last beat."""

    def __init__(
        self,
        port,
        data_width: int,
        rng: random.Random,
        *,
        latency: tuple[int, int] = (1, 12),
        p_ready: float = 0.7,
        on_write: Callable[[WriteRecord], None] | None = None,
    ) -> None:
        self.port = port
        self.nb = data_width // 8
        self.rng = rng
        self.cycle = 0
        self.latency = latency
        self.p_ready = p_ready
        self.on_write = on_write
        self.records: list[WriteRecord] = []
        self.done_times: list[int] = []

    async def run(self, ctx) -> None:
        p = self.port
        reqs: deque = deque()
        buf: bytearray | None = None
        dones: deque = deque()
        last_due = 0
        while True:
            req_ready = self.rng.random() < self.p_ready
            data_ready = self.rng.random() < self.p_ready
            ctx.set(p.req.ready, req_ready)
            ctx.set(p.data.ready, data_ready)
            pulse = bool(dones) and dones[0][0] <= self.cycle + 1
            ctx.set(p.done, pulse)
            _, _, r_valid, r_addr, r_len, d_valid, d_data, d_keep, d_last = await ctx.tick().sample(
                p.req.valid,
                p.req.payload.addr,
                p.req.payload.len,
                p.data.valid,
                p.data.payload.data,
                p.data.payload.keep,
                p.data.payload.last,
            )
            self.cycle += 1
            now = self.cycle
            if pulse:
                _, rec = dones.popleft()
                rec.done = now
                self.done_times.append(now)
            if d_valid and data_ready:
                assert reqs, "write data before its request"
                if buf is None:
                    buf = bytearray()
                addr, length, issued = reqs[0]
                take = min(self.nb, length - len(buf))
                assert d_keep == (1 << take) - 1, f"write keep {d_keep:#x}, expected {take} bytes"
                buf += d_data.to_bytes(self.nb, "little")[:take]
                assert bool(d_last) == (len(buf) == length), "last must mark the request's final beat"
                if d_last:
                    reqs.popleft()
                    rec = WriteRecord(addr, bytes(buf), issued, now)
                    self.records.append(rec)
                    if self.on_write:
                        self.on_write(rec)
                    last_due = max(last_due + 1, now + self.rng.randint(*self.latency))
                    dones.append((last_due, rec))
                    buf = None
            if r_valid and req_ready:
                assert r_len > 0, "zero-length write"
                reqs.append((r_addr, r_len, now))


@dataclass
class Bench:
    """A simulator around one stage: a shared clock and the background models."""

    dut: object
    seed: int = 1
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.sim = Simulator(self.dut)
        self.sim.add_clock(CLOCK_PERIOD)

    def fork(self) -> random.Random:
        """A random stream of its own for one model (so models do not perturb each other's sequences)."""
        return random.Random(self.rng.getrandbits(32))

    def background(self, *models) -> None:
        for model in models:
            self.sim.add_testbench(model.run if hasattr(model, "run") else model, background=True)

    def run(self, testbench, vcd: str | None = None) -> None:
        self.sim.add_testbench(testbench)
        if vcd:
            with self.sim.write_vcd(vcd):
                self.sim.run()
        else:
            self.sim.run()


async def wait_until(ctx, cond: Callable[[], bool], limit: int, what: str) -> None:
    """Tick until ``cond()`` (a Python-side predicate) holds; fail after ``limit`` cycles."""
    for _ in range(limit):
        if cond():
            return
        await ctx.tick()
    raise AssertionError(f"timed out after {limit} cycles waiting for {what}")


def width(layout) -> int:
    return Shape.cast(layout).width


class EthSink:
    """Takes frames from an :class:`~hdl.signatures.EthernetStream` with random ``ready`` drops; checks the
    stream rule and the packing (every beat but a frame's last is full, ``keep`` is contiguous from lane 0)."""

    def __init__(self, port, data_width: int, rng: random.Random, p_ready: float = 0.6, passive: bool = False):
        self.port = port
        self.passive = passive  # only watch a stream between two parts of the design (``ready`` is theirs)
        self.nb = data_width // 8
        self.rng = rng
        self.p_ready = p_ready
        self.frames: list[bytes] = []
        self.bad: list[bool] = []  # ``user`` on each frame's last beat
        self.times: list[int] = []  # cycle of each frame's last beat
        self.beats = 0
        self.cycle = 0

    async def run(self, ctx) -> None:
        p = self.port
        held = None
        cur = bytearray()
        full = (1 << self.nb) - 1
        while True:
            if not self.passive:
                ctx.set(p.ready, self.rng.random() < self.p_ready)
            _, _, valid, ready, data, keep, last, user = await ctx.tick().sample(
                p.valid, p.ready, p.data, p.keep, p.last, p.user
            )
            self.cycle += 1
            beat = (data, keep, last, user)
            if held is not None:
                assert valid and beat == held, "stream rule broken on the Ethernet stream"
            held = beat if valid and not ready else None
            if valid and ready:
                self.beats += 1
                n = keep.bit_length()
                assert keep == (1 << n) - 1 and n > 0, f"keep {keep:#x} not contiguous from lane 0"
                assert last or keep == full, "a beat before the last one is not full"
                cur += data.to_bytes(self.nb, "little")[:n]
                if last:
                    self.frames.append(bytes(cur))
                    self.bad.append(bool(user))
                    self.times.append(self.cycle)
                    cur = bytearray()


class EthSource:
    """Offers frames on an :class:`~hdl.signatures.EthernetStream` (packed beats) with random gaps."""

    def __init__(
        self,
        port,
        data_width: int,
        frames: list[bytes],
        rng: random.Random,
        gap: float = 0.3,
        bad: set[int] | None = None,
    ) -> None:
        self.port = port
        self.nb = data_width // 8
        self.frames = list(frames)
        self.rng = rng
        self.gap = gap
        self.bad = bad or set()
        self.sent = 0
        self.cycle = 0

    def beats(self):
        for n, frame in enumerate(self.frames):
            for i in range(0, len(frame), self.nb):
                chunk = frame[i : i + self.nb]
                last = i + self.nb >= len(frame)
                yield int.from_bytes(chunk, "little"), (1 << len(chunk)) - 1, int(last), int(last and n in self.bad)

    async def run(self, ctx) -> None:
        p = self.port
        it = self.beats()
        beat = None
        while True:
            if beat is None and self.rng.random() >= self.gap:
                beat = next(it, None)
                if beat is not None:
                    ctx.set(p.data, beat[0])
                    ctx.set(p.keep, beat[1])
                    ctx.set(p.last, beat[2])
                    ctx.set(p.user, beat[3])
            ctx.set(p.valid, beat is not None)
            _, _, ready = await ctx.tick().sample(p.ready)
            self.cycle += 1
            if beat is not None and ready:
                self.sent += beat[2]
                beat = None
