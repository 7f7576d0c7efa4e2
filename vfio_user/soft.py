"""The software reference device (``devices.softnet.SoftVirtioNet``) behind a vfio-user socket, under asyncio.

Configuration space and BAR 0 are the device's own; its DMA goes to the client's mapped memory at the addresses
the guest programmed (guest-physical, or IOVAs when the guest has a vIOMMU); its interrupts go to the eventfds
the client set (QEMU keeps the MSI-X table, so the device raises vectors, see ``SoftVirtioNet.irq_hook``).
The Ethernet port loops back unless a :class:`vfio_user.port.DatagramPort` joins it to another device.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from devices.softnet import CONFIG_SPACE_SIZE, SoftVirtioNet
from vfio_user import server
from vfio_user.memory import GuestMemory
from vfio_user.port import DatagramPort
from vfio_user.protocol import Command, Message
from vfio_user.server import Interrupts
from virtio_fpga import device_map as dm

log = logging.getLogger("vfio_user.soft")


class SoftBackend:
    """:class:`vfio_user.server.Backend` for the software device."""

    def __init__(self, device: SoftVirtioNet | None = None, *, mac: bytes | None = None) -> None:
        self.device = device or SoftVirtioNet(mac=mac or dm.DEFAULT_MAC, pcie_cap=True)
        self.device.kick_hook = self._kick
        self.device.irq_hook = self._irq
        self.config_size = CONFIG_SPACE_SIZE
        self.bar_sizes = {dm.BAR: dm.BAR_SIZE}
        self.msix_vectors = dm.NUM_MSIX_VECTORS
        self.irqs: Interrupts | None = None
        self._tasks: set[asyncio.Task] = set()
        self.service_errors: list[BaseException] = []
        self._errors_logged = 0

    def attach(self, memory: GuestMemory, irqs: Interrupts) -> None:
        self.device.dma = memory
        self.irqs = irqs

    def _irq(self, vector: int) -> None:
        # A DEVICE_NEEDS_RESET comes with a configuration interrupt: say why in the server's log.
        while self._errors_logged < len(self.device.errors):
            err = self.device.errors[self._errors_logged]
            log.warning("device error (%s): %s -> DEVICE_NEEDS_RESET", err.kind, err)
            self._errors_logged += 1
        if self.irqs is not None:
            self.irqs.signal(vector)

    def _kick(self) -> None:
        task = asyncio.get_running_loop().create_task(self.device.service())
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def summary(self) -> str:
        c = self.device.counters
        per_rx = c.rx_descriptors / c.frames_rx if c.frames_rx else 0
        return (
            f"frames tx {c.frames_tx} rx {c.frames_rx} dropped {c.frames_dropped}, {c.interrupts} interrupts, "
            f"RX chains {per_rx:.1f} descriptors on average (longest {c.rx_chain_longest}), "
            f"{len(self.device.errors)} device errors"
        )

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.service_errors.append(task.exception())
            log.error("device service task failed: %r", task.exception())

    def intx_asserted(self) -> bool:
        return bool(self.device.isr)

    async def config_read(self, offset: int, size: int) -> bytes:
        return (await self.device.config_read(offset, size)).to_bytes(size, "little")

    async def config_write(self, offset: int, data: bytes) -> None:
        await self.device.config_write(offset, len(data), int.from_bytes(data, "little"))

    async def bar_read(self, bar: int, offset: int, size: int) -> bytes:
        return (await self.device.bar_read(bar, offset, size)).to_bytes(size, "little")

    async def bar_write(self, bar: int, offset: int, data: bytes) -> None:
        await self.device.bar_write(bar, offset, len(data), int.from_bytes(data, "little"))

    async def reset(self) -> None:
        self.device.pci_reset()


def attach_port(device: SoftVirtioNet, port: DatagramPort) -> None:
    """Join the device's Ethernet port to a datagram link instead of its loopback."""
    device.port_out = port.send

    def incoming() -> None:
        while (frame := port.receive()) is not None:
            device.receive_frame(frame)

    loop = asyncio.get_running_loop()
    loop.add_reader(port.fileno(), incoming)

    def backlog(waiting: bool) -> None:
        if waiting:
            loop.add_writer(port.fileno(), port.flush)
        else:
            loop.remove_writer(port.fileno())

    port.on_backlog = backlog


def slow_probe(seconds: float, count: int = 0) -> Callable[[Message], float]:
    """A delay for BAR accesses (REGION_READ/WRITE of region 0): a server that answers slowly.

    ``count`` > 0 limits it to the first ``count`` accesses: the driver's probe, not the traffic after it.
    """
    delayed = [0]

    def delay(msg: Message) -> float:
        if msg.command in (Command.REGION_READ, Command.REGION_WRITE) and msg.payload[8:12] == b"\0\0\0\0":
            if count and delayed[0] >= count:
                return 0.0
            delayed[0] += 1
            if delayed[0] in (1, count):
                log.warning("slow server: BAR access %d answered %g ms late", delayed[0], seconds * 1000)
            return seconds
        return 0.0

    return delay


async def run(
    socket_path: Path,
    *,
    port: tuple[Path, Path] | None = None,
    mac: bytes | None = None,
    once: bool = False,
    slow: float = 0.0,
    slow_count: int = 0,
    on_listen: Callable[[str], None] = print,
) -> SoftBackend:
    """Serve one software device on ``socket_path`` until stopped (or, with ``once``, its first client leaves)."""
    backend = SoftBackend(mac=mac)
    link = DatagramPort(*port) if port else None
    if link is not None:
        attach_port(backend.device, link)
    sock = server.listen(socket_path)
    where = f"{socket_path}" + (f", port {link.local} -> {link.remote}" if link else ", port: loopback")
    if slow:
        scope = f"the first {slow_count} BAR accesses" if slow_count else "every BAR access"
        where += f", {scope} answered {slow * 1000:g} ms late"
    on_listen(f"vfio-user: soft device listening on {where}")
    try:
        await server.serve_asyncio(
            sock,
            backend,
            once=once,
            name=f"soft@{Path(socket_path).name}",
            delay=slow_probe(slow, slow_count) if slow else None,
        )
    finally:
        sock.close()
        if link is not None:
            asyncio.get_running_loop().remove_reader(link.fileno())
            asyncio.get_running_loop().remove_writer(link.fileno())
            link.close()
    return backend
