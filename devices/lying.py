"""A software device that lies to the driver on purpose: the driver side of the robustness campaign.

Under vDPA the device is trusted by nobody either: a driver must survive a device (or a bus) that writes
impossible things.  :class:`LyingVirtioNet` is :class:`devices.softnet.SoftVirtioNet` with its DMA and
register behaviour intact except for one planted lie, chosen with :class:`Lie`, that starts after ``after``
honest events.  Each lie is something the driver can observe and must reject, never act on:

- ``USED_ID``: a used element names a buffer id that is not outstanding (ids are below the queue size; the lie
  adds the queue size).
- ``USED_LEN``: a receive used element reports one byte more than the chain's device-writable bytes.
- ``USED_WRAP``: used flags carry the inverted wrap counter (AVAIL = USED = !used_wrap_counter).
- ``IRQ_STORM``: every register read of the driver fires the receive and transmit vectors, used or not.
- ``CONFIG_GENERATION``: config_generation moves on every read, so device configuration never settles.
- ``STATUS_FLIP``: device_status reads with ``flip`` bits toggled (a driver bit lost, or a bit nobody set).

The device records every value the driver writes to device_status (``status_writes``), so a test can show
that the driver never copies a lie back into the device.
"""

from __future__ import annotations

import enum

from devices.softnet import Chain, QueueState, SoftVirtioNet
from virtio_fpga import spec
from virtio_fpga.spec import DescFlag, Status


class Lie(enum.Enum):
    USED_ID = "used-id-not-outstanding"
    USED_LEN = "used-len-above-writable"
    USED_WRAP = "used-wrong-wrap"
    IRQ_STORM = "interrupt-storm"
    CONFIG_GENERATION = "config-generation-unsettled"
    STATUS_FLIP = "status-bits-flip"


#: Lies told in used elements: ``after`` counts honest used writes before the first lie.
RING_LIES = frozenset({Lie.USED_ID, Lie.USED_LEN, Lie.USED_WRAP})


class LyingVirtioNet(SoftVirtioNet):
    """The software device with one planted lie (see the module docstring for each kind).

    ``after`` is the number of honest events before lying starts: used writes on the lied-to queues for the
    ring lies, driver register reads after DRIVER_OK for ``IRQ_STORM`` and ``STATUS_FLIP`` (0: from the first one; with
    ``STATUS_FLIP`` and ``during_init`` the flip starts as soon as the driver has written ACKNOWLEDGE, and
    ``every`` = k flips one status read in k, so the bits come and go).  ``honest = True`` stops all lies
    (a test's way to show the driver recovers once the device behaves).
    ``queues`` limits the ring lies to those queue indices (default: both).
    """

    def __init__(
        self,
        lie: Lie,
        *,
        after: int = 0,
        flip: int = Status.DRIVER_OK,
        every: int = 1,
        during_init: bool = False,
        queues: frozenset[int] = frozenset({spec.NET_RX_QUEUE, spec.NET_TX_QUEUE}),
        **kw,
    ) -> None:
        super().__init__(**kw)
        self.lie = lie
        self.honest = False
        self.after = after
        self.flip = flip
        self.every = every
        self._status_reads = 0
        self.during_init = during_init
        self.lie_queues = queues
        self.honest_used = 0
        self.lies_told = 0
        self.status_writes: list[int] = []
        self._reads_after_ok = 0
        self._generation_reads = 0
        self._capacity: dict[int, int] = {}  # queue -> device-writable bytes of the chain being completed

    @property
    def active(self) -> Lie | None:
        """The lie being told, None once the test made the device honest."""
        return None if self.honest else self.lie

    # ---- used elements ---------------------------------------------------------------------------------------
    async def _scatter_rx(self, q: QueueState, chain: Chain, frame: bytes, token: tuple) -> int:
        self._capacity[q.index] = sum(d["len"] for d in chain.descriptors if d["flags"] & DescFlag.WRITE)
        return await super()._scatter_rx(q, chain, frame, token)

    async def _write_used(self, q: QueueState, buffer_id: int, length: int, written: bool, count: int) -> None:
        lying = self.active in RING_LIES and q.index in self.lie_queues and self.honest_used >= self.after
        if self.active is Lie.USED_LEN and not written:
            lying = False  # a read-only buffer's used length means nothing (2.8.5): no lie to tell there
        if not lying:
            if q.index in self.lie_queues:
                self.honest_used += 1
            await super()._write_used(q, buffer_id, length, written, count)
            return
        self.lies_told += 1
        wrap = q.used_wrap_counter
        if self.active is Lie.USED_ID:
            buffer_id = (buffer_id + q.size) & 0xFFFF
        elif self.active is Lie.USED_LEN:
            length = self._capacity.get(q.index, length) + 1
        else:
            wrap ^= 1
        await super()._write_used(q, buffer_id, length, written, count, wrap=wrap)

    # ---- registers -----------------------------------------------------------------------------------------
    def _lying_now(self) -> bool:
        if self.status & Status.DRIVER_OK:
            return self._reads_after_ok >= self.after
        return self.active is Lie.STATUS_FLIP and self.during_init and bool(self.status & Status.ACKNOWLEDGE)

    async def bar_read(self, bar: int, offset: int, size: int) -> int:
        value = await super().bar_read(bar, offset, size)
        if self.status & Status.DRIVER_OK:
            self._reads_after_ok += 1
        if self.active is Lie.IRQ_STORM and self._lying_now() and self.status & Status.DRIVER_OK:
            self.lies_told += 1
            for index in (spec.NET_RX_QUEUE, spec.NET_TX_QUEUE):
                await self._interrupt(self.queues[index].msix_vector)
        return value

    def _common_value(self, name: str) -> int:
        value = super()._common_value(name)
        if name == "config_generation" and self.active is Lie.CONFIG_GENERATION:
            self._generation_reads += 1
            self.lies_told += 1
            return (value + self._generation_reads) & 0xFF
        if name == "device_status" and self.active is Lie.STATUS_FLIP and value and self._lying_now():
            self._status_reads += 1
            if (self._status_reads - 1) % self.every == 0:
                self.lies_told += 1
                return (value ^ self.flip) & 0xFF
        return value

    async def _write_status(self, value: int) -> None:
        self.status_writes.append(value)
        await super()._write_status(value)
