"""Two real virtio-net functions over VFIO, wired to each other: frames sent on A's TX must arrive on B's RX.

Why a pair: a single QEMU virtio-net-pci does not loop its own frames back (the demo's loopback scenario is a
property of this project's device), but two of them on one QEMU network hub do: every frame A transmits is
delivered to B.  That makes QEMU's device, which nobody here wrote, a check on the driver, the VFIO
transport, the vIOMMU mappings and MSI-X, with every byte compared.

The scenario: bring both up with the project's driver, send ``frames`` frames A->B and a few B->A, compare
each byte, then VFIO_DEVICE_RESET both functions, check the reset took (device_status reads 0), bring them up
again and send once more, so reset is proved by a working device and not just by a register value.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from host.demo import frame_sizes, make_frame
from host.driver import VirtioError
from host.net import RX_VECTOR, TX_VECTOR, VirtioNetDriver
from host.vfio import VfioTransport, normalize_bdf
from host.virtqueue import VirtqueueBroken, VirtqueueFull
from virtio_fpga import spec
from virtio_fpga.spec import Feature, feature_names, status_names


async def _transfer(
    tx: VirtioNetDriver,
    rx: VirtioNetDriver,
    sizes: list[int],
    rng: random.Random,
    *,
    batch: int,
    timeout: float,
    seq0: int = 0,
) -> dict[str, Any]:
    """Send frames of ``sizes`` from ``tx`` to ``rx`` in batches the rings can hold; compare every byte."""
    assert tx.txq is not None and rx.rxq is not None
    batch = max(1, min(batch, tx.txq.size, rx.rxq.size))
    sent: list[bytes] = []
    received: list[bytes] = []
    irq_before = {"tx": tx.transport.irq_count(TX_VECTOR), "rx": rx.transport.irq_count(RX_VECTOR)}
    start = asyncio.get_running_loop().time()
    pending = list(enumerate(sizes, start=seq0))
    while pending:
        chunk, pending = pending[:batch], pending[batch:]
        out = [make_frame(seq, size, rx.mac or b"\xff" * 6, rng) for seq, size in chunk]
        for i, frame in enumerate(out):
            await tx.send(frame, kick=(i == len(out) - 1))
        sent += out
        got = await rx.receive(len(out), timeout=timeout)
        received += got
        if len(got) < len(out):
            break
    tx_done = await tx.wait_tx_done(timeout=timeout)
    elapsed = asyncio.get_running_loop().time() - start
    mismatched = [i for i, (a, b) in enumerate(zip(sent, received, strict=False)) if a != b]
    return {
        "frames_sent": len(sent),
        "frames_received": len(received),
        "frames_intact": len(received) - len(mismatched),
        "first_mismatch": mismatched[0] if mismatched else None,
        "bytes": sum(len(f) for f in received),
        "tx_completed": tx_done,
        "tx_interrupts": tx.transport.irq_count(TX_VECTOR) - irq_before["tx"],
        "rx_interrupts": rx.transport.irq_count(RX_VECTOR) - irq_before["rx"],
        "seconds": round(elapsed, 3),
    }


def _device_report(drv: VirtioNetDriver) -> dict[str, Any]:
    dev = drv.dev
    t = drv.transport
    return {
        "device": t.name,
        "pci_id": f"{dev.vendor_id:04x}:{dev.device_id:04x}",
        "mac": drv.mac.hex(":"),
        "mtu": drv.mtu,
        "link_up": drv.link_up,
        "queue_size": drv.rxq.size if drv.rxq else 0,
        "msix_vectors": drv.vectors,
        "device_features": f"{dev.device_features:#018x}",
        "driver_features": f"{dev.driver_features:#018x}",
        "device_feature_names": feature_names(dev.device_features),
        "negotiated": feature_names(dev.driver_features),
        "notification_data_offered": bool(dev.device_features >> Feature.NOTIFICATION_DATA & 1),
        "notification_data_negotiated": dev.negotiated(Feature.NOTIFICATION_DATA),
        "status_log": [status_names(s) for s in dev.status_log],
        "vfio": t.info() if isinstance(t, VfioTransport) else {},
    }


async def run_pair_async(
    bdf_a: str,
    bdf_b: str,
    *,
    frames: int = 64,
    min_size: int = 60,
    max_size: int = 1514,
    seed: int = 1,
    queue_size: int = 64,
    batch: int = 16,
    timeout: float = 5.0,
    reverse_frames: int = 8,
    after_reset_frames: int = 8,
    backend: str = "auto",
    use_mmap: bool = True,
) -> dict[str, Any]:
    """The pair scenario (module docstring); returns a JSON-able dict in the demo's vocabulary."""
    rng = random.Random(seed)
    bdf_a, bdf_b = normalize_bdf(bdf_a), normalize_bdf(bdf_b)
    result: dict[str, Any] = {"device": f"vfio:{bdf_a}->vfio:{bdf_b}", "errors": 0, "error_messages": []}
    ta = tb = None
    drivers: list[VirtioNetDriver] = []
    seen: list[VirtioNetDriver] = []

    def fail(message: str) -> None:
        result["errors"] += 1
        result["error_messages"].append(message)

    try:
        ta = VfioTransport(bdf_a, backend=backend, use_mmap=use_mmap)
        tb = VfioTransport(bdf_b, backend=backend, use_mmap=use_mmap)
        a = VirtioNetDriver(ta, queue_size=queue_size)
        b = VirtioNetDriver(tb, queue_size=queue_size)
        drivers = [a, b]
        seen += drivers
        await a.start()
        await b.start()
        result["a"] = _device_report(a)
        result["b"] = _device_report(b)
        result.update(
            device_features=result["a"]["device_features"],
            driver_features=result["a"]["driver_features"],
            negotiated=result["a"]["negotiated"],
        )
        sizes = frame_sizes(frames, min_size, min(max_size, a.mtu + 14, b.mtu + 14), rng)
        forward = await _transfer(a, b, sizes, rng, batch=batch, timeout=timeout)
        result["a_to_b"] = forward
        back_sizes = frame_sizes(reverse_frames, min_size, min(max_size, a.mtu + 14), rng)
        result["b_to_a"] = await _transfer(b, a, back_sizes, rng, batch=batch, timeout=timeout, seq0=frames)
        # Reset through VFIO (a function-level reset), not through device_status: the device must come back.
        for drv in drivers:
            await drv.stop()
        drivers = []
        ta.reset()
        tb.reset()
        result["status_after_reset"] = [
            await t.bar_read(*_common_status_location(t_drv), 1) for t, t_drv in ((ta, a), (tb, b))
        ]
        a2 = VirtioNetDriver(ta, queue_size=queue_size)
        b2 = VirtioNetDriver(tb, queue_size=queue_size)
        drivers = [a2, b2]
        seen += drivers
        await a2.start()
        await b2.start()
        again_sizes = frame_sizes(after_reset_frames, min_size, min(max_size, a2.mtu + 14), rng)
        result["after_reset"] = await _transfer(
            a2, b2, again_sizes, rng, batch=batch, timeout=timeout, seq0=frames + reverse_frames
        )
        for name, drv in (("a", a2), ("b", b2)):
            status = await drv.dev.get_status()
            result[f"final_status_{name}"] = status_names(status)
            if status & spec.Status.DEVICE_NEEDS_RESET:
                fail(f"{name}: device set DEVICE_NEEDS_RESET")
    except (VirtioError, VirtqueueBroken, VirtqueueFull, OSError) as exc:
        fail(f"{type(exc).__name__}: {exc}")
    finally:
        for drv in drivers:
            try:
                await drv.stop()
            except (VirtioError, OSError) as exc:
                fail(f"stop {drv.transport.name}: {exc}")
        for t in (ta, tb):
            if t is not None:
                await t.close()
    legs = [result[k] for k in ("a_to_b", "b_to_a", "after_reset") if k in result]
    for key, leg in (("a_to_b", result.get("a_to_b")), ("b_to_a", result.get("b_to_a"))):
        if leg and leg["frames_intact"] != leg["frames_sent"]:
            fail(f"{key}: {leg['frames_intact']} of {leg['frames_sent']} frames arrived intact")
    leg = result.get("after_reset")
    if leg and leg["frames_intact"] != leg["frames_sent"]:
        fail(f"after reset: {leg['frames_intact']} of {leg['frames_sent']} frames arrived intact")
    if any(s != 0 for s in result.get("status_after_reset", [])):
        fail(f"device_status after VFIO reset: {result['status_after_reset']}")
    # QEMU leaves VIRTQ_DESC_F_WRITE out of used descriptors it wrote (see host/virtqueue.py get_used).
    result["quirk_used_without_write_flag"] = sum(
        q.used_without_write_flag for d in seen for q in (d.rxq, d.txq) if q is not None
    )
    result.update(
        frames_sent=sum(leg["frames_sent"] for leg in legs),
        frames_received=sum(leg["frames_received"] for leg in legs),
        bytes=sum(leg["bytes"] for leg in legs),
    )
    result["ok"] = result["errors"] == 0 and len(legs) == 3
    return result


def _common_status_location(drv: VirtioNetDriver) -> tuple[int, int]:
    """(BAR, offset) of device_status in the common configuration structure the driver found."""
    cap = drv.dev.caps[spec.CfgType.COMMON]
    return cap.bar, cap.offset + spec.COMMON_CFG.offset_of("device_status")


def run_pair(bdf_a: str, bdf_b: str, frames: int = 64, **kwargs: Any) -> dict[str, Any]:
    """Synchronous entry point (for the VM test and scripts): see :func:`run_pair_async`."""
    return asyncio.run(run_pair_async(bdf_a, bdf_b, frames=frames, **kwargs))
