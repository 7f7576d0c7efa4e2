"""PCIe blocks alone in the Amaranth simulator: things that are easier to provoke without a PCIe model.

* the BAR completer's split of byte enables into natural register accesses, its completions and its
  refusals (UR for non-posted, silence for posted);
* the DMA engine's read reassembly: completions for several tags answered in *reverse* order and split into
  64-byte pieces (PCIe Base 2.3.1.1 read completion boundary), realigned to the packed convention;
  a UR completion and a completion timeout each end the request with ``error`` on its last beat;
* the DMA engine's write splitting (at most Max_Payload_Size, cut at 64-byte lines and 4 KiB) with the data
  dword-aligned per TLP;
* the MSI-X block: table access, per-vector and function masking, pending bits, the sent/fail handshake.
"""

from __future__ import annotations

import heapq
import random

import pytest
from amaranth.sim import Simulator

from hdl.pcie.completer import BarCompleter
from hdl.pcie.dma import DmaEngine
from hdl.pcie.msix import MsixBlock
from hdl.pcie.tlp import CC_DESCRIPTOR, CQ_DESCRIPTOR, RC_DESCRIPTOR, RQ_DESCRIPTOR, ReqType

# ------------------------------------------------------------------------------------------------------------
# helpers: pack/unpack descriptors with the same layouts the gateware uses


def pack(layout, **fields) -> int:
    word = 0
    for name, value in fields.items():
        f = layout[name]
        word |= (value & ((1 << f.width) - 1)) << f.offset
    return word


def unpack(layout, word: int) -> dict:
    return {name: (word >> f.offset) & ((1 << f.width) - 1) for name, f in layout}


def beats_of(data: bytes, width: int) -> list[tuple[int, int, bool]]:
    """(tdata, tkeep per dword, tlast) beats of a dword-aligned stream."""
    nb = width // 8
    out = []
    for i in range(0, len(data), nb):
        chunk = data[i : i + nb]
        keep = (1 << ((len(chunk) + 3) // 4)) - 1
        out.append((int.from_bytes(chunk, "little"), keep, i + nb >= len(data)))
    return out


def run_sim(dut, *benches, clocks: float = 1e-8, deadline_cycles: int = 20000) -> None:
    sim = Simulator(dut)
    sim.add_clock(clocks)
    for tb in benches:
        sim.add_testbench(tb, background=getattr(tb, "background", False))
    sim.run_until(deadline_cycles * clocks)


# ------------------------------------------------------------------------------------------------------------
# BAR completer


def _completer_case(width: int, desc: dict, first_be: int, last_be: int, payload: bytes = b""):
    """Send one CQ request; return (register accesses, completion descriptor fields, completion data)."""
    dut = BarCompleter(width)
    accesses: list[tuple] = []
    result: dict = {}
    regs = {a: (a * 0x0101010101010101 + 0x0706050403020100) & (2**64 - 1) for a in range(0, 64)}

    async def slave(ctx):
        while True:
            _, _, valid, write, addr, size, wdata = await ctx.tick().sample(
                dut.regs.valid, dut.regs.write, dut.regs.addr, dut.regs.size, dut.regs.wdata
            )
            if valid:
                accesses.append((bool(write), addr, 1 << size, wdata & ((1 << (8 << size)) - 1)))
                value = int.from_bytes(bytes((0x40 + addr + k) & 0xFF for k in range(8)), "little")
                ctx.set(dut.regs.rdata, value)
                ctx.set(dut.regs.done, 1)
                await ctx.tick()
                ctx.set(dut.regs.done, 0)
                await ctx.tick()

    slave.background = True
    del regs

    async def host(ctx):
        stream = pack(CQ_DESCRIPTOR, **desc).to_bytes(16, "little") + payload
        tuser = first_be | (last_be << 4)
        ctx.set(dut.cc.tready, 1)
        for data, keep, last in beats_of(stream, width):
            ctx.set(dut.cq.tdata, data)
            ctx.set(dut.cq.tkeep, keep)
            ctx.set(dut.cq.tlast, last)
            ctx.set(dut.cq.tuser, tuser)
            ctx.set(dut.cq.tvalid, 1)
            while True:
                _, _, ready = await ctx.tick().sample(dut.cq.tready)
                if ready:
                    break
        ctx.set(dut.cq.tvalid, 0)
        got = b""
        for _ in range(200):
            _, _, valid, data, keep, last = await ctx.tick().sample(
                dut.cc.tvalid, dut.cc.tdata, dut.cc.tkeep, dut.cc.tlast
            )
            if valid:
                for d in range(width // 32):
                    if keep >> d & 1:
                        got += ((data >> (32 * d)) & 0xFFFFFFFF).to_bytes(4, "little")
                if last:
                    break
        result["cc"] = got

    run_sim(dut, slave, host, deadline_cycles=400)
    cc = result.get("cc", b"")
    fields = unpack(CC_DESCRIPTOR, int.from_bytes(cc[:12], "little")) if cc else None
    return accesses, fields, cc[12:]


def _mem_desc(req_type: int, addr: int, dwords: int, bar: int = 0) -> dict:
    return {
        "addr": addr >> 2,
        "dword_count": dwords,
        "req_type": req_type,
        "requester_id": 0x0100,
        "tag": 0x2A,
        "bar_id": bar,
        "bar_aperture": 16,
        "target_function": 0,
    }


@pytest.mark.parametrize("width", [128, 256])
def test_completer_read_splits_into_natural_accesses(width: int) -> None:
    # 2 bytes at 0x15..0x16: not 2-aligned -> two 1-byte accesses, lowest first
    acc, cpl, data = _completer_case(width, _mem_desc(ReqType.MEM_READ, 0x14, 1), 0b0110, 0)
    assert acc == [(False, 0x15, 1, 0), (False, 0x16, 1, 0)]
    assert cpl["status"] == 0 and cpl["byte_count"] == 2 and cpl["lower_addr"] == 0x15 and cpl["dword_count"] == 1
    assert cpl["tag"] == 0x2A and cpl["requester_id"] == 0x0100
    assert data[1:3] == bytes([0x40 + 0x15, 0x40 + 0x16])


def test_completer_qword_read_is_one_access() -> None:
    acc, cpl, data = _completer_case(256, _mem_desc(ReqType.MEM_READ, 0x20, 2), 0xF, 0xF)
    assert acc == [(False, 0x20, 8, 0)]
    assert cpl["byte_count"] == 8 and cpl["dword_count"] == 2
    assert data == bytes((0x40 + 0x20 + k) for k in range(8))


def test_completer_unaligned_8_bytes_and_holes() -> None:
    # 8 bytes from 0x31 span 3 dwords: 1 + 2 + 4 + 1 natural accesses, in address order
    acc, cpl, _ = _completer_case(256, _mem_desc(ReqType.MEM_READ, 0x30, 3), 0b1110, 0b0001)
    assert [(a, n) for _, a, n, _ in acc] == [(0x31, 1), (0x32, 2), (0x34, 4), (0x38, 1)]
    assert cpl["byte_count"] == 8 and cpl["lower_addr"] == 0x31
    # non-contiguous enables: bytes 0 and 2 only; byte 1 is never touched
    acc, _, _ = _completer_case(256, _mem_desc(ReqType.MEM_READ, 0x40, 1), 0b0101, 0)
    assert [(a, n) for _, a, n, _ in acc] == [(0x40, 1), (0x42, 1)]


@pytest.mark.parametrize("width", [128, 256])
def test_completer_write(width: int) -> None:
    payload = bytes(range(0x10, 0x18))
    acc, cpl, _ = _completer_case(width, _mem_desc(ReqType.MEM_WRITE, 0x18, 2), 0xF, 0xF, payload)
    assert acc == [(True, 0x18, 8, int.from_bytes(payload, "little"))]
    assert cpl is None  # posted: no completion
    acc, _, _ = _completer_case(width, _mem_desc(ReqType.MEM_WRITE, 0x18, 1), 0b1100, 0, payload[:4])
    assert acc == [(True, 0x1A, 2, 0x1312)]


def test_completer_refusals() -> None:
    # another BAR: UR completion without data, no register access
    acc, cpl, data = _completer_case(256, _mem_desc(ReqType.MEM_READ, 0x0, 1, bar=2), 0xF, 0)
    assert acc == [] and cpl["status"] == 1 and cpl["dword_count"] == 0 and data == b""
    # longer than 8 bytes
    acc, cpl, _ = _completer_case(256, _mem_desc(ReqType.MEM_READ, 0x0, 4), 0xF, 0xF)
    assert acc == [] and cpl["status"] == 1
    # I/O write is non-posted: UR
    acc, cpl, _ = _completer_case(256, _mem_desc(ReqType.IO_WRITE, 0x0, 1), 0xF, 0, b"\0\0\0\0")
    assert acc == [] and cpl["status"] == 1
    # a message is posted: dropped silently
    acc, cpl, _ = _completer_case(256, _mem_desc(ReqType.MSG, 0x0, 0), 0, 0)
    assert acc == [] and cpl is None
    # a long write (posted): dropped
    acc, cpl, _ = _completer_case(128, _mem_desc(ReqType.MEM_WRITE, 0x0, 8), 0xF, 0xF, bytes(32))
    assert acc == [] and cpl is None


# ------------------------------------------------------------------------------------------------------------
# DMA engine: reads


def _rq_collector(dut, tlps: list, *, ready_prob: float = 1.0, seed: int = 5):
    rng = random.Random(seed)
    width = dut.data_width

    async def sink(ctx):
        cur = b""
        tuser_first = None
        while True:
            ready = rng.random() < ready_prob
            ctx.set(dut.rq.tready, ready)
            _, _, valid, data, keep, last, tuser = await ctx.tick().sample(
                dut.rq.tvalid, dut.rq.tdata, dut.rq.tkeep, dut.rq.tlast, dut.rq.tuser
            )
            if valid and ready:
                if tuser_first is None:
                    tuser_first = tuser
                for d in range(width // 32):
                    if keep >> d & 1:
                        cur += ((data >> (32 * d)) & 0xFFFFFFFF).to_bytes(4, "little")
                if last:
                    desc = unpack(RQ_DESCRIPTOR, int.from_bytes(cur[:16], "little"))
                    tlps.append((desc, tuser_first & 0xF, (tuser_first >> 4) & 0xF, cur[16:]))
                    cur = b""
                    tuser_first = None

    sink.background = True
    return sink


def _completions(desc: dict, first_be: int, memory: bytes, base: int, rcb: int = 64) -> list[bytes]:
    """The completion TLP streams (descriptor + dword-aligned data) for a read, split at the RCB."""
    addr = (desc["addr"] << 2) + ((first_be & -first_be).bit_length() - 1)
    dwords = desc["dword_count"]
    del dwords
    out = []
    length = desc["_len"]
    pos = addr
    remaining = length
    while remaining:
        boundary = (pos // rcb + 1) * rcb
        n = min(remaining, boundary - pos)
        la = pos & 0xFFF
        dw_start = pos & ~3
        dw_end = (pos + n + 3) & ~3
        data = memory[dw_start - base : dw_end - base]
        cpl = pack(
            RC_DESCRIPTOR,
            lower_addr=la,
            byte_count=remaining,
            dword_count=(dw_end - dw_start) // 4,
            tag=desc["tag"],
            request_completed=int(n == remaining),
        )
        out.append(cpl.to_bytes(12, "little") + data)
        pos += n
        remaining -= n
    return out


def _dma_read_case(
    width: int, addr: int, length: int, *, mode: str = "ok", timeout_cycles: int = 1 << 16, seed: int = 1
):
    dut = DmaEngine(width, timeout_cycles=timeout_cycles)
    rng = random.Random(seed)
    base = addr & ~0xFFF
    memory = bytes(rng.getrandbits(8) for _ in range(length + 8192))
    tlps: list = []
    out = {"data": b"", "error": None, "beats": 0}

    async def core(ctx):
        ctx.set(dut.max_read_req, 2)  # 512 bytes
        ctx.set(dut.max_payload, 0)
        ctx.set(dut.rd.req_addr, addr)
        ctx.set(dut.rd.req_len, length)
        ctx.set(dut.rd.req_valid, 1)
        while True:
            _, _, ready = await ctx.tick().sample(dut.rd.req_ready)
            if ready:
                break
        ctx.set(dut.rd.req_valid, 0)
        ctx.set(dut.rd.data_ready, 1)
        while True:
            _, _, valid, data, keep, last, err = await ctx.tick().sample(
                dut.rd.data_valid, dut.rd.data, dut.rd.data_keep, dut.rd.data_last, dut.rd.error
            )
            if valid:
                out["beats"] += 1
                nb = sum(1 for k in range(width // 8) if keep >> k & 1)
                out["data"] += data.to_bytes(width // 8, "little")[:nb]
                if last:
                    out["error"] = bool(err)
                    break
        for _ in range(4):
            await ctx.tick()
        out["busy_after"] = ctx.get(dut.busy)

    async def host(ctx):
        # wait until every read request of the core request has been issued, then answer in reverse order
        for _ in range(2000):
            await ctx.tick()
            if sum(d.get("_len", 0) for d, *_ in tlps) >= length:
                break
        if mode == "timeout":
            return
        streams = []
        for desc, fbe, _lbe, _ in reversed(tlps):
            streams.append(_completions(desc, fbe, memory, base))
        if mode in ("ur", "ca"):
            d0 = tlps[0][0]
            status = 1 if mode == "ur" else 4
            streams[-1] = [
                pack(
                    RC_DESCRIPTOR,
                    status=status,
                    error_code=0b1001,
                    byte_count=d0["_len"],
                    tag=d0["tag"],
                    request_completed=1,
                ).to_bytes(12, "little")
            ]
        if mode == "poisoned":  # data arrives, but the TLP is poisoned (EP bit): PG213 error code 0b0001
            first = streams[-1][0]
            word = int.from_bytes(first[:12], "little") | pack(RC_DESCRIPTOR, poisoned=1, error_code=0b0001)
            streams[-1][0] = word.to_bytes(12, "little") + first[12:]
        # interleave the split completions of different tags (allowed: PCIe Base 2.4.1, different tags)
        queue = []
        while any(streams):
            for s in streams:
                if s:
                    queue.append(s.pop(0))
        for stream in queue:
            for data, keep, last in beats_of(stream, width):
                ctx.set(dut.rc.tdata, data)
                ctx.set(dut.rc.tkeep, keep)
                ctx.set(dut.rc.tlast, last)
                ctx.set(dut.rc.tvalid, 1)
                await ctx.tick()
            ctx.set(dut.rc.tvalid, 0)
            if rng.random() < 0.3:
                await ctx.tick()

    # annotate each collected request with its byte length (from the enables) for the responder
    class Annotating(list):
        def append(self, item):
            desc, fbe, lbe, payload = item
            lead = (fbe & -fbe).bit_length() - 1
            tail = 4 - lbe.bit_length() if lbe else 4 - fbe.bit_length()
            desc["_len"] = desc["dword_count"] * 4 - lead - tail
            super().append(item)

    tlps = Annotating()
    run_sim(dut, _rq_collector(dut, tlps), core, host, deadline_cycles=6000)
    return out, tlps, memory[addr - base : addr - base + length]


@pytest.mark.parametrize("width", [128, 256])
def test_dma_read_reassembly_out_of_order_split(width: int) -> None:
    out, tlps, expect = _dma_read_case(width, 0x10003, 1500)
    assert out["error"] is False
    assert out["data"] == expect
    assert len(tlps) >= 3  # 1500 bytes at MRRS 512 (and 4 KiB boundaries)
    for desc, *_ in tlps:
        assert desc["_len"] <= 512
    assert not out["busy_after"]


def test_dma_read_crossing_4k() -> None:
    out, tlps, expect = _dma_read_case(256, 0x20F00, 600)
    assert out["data"] == expect and out["error"] is False
    ends = [(d["addr"] << 2) + d["dword_count"] * 4 - 1 for d, *_ in tlps]
    starts = [(d["addr"] << 2) for d, *_ in tlps]
    assert all(s // 4096 == e // 4096 for s, e in zip(starts, ends, strict=True))


@pytest.mark.parametrize("mode", ["ur", "ca", "poisoned"])
def test_dma_read_completion_error_surfaces(mode: str) -> None:
    out, _, _ = _dma_read_case(256, 0x3000, 1200, mode=mode)
    assert out["error"] is True
    assert len(out["data"]) == 1200  # the request still ends with all its beats


def test_dma_read_completion_timeout() -> None:
    out, _, _ = _dma_read_case(256, 0x3000, 100, mode="timeout", timeout_cycles=512)
    assert out["error"] is True
    assert not out["busy_after"]


# ------------------------------------------------------------------------------------------------------------
# DMA engine: writes


@pytest.mark.parametrize("width", [128, 256])
def test_dma_write_splits(width: int) -> None:
    dut = DmaEngine(width)
    addr, length = 0x40F85, 700
    rng = random.Random(3)
    payload = bytes(rng.getrandbits(8) for _ in range(length))
    tlps: list = []
    done = []

    async def core(ctx):
        ctx.set(dut.max_payload, 1)  # 256 bytes
        ctx.set(dut.max_read_req, 2)
        ctx.set(dut.wr.req_addr, addr)
        ctx.set(dut.wr.req_len, length)
        ctx.set(dut.wr.req_valid, 1)
        while True:
            _, _, ready = await ctx.tick().sample(dut.wr.req_ready)
            if ready:
                break
        ctx.set(dut.wr.req_valid, 0)
        nb = width // 8
        for i in range(0, length, nb):
            chunk = payload[i : i + nb]
            ctx.set(dut.wr.data, int.from_bytes(chunk, "little"))
            ctx.set(dut.wr.data_keep, (1 << len(chunk)) - 1)
            ctx.set(dut.wr.data_last, i + nb >= length)
            ctx.set(dut.wr.data_valid, 1)
            while True:
                _, _, ready = await ctx.tick().sample(dut.wr.data_ready)
                if ready:
                    break
            ctx.set(dut.wr.data_valid, 0)
            if rng.random() < 0.3:
                await ctx.tick()

    async def watch_done(ctx):
        while True:
            _, _, d = await ctx.tick().sample(dut.wr.done)
            if d:
                done.append(len(tlps))

    watch_done.background = True
    run_sim(dut, _rq_collector(dut, tlps, ready_prob=0.7), watch_done, core, deadline_cycles=3000)
    memory = {}
    pieces = []
    for desc, fbe, lbe, data in tlps:
        assert desc["req_type"] == ReqType.MEM_WRITE
        start = desc["addr"] << 2
        lead = (fbe & -fbe).bit_length() - 1
        tail = 4 - lbe.bit_length() if desc["dword_count"] > 1 else 4 - fbe.bit_length()
        n = desc["dword_count"] * 4 - lead - tail
        assert n <= 256, "Max_Payload_Size"
        assert (start + lead) // 4096 == (start + lead + n - 1) // 4096, "4 KiB boundary"
        pieces.append((start + lead, n))
        for k in range(n):
            memory[start + lead + k] = data[lead + k]
    assert sorted(memory) == list(range(addr, addr + length))
    assert bytes(memory[a] for a in range(addr, addr + length)) == payload
    assert done == [len(tlps)]  # exactly one done, after the last TLP
    # cut at the 4 KiB boundary first, then MPS-sized pieces ending on 64-byte lines: 123 + 256 + 256 + 65
    assert pieces == [(addr, 123), (0x41000, 256), (0x41100, 256), (0x41200, 65)]


# ------------------------------------------------------------------------------------------------------------
# DMA engine: a host model with latency, split and reordered completions, back-pressure and sequence numbers


def _be_len(desc: dict, fbe: int, lbe: int) -> tuple[int, int]:
    """(first byte address, byte count) of a memory request from its descriptor and byte enables."""
    lead = (fbe & -fbe).bit_length() - 1
    tail = 4 - lbe.bit_length() if desc["dword_count"] > 1 else 4 - fbe.bit_length()
    return (desc["addr"] << 2) + lead, desc["dword_count"] * 4 - lead - tail


class _Host:
    """Root complex + hard IP for the DMA engine alone, cycle by cycle.

    * RQ: ``tready`` high with probability ``rq_ready``; every TLP is logged with the cycle its last beat moved.
    * reads: answered after ``latency`` cycles (+ up to ``jitter`` per request, so tags overtake each other),
      in completions that end on 64-byte boundaries (PCIe Base 2.3.1.1 RCB) of 1..``max_pieces`` RCB blocks,
      per request in address order (PCIe Base 2.4.1 D5), with idle cycles between completions (``rc_gap``).
    * writes: applied to ``memory``; their sequence numbers come back on ``rq_seq_num0`` ``seq_delay`` cycles
      later (never while ``hold_seq`` is set).
    """

    def __init__(
        self,
        dut,
        *,
        latency: int = 125,
        jitter: int = 0,
        rq_ready: float = 1.0,
        rc_gap: float = 0.0,
        max_pieces: int = 4,
        seq_delay: int = 6,
        seed: int = 1,
        mem_size: int = 1 << 18,
    ) -> None:
        self.dut = dut
        self.width = dut.data_width
        self.rng = random.Random(seed)
        self.memory = bytearray(self.rng.getrandbits(8) for _ in range(mem_size))
        self.initial = bytes(self.memory)
        self.latency, self.jitter, self.rq_ready, self.rc_gap = latency, jitter, rq_ready, rc_gap
        self.max_pieces, self.seq_delay = max_pieces, seq_delay
        self.hold_seq = False
        self.tlps: list[dict] = []  # kind "R"/"W", addr, len, tag, seq, cycle
        self.pending: list = []  # heap of (cycle due, order, stream)
        self.seq_due: list = []  # (cycle due, seq)
        self.seq_reports: list = []  # (cycle, seq) as driven
        self.rc_starts: list = []  # (cycle, tag) first beat of each completion
        self.rc_beats: list = []  # cycle of every RC beat
        self._order = 0
        self.max_outstanding = 0

    def completion(self, tag: int, pos: int, n: int, remaining: int, payload: bytes | None = None) -> bytes:
        """One completion's RC stream: descriptor and the dwords holding bytes [pos, pos + n) (from memory unless
        ``payload`` is given), ``remaining`` bytes of the request still to come including these."""
        dw_start, dw_end = pos & ~3, (pos + n + 3) & ~3
        cpl = pack(
            RC_DESCRIPTOR,
            lower_addr=pos & 0xFFF,
            byte_count=remaining,
            dword_count=(dw_end - dw_start) // 4,
            tag=tag,
            request_completed=int(n == remaining),
        )
        data = bytes(self.memory[dw_start:dw_end]) if payload is None else payload[: dw_end - dw_start]
        return cpl.to_bytes(12, "little") + data

    def _schedule_read(self, now: int, tag: int, addr: int, length: int) -> None:
        t = now + self.latency + self.rng.randint(0, self.jitter)
        pos, remaining = addr, length
        while remaining:
            blocks = self.rng.randint(1, self.max_pieces)
            n = min(remaining, (pos // 64 + blocks) * 64 - pos)
            stream = self.completion(tag, pos, n, remaining)
            heapq.heappush(self.pending, (t, self._order, tag, stream))
            self._order += 1
            t += 1
            pos += n
            remaining -= n

    def rq_sink(self):
        dut, width = self.dut, self.width

        async def proc(ctx):
            cur, tuser0, now = b"", None, 0
            while True:
                ready = self.rng.random() < self.rq_ready
                ctx.set(dut.rq.tready, ready)
                _, _, valid, data, keep, last, tuser, out = await ctx.tick().sample(
                    dut.rq.tvalid, dut.rq.tdata, dut.rq.tkeep, dut.rq.tlast, dut.rq.tuser, dut.rd_outstanding
                )
                now += 1
                self.max_outstanding = max(self.max_outstanding, out)
                if not (valid and ready):
                    continue
                tuser0 = tuser if tuser0 is None else tuser0
                for d in range(width // 32):
                    if keep >> d & 1:
                        cur += ((data >> (32 * d)) & 0xFFFFFFFF).to_bytes(4, "little")
                if not last:
                    continue
                desc = unpack(RQ_DESCRIPTOR, int.from_bytes(cur[:16], "little"))
                lbo = 8 if width == 512 else 4
                fbe, lbe = tuser0 & 0xF, (tuser0 >> lbo) & 0xF
                seq = (tuser0 >> 61) & 0x3F if width == 512 else ((tuser0 >> 24) & 0xF) | (((tuser0 >> 60) & 3) << 4)
                addr, length = _be_len(desc, fbe, lbe)
                kind = "W" if desc["req_type"] == ReqType.MEM_WRITE else "R"
                self.tlps.append(
                    {"kind": kind, "addr": addr, "len": length, "tag": desc["tag"], "seq": seq, "cycle": now}
                )
                if kind == "R":
                    self._schedule_read(now, desc["tag"], addr, length)
                else:
                    lead = addr & 3
                    self.memory[addr : addr + length] = cur[16 + lead : 16 + lead + length]
                    self.seq_due.append((now + self.seq_delay, seq))
                cur, tuser0 = b"", None

        proc.background = True
        return proc

    def rc_source(self):
        dut = self.dut

        async def proc(ctx):
            now = 0
            while True:
                if self.pending and self.pending[0][0] <= now and self.rng.random() >= self.rc_gap:
                    _, _, tag, stream = heapq.heappop(self.pending)
                    self.rc_starts.append((now, tag))
                    for data, keep, last in beats_of(stream, self.width):
                        ctx.set(dut.rc.tdata, data)
                        ctx.set(dut.rc.tkeep, keep)
                        ctx.set(dut.rc.tlast, last)
                        ctx.set(dut.rc.tvalid, 1)
                        self.rc_beats.append(now)
                        await ctx.tick()
                        now += 1
                    ctx.set(dut.rc.tvalid, 0)
                else:
                    await ctx.tick()
                    now += 1

        proc.background = True
        return proc

    def seq_source(self):
        dut = self.dut

        async def proc(ctx):
            now = 0
            while True:
                ctx.set(dut.rq_seq_num_vld0, 0)
                if self.seq_due and self.seq_due[0][0] <= now and not self.hold_seq:
                    _, seq = self.seq_due.pop(0)
                    ctx.set(dut.rq_seq_num0, seq)
                    ctx.set(dut.rq_seq_num_vld0, 1)
                    self.seq_reports.append((now, seq))
                await ctx.tick()
                now += 1

        proc.background = True
        return proc

    def processes(self) -> list:
        return [self.rq_sink(), self.rc_source(), self.seq_source()]


def _reader(dut, requests: list, out: dict, *, ready_prob: float = 1.0, seed: int = 7):
    """Core side of reads: offer ``requests`` ((addr, len, after_writes), ...) back to back; collect the data."""
    rng = random.Random(seed)
    width = dut.data_width
    out.update(data=[b""] * len(requests), error=[None] * len(requests), beats=[], accepted=[])

    async def issue(ctx):
        ctx.set(dut.max_read_req, 2)  # 512 bytes
        ctx.set(dut.max_payload, 1)  # 256 bytes
        now = 0
        for addr, length, after in requests:
            ctx.set(dut.rd.req_addr, addr)
            ctx.set(dut.rd.req_len, length)
            ctx.set(dut.rd.req_after_writes, after)
            ctx.set(dut.rd.req_valid, 1)
            while True:
                _, _, ready = await ctx.tick().sample(dut.rd.req_ready)
                now += 1
                if ready:
                    out["accepted"].append(now)
                    break
        ctx.set(dut.rd.req_valid, 0)

    async def collect(ctx):
        now, i = 0, 0
        while i < len(requests):
            ready = rng.random() < ready_prob
            ctx.set(dut.rd.data_ready, ready)
            _, _, valid, data, keep, last, err = await ctx.tick().sample(
                dut.rd.data_valid, dut.rd.data, dut.rd.data_keep, dut.rd.data_last, dut.rd.error
            )
            now += 1
            if valid and ready:
                n = sum(1 for k in range(width // 8) if keep >> k & 1)
                out["data"][i] += data.to_bytes(width // 8, "little")[:n]
                out["beats"].append((now, i))
                if last:
                    out["error"][i] = bool(err)
                    i += 1
        ctx.set(dut.rd.data_ready, 0)
        for _ in range(8):
            await ctx.tick()
        out["busy_after"] = ctx.get(dut.busy)
        out["finished"] = now

    return issue, collect


def _writer(dut, requests: list, payloads: list, out: dict, *, valid_prob: float = 1.0, seed: int = 9):
    """Core side of writes: offer ``requests`` ((addr, len), ...) as fast as taken, data beats as fast as taken."""
    rng = random.Random(seed)
    nb = dut.data_width // 8
    out.update(done=[], visible=[], req_cycles=[])

    async def issue(ctx):
        now = 0
        for addr, length in requests:
            ctx.set(dut.wr.req_addr, addr)
            ctx.set(dut.wr.req_len, length)
            ctx.set(dut.wr.req_valid, 1)
            while True:
                _, _, ready = await ctx.tick().sample(dut.wr.req_ready)
                now += 1
                if ready:
                    out["req_cycles"].append(now)
                    break
        ctx.set(dut.wr.req_valid, 0)

    async def data(ctx):
        for payload in payloads:
            for i in range(0, len(payload), nb):
                chunk = payload[i : i + nb]
                while rng.random() >= valid_prob:
                    ctx.set(dut.wr.data_valid, 0)
                    await ctx.tick()
                ctx.set(dut.wr.data, int.from_bytes(chunk, "little"))
                ctx.set(dut.wr.data_keep, (1 << len(chunk)) - 1)
                ctx.set(dut.wr.data_last, i + nb >= len(payload))
                ctx.set(dut.wr.data_valid, 1)
                while True:
                    _, _, ready = await ctx.tick().sample(dut.wr.data_ready)
                    if ready:
                        break
        ctx.set(dut.wr.data_valid, 0)

    async def watch(ctx):
        now = 0
        while True:
            _, _, done, vis = await ctx.tick().sample(dut.wr.done, dut.wr.visible)
            now += 1
            if done:
                out["done"].append(now)
            if vis:
                out["visible"].append(now)

    watch.background = True
    return issue, data, watch


def _random_reads(rng: random.Random, count: int, max_len: int, mem_size: int) -> list:
    reqs = []
    for _ in range(count):
        length = rng.randint(1, max_len)
        addr = rng.randrange(0, mem_size - length)
        if rng.random() < 0.2:  # near a 4 KiB boundary
            addr = min(mem_size - length - 1, (addr | 0xFFF) - rng.randint(0, 8))
        reqs.append((addr, length, 0))
    return reqs


@pytest.mark.parametrize("width", [128, 256])
def test_dma_many_reads_in_flight_reordered_with_backpressure(width: int) -> None:
    """40 reads of 1..1500 bytes offered back to back, answered after 125 cycles (+ jitter, so tags overtake
    each other) in 64..256-byte completions, with RQ tready at 70 %, idle cycles on RC and the core's
    data_ready at 80 %: every byte right, in order, and many tags in flight at once."""
    dut = DmaEngine(width)
    host = _Host(dut, latency=125, jitter=60, rq_ready=0.7, rc_gap=0.3, seed=11)
    reqs = _random_reads(random.Random(5), 40, 1500, len(host.memory))
    out: dict = {}
    run_sim(dut, *host.processes(), *_reader(dut, reqs, out, ready_prob=0.8), deadline_cycles=12000)
    assert out.get("finished"), "not all requests completed"
    for i, (addr, length, _) in enumerate(reqs):
        assert out["data"][i] == host.initial[addr : addr + length], f"request {i}"
        assert out["error"][i] is False
    assert host.max_outstanding >= (8 if width == 128 else 12)  # the ring is 32 * width bytes: 4 KiB at 128
    assert not out["busy_after"]
    reads = [t for t in host.tlps if t["kind"] == "R"]
    assert all(t["len"] <= 512 and t["addr"] // 4096 == (t["addr"] + t["len"] - 1) // 4096 for t in reads)
    # completions really came out of issue order
    starts = [tag for _, tag in host.rc_starts]
    assert starts != sorted(starts, key=[t["tag"] for t in reads].index)


def test_dma_read_data_released_before_its_sub_request_completes() -> None:
    """One 512-byte read (one TLP, one tag) answered in eight 64-byte completions 40 cycles apart: the first
    beats reach the core long before the last completion arrives (release per completion, not per tag)."""
    dut = DmaEngine(256)
    host = _Host(dut, latency=20, max_pieces=1, seed=3)
    host.rc_gap = 0.0
    reqs = [(0x1000, 512, 0)]
    out: dict = {}

    # space the completions of the one request 40 cycles apart
    orig = host._schedule_read

    def spaced(now, tag, addr, length):
        orig(now, tag, addr, length)
        host.pending = [(t0 + 40 * k, o, tg, s) for k, (t0, o, tg, s) in enumerate(sorted(host.pending))]
        heapq.heapify(host.pending)

    host._schedule_read = spaced
    run_sim(dut, *host.processes(), *_reader(dut, reqs, out), deadline_cycles=2000)
    assert out["data"][0] == host.initial[0x1000 : 0x1000 + 512]
    assert len(host.rc_starts) == 8
    last_cpl = host.rc_starts[-1][0]
    first_beat = out["beats"][0][0]
    assert first_beat < host.rc_starts[1][0] + 8, (first_beat, host.rc_starts)
    # 14 of the 16 beats are out before the last completion has even started
    assert sum(1 for c, _ in out["beats"] if c < last_cpl) >= 14


def _read_throughput(width: int, length: int, count: int, latency: int = 125, max_pieces: int = 4) -> dict:
    dut = DmaEngine(width)
    host = _Host(dut, latency=latency, max_pieces=max_pieces, seed=2)
    reqs = [(0x100 + i * ((length + 63) // 64 * 64), length, 0) for i in range(count)]
    out: dict = {}
    run_sim(dut, *host.processes(), *_reader(dut, reqs, out), deadline_cycles=40000)
    assert out.get("finished")
    for i, (addr, n, _) in enumerate(reqs):
        assert out["data"][i] == host.initial[addr : addr + n]
    # steady state: from the first beat of request count//4 to the last beat of request 3*count//4
    first = next(c for c, i in out["beats"] if i == count // 4)
    last = max(c for c, i in out["beats"] if i == 3 * count // 4 - 1)
    reads = [t["cycle"] for t in host.tlps if t["kind"] == "R"]
    return {
        "cycles_per_request": (last - first) / (count // 2),
        "beats_per_cycle": sum(1 for c, _ in out["beats"] if first <= c <= last) / (last - first + 1),
        "rc_busy": sum(1 for c in host.rc_beats if first - 8 <= c <= last - 8) / (last - first + 1),
        "max_outstanding": host.max_outstanding,
        "issue_gaps": [b - a for a, b in zip(reads, reads[1:], strict=False)],
        "total_cycles": out["finished"],
    }


def test_dma_read_throughput_64_bytes_at_500ns() -> None:
    """64-byte reads at 125 cycles (500 ns at 250 MHz) of latency: read TLPs leave on consecutive cycles (no
    dead cycle between core requests) and the data comes out at the 2 beats a 64-byte request needs."""
    r = _read_throughput(256, 64, 96)
    print("64 B reads, 256 bits, latency 125:", {k: v for k, v in r.items() if k != "issue_gaps"})
    assert r["issue_gaps"][:31] == [1] * 31, "one read TLP per cycle until the tags run out"
    assert r["max_outstanding"] == 32
    # 32 tags per round trip (125 cycles + the engine's and the model's own ~20) bound it
    assert r["cycles_per_request"] <= 5.0


@pytest.mark.parametrize("max_pieces", [4, 8])
def test_dma_read_throughput_1500_bytes_at_500ns(max_pieces: int) -> None:
    """1500-byte reads at 125 cycles of latency: the ring (8 KiB) and tags keep the completion stream (RC)
    busy all the time, so the rate is what the completions carry (a 12-byte descriptor per 64..256 or
    64..512-byte completion), not what the engine allows."""
    r = _read_throughput(256, 1500, 24, max_pieces=max_pieces)
    print(f"1500 B reads, 256 bits, latency 125, completions <= {64 * max_pieces} B:", r | {"issue_gaps": None})
    assert r["rc_busy"] >= 0.97
    assert r["beats_per_cycle"] >= (0.75 if max_pieces == 4 else 0.85)


@pytest.mark.parametrize("width", [128, 256])
def test_dma_writes_back_to_back_split_and_visible(width: int) -> None:
    """RX-like traffic: 76-byte frames and 8-byte used writes alternating, plus random 1..1200-byte writes at
    awkward places: every byte lands, TLPs of at most MPS (128) cut at 64-byte lines and 4 KiB; done and visible
    pulse once per request in order, visible only after the sequence number of the request's last TLP came back."""
    dut = DmaEngine(width)
    host = _Host(dut, rq_ready=0.8, seq_delay=9, seed=4)
    rng = random.Random(8)
    reqs = []
    for i in range(30):
        if i % 3 == 2:
            length = rng.randint(1, 1200)
            addr = rng.randrange(0x8000, 0x30000)
            if rng.random() < 0.5:
                addr = (addr | 0xFFF) - rng.randint(0, 40)
        else:
            length = 76 if i % 3 == 0 else 8
            addr = 0x1000 + i * 128 + rng.randint(0, 3)
        reqs.append((addr, length))
    payloads = [bytes(rng.getrandbits(8) for _ in range(n)) for _, n in reqs]
    out: dict = {}
    run_sim(dut, *host.processes(), *_writer(dut, reqs, payloads, out, valid_prob=0.9), deadline_cycles=6000)
    expect = bytearray(host.initial)
    for (addr, n), p in zip(reqs, payloads, strict=True):
        expect[addr : addr + n] = p
    assert host.memory == expect
    writes = [t for t in host.tlps if t["kind"] == "W"]
    assert len(out["done"]) == len(out["visible"]) == len(reqs)
    # the last TLP of request k is the one whose cumulative byte count reaches the sum of lengths up to k
    ends, total, k = [], 0, 0
    for idx, t in enumerate(writes):
        total += t["len"]
        if k < len(reqs) and total == sum(n for _, n in reqs[: k + 1]):
            ends.append(idx)
            k += 1
    assert len(ends) == len(reqs)
    mps = 128  # max_payload left at 0
    for idx, t in enumerate(writes):
        assert t["len"] <= mps and (t["addr"] // 4096) == ((t["addr"] + t["len"] - 1) // 4096)
        if idx not in ends:  # cut at a cache line, so a request takes the fewest TLPs that keep lines whole
            assert t["len"] == min(mps - t["addr"] % 64, 4096 - t["addr"] % 4096), (t["addr"], t["len"])
        assert t["seq"] >> 5 == 1  # write TLPs carry bit 5 of the sequence number
    report_cycle = {}
    for cycle, seq in host.seq_reports:
        report_cycle.setdefault(seq, []).append(cycle)
    for k, idx in enumerate(ends):
        t = writes[idx]
        assert out["done"][k] >= t["cycle"]  # done not before the last TLP was taken by RQ
        seq_cycles = [c for c in report_cycle[t["seq"]] if c >= t["cycle"]]
        assert out["visible"][k] > seq_cycles[0], f"request {k} visible before its sequence number"
        assert out["visible"][k] > out["done"][k]


def test_dma_write_throughput_no_dead_cycles() -> None:
    """40 pairs of a 76-byte frame and an 8-byte used element with RQ always ready: after the first TLP, the
    write TLPs follow each other with no idle cycle on RQ (3 + 1 beats per pair at 256 bits)."""
    dut = DmaEngine(256)
    host = _Host(dut, seed=6)
    reqs = []
    for i in range(40):
        reqs += [(0x2000 + i * 128, 76), (0x10000 + i * 16, 8)]
    payloads = [bytes((i * 7 + k) & 0xFF for k in range(n)) for i, (_, n) in enumerate(reqs)]
    out: dict = {}
    run_sim(dut, *host.processes(), *_writer(dut, reqs, payloads, out), deadline_cycles=3000)
    assert len(out["visible"]) == len(reqs)
    cycles = [t["cycle"] for t in host.tlps]
    span = cycles[-1] - cycles[0]
    beats = sum((16 + (t["addr"] & 3) + t["len"] + 31) // 32 for t in host.tlps[1:])
    print(f"writes: {len(host.tlps)} TLPs, {beats} beats in {span} cycles ({span / 40:.2f} cycles per pair)")
    assert span == beats  # every cycle carries a beat
    assert span / 40 <= 4.0


def test_dma_visible_waits_for_sequence_numbers_and_never_hangs() -> None:
    """With the sequence-number reports held back, writes are done (taken by RQ) but never visible, at most
    31 write TLPs go out unacknowledged; released reports make them visible in order.  A report that never
    comes is assumed after seq_timeout_cycles (counted), so the engine does not hang."""
    dut = DmaEngine(256, seq_timeout_cycles=300)
    host = _Host(dut, seed=12)
    reqs = [(0x3000 + i * 64, 40) for i in range(40)]
    payloads = [bytes([i]) * 40 for i in range(40)]
    out: dict = {}
    log: dict = {}

    async def control(ctx):
        host.hold_seq = True
        for _ in range(200):
            await ctx.tick()
        log["tlps_held"] = len(host.tlps)
        log["done_held"] = len(out["done"])
        log["visible_held"] = len(out["visible"])
        host.hold_seq = False
        for _ in range(300):
            await ctx.tick()
        log["visible_after"] = len(out["visible"])
        # now drop every report: the timeout makes the rest visible
        host.seq_delay = 10**9
        for i in range(8):
            reqs2 = (0x9000 + i * 64, 16)
            ctx.set(dut.wr.req_addr, reqs2[0])
            ctx.set(dut.wr.req_len, reqs2[1])
            ctx.set(dut.wr.req_valid, 1)
            while True:
                _, _, ready = await ctx.tick().sample(dut.wr.req_ready)
                if ready:
                    break
            ctx.set(dut.wr.req_valid, 0)
            ctx.set(dut.wr.data, 0x55)
            ctx.set(dut.wr.data_keep, 0xFFFF)
            ctx.set(dut.wr.data_last, 1)
            ctx.set(dut.wr.data_valid, 1)
            while True:
                _, _, ready = await ctx.tick().sample(dut.wr.data_ready)
                if ready:
                    break
            ctx.set(dut.wr.data_valid, 0)
        for _ in range(800):
            await ctx.tick()
        log["visible_end"] = len(out["visible"])
        log["seq_timeouts"] = ctx.get(dut.wr_seq_timeouts)
        log["busy_end"] = ctx.get(dut.busy)

    issue, data, watch = _writer(dut, reqs, payloads, out)
    run_sim(dut, *host.processes(), issue, data, watch, control, deadline_cycles=2000)
    assert log["tlps_held"] == 31  # MAX_UNACKED_WRITE_TLPS
    assert log["done_held"] == 31 and log["visible_held"] == 0
    assert log["visible_after"] == 40
    assert log["visible_end"] == 48 and log["seq_timeouts"] >= 1
    assert not log["busy_end"]


@pytest.mark.parametrize("fence", [True, False])
def test_dma_read_after_writes_fence(fence: bool) -> None:
    """A 2000-byte write and a read offered in the same cycle: with ``req_after_writes`` the read TLP goes to RQ
    only after the write's last TLP; without it the arbiter lets it through first (so the check can fail)."""
    dut = DmaEngine(256)
    host = _Host(dut, latency=10, seed=13)
    wreq = [(0x5000, 2000)]
    payload = [bytes(range(256)) * 7 + bytes(208)]
    rreq = [(0x5000, 64, int(fence))]
    wout: dict = {}
    rout: dict = {}
    issue_w, data_w, watch = _writer(dut, wreq, [payload[0][:2000]], wout, valid_prob=0.5)
    issue_r, collect = _reader(dut, rreq, rout)
    run_sim(dut, *host.processes(), issue_w, data_w, watch, issue_r, collect, deadline_cycles=3000)
    kinds = [t["kind"] for t in host.tlps]
    assert kinds.count("W") == 8 and kinds.count("R") == 1
    assert wout["req_cycles"][0] == rout["accepted"][0]  # offered and taken together
    if fence:
        assert kinds == ["W"] * 8 + ["R"]
        assert rout["data"][0] == payload[0][:64]  # and the read returns what was written
    else:
        assert kinds.index("R") < 7


# ------------------------------------------------------------------------------------------------------------
# MSI-X


def test_msix_table_masking_and_handshake() -> None:
    dut = MsixBlock(3, 0x8000, 0xC000)
    log: dict = {"sent": []}

    async def reg(ctx, write: bool, addr: int, size: int, value: int = 0) -> int:
        ctx.set(dut.regs.valid, 1)
        ctx.set(dut.regs.write, write)
        ctx.set(dut.regs.addr, addr)
        ctx.set(dut.regs.size, size)
        ctx.set(dut.regs.wdata, value)
        while True:
            _, _, done, rdata = await ctx.tick().sample(dut.regs.done, dut.regs.rdata)
            if done:
                break
        ctx.set(dut.regs.valid, 0)
        await ctx.tick()
        return ctx.get(dut.regs.rdata)

    async def hard_ip(ctx):
        while True:
            _, _, fire, a, d = await ctx.tick().sample(dut.msix_int, dut.msix_address, dut.msix_data)
            if fire:
                log["sent"].append((a, d))
                await ctx.tick()
                ctx.set(dut.msix_sent, 1)
                await ctx.tick()
                ctx.set(dut.msix_sent, 0)

    hard_ip.background = True

    async def irq(ctx, vector: int) -> None:
        ctx.set(dut.irq.valid, 1)
        ctx.set(dut.irq.vector, vector)
        await ctx.tick()
        ctx.set(dut.irq.valid, 0)
        for _ in range(8):
            await ctx.tick()

    async def host(ctx):
        ctx.set(dut.msix_enable, 1)
        # reset state: every vector masked (PCIe Base 7.7.2.3)
        assert await reg(ctx, False, 0x800C, 2) == 1
        await reg(ctx, True, 0x8010, 3, 0x0000_0001_FEE0_0010)  # vector 1 address (qword)
        await reg(ctx, True, 0x8018, 2, 0x41)  # data
        assert await reg(ctx, False, 0x8010, 3) == 0x0000_0001_FEE0_0010
        assert await reg(ctx, False, 0x8014, 2) == 1
        assert await reg(ctx, False, 0x8018, 1) == 0x41
        await irq(ctx, 1)
        assert log["sent"] == []  # masked: pending only
        assert await reg(ctx, False, 0xC000, 3) == 0b010
        await reg(ctx, True, 0x801C, 2, 0)  # unmask
        for _ in range(10):
            await ctx.tick()
        assert log["sent"] == [(0x1_FEE0_0010, 0x41)]
        assert await reg(ctx, False, 0xC000, 3) == 0
        # function mask holds it pending as well
        ctx.set(dut.msix_mask, 1)
        await irq(ctx, 1)
        assert len(log["sent"]) == 1 and await reg(ctx, False, 0xC000, 3) == 0b010
        ctx.set(dut.msix_mask, 0)
        for _ in range(10):
            await ctx.tick()
        assert len(log["sent"]) == 2
        # a vector beyond the table is ignored, the PBA is read-only
        await irq(ctx, 7)
        await reg(ctx, True, 0xC000, 3, 0xFF)
        assert await reg(ctx, False, 0xC000, 3) == 0
        log["finished"] = True

    run_sim(dut, hard_ip, host, deadline_cycles=800)
    assert log.get("finished")


# ------------------------------------------------------------------------------------------------------------
# configuration-extend responder


def test_cfgext_answers_only_in_its_windows_and_drives_the_bar() -> None:
    from hdl.pcie.cfgext import ConfigExtendResponder, capability_image, pci_cfg_cap_offset

    dut = ConfigExtendResponder()
    image = capability_image()
    cap = pci_cfg_cap_offset() // 4
    log: dict = {"accesses": []}

    async def slave(ctx):
        while True:
            _, _, valid, write, addr, size, wdata = await ctx.tick().sample(
                dut.regs.valid, dut.regs.write, dut.regs.addr, dut.regs.size, dut.regs.wdata
            )
            if valid:
                log["accesses"].append((bool(write), addr, 1 << size, wdata))
                ctx.set(dut.regs.rdata, 0xA1B2C3D4E5F60718)
                ctx.set(dut.regs.done, 1)
                await ctx.tick()
                ctx.set(dut.regs.done, 0)
                await ctx.tick()

    slave.background = True

    async def read(ctx, reg: int, function: int = 0) -> int | None:
        ctx.set(dut.register_number, reg)
        ctx.set(dut.function_number, function)
        ctx.set(dut.read_received, 1)
        await ctx.tick()
        ctx.set(dut.read_received, 0)
        for _ in range(20):
            _, _, valid, data = await ctx.tick().sample(dut.read_data_valid, dut.read_data)
            if valid:
                return data
        return None

    async def write(ctx, reg: int, data: int, be: int) -> None:
        ctx.set(dut.register_number, reg)
        ctx.set(dut.function_number, 0)
        ctx.set(dut.write_data, data)
        ctx.set(dut.write_byte_enable, be)
        ctx.set(dut.write_received, 1)
        await ctx.tick()
        ctx.set(dut.write_received, 0)
        for _ in range(12):
            await ctx.tick()

    async def host(ctx):
        for reg, value in image.items():
            assert await read(ctx, reg) == value, hex(reg * 4)
        assert await read(ctx, 0x40 // 4) is None  # hard IP territory: no answer
        assert await read(ctx, 0xB0 // 4, function=1) is None  # another function
        await write(ctx, cap + 1, 0, 0x1)  # bar 0
        await write(ctx, cap + 2, 0x2014, 0xF)  # offset
        await write(ctx, cap + 3, 2, 0xF)  # length
        await write(ctx, cap + 4, 0xBEEF, 0x3)  # pci_cfg_data: a 2-byte BAR write
        assert log["accesses"] == [(True, 0x2014, 2, 0xBEEF)]
        assert await read(ctx, cap + 4) == 0x0718  # a 2-byte BAR read lands in pci_cfg_data's low bytes
        assert log["accesses"][-1][:3] == (False, 0x2014, 2)
        await write(ctx, cap + 3, 3, 0xF)  # length 3 is not an access size: nothing happens
        n = len(log["accesses"])
        await write(ctx, cap + 4, 1, 0xF)
        assert len(log["accesses"]) == n
        assert await read(ctx, cap + 3) == 3 and await read(ctx, cap + 2) == 0x2014
        log["finished"] = True

    run_sim(dut, slave, host, deadline_cycles=2000)
    assert log.get("finished")
