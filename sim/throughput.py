"""Steady-state throughput of the endpoint, with the rings kept full by a polling driver (``virtio-fpga bench``).

:func:`steady_state` runs inside the simulation (through :func:`sim.runner.run_scenario`) and returns raw counts;
:mod:`sim.benchmath` turns them into the figures of ``results/bench.json``.  What it does:

* **bring-up** (``drv.start()``: reset, feature negotiation, queue setup, RX buffers posted) is timed on its
  own and kept out of every per-frame figure;
* **traffic** in one of three modes: ``loopback`` (TX ring -> ``eth_tx`` -> looped inside the top ->
  ``eth_rx`` -> RX ring), ``tx`` (loopback off, frames leave on ``eth_tx`` into a cocotbext-axi sink that is
  always ready), ``rx`` (loopback off, frames enter on ``eth_rx`` from a cocotbext-axi source back to back);
* the driver polls every ``poll_ns`` (no MMIO: it looks at the used flags in host memory, as a busy-polling
  driver does), harvests, and re-posts in batches of ``batch`` with one doorbell per batch, so both rings stay
  full.  It posts up to ``warmup + frames + tail`` frames (``tail`` defaults to the ring size), so the
  measured frames (``warmup+1 .. warmup+frames``) all complete while the ring behind them is still full; then
  it resets the device with the tail in flight (``drain=True`` waits for the tail too), which a device must
  survive (spec 2.4: reset stops all DMA);
* **measurement window**: from the cycle at which the driver saw frame ``warmup`` complete to the cycle at which
  it saw frame ``warmup + frames`` complete (the frame's used element, RX for loopback and rx, TX for tx).
  Everything else is counted over the same window: the bus monitor's RQ requests (split by address into
  descriptor-ring reads, event-suppression reads, data reads, used-element writes, data writes), DMA reads in
  flight per cycle, MSI-X messages, and the link model's bytes per direction;
* every frame is checked byte for byte (back from the RX ring, out of ``eth_tx``, or in from ``eth_rx``).

Interrupts: the driver does not need them (it polls), but what the device sends is measured.  With EVENT_IDX
the driver asks for an interrupt after 3/4 of the buffers it has outstanding (as Linux's
``virtqueue_enable_cb_delayed``) and re-arms once it has harvested that far, so a device that obeys sends
about one interrupt per 3/4 ring per queue; without EVENT_IDX it leaves interrupts enabled (flags ENABLE,
spec 2.8.10) and the device decides.
"""

from __future__ import annotations

import random
from typing import Any

from host.demo import make_frame, parse_feature_list
from host.driver import VirtioError
from host.net import VirtioNetDriver
from host.virtqueue import VirtqueueBroken, VirtqueueFull
from sim.ordering import UsedAfterData
from virtio_fpga import spec
from virtio_fpga.spec import Feature

MODES = ("loopback", "tx", "rx")


class _Window:
    """Counters snapshotted at the start and the end of the measurement window."""

    def __init__(self, transport) -> None:
        self.transport = transport
        self.bench = transport.bench

    def snapshot(self) -> dict[str, Any]:
        b = self.bench
        c = b.counters
        return {
            "cycle": c.cycles,
            "requests": len(c.timed_requests),
            "round_trips": len(c.read_round_trips),
            "outstanding_sum": c.reads_outstanding_sum,
            "irqs": sum(self.transport.irq_count(v) for v in range(8)),
            "link": b.link.as_dict(),
        }


def _ranges(vq) -> dict[str, tuple[int, int]]:
    return {
        "ring": (vq.ring.iova, vq.ring.iova + vq.ring.size),
        "event": (vq.driver_area.iova, vq.driver_area.iova + vq.driver_area.size),
        "device_event": (vq.device_area.iova, vq.device_area.iova + vq.device_area.size),
    }


def classify_requests(requests: list, queues: dict[str, Any]) -> dict[str, int]:
    """Split RQ requests ``(cycle, kind, addr, nbytes)`` by what they touch, from the ring addresses.

    ``desc_reads``: reads of a descriptor ring; ``event_reads``: reads of a driver event-suppression area (the
    device reading whether to interrupt); ``used_writes``: writes into a descriptor ring (used elements of a
    packed ring, 2.8.4); ``data_reads``/``data_writes``: everything else (buffers).  Per queue as ``<q>_...``.
    """
    out: dict[str, int] = {
        k: 0 for k in ("desc_reads", "event_reads", "used_writes", "data_reads", "data_writes", "other_writes")
    }
    ranges = {name: _ranges(vq) for name, vq in queues.items()}
    for name in queues:
        out[f"{name}_desc_reads"] = 0
        out[f"{name}_used_writes"] = 0
    for _, kind, addr, _n in requests:
        hit = None
        for name, r in ranges.items():
            for area, (lo, hi) in r.items():
                if lo <= addr < hi:
                    hit = (name, area)
        if kind == "R":
            if hit and hit[1] == "ring":
                out["desc_reads"] += 1
                out[f"{hit[0]}_desc_reads"] += 1
            elif hit and hit[1] == "event":
                out["event_reads"] += 1
            else:
                out["data_reads"] += 1
        else:
            if hit and hit[1] == "ring":
                out["used_writes"] += 1
                out[f"{hit[0]}_used_writes"] += 1
            elif hit:
                out["other_writes"] += 1
            else:
                out["data_writes"] += 1
    return out


async def steady_state(
    transport,
    *,
    mode: str = "loopback",
    frame_bytes: int = 64,
    frames: int = 64,
    warmup: int = 16,
    tail: int | None = None,
    queue_size: int = 64,
    batch: int = 16,
    disable: str | list[str] | None = None,
    poll_ns: float = 64.0,
    seed: int = 1,
    stall_us: float = 200.0,
    drain: bool = False,
    check_order: bool = False,
) -> dict[str, Any]:
    """Bring the device up, run ``warmup + frames (+ tail)`` frames in ``mode``, return the window's counts."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: choose from {', '.join(MODES)}")
    bench = transport.bench
    c = bench.counters
    rng = random.Random(seed)
    mask = ((1 << 64) - 1) & ~parse_feature_list(disable)
    drv = VirtioNetDriver(transport, feature_mask=mask, queue_size=queue_size)
    result: dict[str, Any] = {
        "mode": mode,
        "frame_bytes": frame_bytes,
        "errors": [],
        "ok": False,
        "data_width": bench.data_width,
        "eth_width": len(bench.dut.eth_tx_tdata),
        # the link the model trained to, for the link-use fractions (sim.benchmath.link_limits)
        "link_generation": bench.dev.pcie_generation,
        "link_lanes": bench.dev.pcie_link_width,
    }
    sink = source = None
    if mode != "loopback":
        sink, source = bench.external_ethernet()

    t0 = c.cycles
    try:
        await drv.start()
    except (VirtioError, VirtqueueBroken) as exc:
        result["errors"].append(f"bring-up: {type(exc).__name__}: {exc}")
        return result
    result["bringup_cycles"] = c.cycles - t0
    dev = drv.dev
    txq, rxq = drv.txq, drv.rxq
    assert txq is not None and rxq is not None
    event_idx = dev.negotiated(Feature.EVENT_IDX)
    result.update(
        notification_data=dev.negotiated(Feature.NOTIFICATION_DATA),
        event_idx=event_idx,
        in_order=dev.negotiated(Feature.IN_ORDER),
        negotiated=spec.feature_names(dev.driver_features),
        queue_size=txq.size,
    )
    order = None
    if check_order and mode != "tx":
        # Every RX used element must follow its buffer's data on RQ (sim.ordering).
        order = UsedAfterData(rxq.ring.iova, rxq.size, lambda slot: rxq.ring.read(slot * 16, 16))
        bench.rq_write_watchers.append(order.on_write)
    if frame_bytes > drv.mtu + 14:
        result["errors"].append(f"frame of {frame_bytes} bytes exceeds the MTU {drv.mtu} + 14")
        return result
    if tail is None:
        tail = txq.size if mode != "rx" else rxq.size
    total = warmup + frames + tail
    batch = max(1, min(batch, txq.size, rxq.size))
    expected = [make_frame(seq, frame_bytes, drv.mac, rng) for seq in range(total)]

    if mode == "rx":
        # The MAC side starts once the device has taken the RX buffers (a frame that arrives before its queue
        # runs is dropped at the port, as a NIC does); in steady state nothing may be lost (frames_lost).
        await transport.sleep(2e-6)
    window = _Window(transport)
    start = end = None
    done = 0  # frames completed, in order
    posted = 0  # frames handed to the device (TX ring, or the eth_rx source)
    bad = 0
    last_progress = transport.now()

    last_seq = -1
    lost = 0

    def check(frame: bytes) -> None:
        """Frames carry their sequence number (host.demo.make_frame): altered, lost or reordered ones count."""
        nonlocal bad, last_seq, lost
        seq = int.from_bytes(frame[14:18], "big") if len(frame) >= 18 else -1
        if not 0 <= seq < total or frame != expected[seq] or seq <= last_seq:
            if "first_bad" not in result:
                result["first_bad"] = {"after_seq": last_seq, "len": len(frame), "head": frame[:24].hex()}
            bad += 1
            return
        lost += seq - last_seq - 1
        last_seq = seq

    def completed(n: int) -> None:
        nonlocal done, start, end
        for _ in range(n):
            done += 1
            if done == warmup:
                start = window.snapshot()
                c.reads_outstanding_max = c.reads_outstanding
            if done == warmup + frames:
                end = window.snapshot()
                end["reads_outstanding_max"] = c.reads_outstanding_max

    measured = {"rx": rxq, "tx": txq} if mode == "loopback" else ({"tx": txq} if mode == "tx" else {"rx": rxq})
    harvested = {"rx": 0, "tx": 0}
    armed = {"rx": 0, "tx": 0}
    if warmup == 0:
        start = window.snapshot()
        c.reads_outstanding_max = c.reads_outstanding
    try:
        while done < (total if drain else warmup + frames):
            progressed = False
            # ---- transmit side: reclaim, then post a batch (loopback, tx)
            if mode in ("loopback", "tx"):
                n_tx = drv.reclaim_tx()
                harvested["tx"] += n_tx
                if mode == "tx" and n_tx:
                    while sink.count():
                        check(bytes(sink.recv_nowait().tdata))
                    completed(n_tx)
                    progressed = True
                room = min(txq.num_free, total - posted)
                if room and (room >= batch or posted + room == total):
                    for i in range(room):
                        await drv.send(expected[posted + i], kick=(i == room - 1))
                    posted += room
                    progressed = True
            elif source is not None:
                # rx: keep the MAC side busy, a few frames ahead of the wire
                while posted < total and source.count() < 4:
                    source.send_nowait(expected[posted])
                    posted += 1
            # ---- receive side: harvest, check, refill in batches (loopback, rx)
            if mode in ("loopback", "rx"):
                used = rxq.get_used()
                harvested["rx"] += len(used)
                for u in used:
                    check(drv.take_rx(u))
                    completed(1)
                if used:
                    progressed = True
                if rxq.num_free >= batch:
                    drv.refill_rx()
                    await rxq.kick()
            if event_idx:
                # re-arm once the last threshold was reached: one interrupt per 3/4 ring when the device obeys
                for name, vq in measured.items():
                    if harvested[name] >= armed[name] and vq.outstanding:
                        after = max(1, vq.outstanding * 3 // 4)
                        vq.enable_cb_delayed(after)
                        armed[name] = harvested[name] + after
            if progressed:
                last_progress = transport.now()
            elif transport.now() - last_progress > stall_us * 1e-6:
                result["errors"].append(f"no progress for {stall_us:g} us after {done} of {total} frames")
                break
            await transport.sleep(poll_ns * 1e-9)
    except (VirtioError, VirtqueueBroken, VirtqueueFull) as exc:
        result["errors"].append(f"{type(exc).__name__}: {exc}")
    status = await dev.get_status()
    if status & spec.Status.DEVICE_NEEDS_RESET:
        result["errors"].append("device set DEVICE_NEEDS_RESET")
    if bad:
        result["errors"].append(f"{bad} frames came back altered, reordered or unknown")
    if lost and mode != "rx":
        result["errors"].append(f"{lost} frames lost")
    result.update(
        frames_completed=done, frames_posted=posted, frames_bad=bad, frames_lost=lost, warmup=warmup, frames=frames
    )
    if start is not None and end is not None:
        requests = c.timed_requests[start["requests"] : end["requests"]]
        trips = c.read_round_trips[start["round_trips"] : end["round_trips"]]
        cycles = end["cycle"] - start["cycle"]
        descs_per_frame = {"loopback": 2, "tx": 1, "rx": 1}[mode]
        result["window"] = {
            "cycles": cycles,
            "frames": frames,
            "descriptors": frames * descs_per_frame,
            "irqs": end["irqs"] - start["irqs"],
            "reads_in_flight_max": end["reads_outstanding_max"],
            "reads_in_flight_mean": (end["outstanding_sum"] - start["outstanding_sum"]) / cycles if cycles else 0,
            "read_round_trip_mean": sum(d - i for i, d in trips) / len(trips) if trips else 0,
            "requests": classify_requests(requests, {"rx": rxq, "tx": txq}),
            "link": {d: {k: end["link"][d][k] - start["link"][d][k] for k in end["link"][d]} for d in end["link"]},
        }
    else:
        result["errors"].append(f"window not reached: {done} of {warmup + frames} frames")
    if order is not None:
        bench.rq_write_watchers.remove(order.on_write)
        result["order"] = {"used_checked": order.used_seen, "violations": order.violations}
        if order.violations:
            result["errors"].append(f"{len(order.violations)} used elements before their data: {order.violations[0]}")
    result["ok"] = not result["errors"]
    try:
        await drv.stop()
    except VirtioError as exc:
        result["errors"].append(f"stop: {exc}")
        result["ok"] = False
    return result
