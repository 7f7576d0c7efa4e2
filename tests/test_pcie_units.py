"""PCIe blocks alone in the Amaranth simulator: things that are easier to provoke without a PCIe model.

* the BAR completer's split of byte enables into natural register accesses, its completions and its
  refusals (UR for non-posted, silence for posted);
* the DMA engine's read reassembly: completions for several tags answered in *reverse* order and split into
  64-byte pieces (PCIe Base 2.3.1.1 read completion boundary), realigned to the packed convention;
  a UR completion and a completion timeout each end the request with ``error`` on its last beat;
* the DMA engine's write splitting at Max_Payload_Size and 4 KiB with the data dword-aligned per TLP;
* the MSI-X block: table access, per-vector and function masking, pending bits, the sent/fail handshake.
"""

from __future__ import annotations

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
    for desc, fbe, lbe, data in tlps:
        assert desc["req_type"] == ReqType.MEM_WRITE
        start = desc["addr"] << 2
        lead = (fbe & -fbe).bit_length() - 1
        tail = 4 - lbe.bit_length() if desc["dword_count"] > 1 else 4 - fbe.bit_length()
        n = desc["dword_count"] * 4 - lead - tail
        assert n <= 256, "Max_Payload_Size"
        assert (start + lead) // 4096 == (start + lead + n - 1) // 4096, "4 KiB boundary"
        for k in range(n):
            memory[start + lead + k] = data[lead + k]
    assert sorted(memory) == list(range(addr, addr + length))
    assert bytes(memory[a] for a in range(addr, addr + length)) == payload
    assert done == [len(tlps)]  # exactly one done, after the last TLP


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
