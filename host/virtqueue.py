"""The driver's packed virtqueue (spec 2.8), with the state names of Linux's ``virtio_ring.c``.

The ring, the driver area (driver event suppression) and the device area (device event suppression) live in
DMA memory from the transport; the driver writes descriptors through a memoryview and reads used elements
back from it.  Nothing from the device is trusted: a used element whose id is not an outstanding buffer, or
whose length exceeds the buffer's writable bytes, whose flags carry the wrong wrap counter, or an interrupt
that keeps firing with nothing used, marks the queue broken with a clear error (as Linux's ``BAD_RING`` does)
instead of corrupting the driver's state.  A broken queue raises on every later use until it is reset, and
the driver keeps every buffer the device was given mapped until then: it was never handed back.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from host.transport import DmaBuffer, Transport
from virtio_fpga import spec
from virtio_fpga.spec import EVENT_SUPPRESS, PACKED_DESC, DescFlag, EventFlags


class VirtqueueBroken(Exception):
    """The device wrote something impossible into the ring; the queue is unusable until reset."""


class InterruptStorm(VirtqueueBroken):
    """The queue's interrupt kept firing with nothing used (Linux: "irq nobody cared" disables the line)."""


class VirtqueueFull(Exception):
    """Not enough free descriptors for the chain (the caller should harvest used buffers first)."""


@dataclass
class _BufferState:
    """What the driver remembers about one outstanding buffer (Linux: vring_desc_state_packed)."""

    token: Any
    num: int  # descriptors in the chain
    writable: int  # device-writable bytes: the most the device may report as used length


@dataclass
class UsedBuffer:
    token: Any
    length: int
    id: int = 0


class PackedVirtqueue:
    """One packed virtqueue, driver side."""

    #: Interrupts in a row that found nothing used before the queue is declared broken.  Honest devices give
    #: one now and then (an interrupt for buffers a poll already harvested); Linux's spurious-IRQ detector
    #: gives up on a line at 99,900 of 100,000 unhandled, which at driver speed is the same order.
    STORM_LIMIT = 1000

    def __init__(
        self,
        transport: Transport,
        index: int,
        size: int,
        *,
        notify_bar: int,
        notify_offset: int,
        notification_data: bool,
        event_idx: bool,
        in_order: bool,
        notify_config_data: int | None = None,
    ) -> None:
        if not 1 <= size <= spec.MAX_PACKED_QUEUE_SIZE:
            raise ValueError(f"queue size {size} outside 1..{spec.MAX_PACKED_QUEUE_SIZE} (2.8.10.1)")
        self.transport = transport
        self.index = index
        self.size = size
        self.notify_bar = notify_bar
        self.notify_offset = notify_offset
        self.notification_data = notification_data
        self.event_idx = event_idx
        self.in_order = in_order
        self.notify_config_data = notify_config_data
        self.ring: DmaBuffer = transport.alloc_dma(size * PACKED_DESC.size, align=spec.PACKED_DESC_ALIGN)
        self.driver_area: DmaBuffer = transport.alloc_dma(EVENT_SUPPRESS.size, align=spec.EVENT_SUPPRESS_ALIGN)
        self.device_area: DmaBuffer = transport.alloc_dma(EVENT_SUPPRESS.size, align=spec.EVENT_SUPPRESS_ALIGN)
        self.broken: str | None = None
        self.kicks = 0
        self.kicks_suppressed = 0
        #: Used elements of writable buffers that lacked VIRTQ_DESC_F_WRITE (a device deviation, see get_used).
        self.used_without_write_flag = 0
        #: Interrupts that found nothing used (all of them, and the current unbroken run).
        self.spurious_interrupts = 0
        self.spurious_run = 0
        self._init_state()

    def _init_state(self) -> None:
        self.next_avail_idx = 0
        self.avail_wrap_counter = 1
        self.last_used_idx = 0
        self.used_wrap_counter = 1
        self.num_free = self.size
        self.free_ids: deque[int] = deque(range(self.size))
        self.desc_state: dict[int, _BufferState] = {}
        self.avail_order: deque[int] = deque()  # outstanding ids in the order made available (IN_ORDER)
        self.event_flags = EventFlags.ENABLE
        # Where the device's view stood at the last kick, for EVENT_IDX on the device's event structure.
        self._kicked_at = (0, 1)
        self.ring.mem[:] = bytes(self.ring.size)  # 2.8.13: the descriptor ring starts zeroed
        self.driver_area.mem[:] = EVENT_SUPPRESS.pack(flags=EventFlags.ENABLE)
        self.device_area.mem[:] = bytes(EVENT_SUPPRESS.size)

    def reset_state(self) -> None:
        """Forget everything after a queue or device reset (buffers in flight are lost with it)."""
        self.broken = None
        self.spurious_run = 0
        self._init_state()

    @property
    def addresses(self) -> tuple[int, int, int]:
        return self.ring.iova, self.driver_area.iova, self.device_area.iova

    def close(self) -> None:
        for buf in (self.ring, self.driver_area, self.device_area):
            self.transport.free_dma(buf)

    # ---- making buffers available (2.8.17 "Supplying Buffers to The Device") -----------------------------
    def add_chain(self, out_bufs: list[tuple[int, int]], in_bufs: list[tuple[int, int]], token: Any) -> int:
        """Expose a chain: device-readable elements first, then device-writable (2.8.7 MUST); returns its id.

        The head descriptor's flags are written last, so the device can never see a partial chain (2.8.6).
        """
        if self.broken:
            raise VirtqueueBroken(self.broken)
        elements = [(a, n, 0) for a, n in out_bufs] + [(a, n, DescFlag.WRITE) for a, n in in_bufs]
        if not elements:
            raise ValueError("a buffer has at least one element (2.8)")
        if len(elements) > self.size:
            raise ValueError(f"chain of {len(elements)} is longer than the queue ({self.size}) (2.8.7 MUST NOT)")
        if len(elements) > self.num_free:
            raise VirtqueueFull(f"queue {self.index}: {len(elements)} descriptors wanted, {self.num_free} free")
        if any(n <= 0 for _, n, _ in elements):
            raise ValueError("element lengths must be positive")
        buffer_id = self.free_ids.popleft()
        head = self.next_avail_idx
        avail_used = self._avail_flags()
        head_flags = 0
        idx = head
        for i, (addr, length, write) in enumerate(elements):
            flags = write | avail_used
            if i + 1 < len(elements):
                flags |= DescFlag.NEXT
            # Linux writes the id into every descriptor; the spec only needs it in the last (2.8.6).
            raw = PACKED_DESC.pack(addr=addr, len=length, id=buffer_id, flags=0)
            self.ring.mem[idx * 16 : idx * 16 + 14] = raw[:14]
            if i == 0:
                head_flags = flags
            else:
                self.ring.mem[idx * 16 + 14 : idx * 16 + 16] = int(flags).to_bytes(2, "little")
            idx += 1
            if idx == self.size:
                idx = 0
                self.avail_wrap_counter ^= 1
                avail_used = self._avail_flags()
        self.next_avail_idx = idx
        self.num_free -= len(elements)
        writable = sum(n for _, n, w in elements if w)
        self.desc_state[buffer_id] = _BufferState(token, len(elements), writable)
        self.avail_order.append(buffer_id)
        # The head's flags last: a store of 16 bits, after every other descriptor of the chain.
        self.ring.mem[head * 16 + 14 : head * 16 + 16] = int(head_flags).to_bytes(2, "little")
        return buffer_id

    def _avail_flags(self) -> int:
        return int(DescFlag.AVAIL) if self.avail_wrap_counter else int(DescFlag.USED)

    def kick_prepare(self) -> bool:
        """Does the device want a notification?  (Its event suppression structure, 2.8.10 / 2.8.14.)"""
        event = EVENT_SUPPRESS.unpack(self.device_area.read(0, EVENT_SUPPRESS.size))
        old = self._kicked_at
        new = (self.next_avail_idx, self.avail_wrap_counter)
        self._kicked_at = new
        if event["flags"] == EventFlags.DISABLE:
            return False
        if event["flags"] == EventFlags.DESC and self.event_idx:
            return self._crossed(old, new, event["desc_event_off"], event["desc_event_wrap"])
        return True

    def _crossed(self, old: tuple[int, int], new: tuple[int, int], off: int, wrap: int) -> bool:
        span = 2 * self.size

        def linear(idx: int, w: int) -> int:
            return idx + (0 if w else self.size)

        start = linear(*old)
        return (linear(off % self.size, wrap) - start) % span < (linear(*new) - start) % span

    def notification_value(self) -> tuple[int, int]:
        """(size, value) of the doorbell write: notification data (4.1.5.2) or the 16-bit queue index."""
        if self.notification_data:
            vqn = self.index if self.notify_config_data is None else self.notify_config_data
            return 4, spec.NOTIFY_DATA.to_int(vqn=vqn, next_off=self.next_avail_idx, next_wrap=self.avail_wrap_counter)
        return 2, self.index

    async def notify(self) -> None:
        size, value = self.notification_value()
        self.kicks += 1
        await self.transport.bar_write(self.notify_bar, self.notify_offset, size, value)

    async def kick(self) -> bool:
        """Notify the device if it wants to be notified; returns whether a doorbell was written."""
        if self.kick_prepare():
            await self.notify()
            return True
        self.kicks_suppressed += 1
        return False

    # ---- used buffers (2.8.18 "Receiving Used Buffers From The Device") --------------------------------------
    def _used_flags_at(self, idx: int) -> int:
        return int.from_bytes(self.ring.mem[idx * 16 + 14 : idx * 16 + 16], "little")

    def more_used(self) -> bool:
        """Is the slot at last_used_idx a used element of the current lap (2.8.1)?  Raises on a wrong wrap."""
        if self.broken:
            return False
        flags = self._used_flags_at(self.last_used_idx)
        avail = bool(flags & DescFlag.AVAIL)
        used = bool(flags & DescFlag.USED)
        wrap = bool(self.used_wrap_counter)
        if avail == used == wrap:
            return True
        if self.desc_state and not (avail == wrap and used != wrap):
            # With buffers outstanding, the slot at last_used_idx was written by this driver in the current lap
            # (AVAIL = wrap, USED = !wrap) and the device may only turn it into a used element of the same lap
            # (AVAIL = USED = wrap).  Anything else is the device writing a wrong wrap counter: taking it as
            # "nothing used" would wait forever, taking it as used would read a stale lap.
            self._break(
                f"queue {self.index}: used flags {flags:#06x} at slot {self.last_used_idx} carry the wrong wrap"
                f" counter (AVAIL={int(avail)} USED={int(used)}, used wrap counter {int(wrap)}) (2.8.1)"
            )
        return False

    def get_used(self) -> list[UsedBuffer]:
        """Harvest every used buffer the device has written, in ring order (raises on a broken queue)."""
        if self.broken:
            raise VirtqueueBroken(self.broken)
        out: list[UsedBuffer] = []
        while self.more_used():
            elem = PACKED_DESC.unpack(self.ring.read(self.last_used_idx * 16, 16))
            buffer_id = elem["id"]
            state = self.desc_state.get(buffer_id)
            if state is None:
                self._break(f"queue {self.index}: used id {buffer_id} is not an outstanding buffer")
            # 2.8.5: the used length is only defined with WRITE in the used flags.  QEMU (10.0) leaves WRITE out
            # even for receive buffers it filled, and Linux never looks at the flag, so, like Linux, the length
            # of a buffer with device-writable parts is taken as given (and bounded below); the deviation is
            # counted so that traces and reports can show it.  A read-only buffer's used length means nothing.
            length = elem["len"] if state.writable else 0
            if state.writable and not elem["flags"] & DescFlag.WRITE:
                self.used_without_write_flag += 1
            if length > state.writable:
                self._break(
                    f"queue {self.index}: used length {length} exceeds the {state.writable} writable bytes"
                    f" of id {buffer_id}"
                )
            if self.in_order:
                # 2.8.21: one used element may stand for a batch ending at buffer_id; all before it are done.
                if buffer_id not in self.avail_order:
                    self._break(f"queue {self.index}: in-order used id {buffer_id} is not outstanding")
                while True:
                    done = self.avail_order.popleft()
                    out.append(self._detach(done, length if done == buffer_id else 0))
                    if done == buffer_id:
                        break
            else:
                self.avail_order.remove(buffer_id)
                out.append(self._detach(buffer_id, length))
        if out:
            self.spurious_run = 0
        return out

    def note_interrupt(self) -> bool:
        """Account one interrupt of this queue's vector; False when it found nothing used (spurious).

        Linux's ``vring_interrupt`` answers IRQ_NONE then; an unbroken run of :attr:`STORM_LIMIT` such
        interrupts breaks the queue with :class:`InterruptStorm` rather than letting a device keep the driver
        spinning on wake-ups.
        """
        if self.broken:
            raise VirtqueueBroken(self.broken)
        if self.more_used():
            self.spurious_run = 0
            return True
        self.spurious_interrupts += 1
        self.spurious_run += 1
        if self.spurious_run >= self.STORM_LIMIT:
            message = (
                f"queue {self.index}: interrupt storm: {self.spurious_run} interrupts in a row with no used buffer"
            )
            self.broken = message
            raise InterruptStorm(message)
        return False

    def _detach(self, buffer_id: int, length: int) -> UsedBuffer:
        state = self.desc_state.pop(buffer_id)
        self.last_used_idx += state.num
        if self.last_used_idx >= self.size:
            self.last_used_idx -= self.size
            self.used_wrap_counter ^= 1
        self.num_free += state.num
        self.free_ids.append(buffer_id)
        return UsedBuffer(state.token, length, buffer_id)

    def _break(self, message: str) -> None:
        self.broken = message
        raise VirtqueueBroken(message)

    @property
    def outstanding(self) -> int:
        return len(self.desc_state)

    # ---- driver event suppression (2.8.10) --------------------------------------------------------------
    def disable_cb(self) -> None:
        self._write_driver_event(EventFlags.DISABLE)

    def enable_cb(self) -> None:
        self._write_driver_event(EventFlags.ENABLE)

    def enable_cb_delayed(self, after: int | None = None) -> None:
        """EVENT_IDX: ask for an interrupt only once the device has used up to ``after`` more descriptors."""
        if not self.event_idx:
            self.enable_cb()
            return
        ahead = self.size - self.num_free if after is None else after
        ahead = max(0, min(ahead, self.size - 1))
        off = self.last_used_idx + max(ahead - 1, 0)
        wrap = self.used_wrap_counter
        if off >= self.size:
            off -= self.size
            wrap ^= 1
        self._write_driver_event(EventFlags.DESC, off, wrap)

    def _write_driver_event(self, flags: EventFlags, off: int = 0, wrap: int = 0) -> None:
        self.event_flags = flags
        self.driver_area.write(0, EVENT_SUPPRESS.pack(desc_event_off=off, desc_event_wrap=wrap, flags=flags))
