"""``ReadMux`` and ``WriteMux`` in the Amaranth simulator: three clients with random traffic, the core-side DMA
port answered with random latency and back-pressure.

ReadMux: each client issues reads with random gaps into its own address range and takes the data with random
``ready`` drops; the DMA port completes in order after a random latency and fails some reads.  Checked: each
client gets exactly the bytes of its own requests, in its order, with ``last`` and ``error`` where they belong.

WriteMux: each client issues writes (request, then beats) with random gaps; the DMA port takes requests and
beats with random ``ready`` and pulses ``done`` in order after a random delay.  Checked: every write on the DMA
port is one client's request with exactly its own beats (no interleaving), each client's writes keep their
order, and each ``done`` reaches the client whose write it completes, in the same cycle.
"""

from __future__ import annotations

import random
from collections import deque

import pytest
from stage_models import Bench

from hdl.virtio.dmamux import ReadMux, WriteMux

DW = 128
NB = DW // 8
N = 3


def pattern(addr: int, length: int) -> bytes:
    """Host memory contents: every byte depends on its full address (so data of another client shows)."""
    return bytes(((a * 131) ^ (a >> 32) * 29 ^ (a >> 8)) & 0xFF for a in range(addr, addr + length))


def client_requests(rng: random.Random, c: int, n: int) -> list[tuple[int, int]]:
    return [
        ((c + 1) << 36 | rng.randrange(1 << 20), rng.choice([1, NB, NB + 1, rng.randint(1, 200)])) for _ in range(n)
    ]


class ReadDmaModel:
    """The core's DmaReadPort: in order, random latency, several outstanding, random gaps and ready."""

    def __init__(self, port, rng: random.Random, fail) -> None:
        self.port, self.rng, self.fail = port, rng, fail
        self.requests: list[tuple[int, int]] = []
        self.max_inflight = 0

    async def run(self, ctx) -> None:
        p = self.port
        pending: deque = deque()
        beats: deque = deque()
        showing = False
        cycle = due = inflight = 0
        while True:
            req_ready = self.rng.random() < 0.7
            ctx.set(p.req_ready, req_ready)
            if not showing and beats and self.rng.random() < 0.8:
                data, keep, last, err = beats[0]
                ctx.set(p.data, data)
                ctx.set(p.data_keep, keep)
                ctx.set(p.data_last, last)
                ctx.set(p.error, err)
                showing = True
            ctx.set(p.data_valid, showing)
            _, _, rv, ra, rl, dr = await ctx.tick().sample(p.req_valid, p.req_addr, p.req_len, p.data_ready)
            cycle += 1
            if showing and dr:
                showing = False
                if beats.popleft()[2]:
                    inflight -= 1
            if rv and req_ready:
                self.requests.append((ra, rl))
                due = max(due, cycle + self.rng.randint(2, 40))
                pending.append((due, ra, rl))
                inflight += 1
                self.max_inflight = max(self.max_inflight, inflight)
            if not beats and pending and pending[0][0] <= cycle:
                _, addr, length = pending.popleft()
                err = int(self.fail(addr))
                data = pattern(addr, length)
                for i in range(0, length, NB):
                    chunk = data[i : i + NB]
                    last = int(i + NB >= length)
                    beats.append((int.from_bytes(chunk, "little"), (1 << len(chunk)) - 1, last, err & last))


class ReadClientModel:
    def __init__(self, port, reqs: list[tuple[int, int]], rng: random.Random) -> None:
        self.port, self.reqs, self.rng = port, reqs, rng
        self.issued = 0
        self.got: list[tuple[bytes, int]] = []  # (bytes, error) per completed request

    async def issue(self, ctx) -> None:
        req = self.port.req
        offering = False
        while True:
            if not offering and self.issued < len(self.reqs) and self.rng.random() < 0.4:
                addr, length = self.reqs[self.issued]
                ctx.set(req.payload.addr, addr)
                ctx.set(req.payload.len, length)
                offering = True
            ctx.set(req.valid, offering)
            _, _, ready = await ctx.tick().sample(req.ready)
            if offering and ready:
                self.issued += 1
                offering = False

    async def take(self, ctx) -> None:
        resp = self.port.resp
        buf = bytearray()
        while True:
            ready = self.rng.random() < 0.6
            ctx.set(resp.ready, ready)
            _, _, valid, data, keep, last, err = await ctx.tick().sample(
                resp.valid, resp.payload.data, resp.payload.keep, resp.payload.last, resp.payload.error
            )
            if valid and ready:
                buf += data.to_bytes(NB, "little")[: keep.bit_length()]
                if last:
                    self.got.append((bytes(buf), err))
                    buf = bytearray()


@pytest.mark.parametrize("seed", [1, 2])
def test_read_mux_routes_each_clients_data(seed: int) -> None:
    dut = ReadMux(N, DW)
    bench = Bench(dut, seed=seed)
    rng = random.Random(seed)
    per_client = [client_requests(rng, c, 30) for c in range(N)]
    failing = {per_client[c][k][0] for c, k in ((0, 4), (1, 17), (2, 29))}
    dma = ReadDmaModel(dut.dma, bench.fork(), fail=lambda addr: addr in failing)
    clients = [ReadClientModel(port, reqs, bench.fork()) for port, reqs in zip(dut.clients(), per_client, strict=True)]
    bench.background(dma, *(c.issue for c in clients), *(c.take for c in clients))

    async def tb(ctx):
        for _ in range(20000):
            await ctx.tick()
            if all(len(c.got) == len(c.reqs) for c in clients):
                break
        for _ in range(50):
            await ctx.tick()
        assert ctx.get(dut.outstanding) == 0

    bench.run(tb)
    for c, cl in enumerate(clients):
        want = [(pattern(a, n), int(a in failing)) for a, n in cl.reqs]
        assert cl.got == want, f"client {c} got data that is not its own, or out of order"
    assert sorted(dma.requests) == sorted(r for reqs in per_client for r in reqs)
    assert dma.max_inflight > 2


class WriteDmaModel:
    """The core's DmaWritePort: request, then exactly its beats; ``done`` in order after a random delay."""

    def __init__(self, port, rng: random.Random) -> None:
        self.port, self.rng = port, rng
        self.writes: list[tuple[int, bytes]] = []
        self.done_log: list[tuple[int, int]] = []  # (cycle, address of the write it completes)

    async def run(self, ctx) -> None:
        p = self.port
        reqs: deque = deque()
        dones: deque = deque()
        buf = bytearray()
        cycle = due = 0
        while True:
            rr, dr = self.rng.random() < 0.6, self.rng.random() < 0.7
            ctx.set(p.req_ready, rr)
            ctx.set(p.data_ready, dr)
            pulse = bool(dones) and dones[0][0] <= cycle + 1
            ctx.set(p.done, pulse)
            _, _, rv, ra, rl, dv, d, k, last = await ctx.tick().sample(
                p.req_valid, p.req_addr, p.req_len, p.data_valid, p.data, p.data_keep, p.data_last
            )
            cycle += 1
            if pulse:
                self.done_log.append((cycle, dones.popleft()[1]))
            if dv and dr:
                assert reqs, "write data before any request"
                addr, length = reqs[0]
                take = min(NB, length - len(buf))
                assert k == (1 << take) - 1 and bool(last) == (len(buf) + take == length), (
                    "beats do not fit the request"
                )
                buf += d.to_bytes(NB, "little")[:take]
                if last:
                    reqs.popleft()
                    self.writes.append((addr, bytes(buf)))
                    due = max(due + 1, cycle + self.rng.randint(1, 15))
                    dones.append((due, addr))
                    buf = bytearray()
            if rv and rr:
                reqs.append((ra, rl))


class WriteClientModel:
    def __init__(self, port, writes: list[tuple[int, int]], rng: random.Random) -> None:
        self.port, self.writes, self.rng = port, writes, rng
        self.done_cycles: list[int] = []

    async def issue(self, ctx) -> None:
        req = self.port.req
        offering = False
        k = 0
        while True:
            if not offering and k < len(self.writes) and self.rng.random() < 0.3:
                ctx.set(req.payload.addr, self.writes[k][0])
                ctx.set(req.payload.len, self.writes[k][1])
                offering = True
            ctx.set(req.valid, offering)
            _, _, ready = await ctx.tick().sample(req.ready)
            if offering and ready:
                k += 1
                offering = False

    async def beats(self, ctx) -> None:
        """All beats of all writes in order, independently of the requests (the mux takes them after a grant)."""
        data = self.port.data
        pending = deque()
        for addr, length in self.writes:
            body = pattern(addr, length)
            for i in range(0, length, NB):
                chunk = body[i : i + NB]
                pending.append((int.from_bytes(chunk, "little"), (1 << len(chunk)) - 1, int(i + NB >= length)))
        offering = None
        while True:
            if offering is None and pending and self.rng.random() < 0.6:
                offering = pending.popleft()
                ctx.set(data.payload.data, offering[0])
                ctx.set(data.payload.keep, offering[1])
                ctx.set(data.payload.last, offering[2])
            ctx.set(data.valid, offering is not None)
            _, _, ready = await ctx.tick().sample(data.ready)
            if offering is not None and ready:
                offering = None

    async def dones(self, ctx) -> None:
        cycle = 0
        while True:
            _, _, done = await ctx.tick().sample(self.port.done)
            cycle += 1
            if done:
                self.done_cycles.append(cycle)


@pytest.mark.parametrize("seed", [1, 2])
def test_write_mux_whole_writes_and_done_routing(seed: int) -> None:
    dut = WriteMux(N, DW)
    bench = Bench(dut, seed=seed)
    rng = random.Random(seed + 10)
    per_client = [client_requests(rng, c, 25) for c in range(N)]
    dma = WriteDmaModel(dut.dma, bench.fork())
    clients = [WriteClientModel(p, w, bench.fork()) for p, w in zip(dut.clients(), per_client, strict=True)]
    bench.background(dma, *(c.issue for c in clients), *(c.beats for c in clients), *(c.dones for c in clients))
    total = sum(len(w) for w in per_client)

    async def tb(ctx):
        for _ in range(20000):
            await ctx.tick()
            if len(dma.done_log) == total:
                break
        for _ in range(30):
            await ctx.tick()
        assert ctx.get(dut.outstanding) == 0

    bench.run(tb)
    owner = {a: c for c, w in enumerate(per_client) for a, _ in w}
    for addr, body in dma.writes:
        assert body == pattern(addr, len(body)), f"write at {addr:#x} carries another write's beats"
    for c in range(N):
        mine = [(a, len(b)) for a, b in dma.writes if owner[a] == c]
        assert mine == per_client[c], f"client {c}'s writes reordered or lost"
        assert clients[c].done_cycles == [t for t, a in dma.done_log if owner[a] == c], f"done of client {c} misrouted"
    assert len(dma.writes) == total
