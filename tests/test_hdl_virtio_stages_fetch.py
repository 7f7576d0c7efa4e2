"""``DescFetcher`` alone in the Amaranth simulator: random latency and back-pressure on every stream.

A Python driver posts descriptors into a ring (sizes that are not powers of two, several laps) and kicks with or
without notification data; the descriptor-ring reads are answered by :class:`ReadServer` (random latency, many in
flight, in-order completion) and the output is taken with random ``ready`` drops.  Every descriptor carries its
sequence number in ``addr``, so "only available descriptors, in ring order, none lost or repeated" is one list
comparison.
"""

from __future__ import annotations

import random

import pytest
from stage_models import Bench, ReadServer, Sink, wait_until

from hdl.virtio.fetch import DescFetcher
from hdl.virtio.stream_types import DESC_ENTRY
from virtio_fpga import spec
from virtio_fpga.spec import DescFlag

DW = 256
BASE = 0x7_0000_1000
TAG = 0xD5C0_0000_0000_0000


class Ring:
    """The driver's descriptor ring in host memory (only what the fetcher reads)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.mem = bytearray(size * 16)
        self.posted = 0  # descriptors made available so far (linear position)
        self.announced = 0  # linear position the last kick's notification data announced

    def desc(self, seq: int, *, avail: bool = True) -> dict:
        wrap = (seq // self.size) % 2 == 0
        flags = int(DescFlag.NEXT) if seq % 3 == 0 else 0
        if avail:
            flags |= DescFlag.AVAIL if wrap else DescFlag.USED
        else:  # what a used (or never written) slot looks like: AVAIL == USED
            flags |= (DescFlag.AVAIL | DescFlag.USED) if wrap else 0
        return {"addr": TAG + seq, "len": seq * 7 + 1, "id": seq & 0xFFFF, "flags": int(flags)}

    def write(self, seq: int, **kw) -> None:
        d = self.desc(seq, **kw)
        at = (seq % self.size) * 16
        self.mem[at : at + 16] = spec.PACKED_DESC.pack(**d)

    def read(self, addr: int, length: int) -> bytes:
        off = addr - BASE
        assert off >= 0 and off + length <= len(self.mem), f"read outside the ring: {addr:#x}+{length}"
        return bytes(self.mem[off : off + length])

    def hint(self) -> tuple[int, int]:
        return self.posted % self.size, int((self.posted // self.size) % 2 == 0)


def make(size: int, *, use_hint: bool, seed: int, latency=(5, 60), p_ready=0.6, fail=None, dw=DW, **kw):
    dut = DescFetcher(dw, **kw)
    bench = Bench(dut, seed=seed)
    ring = Ring(size)
    sink = Sink(dut.descs, DESC_ENTRY, bench.fork(), p_ready=p_ready)
    server = ReadServer(dut.rd, dw, ring.read, bench.fork(), latency=latency, fail=fail)
    bench.background(sink, server)
    return dut, bench, ring, sink, server


async def setup(ctx, dut, ring: Ring, use_hint: bool) -> None:
    ctx.set(dut.size, ring.size)
    ctx.set(dut.base, BASE)
    ctx.set(dut.use_hint, use_hint)
    ctx.set(dut.run, 1)
    await ctx.tick()


async def kick(ctx, dut, ring: Ring, with_data: bool) -> None:
    off, wrap = ring.hint()
    ctx.set(dut.kick, 1)
    ctx.set(dut.kick_has_data, with_data)
    ctx.set(dut.kick_next_off, off)
    ctx.set(dut.kick_next_wrap, wrap)
    await ctx.tick()
    ctx.set(dut.kick, 0)
    if with_data:
        ring.announced = ring.posted


def seqs(sink: Sink) -> list[int]:
    out = []
    for e in sink.items:
        assert not e.error, "unexpected error entry"
        out.append(e.desc.addr - TAG)
    return out


def check_in_ring_order(sink: Sink, ring: Ring, upto: int) -> None:
    got = seqs(sink)
    assert got == list(range(len(got))), f"out of order / not available descriptors: {got[:40]}"
    assert len(got) == upto
    for e in sink.items:
        seq = e.desc.addr - TAG
        want = ring.desc(seq)
        assert (e.desc.len, e.desc.id, e.desc.flags) == (want["len"], want["id"], want["flags"])


def hint_checker(ring: Ring, sink: Sink):
    """Every read lies inside what the driver announced and the consumer has not yet taken (4.1.5.2, 2.9)."""

    def check(rec) -> None:
        first = (rec.addr - BASE) // 16
        n = rec.length // 16
        assert rec.length % 16 == 0 and (rec.addr - BASE) % 16 == 0
        assert first + n <= ring.size, "a read wrapped around the ring end"
        taken = len(sink.items)
        lin = taken + (first - taken) % ring.size  # linear position of the first descriptor read
        assert lin + n <= ring.announced, (
            f"read of ring[{first}:{first + n}] (positions {lin}..{lin + n}) beyond the hint {ring.announced}"
        )

    return check


@pytest.mark.parametrize(
    ("size", "use_hint", "seed", "dw", "p_ready", "fifo_beats"),
    [
        (37, True, 1, 256, 0.6, 32),
        (37, False, 2, 256, 0.6, 32),
        (23, True, 3, 512, 0.6, 32),
        (50, False, 4, 128, 0.6, 32),
        (41, True, 5, 256, 0.15, 8),  # slow consumer, small FIFO: reads are sized by the room left
        (41, False, 6, 512, 0.15, 4),
    ],
)
def test_fetcher_ring_order_across_wraps(
    size: int, use_hint: bool, seed: int, dw: int, p_ready: float, fifo_beats: int
) -> None:
    """Random batches over three laps: exactly the posted descriptors, in ring order; with the hint nothing
    beyond it is read, and several reads are in flight under latency."""
    dut, bench, ring, sink, server = make(
        size, use_hint=use_hint, seed=seed, dw=dw, p_ready=p_ready, fifo_beats=fifo_beats
    )
    if use_hint:
        server.on_request = hint_checker(ring, sink)
    rng = random.Random(seed * 77)
    total = size * 3 + 5

    async def driver(ctx):
        await setup(ctx, dut, ring, use_hint)
        while ring.posted < total:
            free = size - (ring.posted - len(sink.items))
            k = min(rng.randint(1, max(1, size // 2)), free, total - ring.posted)
            for _ in range(k):
                ring.write(ring.posted)
                ring.posted += 1
            await kick(ctx, dut, ring, use_hint)
            for _ in range(rng.randint(0, 40)):
                await ctx.tick()
            if k == 0:
                await wait_until(ctx, lambda: len(sink.items) > ring.posted - size, 3000, "room in the ring")
        await wait_until(ctx, lambda: len(sink.items) == total, 5000, "all descriptors out")
        for _ in range(100):  # nothing more comes out
            await ctx.tick()
        assert ctx.get(dut.idle)

    bench.run(driver)
    check_in_ring_order(sink, ring, total)
    assert server.max_inflight > 1, "never more than one descriptor read in flight"
    for rec in server.records:
        assert 0 < rec.length <= dut.max_burst * 16


@pytest.mark.parametrize("use_hint", [True, False])
def test_fetcher_stops_at_unavailable_and_resumes(use_hint: bool) -> None:
    """A descriptor whose flags say "not available" (here AVAIL == USED, a used slot) stops the fetch even when
    the hint covers it; reads in flight past it are discarded; the next kick resumes exactly there."""
    size = 29
    dut, bench, ring, sink, server = make(size, use_hint=use_hint, seed=11 + use_hint)
    rng = random.Random(5)
    total = size * 2 + 7

    async def driver(ctx):
        await setup(ctx, dut, ring, use_hint)
        while ring.posted < total:
            free = size - (ring.posted - len(sink.items))
            k = min(rng.randint(4, 12), free, total - ring.posted)
            if k == 0:
                await wait_until(ctx, lambda: len(sink.items) > ring.posted - size, 3000, "room")
                continue
            bad = ring.posted + rng.randrange(k)
            for i in range(k):
                ring.write(ring.posted + i, avail=(ring.posted + i) != bad)
            ring.posted += k
            await kick(ctx, dut, ring, use_hint)
            # the fetcher must stop right before ``bad``
            await wait_until(ctx, lambda b=bad: len(sink.items) == b and ctx.get(dut.idle), 3000, "stop at bad")
            for _ in range(rng.randint(20, 60)):
                await ctx.tick()
                assert len(sink.items) == bad, "a descriptor past the unavailable one came out"
            assert not ctx.get(dut.rd.req.valid) or use_hint is False
            ring.write(bad)  # the driver finishes writing it
            await kick(ctx, dut, ring, use_hint)
            await wait_until(ctx, lambda: len(sink.items) == ring.posted, 3000, "resume after the kick")
        for _ in range(50):
            await ctx.tick()

    bench.run(driver)
    check_in_ring_order(sink, ring, total)


@pytest.mark.parametrize("use_hint", [True, False])
def test_fetcher_failed_read(use_hint: bool) -> None:
    """The first read that covers position 18 (the third batch's first descriptor) once that batch is posted
    fails: everything before the read's start comes out, then exactly one error entry, and nothing of that
    read or of any later one, even after more kicks.  (Where reads start depends on the bursts and on the
    timing of the kicks, so the read is found by what it covers.)"""
    size = 40
    failed: list = []

    def fail(rec) -> bool:
        if not failed and rec.addr <= BASE + 18 * 16 < rec.addr + rec.length and ring.posted >= 27:
            failed.append(rec)
            return True
        return False

    dut, bench, ring, sink, server = make(size, use_hint=use_hint, seed=21 + use_hint, fail=fail)

    async def driver(ctx):
        await setup(ctx, dut, ring, use_hint)
        for _ in range(4):
            for _ in range(9):
                ring.write(ring.posted)
                ring.posted += 1
            await kick(ctx, dut, ring, use_hint)
            await wait_until(ctx, lambda: ctx.get(dut.idle) and not ctx.get(dut.rd.req.valid), 3000, "reads done")
            for _ in range(30):
                await ctx.tick()
        await wait_until(ctx, lambda: any(e.error for e in sink.items), 3000, "the error entry")
        for _ in range(3):
            await kick(ctx, dut, ring, use_hint)
            for _ in range(80):
                await ctx.tick()
        assert ctx.get(dut.idle)

    bench.run(driver)
    assert failed and failed[0].error
    good = [e for e in sink.items if not e.error]
    errors = [e for e in sink.items if e.error]
    assert len(errors) == 1 and sink.items[-1].error, "exactly one error entry, last"
    start = (failed[0].addr - BASE) // 16
    # with the hint every read starts at a batch boundary; without it a read may start inside a batch
    assert start == 18 if use_hint else 9 <= start <= 18
    assert [e.desc.addr - TAG for e in good] == list(range(start)), "descriptors of or after the failed read"
    after = [r for r in server.records if r.issued > failed[0].done]
    assert not after, f"reads went on after the failure: {after}"


def test_fetcher_batch_of_64_with_hint() -> None:
    """A batch of 64 announced by notification data is fetched in ceil(64 / max_burst) reads (plus one where it
    crosses the ring end): at most 0.25 read requests per descriptor, and never beyond the hint."""
    size = 200
    dut, bench, ring, sink, server = make(size, use_hint=True, seed=31, p_ready=1.0, latency=(100, 140))
    server.on_request = hint_checker(ring, sink)
    batches = 6

    async def driver(ctx):
        await setup(ctx, dut, ring, True)
        for _ in range(batches):
            for _ in range(64):
                ring.write(ring.posted)
                ring.posted += 1
            await kick(ctx, dut, ring, True)
            await wait_until(ctx, lambda: len(sink.items) == ring.posted and ctx.get(dut.idle), 3000, "batch")

    bench.run(driver)
    check_in_ring_order(sink, ring, 64 * batches)
    crossings = (64 * batches) // size
    assert len(server.records) <= batches * 64 // dut.max_burst + crossings
    assert len(server.records) / (64 * batches) <= 0.25
    assert server.max_inflight >= 4, f"only {server.max_inflight} reads in flight for a batch of 64"


@pytest.mark.parametrize("use_hint", [True, False])
def test_fetcher_full_ring_batches(use_hint: bool) -> None:
    """The driver fills the whole ring at once (the hint then points at the fetch position with the other wrap
    counter: ``size`` descriptors announced, not zero), four times over."""
    size = 24
    dut, bench, ring, sink, server = make(size, use_hint=use_hint, seed=50 + use_hint, p_ready=0.8)
    if use_hint:
        server.on_request = hint_checker(ring, sink)

    async def driver(ctx):
        await setup(ctx, dut, ring, use_hint)
        for _ in range(4):
            for _ in range(size):
                ring.write(ring.posted)
                ring.posted += 1
            await kick(ctx, dut, ring, use_hint)
            await wait_until(ctx, lambda: len(sink.items) == ring.posted and ctx.get(dut.idle), 3000, "full ring")

    bench.run(driver)
    check_in_ring_order(sink, ring, 4 * size)


@pytest.mark.parametrize("use_hint", [True, False])
def test_fetcher_stop_and_clear(use_hint: bool) -> None:
    """Queue reset as the engine does it: ``run`` drops while reads are in flight and the FIFO holds descriptors,
    the fetcher goes idle, ``clear`` empties it and goes back to position 0 / wrap 1; what the new ring then
    offers comes out, and nothing fetched before the clear."""
    size = 40
    dut, bench, ring, sink, server = make(size, use_hint=use_hint, seed=60 + use_hint, p_ready=0.1)

    async def driver(ctx):
        await setup(ctx, dut, ring, use_hint)
        for _ in range(30):
            ring.write(ring.posted)
            ring.posted += 1
        await kick(ctx, dut, ring, use_hint)
        await wait_until(ctx, lambda: len(server.records) >= 2 and server.inflight > 0, 500, "reads in flight")
        ctx.set(dut.run, 0)
        sink.enabled = False
        await wait_until(ctx, lambda: ctx.get(dut.idle), 500, "idle after run dropped")
        issued = len(server.records)
        for _ in range(30):
            await ctx.tick()
            assert len(server.records) == issued, "a read issued without run"
        old = len(sink.items)
        assert old < 30 and ctx.get(dut.descs.valid), "the test wants descriptors left in the FIFO"
        ctx.set(dut.clear, 1)
        await ctx.tick()
        ctx.set(dut.clear, 0)
        await ctx.tick()
        assert not ctx.get(dut.descs.valid), "descriptors survived clear"
        ring.mem[:] = bytes(len(ring.mem))  # the driver sets the ring up again from scratch
        ring.posted = ring.announced = 0
        ctx.set(dut.run, 1)
        sink.enabled = True
        sink.p_ready = 0.7
        for _ in range(11):
            ring.write(ring.posted)
            ring.posted += 1
        await kick(ctx, dut, ring, use_hint)
        await wait_until(ctx, lambda: len(sink.items) == old + 11 and ctx.get(dut.idle), 2000, "the new ring")
        for _ in range(50):
            await ctx.tick()
        del sink.items[:old]

    bench.run(driver)
    check_in_ring_order(sink, ring, 11)
