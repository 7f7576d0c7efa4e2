"""The main job: bring a virtio-net device up, describe it, loop traffic through it and check every byte.

:func:`run_demo` only awaits the transport, so the same function runs against the software device (asyncio),
the RTL in simulation (cocotb, through ``sim.runner.run_scenario``) and a real function over VFIO.  It returns
a JSON-able dict; :func:`format_report` renders it for people (an ``lspci -vv``-like view, features in words,
traffic counts).
"""

from __future__ import annotations

import random
from typing import Any

from host.driver import VirtioError
from host.net import VirtioNetDriver
from host.transport import Transport
from host.virtqueue import VirtqueueBroken, VirtqueueFull
from virtio_fpga import spec
from virtio_fpga.spec import CfgType, feature_names, status_names


def make_frame(seq: int, size: int, mac: bytes, rng: random.Random) -> bytes:
    """A broadcast-free Ethernet frame to ``mac`` with a sequence number and random payload."""
    size = max(size, 1)
    header = mac + bytes.fromhex("02000000beef") + (0x88B5).to_bytes(2, "big")  # local experimental ethertype
    body = seq.to_bytes(4, "big") + rng.randbytes(max(size - 18, 0))
    return (header + body)[:size]


def frame_sizes(count: int, min_size: int, max_size: int, rng: random.Random) -> list[int]:
    """Sizes covering both ends and random ones between: min, max, then uniformly drawn."""
    fixed = [min_size, max_size][:count]
    return fixed + [rng.randint(min_size, max_size) for _ in range(count - len(fixed))]


def parse_feature_list(names: str | list[str] | None) -> int:
    if not names:
        return 0
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    return spec.features_mask(spec.feature_from_name(n) for n in names)


async def describe(drv: VirtioNetDriver) -> dict[str, Any]:
    """What lspci -vv would show of the function, plus the virtio structures the driver found."""
    dev = drv.dev
    caps = []
    for offset, cap_id in dev.cap_list:
        entry: dict[str, Any] = {"offset": offset, "id": cap_id}
        info = next((c for c in dev.caps.values() if c.cap_offset == offset), None)
        if cap_id == spec.PCI_CAP_ID_VNDR and info is not None:
            entry.update(cfg_type=CfgType(info.cfg_type).name, bar=info.bar, bar_offset=info.offset, length=info.length)
            entry.update(info.extra)
        elif cap_id == spec.PCI_CAP_ID_MSIX:
            entry.update(name="MSI-X", table_size=dev.msix_table_size)
        caps.append(entry)
    return {
        "vendor_id": f"{dev.vendor_id:04x}",
        "device_id": f"{dev.device_id:04x}",
        "subsystem": f"{dev.subsystem[0]:04x}:{dev.subsystem[1]:04x}",
        "class": f"{dev.class_code:06x}",
        "revision": dev.revision,
        "bar0_size": drv.transport.bar_size(0),
        "capabilities": caps,
    }


async def run_demo(
    transport: Transport,
    *,
    frames: int = 64,
    min_size: int = 60,
    max_size: int = 1514,
    seed: int = 1,
    queue_size: int = 64,
    rx_chain: int = 1,
    tx_chain: int = 1,
    disable: str | list[str] | None = None,
    batch: int = 16,
    timeout: float = 2.0,
) -> dict[str, Any]:
    """Bring the device up, loop ``frames`` frames through it, and report.  ``errors`` counts every problem."""
    rng = random.Random(seed)
    mask = ((1 << 64) - 1) & ~parse_feature_list(disable)
    drv = VirtioNetDriver(transport, feature_mask=mask, queue_size=queue_size, rx_chain=rx_chain, tx_chain=tx_chain)
    result: dict[str, Any] = {"device": transport.name, "errors": 0, "error_messages": []}
    sent: list[bytes] = []
    received: list[bytes] = []
    try:
        await drv.start()
        dev = drv.dev
        result.update(
            pci=await describe(drv),
            device_features=f"{dev.device_features:#018x}",
            driver_features=f"{dev.driver_features:#018x}",
            device_feature_names=feature_names(dev.device_features),
            negotiated=feature_names(dev.driver_features),
            mac=drv.mac.hex(":"),
            mtu=drv.mtu,
            link_up=drv.link_up,
            queue_size=drv.rxq.size if drv.rxq else 0,
        )
        sizes = frame_sizes(frames, min_size, min(max_size, drv.mtu + 14), rng)
        pending = list(enumerate(sizes))
        # Never more in flight than either ring can hold: a TX chain per frame, an RX buffer per frame.
        assert drv.txq is not None and drv.rxq is not None
        batch = max(1, min(batch, drv.txq.size // tx_chain, drv.rxq.size // rx_chain))
        while pending:
            chunk, pending = pending[:batch], pending[batch:]
            out = [make_frame(seq, size, drv.mac, rng) for seq, size in chunk]
            for i, frame in enumerate(out):
                await drv.send(frame, kick=(i == len(out) - 1))
            sent += out
            got = await drv.receive(len(out), timeout=timeout)
            received += got
            if len(got) < len(out):
                break
        await drv.wait_tx_done(timeout=timeout)
        status = await dev.get_status()
        result["final_status"] = status_names(status)
        if status & spec.Status.DEVICE_NEEDS_RESET:
            result["errors"] += 1
            result["error_messages"].append("device set DEVICE_NEEDS_RESET")
    except (VirtioError, VirtqueueBroken, VirtqueueFull) as exc:
        result["errors"] += 1
        result["error_messages"].append(f"{type(exc).__name__}: {exc}")
    mismatched = sum(1 for a, b in zip(sent, received, strict=False) if a != b)
    missing = len(sent) - len(received)
    if mismatched:
        result["error_messages"].append(f"{mismatched} frames came back altered")
    if missing:
        result["error_messages"].append(f"{missing} frames did not come back")
    result["errors"] += mismatched + max(missing, 0)
    result.update(
        frames_sent=len(sent),
        frames_received=len(received),
        frames_intact=len(received) - mismatched,
        bytes=sum(len(f) for f in received),
        kicks=(drv.txq.kicks + drv.rxq.kicks) if drv.txq and drv.rxq else 0,
        interrupts={str(v): transport.irq_count(v) for v in range(3)},
        status_log=[status_names(s) for s in drv.dev.status_log],
    )
    result["ok"] = result["errors"] == 0 and len(received) == frames
    try:
        await drv.stop()
    except VirtioError as exc:
        result["errors"] += 1
        result["error_messages"].append(f"stop: {exc}")
        result["ok"] = False
    return result


#: Names lspci gives the standard capabilities a PCIe endpoint shows besides virtio's.
_CAP_NAMES = {0x01: "Power Management", 0x05: "MSI", 0x10: "Express Endpoint", 0x11: "MSI-X"}


def format_report(result: dict[str, Any]) -> str:
    """Human-readable rendering of :func:`run_demo`'s dict: lspci-like view, features, traffic."""
    lines = []
    pci = result.get("pci")
    if pci:
        lines.append(
            f"[{result['device']}] Ethernet controller [{pci['class'][:4]}]: Red Hat, Inc. Virtio 1.0 network device "
            f"[{pci['vendor_id']}:{pci['device_id']}] (rev {pci['revision']:02x})"
        )
        lines.append(f"\tSubsystem: [{pci['subsystem']}]")
        lines.append(f"\tRegion 0: Memory (64-bit, non-prefetchable) [size={pci['bar0_size'] // 1024}K]")
        for cap in pci["capabilities"]:
            if cap["id"] == spec.PCI_CAP_ID_VNDR and "cfg_type" in cap:
                extra = f" multiplier={cap['notify_off_multiplier']}" if "notify_off_multiplier" in cap else ""
                lines.append(
                    f"\tCapabilities: [{cap['offset']:02x}] Vendor Specific Information: VirtIO: {cap['cfg_type']}"
                    f"\n\t\tBAR={cap['bar']} offset={cap['bar_offset']:08x} size={cap['length']:08x}{extra}"
                )
            elif cap["id"] == spec.PCI_CAP_ID_MSIX:
                lines.append(f"\tCapabilities: [{cap['offset']:02x}] MSI-X: Enable+ Count={cap['table_size']}")
            else:
                name = _CAP_NAMES.get(cap["id"], f"id {cap['id']:#04x}")
                lines.append(f"\tCapabilities: [{cap['offset']:02x}] {name}")
    if "device_features" in result:
        lines.append(f"device features  {result['device_features']}: {' '.join(result['device_feature_names'])}")
        lines.append(f"driver features  {result['driver_features']}: {' '.join(result['negotiated'])}")
        lines.append(f"mac {result['mac']}  mtu {result['mtu']}  link {'up' if result['link_up'] else 'down'}")
    lines.append(
        f"traffic: {result['frames_sent']} frames sent, {result['frames_received']} received, "
        f"{result.get('frames_intact', 0)} intact, {result['bytes']} bytes, "
        f"{result['errors']} errors"
    )
    if "sim_cycles" in result and result.get("frames_received"):
        lines.append(
            f"simulation: {result['sim_cycles']} cycles, {result['sim_cycles'] / result['frames_received']:.0f} "
            f"cycles/frame, {result.get('dma_read_requests', '?')} DMA read requests"
        )
    for message in result.get("error_messages", []):
        lines.append(f"error: {message}")
    return "\n".join(lines)
