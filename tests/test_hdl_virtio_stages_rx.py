"""``RxDataMover`` with its ``RxFrameBuffer`` in the Amaranth simulator (5.1.6.3, 5.1.6.4).

Frames arrive on the buffer's Ethernet input with random gaps, receiveq chains as segments with random gaps,
the DMA writes are taken with random ``ready`` drops and ``done`` after a random delay, used elements with random
``ready``.  Checked: every write is exactly ``min(buffer length, bytes left)`` at a buffer's address (never
beyond a buffer, never into a buffer past the frame's end), the chain's writes spell virtio_net_hdr (num_buffers
1) + frame, the used length is header + frame (2.8.4), a used element follows its chain's last data beat, a
frame marked bad never reaches the ring, and a chain too small for its frame or a malformed segment gives an
``error`` used element.
"""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
from amaranth.hdl import Elaboratable, Module
from stage_models import Bench, EthSource, Sink, Source, WriteServer, bits, wait_until

from hdl.virtio.framebuf import HDR_BYTES, RxFrameBuffer
from hdl.virtio.rxpath import RxDataMover
from hdl.virtio.stream_types import SEGMENT, USED
from virtio_fpga import spec

DW = 256
HEADER = spec.NET_HDR.pack(num_buffers=1, gso_type=spec.NET_HDR_GSO_NONE)


class RxPath(Elaboratable):
    def __init__(self) -> None:
        self.rxbuf = RxFrameBuffer(DW, in_width=DW)
        self.mover = RxDataMover(self.rxbuf, DW)
        b = self.rxbuf
        self.eth = SimpleNamespace(
            valid=b.rx_valid, ready=b.rx_ready, data=b.rx_data, keep=b.rx_keep, last=b.rx_last, user=b.rx_user
        )

    def elaborate(self, platform) -> Module:
        m = Module()
        m.submodules.rxbuf = self.rxbuf
        m.submodules.mover = self.mover
        return m


def make_chain(rng: random.Random, cid: int, need: int, *, slack: bool = True) -> list[dict]:
    """Buffers holding at least ``need`` bytes (plus some to spare, sometimes whole spare buffers)."""
    total = need + (rng.choice([0, 1, rng.randint(1, 400)]) if slack else 0)
    k = rng.randint(1, min(4, total))
    cuts = sorted(rng.sample(range(1, total), k - 1)) if k > 1 else []
    lens = [b - a for a, b in zip([0, *cuts], [*cuts, total], strict=True)]
    if slack and rng.random() < 0.3:
        lens.append(rng.randint(1, 300))  # a buffer the frame never reaches
    addr = 0x3_0000_0000 + cid * 0x10000
    segs, pos = [], 0
    for i, length in enumerate(lens):
        segs.append(
            {
                "addr": addr + rng.randrange(64),
                "len": length,
                "pos": pos,
                "last": int(i == len(lens) - 1),
                "id": 0x2000 + cid,
                "count": i + 1,
                "error": 0,
            }
        )
        addr += 0x1000
        pos += length
    return segs


class RxBench:
    def __init__(self, frames: list[bytes], chains: list[list[dict]], seed: int, bad: set[int] = frozenset()):
        self.dut = RxPath()
        self.bench = Bench(self.dut, seed=seed)
        mover = self.dut.mover
        self.frames, self.chains = frames, chains
        self.eth = EthSource(self.dut.eth, DW, frames, self.bench.fork(), gap=0.3, bad=set(bad))
        segs = [s for c in chains for s in c]
        self.src = Source(mover.segs, [bits(SEGMENT, **s) for s in segs], self.bench.fork(), gap=0.3)
        self.wr = WriteServer(mover.wr, DW, self.bench.fork(), p_ready=0.6)
        self.used = Sink(mover.used, USED, self.bench.fork(), p_ready=0.6)
        self.bench.background(self.eth, self.src, self.wr, self.used)

    def run(self, n_used: int) -> None:
        mover = self.dut.mover

        async def tb(ctx):
            ctx.set(mover.run, 1)
            ctx.set(self.dut.rxbuf.accept, 1)
            await wait_until(ctx, lambda: len(self.used.items) >= n_used, 30000, "used elements")
            for _ in range(100):
                await ctx.tick()
            assert len(self.used.items) == n_used, "more used elements than chains with a frame"

        self.bench.run(tb)

    def check_chain_writes(self, chain: list[dict], frame: bytes, writes) -> bool:
        """The writes of one chain; True when the chain held the whole frame."""
        left = HDR_BYTES + len(frame)
        data = b""
        w = iter(writes)
        for seg in chain:
            n = min(seg["len"], left)
            if n == 0:
                continue
            rec = next(w)
            assert (rec.addr, len(rec.data)) == (seg["addr"], n), (
                f"write {rec.addr:#x}+{len(rec.data)}, expected {seg['addr']:#x}+{n} (buffer of {seg['len']})"
            )
            data += rec.data
            left -= n
        assert data == (HEADER + frame)[: len(data)], "bytes in the buffers differ from header + frame"
        return left == 0


def chain_write_counts(chain: list[dict], frame_len: int) -> int:
    left, k = HDR_BYTES + frame_len, 0
    for seg in chain:
        n = min(seg["len"], left)
        k += n > 0
        left -= n
    return k


@pytest.mark.parametrize("seed", [1, 2])
def test_rx_path_frames_into_chains(seed: int) -> None:
    rng = random.Random(seed)
    lengths = [rng.choice([1, 60, rng.randint(1, 1600)]) for _ in range(24)]
    frames = [rng.randbytes(n) for n in lengths]
    bad = {4, 11}  # marked bad on the wire: dropped by the buffer, no chain used for them
    good = [f for i, f in enumerate(frames) if i not in bad]
    chains = [make_chain(rng, i, HDR_BYTES + len(f)) for i, f in enumerate(good)]
    rb = RxBench(frames, chains, seed, bad=bad)
    rb.run(len(good))
    writes = iter(rb.wr.records)
    for i, (chain, frame) in enumerate(zip(chains, good, strict=True)):
        mine = [next(writes) for _ in range(chain_write_counts(chain, len(frame)))]
        assert rb.check_chain_writes(chain, frame, mine)
        u = rb.used.items[i]
        assert (u.id, u.len, u.count, u.error) == (chain[-1]["id"], HDR_BYTES + len(frame), chain[-1]["count"], 0)
        assert rb.used.times[i] > mine[-1].last_beat, "used element before its chain's last data beat"
    assert next(writes, None) is None, "a write nobody asked for"


def test_rx_path_chain_too_small() -> None:
    """Chain 3 is one byte short of header + frame: its buffers are filled up to their lengths and no further,
    and its used element carries ``error`` (5.1.6.3.1: no silent truncation)."""
    rng = random.Random(3)
    frames = [rng.randbytes(rng.randint(1, 700)) for _ in range(5)]
    chains = [make_chain(rng, i, HDR_BYTES + len(f)) for i, f in enumerate(frames[:3])]
    chains.append(make_chain(rng, 3, HDR_BYTES + len(frames[3]) - 1, slack=False))
    rb = RxBench(frames, chains, 3)
    rb.run(4)
    writes = iter(rb.wr.records)
    for chain, frame in zip(chains[:3], frames, strict=False):
        assert rb.check_chain_writes(chain, frame, [next(writes) for _ in range(chain_write_counts(chain, len(frame)))])
    rest = list(writes)
    assert not rb.check_chain_writes(chains[3], frames[3], rest)
    assert sum(len(r.data) for r in rest) == sum(s["len"] for s in chains[3])
    assert [u.error for u in rb.used.items] == [0, 0, 0, 1]
    assert rb.used.items[3].id == chains[3][-1]["id"]


def test_rx_path_malformed_segment() -> None:
    rng = random.Random(4)
    frames = [rng.randbytes(rng.randint(1, 700)) for _ in range(4)]
    chains = [make_chain(rng, i, HDR_BYTES + len(f)) for i, f in enumerate(frames[:2])]
    chains.append([{**make_chain(rng, 2, 100)[0], "last": 1, "error": 1, "count": 1}])
    rb = RxBench(frames, chains, 4)
    rb.run(3)
    assert [u.error for u in rb.used.items] == [0, 0, 1]
    assert all(r.addr < chains[2][0]["addr"] - 0x100 for r in rb.wr.records), "the malformed buffer was written"
