"""Host-side scenarios that check the PCIe half through the transport (run with :func:`sim.runner.run_scenario`).

They use only the :class:`host.transport.Transport` API (plus ``transport.bench`` where a check needs the
model's own counters), so the same checks would run on any platform.  Scenarios named ``testcore_*`` need
the stand-in core (``core="test"``, :mod:`hdl.pcie.testcore`); the others work with the virtio core too.
Each returns a dict of what it observed; the pytest side asserts on it.
"""

from __future__ import annotations

import random

from hdl.pcie import testcore as tc
from virtio_fpga import device_map, spec


async def walk_capabilities(transport) -> list[dict]:
    """Walk the standard capability list from 0x34 (virtio spec 4.1.4: how a driver finds the caps)."""
    caps = []
    status = await transport.config_read(0x06, 2)
    if not status & spec.PCI_STATUS_CAP_LIST:
        return caps
    ptr = (await transport.config_read(spec.PCI_CAPABILITY_LIST, 1)) & 0xFC
    seen = set()
    while ptr and ptr not in seen and len(caps) < 48:
        seen.add(ptr)
        cap_id = await transport.config_read(ptr, 1)
        nxt = (await transport.config_read(ptr + 1, 1)) & 0xFC
        entry = {"offset": ptr, "id": cap_id, "next": nxt}
        if cap_id == spec.PCI_CAP_ID_VNDR:
            cap_len = await transport.config_read(ptr + 2, 1)
            raw = b""
            for k in range(0, (cap_len + 3) & ~3, 4):
                raw += (await transport.config_read(ptr + k, 4)).to_bytes(4, "little")
            entry["len"] = cap_len
            entry["raw"] = raw[:cap_len].hex()
            fields = spec.VIRTIO_PCI_CAP.unpack(raw[: spec.VIRTIO_PCI_CAP.size])
            entry.update({k: fields[k] for k in ("cfg_type", "bar", "offset", "length")})
            entry["cap_offset"] = ptr
            entry["offset"] = ptr
            entry["bar_offset"] = fields["offset"]
            if fields["cfg_type"] == spec.CfgType.NOTIFY:
                entry["notify_off_multiplier"] = int.from_bytes(raw[16:20], "little")
        caps.append(entry)
        ptr = nxt
    return caps


async def enumerate_and_walk(transport) -> dict:
    """Identity registers and the capability list, as a driver sees them."""
    ids = await transport.config_read(0, 4)
    caps = await walk_capabilities(transport)
    return {
        "vendor_id": ids & 0xFFFF,
        "device_id": ids >> 16,
        "class_code": (await transport.config_read(0x08, 4)) >> 8,
        "bar0_size": transport.bar_size(0),
        "caps": caps,
    }


async def _pci_cfg_access(transport, cap: int, bar: int, offset: int, length: int, value: int | None = None) -> int:
    """One access through VIRTIO_PCI_CAP_PCI_CFG (virtio spec 4.1.4.9): program bar/offset/length, then data."""
    await transport.config_write(cap + 4, 1, bar)
    await transport.config_write(cap + 8, 4, offset)
    await transport.config_write(cap + 12, 4, length)
    if value is None:
        return await transport.config_read(cap + 16, length) if length in (1, 2, 4) else 0
    await transport.config_write(cap + 16, length, value)
    return value


async def testcore_pci_cfg_window(transport) -> dict:
    """Reach BAR registers through the PCI-config-access capability and compare with direct BAR access."""
    caps = await walk_capabilities(transport)
    cfg = next(c["cap_offset"] for c in caps if c["id"] == spec.PCI_CAP_ID_VNDR and c["cfg_type"] == spec.CfgType.PCI)
    out = {}
    await _pci_cfg_access(transport, cfg, 0, 0x10, 4, 0x12345678)
    out["bar_after_cfg_write"] = await transport.bar_read(0, 0x10, 4)
    await transport.bar_write(0, 0x18, 8, 0x1122334455667788)
    out["cfg_read_4"] = await _pci_cfg_access(transport, cfg, 0, 0x18, 4)
    out["cfg_read_2"] = await _pci_cfg_access(transport, cfg, 0, 0x1E, 2)
    out["cfg_read_1"] = await _pci_cfg_access(transport, cfg, 0, 0x1B, 1)
    await _pci_cfg_access(transport, cfg, 0, 0x19, 1, 0xEE)
    out["bar_after_byte_write"] = await transport.bar_read(0, 0x18, 8)
    # a BAR the device does not have: no access happens, the old data stays in pci_cfg_data
    await transport.bar_write(0, 0x20, 4, 0xCAFEF00D)
    out["cfg_read_bad_bar"] = await _pci_cfg_access(transport, cfg, 3, 0x20, 4)
    out["fields_readback"] = [
        await transport.config_read(cfg + 4, 1),
        await transport.config_read(cfg + 8, 4),
        await transport.config_read(cfg + 12, 4),
    ]
    return out


async def testcore_bar_access(transport, seed: int = 7, count: int = 200) -> dict:
    """Random natural-size reads/writes of the scratch qwords, checked against a Python model."""
    rng = random.Random(seed)
    model = bytearray(tc.SCRATCH_QWORDS * 8)
    for i in range(0, len(model), 8):
        await transport.bar_write(0, i, 8, 0)
    mismatches = []
    for _ in range(count):
        size = rng.choice((1, 2, 4, 8))
        off = rng.randrange(0, len(model) // size) * size
        if rng.random() < 0.5:
            value = rng.getrandbits(8 * size)
            await transport.bar_write(0, off, size, value)
            model[off : off + size] = value.to_bytes(size, "little")
        else:
            got = await transport.bar_read(0, off, size)
            want = int.from_bytes(model[off : off + size], "little")
            if got != want:
                mismatches.append((off, size, hex(got), hex(want)))
    # the whole array, as qwords
    for i in range(0, len(model), 8):
        got = await transport.bar_read(0, i, 8)
        if got != int.from_bytes(model[i : i + 8], "little"):
            mismatches.append((i, 8, hex(got), model[i : i + 8].hex()))
    unmapped = await transport.bar_read(0, 0x7F00, 4)
    return {"mismatches": mismatches, "unmapped": unmapped}


async def testcore_unsupported(transport) -> dict:
    """Requests the completer must refuse: longer than 8 bytes (UR for reads, dropped writes)."""
    ep = transport.ep
    out: dict = {}
    await transport.bar_write(0, 0x40, 8, 0x0123456789ABCDEF)
    try:
        data = await ep.bar_window[0].read(0x40, 16)  # 16-byte read: Unsupported Request
        out["long_read"] = bytes(data).hex()
    except Exception as exc:  # cocotbext raises on a UR completion
        out["long_read_error"] = type(exc).__name__ + ": " + str(exc)
    await ep.bar_window[0].write(0x40, bytes(range(16)))  # posted, dropped
    out["after_long_write"] = await transport.bar_read(0, 0x40, 8)
    out["still_alive"] = await transport.bar_read(0, tc.REG_INFO, 4)
    return out


async def _copy(transport, src: int, dst: int, length: int, irq: int | None = None, timeout_us: float = 200) -> int:
    await transport.bar_write(0, tc.REG_SRC, 8, src)
    await transport.bar_write(0, tc.REG_DST, 8, dst)
    await transport.bar_write(0, tc.REG_LEN, 4, length)
    ctrl = 1 | ((2 | (irq << 8)) if irq is not None else 0)
    await transport.bar_write(0, tc.REG_CTRL, 4, ctrl)
    t_end = transport.now() + timeout_us * 1e-6
    while True:
        status = await transport.bar_read(0, tc.REG_STATUS, 4)
        if not status & 1:
            return status
        if transport.now() > t_end:
            raise TimeoutError(f"copy {src:#x}->{dst:#x} len {length} did not finish")
        await transport.sleep(0.2e-6)


async def testcore_dma_copy(transport, cases: list[list[int]] | None = None, seed: int = 3) -> dict:
    """Copies host->device->host through the DMA engine at assorted alignments and lengths."""
    rng = random.Random(seed)
    if cases is None:
        cases = [
            [0, 0, 1],
            [1, 3, 5],
            [3, 0, 64],
            [0, 7, 100],
            [5, 2, 513],
            [4095 - 100, 11, 300],
            [2, 4094, 4100],
            [0, 0, 4096],
            [17, 33, 9000],
        ]
    results = []
    log = transport.bench.counters.requests
    dut = transport.bench.dut
    if hasattr(transport.bench, "max_sizes"):  # the P-tile bench: the values in force, as the hard IP reports them
        mps, mrrs = transport.bench.max_sizes()
    else:
        mps = 128 << int(dut.cfg_max_payload.value)
        mrrs = 128 << int(dut.cfg_max_read_req.value)
    for src_off, dst_off, length in cases:
        src = transport.alloc_dma(src_off + length, align=4096)
        dst = transport.alloc_dma(dst_off + length, align=4096)
        payload = bytes(rng.getrandbits(8) for _ in range(length))
        src.write(src_off, payload)
        first = len(log)
        status = await _copy(transport, src.iova + src_off, dst.iova + dst_off, length)
        got = dst.read(dst_off, length)
        tlps = log[first:]
        results.append(
            {
                "src_off": src_off,
                "dst_off": dst_off,
                "len": length,
                "ok": got == payload,
                "error_bit": bool(status & 2),
                "first_bad": next((i for i in range(length) if got[i] != payload[i]), None),
                "untouched_prefix": dst.read(0, dst_off) == bytes(dst_off),
                "reads": check_requests([t for t in tlps if t[0] == "R"], src.iova + src_off, length, mrrs),
                "writes": check_requests([t for t in tlps if t[0] == "W"], dst.iova + dst_off, length, mps),
            }
        )
    return {"cases": results, "mps": mps, "mrrs": mrrs}


def check_requests(tlps: list, addr: int, length: int, max_size: int) -> dict:
    """Do the TLPs cover [addr, addr+length) exactly, in order, none over ``max_size`` or across 4 KiB?

    PCIe Base 2.2.7: a request's length is limited by Max_Payload_Size (writes) or Max_Read_Request_Size
    (reads) and it must not cross a 4 KiB boundary.
    """
    problems = []
    pos = addr
    for _, a, n in tlps:
        if a != pos:
            problems.append(f"request at {a:#x}, expected {pos:#x}")
        if n > max_size:
            problems.append(f"request of {n} bytes > {max_size}")
        if n and (a // 4096) != ((a + n - 1) // 4096):
            problems.append(f"request {a:#x}+{n} crosses 4 KiB")
        pos = a + n
    if pos != addr + length:
        problems.append(f"requests end at {pos:#x}, expected {addr + length:#x}")
    return {"count": len(tlps), "problems": problems}


async def testcore_dma_stress(transport, copies: int = 40, max_len: int = 3000, seed: int = 11) -> dict:
    """Many random copies (optionally under back-pressure, chosen by the runner)."""
    cases = []
    rng = random.Random(seed)
    for _ in range(copies):
        cases.append([rng.randrange(0, 64), rng.randrange(0, 64), rng.randrange(1, max_len)])
    return await testcore_dma_copy(transport, cases, seed=seed)


async def _batch(transport, src: int, dst: int, length: int, count: int, stride: int, *, fence: bool, irq: int | None):
    await transport.bar_write(0, tc.REG_SRC, 8, src)
    await transport.bar_write(0, tc.REG_DST, 8, dst)
    await transport.bar_write(0, tc.REG_LEN, 4, length)
    await transport.bar_write(0, tc.REG_COUNT, 8, count | (stride << 32))
    ctrl = 1 | 4 | (8 if fence else 0) | ((2 | (irq << 8)) if irq is not None else 0)
    await transport.bar_write(0, tc.REG_CTRL, 4, ctrl)
    t_end = transport.now() + 2e-3
    while True:
        status = await transport.bar_read(0, tc.REG_STATUS, 4)
        if not status & 1:
            return status
        if transport.now() > t_end:
            raise TimeoutError(f"batch of {count} x {length} bytes did not finish")
        await transport.sleep(0.5e-6)


async def testcore_dma_batch(
    transport, count: int = 48, length: int = 64, stride: int = 128, fence: bool = False, chain: bool = False
) -> dict:
    """``count`` copies with every read and write request issued as soon as the DMA engine takes it.

    ``chain``: copy i reads the region copy i-1 writes (with ``fence`` each read waits for the earlier writes,
    PCIe Base table 2-40 B2a keeps it behind them on the link), so every region must end equal to the first.
    The copy engine raises MSI-X vector 0 once its last write is ``visible`` (sequence number back).
    """
    rng = random.Random(count * 7 + length)
    await transport.enable_msix(1)
    log = transport.bench.counters.requests
    first = len(log)
    if chain:
        buf = transport.alloc_dma((count + 1) * stride, align=4096)
        payload = bytes(rng.getrandbits(8) for _ in range(length))
        buf.write(0, payload)
        status = await _batch(transport, buf.iova, buf.iova + stride, length, count, stride, fence=fence, irq=0)
        regions = [buf.read(i * stride, length) for i in range(1, count + 1)]
        ok = [r == payload for r in regions]
    else:
        src = transport.alloc_dma(count * stride, align=4096)
        dst = transport.alloc_dma(count * stride, align=4096)
        payloads = [bytes(rng.getrandbits(8) for _ in range(length)) for _ in range(count)]
        for i, p in enumerate(payloads):
            src.write(i * stride, p)
        status = await _batch(transport, src.iova, dst.iova, length, count, stride, fence=fence, irq=0)
        ok = [dst.read(i * stride, length) == p for i, p in enumerate(payloads)]
    irq = await transport.wait_irq(0, 20e-6)
    cycles = await transport.bar_read(0, tc.REG_CYCLES, 4)
    max_reads = await transport.bar_read(0, tc.REG_MAX_READS, 4)
    tlps = log[first:]
    return {
        "ok": ok,
        "error_bit": bool(status & 2),
        "irq": irq,
        "cycles": cycles,
        "cycles_per_copy": cycles / count,
        "max_reads_outstanding": max_reads,
        "read_tlps": sum(1 for t in tlps if t[0] == "R"),
        "write_tlps": sum(1 for t in tlps if t[0] == "W"),
    }


async def testcore_msix(transport, mask_settle_us: float = 0.0) -> dict:
    """MSI-X delivery, per-vector masking with the pending bit, function masking.

    ``mask_settle_us``: time between setting the Function Mask and requesting the interrupt, for hard IPs that
    report Message Control to user logic with a delay (the P-tile's time-multiplexed configuration output bus).
    """
    out: dict = {}
    n = await transport.enable_msix(device_map.NUM_MSIX_VECTORS)
    out["granted"] = n
    fired = []
    for v in range(n):
        await transport.bar_write(0, tc.REG_IRQ, 4, v)
        fired.append(await transport.wait_irq(v, 20e-6))
    out["fired"] = fired
    out["counts"] = [transport.irq_count(v) for v in range(n)]
    # no spurious interrupt
    out["spurious"] = await transport.wait_irq(0, 2e-6)

    # per-vector mask: request -> pending, no message; unmask -> message, pending clear (PCIe Base 6.1.4.5)
    table = device_map.MSIX_TABLE_OFFSET
    await transport.bar_write(0, table + 16 * 1 + 12, 4, 1)
    await transport.bar_write(0, tc.REG_IRQ, 4, 1)
    out["masked_fired"] = await transport.wait_irq(1, 3e-6)
    out["pba_while_masked"] = await transport.bar_read(0, device_map.MSIX_PBA_OFFSET, 8)
    await transport.bar_write(0, table + 16 * 1 + 12, 4, 0)
    out["unmasked_fired"] = await transport.wait_irq(1, 20e-6)
    out["pba_after"] = await transport.bar_read(0, device_map.MSIX_PBA_OFFSET, 8)

    # function mask in the MSI-X capability's Message Control (bit 14)
    caps = await walk_capabilities(transport)
    msix_cap = next(c["offset"] for c in caps if c["id"] == spec.PCI_CAP_ID_MSIX)
    ctrl = await transport.config_read(msix_cap + 2, 2)
    await transport.config_write(msix_cap + 2, 2, ctrl | (1 << 14))
    if mask_settle_us:
        await transport.sleep(mask_settle_us * 1e-6)
    await transport.bar_write(0, tc.REG_IRQ, 4, 2)
    out["function_masked_fired"] = await transport.wait_irq(2, 3e-6)
    await transport.config_write(msix_cap + 2, 2, ctrl & ~(1 << 14))
    out["function_unmasked_fired"] = await transport.wait_irq(2, 20e-6)

    # the table reads back what the host programmed (dword and qword reads)
    out["table_entry0"] = [await transport.bar_read(0, table + k, 4) for k in (0, 4, 8, 12)]
    out["table_entry0_q"] = await transport.bar_read(0, table, 8)
    # an interrupt requested when the copy finishes
    src = transport.alloc_dma(256)
    dst = transport.alloc_dma(256)
    await _copy(transport, src.iova, dst.iova, 256, irq=0)
    out["copy_irq"] = await transport.wait_irq(0, 20e-6)
    return out


async def testcore_dma_errors(transport) -> dict:
    """Completion errors through the real model: a read of unmapped memory gets an Unsupported Request
    completion from the RootComplex; with bus mastering off the hard IP drops the request, so only the
    completion timeout ends it.  Both must end the request with ``error``, and the engine must keep working."""
    out: dict = {}
    dst = transport.alloc_dma(512)
    src = transport.alloc_dma(512)
    status = await _copy(transport, 0x7_0000_0000, dst.iova, 300)  # nothing is mapped there
    out["unmapped_error_bit"] = bool(status & 2)
    src.write(0, bytes(range(256)) * 2)
    status = await _copy(transport, src.iova, dst.iova, 512)
    out["after_unmapped_ok"] = dst.read(0, 512) == bytes(range(256)) * 2 and not status & 2

    # bus mastering off: the model drops requests (PCIe Base 7.5.1.1 Bus Master Enable)
    await transport.ep.set_master(False)
    dst2 = transport.alloc_dma(64)
    t0 = transport.now()
    status = await _copy(transport, src.iova, dst2.iova, 64, timeout_us=2000)
    out["timeout_error_bit"] = bool(status & 2)
    out["timeout_us"] = (transport.now() - t0) * 1e6
    out["dst_untouched"] = dst2.read(0, 64) == bytes(64)
    await transport.ep.set_master(True)
    status = await _copy(transport, src.iova + 3, dst.iova + 1, 200)
    out["after_timeout_ok"] = dst.read(1, 200) == (bytes(range(256)) * 2)[3:203] and not status & 2
    return out


async def pci_cfg_probe(transport) -> dict:
    """Read virtio common-config registers through VIRTIO_PCI_CAP_PCI_CFG and directly; they must agree."""
    caps = await walk_capabilities(transport)
    cfg = next(c["cap_offset"] for c in caps if c["id"] == spec.PCI_CAP_ID_VNDR and c["cfg_type"] == spec.CfgType.PCI)
    common = device_map.COMMON_CFG_OFFSET
    num_queues = spec.COMMON_CFG.offset_of("num_queues")
    feature = spec.COMMON_CFG.offset_of("device_feature")
    select = spec.COMMON_CFG.offset_of("device_feature_select")
    out = {
        "num_queues_cfg": await _pci_cfg_access(transport, cfg, 0, common + num_queues, 2),
        "num_queues_bar": await transport.bar_read(0, common + num_queues, 2),
    }
    await _pci_cfg_access(transport, cfg, 0, common + select, 4, 1)  # select the high feature word via config
    out["feature_hi_bar"] = await transport.bar_read(0, common + feature, 4)
    out["feature_hi_cfg"] = await _pci_cfg_access(transport, cfg, 0, common + feature, 4)
    return out


async def stall(transport, seconds: float = 1.0) -> dict:
    """Wait a long time (simulated): for checking that the per-scenario time limit ends a hung run."""
    await transport.sleep(seconds)
    return {}
