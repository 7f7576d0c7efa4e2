"""``UsedWriter`` and ``EventNotifier`` alone in the Amaranth simulator (spec 2.8.4-2.8.6, 2.8.10, 2.8.14,
2.8.21.1).

UsedWriter: used elements offered with random gaps, writes taken with random ``ready`` drops and ``done`` after a
random delay; checked: slot address of every write, its ``len, id, flags`` word (AVAIL/USED by the wrap counter,
WRITE when len > 0), the advance by each chain's descriptor count over wraps of a ring whose size is not a power
of two, IN_ORDER folding (one write per batch carrying the last id, advancing by the summed count), the device
event structure written first, ``pub_idx`` never ahead of the ``done`` pulses, and an error element.

EventNotifier: ``pub_idx`` moved by the test, the driver's event suppression structure read by a server with
random latency; checked: one read per published range and none without one, the ENABLE/DISABLE/DESC decision
(with and without EVENT_IDX) over that range, a failed read.
"""

from __future__ import annotations

import random

import pytest
from stage_models import Bench, ReadServer, Sink, Source, WriteServer, bits, wait_until

from hdl.virtio.stream_types import USED
from hdl.virtio.used import EventNotifier, UsedWriter
from virtio_fpga import spec
from virtio_fpga.spec import DescFlag, EventFlags

DW = 256
DESC_BASE = 0x5_0000_0000
DEVICE_AREA = 0x5_0001_0000
DRIVER_AREA = 0x5_0002_0000


def lin_pos(idx: int, wrap: int, size: int) -> int:
    """A ring position as a number modulo 2 * size (wrap counter 1 on the first lap, 2.8.1)."""
    return idx + (0 if wrap else size)


def pos_of(lin: int, size: int) -> tuple[int, int]:
    lin %= 2 * size
    return lin % size, int(lin < size)


class UsedBench:
    def __init__(self, size: int, elems: list[dict], *, batch: bool, seed: int, gap=0.4, p_ready=0.6, dev_event=True):
        self.size = size
        self.elems = elems
        self.dut = dut = UsedWriter(DW)
        self.bench = Bench(dut, seed=seed)
        self.src = Source(dut.used, [bits(USED, **e) for e in elems], self.bench.fork(), gap=gap)
        self.wr = WriteServer(dut.wr, DW, self.bench.fork(), p_ready=p_ready, latency=(1, 20))
        self.batch = batch
        self.dev_event = dev_event
        self.pubs: list[tuple[int, int, int]] = []  # (cycle, dones sampled before this cycle, position)
        self.fatal_cycles: list[int] = []
        self.bench.background(self.src, self.wr, self.monitor)

    async def monitor(self, ctx) -> None:
        dut = self.dut
        cycle = dones = 0
        while True:
            _, _, done, idx, wrap, fatal = await ctx.tick().sample(dut.wr.done, dut.pub_idx, dut.pub_wrap, dut.fatal)
            cycle += 1
            self.pubs.append((cycle, dones, lin_pos(idx, wrap, self.size)))
            dones += done
            if fatal:
                self.fatal_cycles.append(cycle)

    def run(self, until_writes: int, extra: int = 100) -> None:
        dut = self.dut

        async def tb(ctx):
            ctx.set(dut.size, self.size)
            ctx.set(dut.desc_base, DESC_BASE)
            ctx.set(dut.device_area, DEVICE_AREA)
            ctx.set(dut.batch, self.batch)
            ctx.set(dut.run, 1)
            ctx.set(dut.dev_event_ok, 1)
            ctx.set(dut.dev_event, self.dev_event)
            await ctx.tick()
            ctx.set(dut.dev_event, 0)
            await wait_until(ctx, lambda: self.src.sent == len(self.elems), 20000, "elements taken")
            await wait_until(ctx, lambda: len(self.wr.done_times) >= until_writes, 5000, "writes done")
            for _ in range(extra):
                await ctx.tick()
            assert ctx.get(dut.idle)

        self.bench.run(tb)

    def check_writes(self) -> list[list[dict]]:
        """Every write against the elements; returns the groups of elements each used write carries."""
        recs = self.wr.records
        if self.dev_event:
            first = recs[0]
            assert (first.addr, first.data) == (DEVICE_AREA, spec.EVENT_SUPPRESS.pack(flags=EventFlags.ENABLE))
            recs = recs[1:]
        lin, k, groups = 0, 0, []
        positions = [0] if not self.dev_event else [0, 0]  # position after each write (in write order)
        for rec in recs:
            idx, wrap = pos_of(lin, self.size)
            assert rec.addr == DESC_BASE + idx * 16 + 8, f"used write at {rec.addr:#x}, slot {idx} expected"
            assert len(rec.data) == 8
            word = int.from_bytes(rec.data, "little")
            w_len, w_id, w_flags = word & 0xFFFF_FFFF, (word >> 32) & 0xFFFF, word >> 48
            # the group this write carries: up to the element with its id (ids are unique in these tests)
            start = k
            while self.elems[k]["id"] != w_id:
                k += 1
                assert self.batch, "a used element was skipped without IN_ORDER"
            group = self.elems[start : k + 1]
            k += 1
            groups.append(group)
            want_flags = (int(DescFlag.AVAIL | DescFlag.USED) if wrap else 0) | (int(DescFlag.WRITE) if w_len else 0)
            assert w_flags == want_flags, f"flags {w_flags:#x} at slot {idx} wrap {wrap}, expected {want_flags:#x}"
            assert w_len == group[-1]["len"]
            count = sum(e["count"] for e in group)
            assert count <= self.size
            lin = (lin + count) % (2 * self.size)
            positions.append(lin)
        return groups, positions, k

    def check_pub(self, positions: list[int]) -> None:
        """pub never ahead of the done pulses, and caught up within a few cycles of each."""
        last_done = -10
        for cycle, dones, pub in self.pubs:
            allowed = positions[: dones + 1]
            assert pub in allowed, f"cycle {cycle}: pub {pub} ahead of {dones} done pulses"
            if dones and self.pubs[cycle - 1][1] != dones:
                last_done = cycle
            if cycle - last_done > 3:
                assert pub == positions[dones], f"cycle {cycle}: pub {pub} lags {dones} done pulses"


def elements(rng: random.Random, n: int, size: int, rx: bool) -> list[dict]:
    return [
        {
            "id": (0x100 + i) & 0xFFFF,
            "len": rng.choice([0, rng.randint(1, 9000)]) if rx else 0,
            "count": rng.randint(1, min(3, size)),
            "error": 0,
        }
        for i in range(n)
    ]


@pytest.mark.parametrize(("size", "seed"), [(13, 1), (7, 2)])
def test_used_writer_slots_flags_and_pub(size: int, seed: int) -> None:
    rng = random.Random(seed)
    elems = elements(rng, 40, size, rx=True)
    ub = UsedBench(size, elems, batch=False, seed=seed)
    ub.run(until_writes=len(elems) + 1)
    groups, positions, k = ub.check_writes()
    assert k == len(elems) and all(len(g) == 1 for g in groups), "without IN_ORDER every element is one write"
    assert sum(e["count"] for e in elems) > 2 * size, "the test should cover both wrap counter values"
    ub.check_pub(positions)


@pytest.mark.parametrize("seed", [3, 4])
def test_used_writer_in_order_folding(seed: int) -> None:
    """IN_ORDER (2.8.21.1): elements arriving while a write is held up fold into one used descriptor with the
    last buffer id; the position advances by the summed descriptor counts."""
    size = 19
    rng = random.Random(seed)
    elems = elements(rng, 60, size, rx=False)
    ub = UsedBench(size, elems, batch=True, seed=seed, gap=0.1, p_ready=0.25)
    ub.run(until_writes=1)
    groups, positions, k = ub.check_writes()
    assert k == len(elems), "the last element must be written"
    assert len(groups) < len(elems) // 2, f"{len(groups)} writes for {len(elems)} back-to-back elements"
    assert len(ub.wr.done_times) == len(ub.wr.records)
    ub.check_pub(positions)


def test_used_writer_error_element() -> None:
    """An error element: everything before it is written, then ``fatal`` pulses once, and nothing after it is
    written although it is all taken (dropped)."""
    size = 11
    rng = random.Random(8)
    elems = elements(rng, 12, size, rx=True)
    elems[7] = {**elems[7], "error": 1}
    ub = UsedBench(size, elems, batch=False, seed=8, dev_event=False)
    ub.run(until_writes=7)
    assert len(ub.wr.records) == 7
    assert [int.from_bytes(r.data, "little") >> 32 & 0xFFFF for r in ub.wr.records] == [e["id"] for e in elems[:7]]
    assert len(ub.fatal_cycles) == 1, f"fatal pulsed {len(ub.fatal_cycles)} times"
    assert ub.fatal_cycles[0] >= ub.wr.records[-1].last_beat, "fatal before the earlier elements were written"


# ---------------------------------------------------------------------------------------------- EventNotifier


class EventBench:
    def __init__(self, size: int, seed: int, *, fail=None, p_ready=0.5) -> None:
        self.size = size
        self.dut = dut = EventNotifier(DW)
        self.bench = Bench(dut, seed=seed)
        self.event = {"flags": EventFlags.ENABLE, "desc_event_off": 0, "desc_event_wrap": 0}
        self.reads_returned: list[dict] = []
        self.rd = ReadServer(dut.rd, DW, self.memory, self.bench.fork(), latency=(3, 40), fail=fail)
        self.notify = Sink(dut.notify, 1, self.bench.fork(), p_ready=p_ready)
        self.fatal = 0
        self.bench.background(self.rd, self.notify, self.fatal_monitor)

    def memory(self, addr: int, length: int) -> bytes:
        assert (addr, length) == (DRIVER_AREA, spec.EVENT_SUPPRESS.size)
        self.reads_returned.append(dict(self.event))
        return spec.EVENT_SUPPRESS.pack(**self.event)

    async def fatal_monitor(self, ctx) -> None:
        while True:
            _, _, f = await ctx.tick().sample(self.dut.fatal)
            self.fatal += f

    async def setup(self, ctx, event_idx: bool) -> None:
        ctx.set(self.dut.size, self.size)
        ctx.set(self.dut.driver_area, DRIVER_AREA)
        ctx.set(self.dut.event_idx, event_idx)
        ctx.set(self.dut.run, 1)
        ctx.set(self.dut.pub_wrap, 1)
        await ctx.tick()

    def publish(self, ctx, lin: int) -> None:
        idx, wrap = pos_of(lin, self.size)
        ctx.set(self.dut.pub_idx, idx)
        ctx.set(self.dut.pub_wrap, wrap)

    async def settle(self, ctx) -> None:
        """Until the notifier is idle with no read or notification pending (and a while longer)."""
        quiet = 0
        for _ in range(2000):
            await ctx.tick()
            busy = not ctx.get(self.dut.idle) or ctx.get(self.dut.notify.valid) or self.rd.inflight
            quiet = 0 if busy else quiet + 1
            if quiet > 30:
                return
        raise AssertionError("the notifier never settled")


def want_notify(event: dict, event_idx: bool, prev: int, new: int, size: int) -> bool:
    flags = event["flags"]
    if flags == EventFlags.DISABLE:
        return False
    if flags == EventFlags.DESC and event_idx:
        e = lin_pos(event["desc_event_off"], event["desc_event_wrap"], size)
        return (e - prev) % (2 * size) < (new - prev) % (2 * size)
    return True  # ENABLE, and DESC without EVENT_IDX or the reserved value (be safe: notify)


@pytest.mark.parametrize(("event_idx", "seed"), [(True, 1), (False, 2), (True, 3)])
def test_event_notifier_decisions_per_range(event_idx: bool, seed: int) -> None:
    size = 10
    eb = EventBench(size, seed)
    rng = random.Random(seed + 100)
    steps = 40

    async def tb(ctx):
        await eb.setup(ctx, event_idx)
        await eb.settle(ctx)
        assert not eb.rd.records, "a read with nothing published"
        lin = 0
        for step in range(steps):
            flags = rng.choice([EventFlags.ENABLE, EventFlags.DISABLE, EventFlags.DESC, EventFlags.DESC, 3])
            e = rng.randrange(2 * size)
            eb.event = {"flags": int(flags), "desc_event_off": e % size, "desc_event_wrap": int(e < size)}
            new = (lin + rng.randint(1, size)) % (2 * size)
            reads, notes = len(eb.rd.records), len(eb.notify.items)
            eb.publish(ctx, new)
            await eb.settle(ctx)
            assert len(eb.rd.records) == reads + 1, f"step {step}: {len(eb.rd.records) - reads} reads, 1 expected"
            want = want_notify(eb.event, event_idx, lin, new, size)
            got = len(eb.notify.items) - notes
            assert got == int(want), f"step {step}: event {eb.event} range {lin}->{new}: {got} notifications"
            lin = new
        assert eb.fatal == 0

    eb.bench.run(tb)


@pytest.mark.parametrize("flags", [EventFlags.ENABLE, EventFlags.DISABLE, EventFlags.DESC])
def test_event_notifier_fast_publishing(flags: EventFlags) -> None:
    """pub moves while reads are in flight: one read covers everything published since the last look; with
    DESC (EVENT_IDX) the event position is crossed once, so exactly one notification."""
    size = 16
    eb = EventBench(size, seed=int(flags) + 5, p_ready=0.8)
    rng = random.Random(int(flags))
    event_at = 13  # crossed once on the way from 0 to 2 * size - 1

    async def tb(ctx):
        await eb.setup(ctx, True)
        eb.event = {"flags": int(flags), "desc_event_off": event_at % size, "desc_event_wrap": int(event_at < size)}
        lin = 0
        while lin < 2 * size - 2:
            lin += rng.randint(1, 2)
            eb.publish(ctx, lin)
            for _ in range(rng.randint(1, 8)):
                await ctx.tick()
        await eb.settle(ctx)

    eb.bench.run(tb)
    reads, notes = len(eb.rd.records), len(eb.notify.items)
    assert 1 <= reads < 2 * size // 1.5 and all(r.addr == DRIVER_AREA for r in eb.rd.records)
    want = {EventFlags.ENABLE: reads, EventFlags.DISABLE: 0, EventFlags.DESC: 1}[flags]
    assert notes == want, f"{notes} notifications for {reads} reads"


def test_event_notifier_read_error() -> None:
    """A failed event-suppression read: ``fatal``, no notification."""
    eb = EventBench(8, seed=9, fail=lambda rec: True)

    async def tb(ctx):
        await eb.setup(ctx, False)
        eb.publish(ctx, 3)
        await eb.settle(ctx)

    eb.bench.run(tb)
    assert len(eb.rd.records) == 1 and eb.fatal == 1 and not eb.notify.items
