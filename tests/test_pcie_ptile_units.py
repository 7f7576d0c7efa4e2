"""The P-tile blocks (hdl/pcie/ptile/avst.py) alone in the Amaranth simulator: what a PCIe model rarely provokes.

* RX: a completion whose payload needs an extra beat after realignment (3 descriptor dwords + payload), a
  request with payload and byte enables, and back-pressure: ``rx_st_ready`` falls early enough that the beats
  the hard IP may still send (ready latency, 683059 4.3.1) all fit, and none is lost;
* TX: an RQ write becomes a P-tile header (3-dword below 4 GiB, 4-dword above: PCIe Base 2.2.4.1) with the
  payload moved to dword 0;
* the arbiter: requests dropped while Bus Master Enable is off, nothing before every credit limit has been
  seen, posted TLPs held back when header credits run
  out and released when the limit grows (PCIe Base 2.6.1.2), and ``tx_st_valid`` only where ``tx_st_ready`` was
  high 3 cycles before (683059 4.3.2).
"""

from __future__ import annotations

import random

from amaranth.sim import Simulator

from hdl.pcie.ptile.avst import RxSplitter, TxArbiter, TxFromDescriptor
from hdl.pcie.tlp import CQ_DESCRIPTOR, RC_DESCRIPTOR, RQ_DESCRIPTOR

W = 256
ND = W // 32


def pack(layout, **fields) -> int:
    word = 0
    for name, value in fields.items():
        f = layout[name]
        word |= (value & ((1 << f.width) - 1)) << f.offset
    return word


def unpack(layout, word: int) -> dict:
    return {name: (word >> f.offset) & ((1 << f.width) - 1) for name, f in layout}


def hdr(dw0: int, dw1: int, dw2: int, dw3: int = 0) -> int:
    return dw0 << 96 | dw1 << 64 | dw2 << 32 | dw3


def run(dut, *benches, cycles: int = 2000) -> None:
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for tb in benches:
        sim.add_testbench(tb, background=getattr(tb, "background", False))
    sim.run_until(cycles * 1e-8)


def payload_beats(dwords: list[int]) -> list[tuple[int, int]]:
    """(data, empty) per beat of a P-tile payload."""
    out = []
    for i in range(0, max(len(dwords), 1), ND):
        chunk = dwords[i : i + ND]
        out.append((sum(d << (32 * k) for k, d in enumerate(chunk)), ND - len(chunk) if chunk else 0))
    return out


# ------------------------------------------------------------------------------------------------------------
# RX


def _rx_case(tlps: list[tuple[int, list[int], int]], *, cq_ready_after: int = 0):
    """Send (hdr, payload dwords, bar) TLPs on RX; collect the CQ and RC streams as dword lists per packet."""
    dut = RxSplitter(W)
    got = {"cq": [], "rc": []}

    async def source(ctx):
        await ctx.tick().until(dut.rx_ready)
        for h, payload, bar in tlps:
            beats = payload_beats(payload) if payload else [(0, 0)]
            for i, (data, empty) in enumerate(beats):
                # the hard IP may send while ready is low, for up to the ready latency (683059 4.3.1)
                ctx.set(dut.rx_valid, 1)
                ctx.set(dut.rx_sop, i == 0)
                ctx.set(dut.rx_eop, i == len(beats) - 1)
                ctx.set(dut.rx_hdr, h)
                ctx.set(dut.rx_data, data)
                ctx.set(dut.rx_empty, empty)
                ctx.set(dut.rx_bar_range, bar)
                await ctx.tick()
        ctx.set(dut.rx_valid, 0)

    async def sink(ctx):
        cur = {"cq": [], "rc": []}
        cycle = 0
        while True:
            ctx.set(dut.cq.tready, cycle >= cq_ready_after)
            ctx.set(dut.rc.tready, 1)  # the DMA engine always accepts completions
            await ctx.delay(1e-9)
            for name, s in (("cq", dut.cq), ("rc", dut.rc)):
                if ctx.get(s.tvalid) and ctx.get(s.tready):
                    data = ctx.get(s.tdata)
                    cur[name] += [(data >> (32 * k)) & 0xFFFFFFFF for k in range(ND)]
                    if name == "cq" and len(cur[name]) == ND:
                        cur[name].append(ctx.get(s.tuser))  # first beat's sideband at the end
                    if ctx.get(s.tlast):
                        got[name].append(cur[name])
                        cur[name] = []
            await ctx.tick()
            cycle += 1

    sink.background = True

    run(dut, source, sink)
    return got, dut


def test_rx_completion_needing_a_flush_beat() -> None:
    """3 descriptor dwords + 14 payload dwords = 17: a third RC beat after the last RX beat."""
    payload = [0x1000 + i for i in range(14)]
    # CplD: fmt 010 type 01010, length 14; DW1: completer 0x0100, status SC, byte count 56; DW2: req 0x0200 tag 7
    h = hdr(0b010 << 29 | 0b01010 << 24 | 14, 0x0100 << 16 | 56, 0x0200 << 16 | 7 << 8 | 0x00)
    got, _ = _rx_case([(h, payload, 0)])
    assert len(got["rc"]) == 1 and not got["cq"]
    dws = got["rc"][0]
    assert len(dws) == 3 * ND  # three beats
    desc = unpack(RC_DESCRIPTOR, dws[0] | dws[1] << 32 | dws[2] << 64)
    assert (desc["dword_count"], desc["byte_count"], desc["tag"], desc["status"]) == (14, 56, 7, 0)
    assert (desc["requester_id"], desc["completer_id"]) == (0x0200, 0x0100)
    assert dws[3 : 3 + 14] == payload


def test_rx_write_request_to_cq_with_byte_enables() -> None:
    # MWr 3DW, length 2, requester 0x0300 tag 5, last_be 0x3, first_be 0xC, address 0x1004; BAR 0
    h = hdr(0b010 << 29 | 2, 0x0300 << 16 | 5 << 8 | 0x3 << 4 | 0xC, 0x1004)
    # and a 64-bit-addressed MRd (4DW), length 1, tag 9
    h2 = hdr(0b001 << 29 | 1, 0x0300 << 16 | 9 << 8 | 0x0 << 4 | 0xF, 0x1, 0x2000)
    got, _ = _rx_case([(h, [0xAABBCCDD, 0x11223344], 0), (h2, [], 0)])
    assert len(got["cq"]) == 2 and not got["rc"]
    w, r = got["cq"]
    d = unpack(CQ_DESCRIPTOR, w[0] | w[1] << 32 | w[2] << 64 | w[3] << 96)
    assert (d["addr"] << 2, d["dword_count"], d["req_type"], d["tag"], d["requester_id"]) == (0x1004, 2, 1, 5, 0x300)
    assert w[4:6] == [0xAABBCCDD, 0x11223344]
    assert w[ND] & 0xFF == 0x3C  # tuser: first_be [3:0], last_be [7:4]
    d2 = unpack(CQ_DESCRIPTOR, r[0] | r[1] << 32 | r[2] << 64 | r[3] << 96)
    assert (d2["addr"] << 2, d2["req_type"], d2["tag"]) == (0x1_0000_2000, 0, 9)


def test_rx_backpressure_loses_nothing() -> None:
    """CQ stalled for 400 cycles: ready falls, beats sent during the ready latency still fit, all arrive."""
    tlps = [(hdr(0b010 << 29 | 1, 0x0100 << 16 | i << 8 | 0xF, 0x100 + 4 * i), [i], 0) for i in range(120)]
    dut = RxSplitter(W)
    got = []
    sent = []
    latency = 27

    async def source(ctx):
        history = []
        i = 0
        while i < len(tlps):
            history.append(ctx.get(dut.rx_ready))
            # like the hard IP: a beat may go in cycle t if ready was high at t - latency
            if len(history) > latency and history[-1 - latency]:
                h, payload, bar = tlps[i]
                ctx.set(dut.rx_valid, 1)
                ctx.set(dut.rx_sop, 1)
                ctx.set(dut.rx_eop, 1)
                ctx.set(dut.rx_hdr, h)
                ctx.set(dut.rx_data, payload[0])
                ctx.set(dut.rx_empty, ND - 1)
                sent.append(i)
                i += 1
            else:
                ctx.set(dut.rx_valid, 0)
            await ctx.tick()
        ctx.set(dut.rx_valid, 0)

    async def sink(ctx):
        cycle = 0
        while True:
            ctx.set(dut.cq.tready, cycle >= 400)
            await ctx.delay(1e-9)
            if ctx.get(dut.cq.tvalid) and ctx.get(dut.cq.tready):
                got.append(ctx.get(dut.cq.tdata) >> 128 & 0xFFFFFFFF)
            await ctx.tick()
            cycle += 1

    sink.background = True
    run(dut, source, sink, cycles=2000)
    assert sent == list(range(120))
    assert got == list(range(120))


# ------------------------------------------------------------------------------------------------------------
# TX


def _tx_rq(addr: int, dwords: list[int]) -> list[dict]:
    """Push one RQ write through TxFromDescriptor; return the P-tile beats."""
    dut = TxFromDescriptor(W, "rq")
    desc = pack(RQ_DESCRIPTOR, addr=addr >> 2, dword_count=len(dwords), req_type=1, tag=3)
    words = [desc & 0xFFFFFFFF, desc >> 32 & 0xFFFFFFFF, desc >> 64 & 0xFFFFFFFF, desc >> 96] + dwords
    beats = [words[i : i + ND] for i in range(0, len(words), ND)]
    out = []

    async def src(ctx):
        ctx.set(dut.bus, 0x12)
        ctx.set(dut.device, 0x3)
        for k, b in enumerate(beats):
            ctx.set(dut.s.tvalid, 1)
            ctx.set(dut.s.tdata, sum(d << (32 * i) for i, d in enumerate(b)))
            ctx.set(dut.s.tlast, k == len(beats) - 1)
            ctx.set(dut.s.tuser, 0xF | 0xF << 4)
            await ctx.tick().until(dut.s.tready)
        ctx.set(dut.s.tvalid, 0)

    async def sink(ctx):
        rng = random.Random(1)
        while True:
            ctx.set(dut.out.ready, rng.random() < 0.6)
            await ctx.delay(1e-9)
            if ctx.get(dut.out.valid) and ctx.get(dut.out.ready):
                out.append({k: ctx.get(getattr(dut.out, k)) for k in ("hdr", "data", "sop", "eop")})
            await ctx.tick()

    sink.background = True
    run(dut, src, sink)
    return out


def test_tx_rq_write_header_and_realignment() -> None:
    dwords = [0x5000 + i for i in range(21)]
    for addr, four_dw in ((0x1234_5670, False), (0x2_0000_0040, True)):
        beats = _tx_rq(addr, dwords)
        assert [b["sop"] for b in beats] == [1, 0, 0] and [b["eop"] for b in beats] == [0, 0, 1]
        h = beats[0]["hdr"]
        dw0, dw1, dw2, dw3 = h >> 96, h >> 64 & 0xFFFFFFFF, h >> 32 & 0xFFFFFFFF, h & 0xFFFFFFFF
        assert dw0 >> 29 == (0b011 if four_dw else 0b010) and dw0 & 0x3FF == 21 and (dw0 >> 24) & 0x1F == 0
        assert dw1 >> 16 == 0x12 << 8 | 0x3 << 3 and (dw1 >> 8) & 0xFF == 3 and dw1 & 0xFF == 0xFF
        assert (dw2 << 32 | dw3 if four_dw else dw2) == addr
        data = [(b["data"] >> (32 * k)) & 0xFFFFFFFF for b in beats for k in range(ND)]
        assert data[:21] == dwords


def test_arbiter_credits_and_ready_latency() -> None:
    dut = TxArbiter(W)
    sent = []
    violations = []
    limits = {0: 2, 1: 0, 2: 0, 4: 400, 5: 0, 6: 0}  # PH 2 credits; the rest infinite (0 at first sight)

    async def credits(ctx):
        idx = [0, 1, 2, 4, 5, 6]
        k = 0
        while True:
            ctx.set(dut.cdts_idx, idx[k % 6])
            ctx.set(dut.cdts_limit, limits[idx[k % 6]])
            k += 1
            await ctx.tick()

    credits.background = True

    async def ready(ctx):
        rng = random.Random(5)
        hist = [0, 0, 0]
        while True:
            r = rng.random() < 0.7
            ctx.set(dut.tx_ready, r)
            await ctx.delay(1e-9)
            if ctx.get(dut.tx_valid):
                if not hist[-3]:
                    violations.append(len(sent))
                if ctx.get(dut.tx_sop):
                    sent.append(ctx.get(dut.tx_hdr))
            hist.append(r)
            await ctx.tick()

    ready.background = True

    async def source(ctx):
        # with Bus Master Enable off a request is consumed and not sent (PCIe Base 7.5.1.1.3)
        ctx.set(dut.rq.valid, 1)
        ctx.set(dut.rq.sop, 1)
        ctx.set(dut.rq.eop, 1)
        ctx.set(dut.rq.hdr, hdr(0b000 << 29 | 1, 0x77 << 8 | 0xF, 0x2000))  # a read
        await ctx.tick().until(dut.rq.ready)
        ctx.set(dut.rq.valid, 0)
        await ctx.tick().repeat(20)
        assert ctx.get(dut.dropped_requests) == 1 and sent == []
        ctx.set(dut.bus_master, 1)
        # three posted single-dword writes queued on the RQ port
        for i in range(3):
            ctx.set(dut.rq.valid, 1)
            ctx.set(dut.rq.sop, 1)
            ctx.set(dut.rq.eop, 1)
            ctx.set(dut.rq.hdr, hdr(0b010 << 29 | 1, i << 8 | 0xF, 0x1000 + 4 * i))
            await ctx.tick().until(dut.rq.ready & dut.tx_valid)
        ctx.set(dut.rq.valid, 0)

    async def check(ctx):
        await ctx.tick().repeat(300)
        assert len(sent) == 2, "a third posted TLP went out without a posted header credit"
        limits[0] = 3  # the root port returns one credit
        await ctx.tick().repeat(100)
        assert len(sent) == 3

    run(dut, source, check, credits, ready, cycles=1000)
    assert [(h >> 72) & 0xFF for h in sent] == [0, 1, 2]
    assert violations == []
