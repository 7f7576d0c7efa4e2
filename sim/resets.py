"""Resets under full-speed traffic, at random times, on the RTL endpoint (issue 12 part 4).

:func:`resets_under_traffic` runs loopback traffic with both rings kept full by a polling driver and, between
bursts, resets the device at a random cycle offset (seeded) while the engine is busy with a full ring:

* ``device``: device reset, device_status = 0 (virtio spec 2.4, 4.1.4.3.1): the driver polls until it reads
  back 0 (2.4.2), then brings the device up again from scratch (3.1.1);
* ``queue``: queue reset of the RX or the TX queue (VIRTIO_F_RING_RESET, 2.6.1, 4.1.4.3.2): the device presents
  1 in queue_reset while the reset is ongoing and 0 when it is done; the driver then re-programs and re-enables
  the queue while the other queue keeps running;
* ``flr``: PCIe Function Level Reset (PCIe Base 6.6.2): the host sets Initiate Function Level Reset in Device
  Control, waits until the function is back (a real host waits 100 ms; here the model says when the hard IP
  left FLR, and the run requires that to happen within ``flr_bound_cycles``), restores the configuration
  header as Linux's ``pci_restore_state`` does (BARs, Command, Device Control) and re-initialises the driver;
* ``mixed``: each reset picks one of the above.

What is judged, from the PCIe buses rather than from the DUT's own state (:class:`QuiesceWatch`):

* **quiesce**: no request of the reset's scope on RQ after the reset read back 0 (the cycle the completion that
  carried the 0 left the DUT on CC, i.e. after the register was sampled) until the driver's next write that may
  legitimately start DMA (queue_enable).  Scope: every request for device reset and FLR, the queue's ring,
  event areas and buffers for a queue reset.  For FLR the window opens at the cycle the gateware pulsed
  ``cfg_flr_done``;
* **no stale completion consumed**: every frame received after a reset must be byte for byte one that was sent
  and in order (frames carry sequence numbers; frames in flight at a reset may be lost, not altered), and a
  stale read completion would show up as altered frame data or a malformed descriptor (DEVICE_NEEDS_RESET);
* **works again**: after every reset, ``frames_between`` more frames must complete before the next one, and the
  run ends with a final burst; a stall of ``stall_us`` without progress fails the run; DEVICE_NEEDS_RESET
  must never be set.
"""

from __future__ import annotations

import random
from collections import deque
from typing import Any

from host.demo import make_frame
from host.driver import VirtioError
from host.net import VirtioNetDriver
from host.virtqueue import VirtqueueBroken, VirtqueueFull
from virtio_fpga import spec
from virtio_fpga.spec import Feature

KINDS = ("device", "queue", "flr")
#: user_clk period (250 MHz)
CYCLE_S = 4e-9
#: PCI Express capability ID and its Device Control register (PCIe Base 7.5.3.4), bit 15 Initiate FLR
PCIE_CAP_ID = 0x10
DEVCTL = 0x08
DEVCTL_INITIATE_FLR = 1 << 15


class QuiesceWatch:
    """Every RQ request and every CC completion of the bench, with the cycle they passed; reset windows.

    ``open(name, start, ranges)`` declares that no request of the scope (``ranges``: list of (lo, hi) byte
    ranges, ``None`` for all) may appear on RQ at a cycle after ``start``; requests already seen since then are
    judged at once (the host learns that a reset read back 0 only after the fact), later ones as they come,
    until ``close``.
    """

    def __init__(self, bench, history: int = 8192) -> None:
        self.bench = bench
        self.recent: deque = deque(maxlen=history)  # (cycle, kind, addr, nbytes)
        self.cc_cycles: deque = deque(maxlen=256)
        self.violations: list[str] = []
        self.windows: dict[str, tuple[int, list | None]] = {}
        self.requests = 0
        #: requests the DUT put on RQ while Bus Master Enable was clear (the hard IP drops them: FLR under load)
        self.without_bus_master = 0
        self.checked_windows = 0
        fn = bench.dev.functions[0] if getattr(bench.dev, "functions", None) else None
        fn = fn if hasattr(fn, "bus_master_enable") else None
        original = bench._count_request

        def count_request(kind: str, addr: int, nbytes: int, tag: int | None = None) -> None:
            original(kind, addr, nbytes, tag)
            rec = (bench.counters.cycles, kind, addr, nbytes)
            self.requests += 1
            if fn is not None and not fn.bus_master_enable:
                self.without_bus_master += 1
            self.recent.append(rec)
            for name in list(self.windows):
                self._judge(name, rec)

        bench._count_request = count_request
        sink = getattr(bench.dev, "cc_sink", None)
        if sink is not None:  # UltraScale+: the completer completion stream itself
            recv = sink.recv

            async def cc_recv(*args, **kwargs):
                frame = await recv(*args, **kwargs)
                self.cc_cycles.append(bench.counters.cycles)
                return frame

            sink.recv = cc_recv
        else:  # other hard IP models (P-tile): completions as the device puts them on the link, a little later
            from cocotbext.pcie.core.tlp import Tlp, TlpType

            port = bench.dev.upstream_port
            handle_tx = port.handle_tx
            completions = (TlpType.CPL, TlpType.CPL_DATA)

            async def tx(pkt) -> None:
                if isinstance(pkt, Tlp) and pkt.fmt_type in completions:
                    self.cc_cycles.append(bench.counters.cycles)
                await handle_tx(pkt)

            port.handle_tx = tx

    def cycles(self) -> int:
        return self.bench.counters.cycles

    def last_completion(self) -> int:
        """Cycle of the last CC completion the DUT sent (the answer to the register read that just returned)."""
        return self.cc_cycles[-1] if self.cc_cycles else 0

    def _judge(self, name: str, rec: tuple) -> None:
        start, ranges = self.windows[name]
        cycle, kind, addr, nbytes = rec
        if cycle <= start:
            return
        if ranges is None or any(lo < hi and addr < hi and lo < addr + nbytes for lo, hi in ranges):
            what = "read" if kind == "R" else "write"
            self.violations.append(
                f"{name}: DMA {what} of {nbytes} bytes at {addr:#x} at cycle {cycle}, "
                f"{cycle - start} cycles after the reset read back 0 (cycle {start})"
            )

    def open(self, name: str, start: int, ranges: list | None) -> None:
        self.windows[name] = (start, ranges)
        self.checked_windows += 1
        for rec in self.recent:
            self._judge(name, rec)

    def close(self, name: str) -> None:
        self.windows.pop(name, None)

    def close_all(self) -> None:
        self.windows.clear()


def _instrument(dev, watch: QuiesceWatch, log: dict) -> None:
    """Record, per register, the cycle of the CC completion of the last read and close windows on enabling
    writes (queue_enable: the first write after which the device may DMA again)."""
    read_common, write_common = dev.read_common, dev.write_common

    async def read(name: str) -> int:
        value = await read_common(name)
        log[name] = (value, watch.last_completion())
        return value

    async def write(name: str, value: int) -> None:
        if name == "queue_enable" and value:
            watch.close_all()
        await write_common(name, value)

    dev.read_common, dev.write_common = read, write


class _Traffic:
    """Loopback traffic with both rings kept full; frames carry sequence numbers and are checked on return."""

    def __init__(self, transport, rng: random.Random, frame_bytes: int, batch: int, poll_ns: float, stall_us: float):
        self.transport = transport
        self.rng = rng
        self.frame_bytes = frame_bytes
        self.batch = batch
        self.poll_ns = poll_ns
        self.stall_us = stall_us
        self.drv: VirtioNetDriver | None = None
        self.sent: dict[int, bytes] = {}  # seq -> frame, until it came back or was overtaken
        self.next_seq = 0
        self.last_seq = -1
        self.received = 0
        self.lost = 0
        self.bad = 0
        self.first_bad: dict | None = None

    def _check(self, frame: bytes) -> None:
        seq = int.from_bytes(frame[14:18], "big") if len(frame) >= 18 else -1
        expected = self.sent.get(seq)
        if expected is None or frame != expected or seq <= self.last_seq:
            self.bad += 1
            if self.first_bad is None:
                self.first_bad = {"after_seq": self.last_seq, "seq": seq, "len": len(frame), "head": frame[:24].hex()}
            return
        for s in range(self.last_seq + 1, seq):  # overtaken: lost in a reset
            self.sent.pop(s, None)
            self.lost += 1
        self.sent.pop(seq, None)
        self.last_seq = seq
        self.received += 1

    async def run(self, *, frames: int | None = None, cycles: int | None = None) -> None:
        """Poll: reclaim TX, post TX in batches, harvest RX, refill; until ``frames`` more frames came back or
        ``cycles`` passed.  Raises ``VirtioError`` on a stall."""
        drv = self.drv
        assert drv is not None and drv.txq is not None and drv.rxq is not None
        txq, rxq = drv.txq, drv.rxq
        t = self.transport
        goal = self.received + frames if frames is not None else None
        end = t.now() + cycles * CYCLE_S if cycles is not None else None
        last_progress = t.now()
        while True:
            if goal is not None and self.received >= goal:
                return
            if end is not None and t.now() >= end:
                return
            progressed = drv.reclaim_tx() > 0
            room = txq.num_free
            if room >= self.batch:
                for i in range(room):
                    seq = self.next_seq
                    self.next_seq += 1
                    frame = make_frame(seq, self.frame_bytes, drv.mac, self.rng)
                    self.sent[seq] = frame
                    await drv.send(frame, kick=(i == room - 1))
                progressed = True
            used = rxq.get_used()
            for u in used:
                self._check(drv.take_rx(u))
            if used:
                progressed = True
            if rxq.num_free >= self.batch:
                drv.refill_rx()
                await rxq.kick()
            if progressed:
                last_progress = t.now()
            elif t.now() - last_progress > self.stall_us * 1e-6:
                raise VirtioError(f"no progress for {self.stall_us:g} us (received {self.received})")
            await t.sleep(self.poll_ns * 1e-9)


async def _find_pcie_cap(transport) -> int:
    pos = await transport.config_read(0x34, 1) & 0xFC
    for _ in range(48):
        if pos == 0:
            break
        if await transport.config_read(pos, 1) == PCIE_CAP_ID:
            return pos
        pos = await transport.config_read(pos + 1, 1) & 0xFC
    raise VirtioError("no PCI Express capability")


async def resets_under_traffic(
    transport,
    *,
    kind: str = "device",
    resets: int = 8,
    seed: int = 1,
    frame_bytes: int = 64,
    queue_size: int = 32,
    batch: int = 8,
    frames_between: tuple[int, int] = (4, 24),
    max_delay_cycles: int = 600,
    final_frames: int = 32,
    poll_ns: float = 64.0,
    stall_us: float = 300.0,
    flr_bound_cycles: int = 400_000,
) -> dict[str, Any]:
    """Bring the device up, then ``resets`` times: traffic, a random delay with the rings full, a reset of
    ``kind`` (one of :data:`KINDS` or ``"mixed"``), recovery.  Returns counts and ``errors`` (empty: all good)."""
    if kind not in (*KINDS, "mixed"):
        raise ValueError(f"kind {kind!r}: choose from {', '.join((*KINDS, 'mixed'))}")
    bench = transport.bench
    rng = random.Random(seed)
    watch = QuiesceWatch(bench)
    regs: dict[str, tuple[int, int]] = {}
    traffic = _Traffic(transport, random.Random(seed + 1), frame_bytes, batch, poll_ns, stall_us)
    result: dict[str, Any] = {"kind": kind, "seed": seed, "errors": [], "ok": False}
    done = {k: 0 for k in KINDS}
    queue_resets = {"rx": 0, "tx": 0}
    reset_cycles: dict[str, list[int]] = {k: [] for k in KINDS}  # write of the reset -> reads back 0 / flr done
    delays: list[int] = []
    rx_buffer_size = spec.NET_HDR.size + max(frame_bytes, 64) + 64  # small buffers: thousands of resets

    async def bring_up() -> VirtioNetDriver:
        drv = VirtioNetDriver(transport, queue_size=queue_size, rx_buffer_size=rx_buffer_size)
        await drv.dev.probe()
        _instrument(drv.dev, watch, regs)
        probe = drv.dev.probe

        async def no_probe() -> None:  # probed above (the capability walk does not change across resets)
            return None

        drv.dev.probe = no_probe
        await drv.start()
        drv.dev.probe = probe
        if not drv.dev.negotiated(Feature.RING_RESET):
            raise VirtioError("VIRTIO_F_RING_RESET was not negotiated")
        return drv

    def release(drv: VirtioNetDriver) -> None:
        """Forget a driver whose device was reset: free what it held (the device no longer owns any of it)."""
        for vq in (drv.rxq, drv.txq):
            if vq is not None:
                vq.close()
        for buf in list(drv._rx_buffers.values()) + drv._tx_buffers + drv._tx_free:
            transport.free_dma(buf)
        drv._rx_buffers.clear()
        drv._tx_buffers.clear()
        drv._tx_free.clear()

    async def device_reset(drv: VirtioNetDriver) -> VirtioNetDriver:
        t0 = watch.cycles()
        dev = drv.dev
        await dev.write_common("device_status", 0)
        deadline = transport.now() + 1e-3
        while await dev.get_status() != 0:
            if transport.now() > deadline:
                raise VirtioError("device reset did not complete within 1 ms")
            await transport.sleep(0.25e-6)
        zero_at = regs["device_status"][1]
        watch.open("device reset", zero_at, None)
        reset_cycles["device"].append(zero_at - t0)
        release(drv)
        return await bring_up()  # bring-up's first queue_enable closes the window

    async def queue_reset(drv: VirtioNetDriver) -> None:
        which = rng.choice(("rx", "tx"))
        vq = drv.rxq if which == "rx" else drv.txq
        assert vq is not None
        ranges = [(vq.ring.iova, vq.ring.iova + vq.ring.size)]
        ranges += [(a.iova, a.iova + a.size) for a in (vq.driver_area, vq.device_area)]
        bufs = list(drv._rx_buffers.values()) if which == "rx" else list(drv._tx_buffers)
        ranges += [(b.iova, b.iova + b.size) for b in bufs]
        dev = drv.dev
        t0 = watch.cycles()
        await dev.write_common("queue_select", vq.index)
        await dev.write_common("queue_reset", 1)
        deadline = transport.now() + 1e-3
        while True:
            value = await dev.read_common("queue_reset")
            if value == 0:
                zero_at = regs["queue_reset"][1]
                break
            if value != 1:
                raise VirtioError(f"queue_reset read {value}")
            if transport.now() > deadline:
                raise VirtioError(f"{which} queue reset did not complete within 1 ms")
            await transport.sleep(0.25e-6)
        if await dev.read_common("queue_enable") != 0:
            raise VirtioError("queue_enable is not 0 after the queue reset (4.1.4.3.2)")
        watch.open(f"{which} queue reset", zero_at, ranges)
        reset_cycles["queue"].append(zero_at - t0)
        queue_resets[which] += 1
        await drv.reset_queue(vq)  # reads 0 at once, re-programs, re-enables (closing the window), refills

    async def flr(drv: VirtioNetDriver, pcie: int) -> VirtioNetDriver:
        dev_model = bench.dev
        header = {off: await transport.config_read(off, 4) for off in (0x04, 0x10, 0x14)}
        devctl = await transport.config_read(pcie + DEVCTL, 2)
        t0 = watch.cycles()
        await transport.config_write(pcie + DEVCTL, 2, devctl | DEVCTL_INITIATE_FLR)
        # A real host waits 100 ms (PCIe Base 6.6.2); here: until the hard IP model left FLR, bounded.
        while dev_model.flr_in_process(0):
            if watch.cycles() - t0 > flr_bound_cycles:
                raise VirtioError(f"FLR not done within {flr_bound_cycles} cycles")
            await transport.sleep(1e-6)
        if not flr_done_at:
            raise VirtioError("the hard IP left FLR without a cfg_flr_done pulse")
        done_at = flr_done_at[-1]
        watch.open("FLR", done_at, None)
        reset_cycles["flr"].append(done_at - t0)
        # pci_restore_state: BARs, then Device Control, then Command (memory space, bus master) last
        for off in (0x10, 0x14):
            await transport.config_write(off, 4, header[off])
        await transport.config_write(pcie + DEVCTL, 2, devctl)
        await transport.config_write(0x04, 2, header[0x04] & 0xFFFF)
        if await transport.config_read(0x10, 4) != header[0x10]:
            raise VirtioError("BAR 0 did not take the restored address")
        release(drv)
        await transport.close()  # the MSI-X table and enable were reset: allocate the vectors again
        return await bring_up()

    flr_done_at: list[int] = []  # cycles at which the model saw cfg_flr_done
    monitor = getattr(bench, "dma_monitor", None)  # sim/dma_monitor.py: judges the link side as well

    def flr_done() -> None:
        flr_done_at.append(watch.cycles())
        if monitor is not None:  # the monitor cannot see an FLR in the registers: tell it
            monitor.note_function_reset()

    if hasattr(bench.dev, "flr_done_callbacks"):
        bench.dev.flr_done_callbacks.append(flr_done)
    try:
        drv = await bring_up()
        traffic.drv = drv
        pcie = await _find_pcie_cap(transport) if kind in ("flr", "mixed") else 0
        for i in range(resets):
            await traffic.run(frames=rng.randint(*frames_between))
            delay = rng.randrange(max_delay_cycles)
            delays.append(delay)
            await traffic.run(cycles=delay)
            k = rng.choice(KINDS) if kind == "mixed" else kind
            if k == "device":
                drv = await device_reset(drv)
            elif k == "queue":
                await queue_reset(drv)
            else:
                drv = await flr(drv, pcie)
            watch.close_all()
            traffic.drv = drv
            done[k] += 1
            status = await drv.dev.get_status()
            if status & spec.Status.DEVICE_NEEDS_RESET:
                raise VirtioError(f"DEVICE_NEEDS_RESET after reset {i} ({k})")
        await traffic.run(frames=final_frames)
        status = await drv.dev.get_status()
        if status & spec.Status.DEVICE_NEEDS_RESET:
            result["errors"].append("device set DEVICE_NEEDS_RESET")
    except (VirtioError, VirtqueueBroken, VirtqueueFull) as exc:
        result["errors"].append(f"{type(exc).__name__} after {sum(done.values())} resets: {exc}")
    if watch.violations:
        n = len(watch.violations)
        result["errors"].append(f"{n} DMA requests after a reset read back 0: {watch.violations[0]}")
    if traffic.bad:
        result["errors"].append(f"{traffic.bad} frames came back altered, reordered or unknown: {traffic.first_bad}")
    result.update(
        resets=done,
        queue_resets=queue_resets,
        frames_sent=traffic.next_seq,
        frames_received=traffic.received,
        frames_lost=traffic.lost,
        frames_bad=traffic.bad,
        quiesce_violations=watch.violations[:20],
        windows_checked=watch.checked_windows,
        rq_requests_seen=watch.requests,
        delays_max=max(delays, default=0),
        reset_cycles={
            k: {"max": max(v, default=0), "mean": sum(v) / len(v) if v else 0} for k, v in reset_cycles.items()
        },
        requests_without_bus_master=watch.without_bus_master,
    )
    result["ok"] = not result["errors"]
    return result
