"""Driver-side scenarios for the PCIe fault tests (issue 12, part 3); the faults come from :mod:`sim.pcie_faults`.

Each scenario brings the virtio core up with the host driver, loops frames through it (loopback), arms one fault
in the root complex, and then records what a driver and the bus saw:

* ``baseline_ok``: frames before the fault came back byte for byte;
* ``needs_reset_us``: how long after the fault's traffic DEVICE_NEEDS_RESET was read (None: never, within
  ``limit_us``) and ``config_irq``: the configuration interrupt that must follow it (virtio 2.1.2, 4.1.4.5);
* ``dma_after_needs_reset``: every DMA request on RQ from the moment the driver read DEVICE_NEEDS_RESET until
  ``quiet_us`` later, after both queues were notified again (the engine must start no DMA, virtio 2.1.2);
* ``recovered_ok``: after a device reset and a fresh bring-up, frames come back byte for byte;
* ``faults``: the injector's record; ``engine``: the DMA engine's counters read from the design.

The DMA monitor (:mod:`sim.dma_monitor`, on in every virtio run) judges every request as well.
"""

from __future__ import annotations

import random

from host.demo import make_frame
from host.net import VirtioNetDriver
from sim.pcie_faults import CompletionFaults, starve, starve_ptile
from virtio_fpga.spec import Status


def engine_counters(bench) -> dict:
    """The DMA engine's own counters (its ports, as the design names them in the simulator)."""
    dma = bench.dut.dma
    out = {}
    for name in ("rd_errors", "rd_timeouts", "rd_unexpected", "rd_quarantine"):
        try:
            out[name] = int(getattr(dma, name).value)
        except (AttributeError, ValueError):
            out[name] = None
    return out


def _design_counter(bench, block: str, name: str) -> int | None:
    """A counter port of one of the design's blocks, as the simulator names it (None if it was optimised out)."""
    try:
        return int(getattr(getattr(bench.dut, block), name).value)
    except (AttributeError, ValueError):
        return None


async def _loop_frames(transport, drv: VirtioNetDriver, count: int, size: int, rng, limit_us: float) -> dict:
    """Send ``count`` frames and collect as many (polling the ring every microsecond, at most ``limit_us``)."""
    sent = [make_frame(i, size, drv.mac, rng) for i in range(count)]
    for i, frame in enumerate(sent):
        await drv.send(frame, kick=i == count - 1)
    got: list[bytes] = []
    deadline = transport.now() + limit_us * 1e-6
    while len(got) < count and transport.now() < deadline:
        frames = drv.poll_rx()
        got += frames
        if frames:
            await drv.rxq.kick()
            continue
        if await drv.dev.get_status() & Status.DEVICE_NEEDS_RESET:
            break
        await transport.sleep(1e-6)
    return {"ok": got == sent, "sent": len(sent), "received": len(got)}


async def _wait_needs_reset(transport, drv: VirtioNetDriver, limit_us: float) -> float | None:
    t0 = transport.now()
    while transport.now() - t0 < limit_us * 1e-6:
        if await drv.dev.get_status() & Status.DEVICE_NEEDS_RESET:
            return (transport.now() - t0) * 1e6
        await transport.sleep(0.5e-6)
    return None


async def completion_fault(
    transport,
    kind: str,
    *,
    frames: int = 4,
    size: int = 700,
    queue_size: int = 16,
    limit_us: float = 400.0,
    quiet_us: float = 20.0,
    late_ns: float | None = None,
    release_late_in_recovery: bool = False,
    hardip_timeout_ns: float | None = 50_000.0,
    target: str = "any",
    seed: int = 1,
) -> dict:
    """A broken completion (``kind`` in :data:`sim.pcie_faults.FAULT_KINDS`) hits the first read after traffic:
    DEVICE_NEEDS_RESET, no DMA after it, recovery by reset.  ``release_late_in_recovery``: a ``late`` fault's
    completions are delivered while the recovered device moves its frames (the tag it timed out is then held
    back by the engine, and the late completion must not become another read's data).  ``target``: which read
    the fault hits - "any" (the first one), "tx_ring" (a transmit descriptor read), "rx_ring", or "tx_data" (a
    transmit buffer's bytes)."""
    bench = transport.bench
    rng = random.Random(seed)
    faults = CompletionFaults.install(bench, seed=seed)
    first_injection = len(faults.injections)
    out: dict = {"kind": kind, "engine_before": engine_counters(bench)}
    drv = VirtioNetDriver(transport, queue_size=queue_size)
    await drv.start()
    out["baseline_ok"] = (await _loop_frames(transport, drv, frames, size, rng, limit_us))["ok"]

    ranges = {
        "any": None,
        "tx_ring": [(drv.txq.ring.iova, drv.txq.ring.iova + drv.txq.ring.size)],
        "rx_ring": [(drv.rxq.ring.iova, drv.rxq.ring.iova + drv.rxq.ring.size)],
        # the driver reuses its free transmit buffers for the next frames
        "tx_data": [(b.iova, b.iova + b.size) for b in drv._tx_free + drv._tx_buffers],
    }[target]
    out["target"] = {"name": target, "ranges": ranges}
    out["rings"] = {"tx": drv.txq.ring.iova, "rx": drv.rxq.ring.iova}
    faults.arm(kind, match=ranges, late_ns=late_ns, hardip_timeout_ns=hardip_timeout_ns)
    t_fault = transport.now()
    irq_before = transport.irq_count(0)
    out["faulty_traffic"] = await _loop_frames(transport, drv, frames, size, rng, limit_us)
    waited = await _wait_needs_reset(transport, drv, limit_us)
    out["needs_reset_us"] = None if waited is None else (transport.now() - t_fault) * 1e6
    log = bench.counters.requests
    first = len(log)
    await drv.txq.kick()
    await drv.rxq.kick()
    await transport.sleep(quiet_us * 1e-6)
    out["config_irq"] = transport.irq_count(0) > irq_before
    out["dma_after_needs_reset"] = [list(r) for r in log[first:]]
    out["engine_after_fault"] = engine_counters(bench)

    # recovery: device reset (the driver's bring-up starts with one, 2.4) and traffic again
    faults.disarm()
    await drv.stop()
    drv = VirtioNetDriver(transport, queue_size=queue_size)
    await drv.start()
    if release_late_in_recovery:
        sent = [make_frame(1000 + i, size, drv.mac, rng) for i in range(frames)]
        for i, frame in enumerate(sent):
            await drv.send(frame, kick=i == frames - 1)
        faults.release_late()  # the old request's completions arrive now, among the new reads
        got: list[bytes] = []
        deadline = transport.now() + limit_us * 1e-6
        while len(got) < frames and transport.now() < deadline:
            got += drv.poll_rx()
            await transport.sleep(1e-6)
        out["during_late_ok"] = got == sent
    out["recovered"] = await _loop_frames(transport, drv, 2 * frames, size, rng, limit_us)
    out["status_after"] = await drv.dev.get_status()
    out["engine_end"] = engine_counters(bench)
    out["faults"] = faults.summary()
    out["faults"]["injections"] = out["faults"]["injections"][first_injection:]  # this run's
    await drv.stop()
    return out


async def legal_stress(
    transport,
    mode: str,
    *,
    frames: int = 24,
    size: int = 1400,
    queue_size: int = 16,
    limit_us: float = 2000.0,
    seed: int = 1,
) -> dict:
    """Legal fabric behaviour (``mode``: "reorder" or "starve"): every frame must come back byte for byte,
    no DEVICE_NEEDS_RESET, within ``limit_us`` of simulated time."""
    bench = transport.bench
    rng = random.Random(seed)
    faults = CompletionFaults.install(bench, seed=seed)
    drv = VirtioNetDriver(transport, queue_size=queue_size)
    await drv.start()
    undo = None
    if mode == "reorder":
        faults.reorder(2000.0)
    elif mode == "starve" and hasattr(bench.dev, "tx_credits"):  # the P-tile model
        undo = starve_ptile(
            bench,
            tx=(300, 30),
            rx=(300, 60),
            # two headers and 24 data credits (384 bytes: one 256-byte write and a bit) beyond the link, and
            # none at all for 200-cycle stretches
            tx_credits={"ph": 2, "pd": 24, "nph": 2, "npd": 2, "cplh": 2, "cpld": 24},
            credit_pauses=(200, 40),
            completion_delay_ns=2000.0,
            seed=seed,
        )
    elif mode == "starve":
        undo = starve(
            bench,
            rq=(400, 40),
            cc=(300, 30),
            rc=(300, 60),
            cpl_credits=40,
            completion_delay_ns=2000.0,
            seed=seed,
        )
    else:
        raise ValueError(f"mode must be 'reorder' or 'starve', not {mode!r}")
    t0 = transport.now()
    out: dict = {"mode": mode}
    results = []
    for _ in range(max(1, frames // 8)):
        results.append(await _loop_frames(transport, drv, min(8, frames), size, rng, limit_us))
    out["elapsed_us"] = (transport.now() - t0) * 1e6
    out["ok"] = all(r["ok"] for r in results)
    out["batches"] = results
    out["status"] = await drv.dev.get_status()
    throttle = getattr(bench.dev, "tx_credits", None)
    if throttle is not None:
        out["tx_credits"] = {
            "violations": throttle.violations[:10],
            "held_back": throttle.held_back,
            "frozen_cycles": throttle.frozen_cycles,
            "credit_stalls": _design_counter(bench, "tx", "credit_stalls"),
        }
    if undo is not None:
        undo()
    faults.reorder(0)
    out["after_ok"] = (await _loop_frames(transport, drv, 4, 300, rng, limit_us))["ok"]
    out["engine"] = engine_counters(bench)
    out["reads_seen"] = faults.reads_seen
    out["link_to_device_completions"] = bench.link.to_device.completions
    await drv.stop()
    return out


async def completion_fault_series(transport, faults: list[dict], **common) -> dict:
    """Several :func:`completion_fault` runs one after the other on the same device (each recovers the device
    for the next): one simulation for every fault kind.  ``faults``: keyword arguments per run."""
    results = []
    for args in faults:
        results.append(await completion_fault(transport, **{**common, **args}))
    return {"runs": results}


async def legal_series(transport, modes: list[str], **common) -> dict:
    """:func:`legal_stress` for each mode in one simulation."""
    return {"runs": [await legal_stress(transport, mode, **common) for mode in modes]}
