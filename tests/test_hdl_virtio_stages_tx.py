"""``TxDataMover`` + ``TxFrameSender`` around their frame ring, in the Amaranth simulator.

Segments (as the chain parser makes them) are offered with random gaps; buffer reads are answered with random
latency and gaps, many in flight, in order; the used elements and the Ethernet stream are taken with random
``ready`` drops.  A small frame ring (2 KiB) makes the mover wait for the sender to free room.  Checked: each
frame on ``eth`` is exactly the chain's bytes after the 12-byte virtio_net_hdr (5.1.6.2), a header-only chain
sends nothing, every read is exactly one segment's buffer, a used element comes only after the last read of its
chain completed, reads overlap, and a failed read or a malformed segment ends the chain with an ``error`` used
element and no frame.
"""

from __future__ import annotations

import random

import pytest
from amaranth.hdl import Elaboratable, Module, unsigned
from amaranth.lib import memory, wiring
from stage_models import Bench, EthSink, ReadServer, Sink, Source, bits, wait_until

from hdl.virtio.framebuf import HDR_BYTES
from hdl.virtio.stream_types import SEGMENT, USED
from hdl.virtio.txpath import TxDataMover, TxFrameSender

DW = 256
HOST = 0x9_0000_0000
HOST_BYTES = 1 << 16


class TxPath(Elaboratable):
    """The mover and the sender joined as in ``engine.py``, with their own ring memory."""

    def __init__(self, ring_bytes: int, max_reads: int = 32) -> None:
        self.mem = memory.Memory(shape=unsigned(DW), depth=ring_bytes // (DW // 8), init=[])
        self.mover = TxDataMover(self.mem.write_port(), DW, ring_bytes, max_reads=max_reads)
        self.sender = TxFrameSender(self.mem.read_port(), DW, ring_bytes)

    def elaborate(self, platform) -> Module:
        m = Module()
        m.submodules.mem = self.mem
        m.submodules.mover = self.mover
        m.submodules.sender = self.sender
        wiring.connect(m, self.mover.frames, self.sender.frames)
        m.d.comb += self.mover.freed.eq(self.sender.freed)
        return m


def make_chains(rng: random.Random, n: int, max_total: int = 900) -> list[list[dict]]:
    """Chains of 1..4 segments at random host addresses; chain 3 carries only the header, chain 5 one byte."""
    chains = []
    for c in range(n):
        total = {3: HDR_BYTES, 5: HDR_BYTES + 1}.get(c, rng.randint(HDR_BYTES + 1, max_total))
        k = rng.randint(1, min(4, total))
        cuts = sorted(rng.sample(range(1, total), k - 1)) if k > 1 else []
        lens = [b - a for a, b in zip([0, *cuts], [*cuts, total], strict=True)]
        pos, chain = 0, []
        for i, length in enumerate(lens):
            addr = HOST + rng.randrange(HOST_BYTES - length)
            chain.append(
                {
                    "addr": addr,
                    "len": length,
                    "pos": pos,
                    "last": int(i == k - 1),
                    "id": 0x4000 + c,
                    "count": i + 1,
                    "error": 0,
                }
            )
            pos += length
        chains.append(chain)
    return chains


class TxBench:
    def __init__(self, chains, seed: int, *, fail=None, ring_bytes: int = 2048, latency=(5, 80), p_eth=0.5) -> None:
        self.dut = TxPath(ring_bytes)
        self.bench = Bench(self.dut, seed=seed)
        self.host = random.Random(seed).randbytes(HOST_BYTES)
        self.chains = chains
        segs = [s for c in chains for s in c]
        mover, sender = self.dut.mover, self.dut.sender
        self.src = Source(mover.segs, [bits(SEGMENT, **s) for s in segs], self.bench.fork(), gap=0.3)
        self.rd = ReadServer(mover.rd, DW, self.read, self.bench.fork(), latency=latency, fail=fail)
        self.used = Sink(mover.used, USED, self.bench.fork(), p_ready=0.6)
        self.eth = EthSink(sender.eth, DW, self.bench.fork(), p_ready=p_eth)
        self.bench.background(self.src, self.rd, self.used, self.eth)

    def read(self, addr: int, length: int) -> bytes:
        off = addr - HOST
        assert 0 <= off <= HOST_BYTES - length
        return self.host[off : off + length]

    def chain_bytes(self, chain) -> bytes:
        return b"".join(self.read(s["addr"], s["len"]) for s in chain)

    def run(self, n_used: int) -> None:
        mover = self.dut.mover

        async def tb(ctx):
            ctx.set(mover.run, 1)
            await wait_until(ctx, lambda: len(self.used.items) >= n_used, 30000, "used elements")
            await wait_until(ctx, lambda: ctx.get(self.dut.sender.idle), 5000, "the sender")
            for _ in range(100):
                await ctx.tick()
            assert ctx.get(mover.idle)

        self.bench.run(tb)

    def check_reads_match_segments(self, segs) -> None:
        want = [(s["addr"], s["len"]) for s in segs if not s["error"]]
        got = [(r.addr, r.length) for r in self.rd.records]
        assert got == want[: len(got)], "a read that is not exactly a segment's buffer, or out of order"


@pytest.mark.parametrize(("seed", "ring_bytes", "p_eth"), [(1, 2048, 0.5), (2, 1024, 0.25)])
def test_tx_path_frames_and_used(seed: int, ring_bytes: int, p_eth: float) -> None:
    """The second case drains eth slowly through a 1 KiB ring: the mover must wait for room (data it wrote over
    a frame not yet sent would show up as a wrong frame)."""
    rng = random.Random(seed)
    chains = make_chains(rng, 40)
    tb = TxBench(chains, seed, ring_bytes=ring_bytes, p_eth=p_eth)
    tb.run(len(chains))
    segs = [s for c in chains for s in c]
    tb.check_reads_match_segments(segs)
    assert len(tb.rd.records) == len(segs)
    want_frames = [tb.chain_bytes(c)[HDR_BYTES:] for c in chains]
    assert tb.eth.frames == [f for f in want_frames if f], "frames on eth differ from the chains' bytes"
    assert not any(tb.eth.bad)
    got_used = [(u.id, u.len, u.count, u.error) for u in tb.used.items]
    assert got_used == [(c[-1]["id"], 0, c[-1]["count"], 0) for c in chains]
    # a used element only after the chain's last read completed (its data is in the device)
    reads = iter(tb.rd.records)
    for chain, t_used in zip(chains, tb.used.times, strict=True):
        last = [next(reads) for _ in chain][-1]
        assert last.done >= 0 and t_used > last.done, "used element before the chain's data arrived"
    assert tb.rd.max_inflight > 2, f"max {tb.rd.max_inflight} reads in flight"


def test_tx_path_read_error_drops_the_frame() -> None:
    """The second segment of chain 6 fails: its used element has ``error``, its frame never reaches eth; the
    chains before it are sent and completed normally."""
    rng = random.Random(5)
    chains = make_chains(rng, 10)
    chains[6] = make_chains(random.Random(6), 1)[0]
    while len(chains[6]) < 2:
        chains[6] = make_chains(rng, 1)[0]
    chains[6] = [{**s, "id": 0x4006} for s in chains[6]]
    bad_addr = chains[6][1]["addr"]
    tb = TxBench(chains, 5, fail=lambda rec: rec.addr == bad_addr)
    tb.run(7)
    used = tb.used.items
    assert [(u.id, u.error) for u in used[:6]] == [(c[-1]["id"], 0) for c in chains[:6]]
    assert (used[6].id, used[6].count, used[6].error) == (0x4006, chains[6][-1]["count"], 1)
    bad_frame = tb.chain_bytes(chains[6])[HDR_BYTES:]
    want_before = [f for f in (tb.chain_bytes(c)[HDR_BYTES:] for c in chains[:6]) if f]
    assert tb.eth.frames[: len(want_before)] == want_before
    assert bad_frame not in tb.eth.frames, "the failed chain's frame was sent"


def test_tx_path_malformed_segment() -> None:
    """A segment the parser marked malformed: no read for it, an ``error`` used element after the chains before
    it, and no frame of its chain."""
    rng = random.Random(7)
    chains = make_chains(rng, 8)
    bad = [{**chains[7][0], "last": 1, "error": 1, "count": 1}]
    chains[7] = bad
    tb = TxBench(chains, 7)
    tb.run(8)
    segs = [s for c in chains for s in c]
    tb.check_reads_match_segments(segs)
    assert all(r.addr != bad[0]["addr"] for r in tb.rd.records), "the malformed segment's buffer was read"
    used = tb.used.items
    assert [(u.id, u.error) for u in used] == [(c[-1]["id"], 0) for c in chains[:7]] + [(bad[0]["id"], 1)]
    assert tb.eth.frames == [f for f in (tb.chain_bytes(c)[HDR_BYTES:] for c in chains[:7]) if f]
