"""A virtio-net driver (spec 5.1) on the packed virtqueue: MAC, link status, MTU, send and receive frames."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from host.driver import DRIVER_SUPPORTED, VirtioError, VirtioPciDevice
from host.transport import DmaBuffer, Transport
from host.virtqueue import PackedVirtqueue, UsedBuffer, VirtqueueBroken, VirtqueueFull
from virtio_fpga import spec
from virtio_fpga.spec import Feature, NetFeature, Status

CONFIG_VECTOR = 0
RX_VECTOR = 1
TX_VECTOR = 2


@dataclass
class NetStats:
    frames_sent: int = 0
    frames_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    rx_refills: int = 0
    interrupts: dict[str, int] = field(default_factory=dict)


class VirtioNetDriver:
    """Drive one virtio-net function: bring-up per spec 3.1.1, a receive and a transmit queue.

    ``rx_chain`` and ``tx_chain`` split each buffer into that many descriptors, so the device's chain handling
    is exercised with the same driver that does plain traffic.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        feature_mask: int = (1 << 64) - 1,
        queue_size: int = 64,
        rx_buffer_size: int | None = None,
        rx_chain: int = 1,
        tx_chain: int = 1,
    ) -> None:
        self.transport = transport
        self.dev = VirtioPciDevice(transport)
        self.feature_mask = feature_mask
        self.requested_queue_size = queue_size
        self.rx_buffer_size = rx_buffer_size
        self.rx_chain = rx_chain
        self.tx_chain = tx_chain
        self.rxq: PackedVirtqueue | None = None
        self.txq: PackedVirtqueue | None = None
        self.mac = b""
        self.mtu = 1500
        self.link_up = False
        self.stats = NetStats()
        self._rx_buffers: dict[int, DmaBuffer] = {}  # by IOVA: what the RX ring holds
        self._tx_buffers: list[DmaBuffer] = []
        self._tx_free: list[DmaBuffer] = []
        #: Called with (queue index, used buffer) for every transmit completion the driver reclaims, so an
        #: observer (the scenario recorder) sees each one, including those reclaimed inside send().
        self.on_tx_used: Callable[[int, UsedBuffer], None] | None = None
        self.vectors = 0

    @property
    def negotiated(self) -> int:
        return self.dev.driver_features

    # ---- bring-up ---------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Bring the device up; on any driver error after discovery, set FAILED (3.1.1) and re-raise."""
        try:
            await self._start()
        except VirtioError:
            if self.dev.caps and self.dev.driver_status and not self.dev.driver_status & Status.FAILED:
                await self.dev.fail()
            raise

    async def _start(self) -> None:
        dev = self.dev
        await dev.probe()
        if dev.device_type != spec.VIRTIO_ID_NET:
            raise VirtioError(f"device type {dev.device_type} is not a network device")
        await dev.initialize(DRIVER_SUPPORTED, self.feature_mask)
        self.vectors = await self.transport.enable_msix(3)
        if self.vectors >= 1:
            await dev.write_common("config_msix_vector", CONFIG_VECTOR)
            if await dev.read_common("config_msix_vector") != CONFIG_VECTOR:
                raise VirtioError("device could not allocate the configuration vector (4.1.5.1.2)")
        await self._read_config()
        self.rxq = await self._setup_queue(spec.NET_RX_QUEUE, RX_VECTOR)
        self.txq = await self._setup_queue(spec.NET_TX_QUEUE, TX_VECTOR)
        await dev.driver_ok()  # 3.1.1 step 8
        self.refill_rx()
        await self.rxq.kick()

    async def _read_config(self) -> None:
        dev = self.dev
        if dev.negotiated(NetFeature.MAC):
            mac = 0
            for i in range(6):  # byte-wise: mac is a u8 array (5.1.4)
                mac |= await dev.read_device_config_stable(i, 1) << (8 * i)
            self.mac = mac.to_bytes(6, "little")
        if dev.negotiated(NetFeature.STATUS):
            status = await dev.read_device_config_stable(spec.NET_CONFIG.offset_of("status"), 2)
            self.link_up = bool(status & spec.NET_S_LINK_UP)
        else:
            self.link_up = True  # 5.1.4.2: without STATUS the link is assumed up
        if dev.negotiated(NetFeature.MTU):
            self.mtu = await dev.read_device_config_stable(spec.NET_CONFIG.offset_of("mtu"), 2)
        if self.rx_buffer_size is None:
            # 5.1.6.3.1: without MRG_RXBUF, buffers must hold a whole frame: MTU + Ethernet header + hdr.
            self.rx_buffer_size = spec.NET_HDR.size + self.mtu + 14 + 4

    async def _setup_queue(self, index: int, vector: int) -> PackedVirtqueue:
        """Spec 4.1.5.1.3: select, read the maximum size, write ours, addresses, vector, then enable."""
        dev = self.dev
        await dev.write_common("queue_select", index)
        max_size = await dev.read_common("queue_size")
        if max_size == 0:
            raise VirtioError(f"queue {index} is not available (queue_size 0)")
        size = min(self.requested_queue_size, max_size)
        notify_off = await dev.read_common("queue_notify_off")
        bar, offset = dev.notify_address(notify_off)
        notif_cfg = None
        if dev.negotiated(Feature.NOTIF_CONFIG_DATA):
            notif_cfg = await dev.read_common("queue_notify_data")
        vq = PackedVirtqueue(
            self.transport,
            index,
            size,
            notify_bar=bar,
            notify_offset=offset,
            notification_data=dev.negotiated(Feature.NOTIFICATION_DATA),
            event_idx=dev.negotiated(Feature.EVENT_IDX),
            in_order=dev.negotiated(Feature.IN_ORDER),
            notify_config_data=notif_cfg,
        )
        await self._program_queue(vq, vector)
        return vq

    async def _program_queue(self, vq: PackedVirtqueue, vector: int) -> None:
        dev = self.dev
        await dev.write_common("queue_select", vq.index)
        await dev.write_common("queue_size", vq.size)
        desc, driver, device = vq.addresses
        await dev.write_common("queue_desc", desc)
        await dev.write_common("queue_driver", driver)
        await dev.write_common("queue_device", device)
        if self.vectors > vector:
            await dev.write_common("queue_msix_vector", vector)
            if await dev.read_common("queue_msix_vector") != vector:
                raise VirtioError(f"device could not allocate vector {vector} for queue {vq.index}")
        await dev.write_common("queue_enable", 1)

    async def reset_queue(self, vq: PackedVirtqueue, timeout: float = 0.1) -> int:
        """Reset one queue (VIRTIO_F_RING_RESET, spec 2.6.1) and bring it back; returns buffers dropped."""
        dev = self.dev
        if not dev.negotiated(Feature.RING_RESET):
            raise VirtioError("VIRTIO_F_RING_RESET was not negotiated")
        await dev.write_common("queue_select", vq.index)
        await dev.write_common("queue_reset", 1)
        deadline = self.transport.now() + timeout
        # 4.1.4.3.2 (driver): the reset is complete only when queue_reset reads back 0 (the device presents 1
        # while it is ongoing, then 0 in queue_reset and queue_enable), as Linux's vp_modern_set_queue_reset.
        while await dev.read_common("queue_reset") != 0 or await dev.read_common("queue_enable") != 0:
            if self.transport.now() > deadline:
                raise VirtioError(f"queue {vq.index} reset did not complete")
            await self.transport.sleep(1e-6)
        dropped = vq.outstanding
        if vq is self.rxq:
            for buf in self._rx_buffers.values():  # the device gave them up with the queue
                self.transport.free_dma(buf)
            self._rx_buffers.clear()
        vq.reset_state()
        vector = RX_VECTOR if vq is self.rxq else TX_VECTOR
        await self._program_queue(vq, vector)
        if vq is self.rxq:
            self.refill_rx()
            await vq.kick()
        else:
            self._tx_free.extend(self._tx_buffers)
            self._tx_buffers = []
        return dropped

    # ---- traffic ----------------------------------------------------------------------------------------
    def _split(self, addr: int, length: int, parts: int) -> list[tuple[int, int]]:
        parts = max(1, min(parts, length))
        step = length // parts
        out = []
        for i in range(parts):
            n = step if i + 1 < parts else length - step * (parts - 1)
            out.append((addr + i * step, n))
        return out

    def refill_rx(self) -> int:
        """Post receive buffers until the ring has no room for another chain; returns how many."""
        vq = self.rxq
        assert vq is not None and self.rx_buffer_size is not None
        if vq.broken:  # before allocating: a buffer that add_chain then refuses would stay mapped for ever
            raise VirtqueueBroken(vq.broken)
        added = 0
        while vq.num_free >= self.rx_chain:
            buf = self.transport.alloc_dma(self.rx_buffer_size, align=64)
            vq.add_chain([], self._split(buf.iova, buf.size, self.rx_chain), token=buf)
            self._rx_buffers[buf.iova] = buf
            added += 1
        if added:
            self.stats.rx_refills += 1
        return added

    async def send(self, frame: bytes, *, kick: bool = True) -> None:
        """Queue one frame (with its virtio_net_hdr) on the transmit queue."""
        vq = self.txq
        assert vq is not None
        if not frame or len(frame) > self.mtu + 14 + 4:
            raise ValueError(f"frame of {len(frame)} bytes outside 1..{self.mtu + 18}")
        self.reclaim_tx()
        if vq.num_free < self.tx_chain:
            raise VirtqueueFull("transmit queue full")
        need = spec.NET_HDR.size + len(frame)
        buf = next((b for b in self._tx_free if b.size >= need), None)
        if buf is None:
            buf = self.transport.alloc_dma(max(need, 2048), align=64)
        else:
            self._tx_free.remove(buf)
        buf.write(0, spec.NET_HDR.pack())  # no offloads negotiated: an all-zero header (5.1.6.2)
        buf.write(spec.NET_HDR.size, frame)
        # tx_chain == 1: header and frame in one descriptor (as Linux does); otherwise the whole buffer is split
        # into tx_chain descriptors, so the header may straddle descriptors and the device must cope (5.1.6.2).
        elements = self._split(buf.iova, need, self.tx_chain)
        vq.add_chain(elements, [], token=buf)
        self._tx_buffers.append(buf)
        self.stats.frames_sent += 1
        self.stats.bytes_sent += len(frame)
        if kick:
            await vq.kick()

    def reclaim_tx(self) -> int:
        vq = self.txq
        assert vq is not None
        done = vq.get_used()
        for used in done:
            buf: DmaBuffer = used.token
            self._tx_buffers.remove(buf)
            self._tx_free.append(buf)
            if self.on_tx_used is not None:
                self.on_tx_used(spec.NET_TX_QUEUE, used)
        return len(done)

    def poll_rx(self) -> list[bytes]:
        """Frames the device has delivered since the last poll (without waiting); refills the ring."""
        vq = self.rxq
        assert vq is not None
        frames = []
        for used in vq.get_used():
            if used.length < spec.NET_HDR.size:
                raise VirtioError(f"receive used length {used.length} shorter than virtio_net_hdr")
            frames.append(self.take_rx(used))
        for frame in frames:
            self.stats.frames_received += 1
            self.stats.bytes_received += len(frame)
        if frames:
            self.refill_rx()
        return frames

    def take_rx(self, used: UsedBuffer) -> bytes:
        """Release a completed receive buffer and return its frame (the bytes after virtio_net_hdr)."""
        buf: DmaBuffer = used.token
        frame = buf.read(spec.NET_HDR.size, max(used.length - spec.NET_HDR.size, 0))
        self._rx_buffers.pop(buf.iova, None)
        self.transport.free_dma(buf)
        return frame

    async def receive(self, count: int, timeout: float = 1.0) -> list[bytes]:
        """Wait (on the RX interrupt, re-checking the ring) until ``count`` frames arrived or time runs out."""
        vq = self.rxq
        assert vq is not None
        frames: list[bytes] = []
        deadline = self.transport.now() + timeout
        while len(frames) < count:
            got = self.poll_rx()
            frames += got
            if got:
                await vq.kick()
                continue
            if len(frames) >= count:
                break
            remaining = deadline - self.transport.now()
            if remaining <= 0:
                break
            status = await self.dev.read_status()  # raises DeviceStatusError if the device's status lies
            if status & Status.DEVICE_NEEDS_RESET:
                break
            if await self.transport.wait_irq(RX_VECTOR, min(remaining, 0.05)):
                vq.note_interrupt()  # raises InterruptStorm after a long run of interrupts with nothing used
        return frames

    async def wait_tx_done(self, timeout: float = 1.0) -> bool:
        vq = self.txq
        assert vq is not None
        deadline = self.transport.now() + timeout
        while True:
            self.reclaim_tx()
            if vq.outstanding == 0:
                return True
            if self.transport.now() > deadline:
                return False
            if await self.transport.wait_irq(TX_VECTOR, 0.01):
                vq.note_interrupt()

    async def stop(self) -> None:
        """Reset the device (2.4) so it stops all DMA, then release every buffer."""
        await self.dev.reset()
        for vq in (self.rxq, self.txq):
            if vq is not None:
                vq.close()
        for buf in list(self._rx_buffers.values()) + self._tx_buffers + self._tx_free:
            self.transport.free_dma(buf)
        self._rx_buffers.clear()
        self._tx_buffers.clear()
        self._tx_free.clear()
