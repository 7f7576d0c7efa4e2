"""A TLP-level DMA monitor: every memory request the device puts on the link is judged against the virtio rules.

Why here and not in the guard bytes: guard bytes see a stray write after the fact and never a stray read, a
write into the *wrong* buffer, a write into the right buffer after it was returned, or a used element one
slot off.  The monitor sees every TLP the device transmits (at the device's end of the simulated link, in
link order, whichever hard IP model produced it: :mod:`sim.usp` or :mod:`sim.ptile`) and every TLP the host
sends to it, and keeps the state a judge needs:

* **the registers the driver wrote** (memory writes to BAR 0 on their way to the device): feature bits,
  device status, queue size and addresses per queue (the values in force when ``queue_enable`` was written),
  queue reset, the MSI-X table entries;
* **what the driver published, as the device saw it**: the completions of the device's own reads of a
  descriptor ring carry the descriptors it was shown.  The monitor walks them in ring order with its own wrap
  counter (2.8.1: a descriptor is available when AVAIL equals the wrap counter and USED does not), groups them
  into chains (2.8.6, the buffer id is the last descriptor's) and treats every descriptor of a chain as an
  outstanding buffer from then on.  No hook in the driver is needed, and a hostile driver is covered: a buffer
  is what the ring said when the device read it;
* **what the device returned**: its used-element writes (id, len, flags from the TLP payload), which end the
  buffers they name (with VIRTIO_F_IN_ORDER every buffer up to that id, 2.8.21.1) and move the used position
  by their descriptor count;
* **resets**: a read of ``device_status`` completing with 0 ends everything the device had (2.4.1: the reset
  is done only when it reads back 0); a read of ``queue_reset`` completing with 0 for a queue being reset ends
  that queue (4.1.4.3.2, RING_RESET).

Each device request must then be inside one of (:data:`RULES` names every way it can fail):

* a live queue's descriptor ring: reads anywhere in it; writes only as a used element into the slot at the
  queue's used position, with AVAIL = USED = the used wrap counter, naming an outstanding buffer;
* a live queue's driver area (4 bytes, read only) or device area (4 bytes, written only) (2.8.10);
* one descriptor of an outstanding buffer of the right direction: reads only from device-readable, writes only
  into device-writable descriptors, within ``[addr, addr + len)``;
* for a 4-byte write, a programmed MSI-X table entry's address with its data (PCIe Base 6.1.4).

Malformed chains (2.8.6/2.8.7 rules the device must reject): an INDIRECT descriptor (the feature is never
offered) is not a buffer, and neither is anything after it or after the descriptor that makes a chain longer
than the queue; the queue's walk stops there until the next reset.  Descriptors of the chain before the
malformed one stay outstanding: a pipelined device may already have started on them, which the spec allows.
A zero length, an unmapped address or a wrong WRITE flag need no special case: the direction and length
rules already say what may be touched (nothing, the descriptor as given, or nothing in that direction).

Not followed (documented limits): register writes through the PCI configuration access capability (4.1.4.9),
split rings (the device refuses them), indirect tables (never offered).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from cocotbext.pcie.core.tlp import CplStatus, Tlp, TlpType

from virtio_fpga import device_map, spec
from virtio_fpga.spec import DescFlag, Feature

DESC_BYTES = spec.PACKED_DESC.size
EVENT_BYTES = spec.EVENT_SUPPRESS.size

#: Every rule the monitor can report, with what it means.
RULES: dict[str, str] = {
    "ring-bounds": "a descriptor-ring access that runs past the ring's end (or starts before it)",
    "used-slot": "a write into a descriptor ring that is not at the queue's used position (2.8.6)",
    "used-element": "a used element that names no outstanding buffer, has the wrong wrap bits or a length "
    "above the buffer's writable bytes (2.8.4-2.8.6)",
    "driver-area-write": "a write to the driver event suppression structure (read-only for the device, 2.8.10)",
    "device-area-read": "a read of the device event suppression structure (written by the device, 2.8.10)",
    "read-of-writable": "a read of a device-writable buffer (2.8.2: the device only writes it)",
    "write-to-readable": "a write into a device-readable buffer (2.8.2: the device only reads it)",
    "beyond-buffer": "an access that starts in a buffer but runs past its end (or spans two descriptors)",
    "not-outstanding": "an access to a buffer the device has already returned as used",
    "malformed-chain": "an access to a descriptor the chain rules reject (INDIRECT, beyond the queue size)",
    "after-reset": "DMA to a structure or buffer that a device reset (read back 0) ended",
    "after-queue-reset": "DMA to a structure or buffer of a queue that a queue reset (read back 0) ended",
    "msix-address": "a 4-byte write to the MSI region that matches no programmed MSI-X table entry",
    "outside": "a read or write that is in no ring, event suppression structure or available buffer",
}

#: cocotbext-pcie's RootComplex puts its MSI region here (``cocotbext.pcie.core.rc``).
RC_MSI_BASE = 0x8000_0000
RC_MSI_SIZE = 0x1000_0000

_READS = (TlpType.MEM_READ, TlpType.MEM_READ_64)
_WRITES = (TlpType.MEM_WRITE, TlpType.MEM_WRITE_64)
_COMPLETIONS = (TlpType.CPL, TlpType.CPL_DATA)
_AVAIL = int(DescFlag.AVAIL)
_USED = int(DescFlag.USED)
_NEXT = int(DescFlag.NEXT)
_WRITE = int(DescFlag.WRITE)
_INDIRECT = int(DescFlag.INDIRECT)
_COMMON = device_map.COMMON_CFG_OFFSET
_COMMON_END = _COMMON + spec.COMMON_CFG.size
_MSIX = device_map.MSIX_TABLE_OFFSET
_MSIX_END = _MSIX + 16 * device_map.NUM_MSIX_VECTORS
#: (byte offset, size) of the common-configuration fields the monitor follows
_FIELDS = {
    f.name: (f.byte_offset, f.byte_size)
    for f in spec.COMMON_CFG.fields
    if f.name
    in (
        "driver_feature_select",
        "driver_feature",
        "device_status",
        "queue_select",
        "queue_size",
        "queue_enable",
        "queue_desc",
        "queue_driver",
        "queue_device",
        "queue_reset",
    )
}
_FIELD_AT = {off + i: name for name, (off, size) in _FIELDS.items() for i in range(size)}


class StrayDma(AssertionError):
    """The device made a DMA request the virtio rules do not allow (the message names the first one)."""


@dataclass(frozen=True)
class Violation:
    """One device request the rules do not allow: which rule, the TLP (kind, address, length) and when."""

    rule: str
    tlp: str  # "MemRd" or "MemWr"
    addr: int
    length: int
    time_ns: float
    cycle: int | None = None
    queue: int | None = None
    detail: str = ""

    def __str__(self) -> str:
        where = f"t={self.time_ns:.1f} ns" + (f", cycle {self.cycle}" if self.cycle is not None else "")
        q = f" (queue {self.queue})" if self.queue is not None else ""
        return f"{self.rule}{q}: {self.tlp} {self.addr:#x}+{self.length} at {where}: {self.detail}"

    def as_dict(self) -> dict:
        return {
            "rule": self.rule,
            "tlp": self.tlp,
            "addr": self.addr,
            "length": self.length,
            "time_ns": self.time_ns,
            "cycle": self.cycle,
            "queue": self.queue,
            "detail": self.detail,
            "text": str(self),
        }


@dataclass
class _Desc:
    addr: int
    length: int
    writable: bool
    buffer: _Buffer

    @property
    def end(self) -> int:
        return self.addr + self.length


@dataclass(eq=False)
class _Buffer:
    queue: int
    seq: int
    descs: list[_Desc] = field(default_factory=list)
    id: int | None = None  # known once the chain's last descriptor was seen
    complete: bool = False

    @property
    def writable_bytes(self) -> int:
        return sum(d.length for d in self.descs if d.writable)


@dataclass
class _Retired:
    """A structure or buffer that a reset or a used element ended (only to name the rule of a later access)."""

    start: int
    end: int
    rule: str
    what: str


class _Queue:
    """What the monitor knows about one virtqueue: the driver's registers and the device-visible ring state."""

    def __init__(self, index: int) -> None:
        self.index = index
        # registers as the driver last wrote them (taken when queue_enable is written)
        self.reg_size = device_map.MAX_QUEUE_SIZE
        self.reg_desc = 0
        self.reg_driver = 0
        self.reg_device = 0
        self.live = False
        self.resetting = False
        self.epoch = 0
        self._start_state()

    def _start_state(self) -> None:
        self.size = self.reg_size
        self.desc = self.reg_desc
        self.driver = self.reg_driver
        self.device = self.reg_device
        self.next_avail = 0
        self.avail_wrap = 1
        self.next_used = 0
        self.used_wrap = 1
        self.cache: dict[int, bytes] = {}  # slot -> descriptor bytes the device was shown, not yet walked
        self.chain: _Buffer | None = None
        self.outstanding: list[_Buffer] = []  # in the order they were made available
        self.dead: str | None = None  # the walk stopped at a malformed descriptor
        self.rejected: list[_Retired] = []
        self.used_shadow: dict[int, bytearray] = {}  # slot -> bytes the device wrote (partial used writes)

    def enable(self) -> None:
        self.live = True
        self.resetting = False
        self.epoch += 1
        self._start_state()

    def in_ring(self, addr: int) -> bool:
        return self.desc <= addr < self.desc + self.size * DESC_BYTES


class DmaMonitor:
    """Judges every DMA request of one device; see the module docstring for the rules.

    Feed it with :meth:`host_tlp` (every TLP the host sends to the device) and :meth:`device_tlp` (every TLP
    the device sends), or let :meth:`attach` tap a bench's link.  ``bar_offset(addr)`` maps a host address to
    an offset in the device's BAR 0 (``None`` outside it); ``now_ns`` and ``cycle`` give the time of an event.
    """

    max_violations = 1000

    def __init__(
        self,
        bar_offset: Callable[[int], int | None],
        *,
        now_ns: Callable[[], float] = lambda: 0.0,
        cycle: Callable[[], int | None] = lambda: None,
        log: logging.Logger | None = None,
    ) -> None:
        self.bar_offset = bar_offset
        self.now_ns = now_ns
        self.cycle = cycle
        self.log = log or logging.getLogger("cocotb.dma_monitor")
        #: every rule violation, oldest first (capped at ``max_violations``; ``violation_count`` counts all)
        self.violations: list[Violation] = []
        self.violation_count = 0
        #: called with each :class:`Violation` as it happens (the bench stops a run at the first one)
        self.on_violation: list[Callable[[Violation], None]] = []
        # counters
        self.tlps_checked = 0
        self.reads_checked = 0
        self.writes_checked = 0
        self.msix_writes = 0
        self.buffers_published = 0
        self.used_elements = 0
        #: (time_ns, "device" | "queue", queue index or None) of every reset the monitor saw complete
        self.resets: list[tuple[float, str, int | None]] = []
        # driver-side register state
        self.queues = [_Queue(i) for i in range(device_map.NUM_QUEUES)]
        self.queue_select = 0
        self.driver_feature_select = 0
        self.driver_features = 0
        self.status = 0
        self.reset_pending = False
        self.msix_table = bytearray(16 * device_map.NUM_MSIX_VECTORS)
        self._seq = 0
        self._host_reads: dict[int, tuple[int, int, int]] = {}  # RC tag -> (BAR offset, bytes, queue_select)
        self._ring_reads: dict[int, list] = {}  # device tag -> [queue, epoch, addr, nbytes, bytearray]
        self._retired: deque[_Retired] = deque(maxlen=4096)

    # ---- attaching to a bench ------------------------------------------------------------------------
    @classmethod
    def attach(cls, bench) -> DmaMonitor:
        """Tap ``bench.dev``'s link in both directions (after the link counters, before serialisation)."""
        from cocotb.simtime import get_sim_time

        fn = bench.dev.functions[0]

        def bar_offset(addr: int) -> int | None:
            hit = fn.match_bar(addr)
            return hit[1] if hit is not None and hit[0] == device_map.BAR else None

        monitor = cls(bar_offset, now_ns=lambda: get_sim_time("ns"), cycle=lambda: bench.counters.cycles)
        _tap(bench.dev.upstream_port, monitor.device_tlp)
        _tap(bench.dev.upstream_port.other, monitor.host_tlp)
        return monitor

    # ---- results -------------------------------------------------------------------------------------
    def check(self) -> None:
        """Raise :class:`StrayDma` naming the first violation (and how many there were), if any."""
        if self.violation_count:
            more = f" (and {self.violation_count - 1} more)" if self.violation_count > 1 else ""
            raise StrayDma(f"stray DMA: {self.violations[0]}{more}")

    def stats(self) -> dict:
        return {
            "tlps_checked": self.tlps_checked,
            "reads_checked": self.reads_checked,
            "writes_checked": self.writes_checked,
            "msix_writes": self.msix_writes,
            "buffers_published": self.buffers_published,
            "used_elements": self.used_elements,
            "violations": self.violation_count,
        }

    def note_function_reset(self) -> None:
        """A reset the monitor cannot see in the registers (e.g. a Function Level Reset, PCIe Base 6.6.2)."""
        self._device_reset_done("function reset")

    # ---- host -> device --------------------------------------------------------------------------------
    def host_tlp(self, tlp: Tlp) -> None:
        t = tlp.fmt_type
        if t in _COMPLETIONS:
            read = self._ring_reads.get(tlp.tag)
            if read is not None:
                self._ring_completion(tlp, read)
        elif t in _WRITES:
            off = self.bar_offset(tlp.address)
            if off is not None:
                self._register_write(off, tlp)
        elif t in _READS:
            off = self.bar_offset(tlp.address)
            if off is not None:
                first = tlp.get_first_be_offset()
                self._host_reads[tlp.tag] = (off + first, tlp.get_be_byte_count(), self.queue_select)

    def _register_write(self, off: int, tlp: Tlp) -> None:
        if off + len(tlp.data) <= _COMMON or _COMMON_END <= off < _MSIX or off >= _MSIX_END:
            return  # neither the common configuration nor the MSI-X table (notifications, ISR, ...)
        touched: dict[str, dict[int, int]] = {}
        for i, b in _enabled_bytes(tlp):
            at = off + i  # BAR offset of this byte (``off`` is that of the TLP's dword-aligned address)
            if _COMMON <= at < _COMMON_END:
                name = _FIELD_AT.get(at - _COMMON)
                if name is not None:
                    touched.setdefault(name, {})[at - _COMMON - _FIELDS[name][0]] = b
            elif _MSIX <= at < _MSIX_END:
                self.msix_table[at - _MSIX] = b
        # queue_select first: a write that covers it and a queue field applies to the new queue
        for name in sorted(touched, key=lambda n: n != "queue_select"):
            self._field_write(name, touched[name])

    def _field_write(self, name: str, bytes_: dict[int, int]) -> None:
        def merged(old: int) -> int:
            for k, b in bytes_.items():
                old = (old & ~(0xFF << (8 * k))) | (b << (8 * k))
            return old

        q = self.queues[self.queue_select] if self.queue_select < len(self.queues) else None
        if name == "queue_select":
            self.queue_select = merged(self.queue_select)
        elif name == "driver_feature_select":
            self.driver_feature_select = merged(self.driver_feature_select)
        elif name == "driver_feature":
            if self.driver_feature_select < 2:
                shift = 32 * self.driver_feature_select
                word = merged((self.driver_features >> shift) & 0xFFFFFFFF)
                self.driver_features = (self.driver_features & ~(0xFFFFFFFF << shift)) | (word << shift)
        elif name == "device_status":
            value = merged(self.status)
            if value == 0:
                self.reset_pending = True  # done when it reads back 0
            else:
                self.status = value
        elif q is None:
            return
        elif name == "queue_enable":
            if merged(0) & 1 and not q.live and not q.resetting:
                q.enable()
        elif name == "queue_reset":
            if merged(0) & 1 and q.live:
                q.resetting = True  # done when it reads back 0
        elif not q.live:  # 4.1.4.3.2: ring registers do not change while the queue is enabled
            if name == "queue_size":
                value = merged(q.reg_size)
                if 0 < value <= device_map.MAX_QUEUE_SIZE:
                    q.reg_size = value
            elif name == "queue_desc":
                q.reg_desc = merged(q.reg_desc)
            elif name == "queue_driver":
                q.reg_driver = merged(q.reg_driver)
            elif name == "queue_device":
                q.reg_device = merged(q.reg_device)

    def _ring_completion(self, tlp: Tlp, read: list) -> None:
        """Data of one of the device's descriptor-ring reads: the descriptors it is shown, slot by slot."""
        qi, epoch, addr, nbytes, got, covered = read
        if tlp.status != CplStatus.SC or tlp.fmt_type != TlpType.CPL_DATA:
            del self._ring_reads[tlp.tag]  # an error completion ends the request (PCIe Base 2.3.1)
            return
        byte_count = tlp.byte_count or 4096
        offset = max(0, nbytes - byte_count)  # byte_count: bytes left including this completion (2.2.9)
        lead = tlp.lower_address & 3
        chunk = bytes(tlp.data[lead : lead + min(byte_count, len(tlp.data) - lead)])[: nbytes - offset]
        got[offset : offset + len(chunk)] = chunk
        covered[offset : offset + len(chunk)] = b"\x01" * len(chunk)
        if byte_count <= len(chunk):
            del self._ring_reads[tlp.tag]
        q = self.queues[qi]
        if q.epoch != epoch or not q.live:
            return  # the queue was reset or re-enabled since the read was issued: stale data
        rel = (q.desc - addr) % DESC_BYTES  # first slot boundary in the request
        while rel + DESC_BYTES <= nbytes:
            if rel + DESC_BYTES > offset and rel < offset + len(chunk) and all(covered[rel : rel + DESC_BYTES]):
                self._shown(q, (addr + rel - q.desc) // DESC_BYTES, bytes(got[rel : rel + DESC_BYTES]))
            rel += DESC_BYTES
        self._walk(q)

    def _shown(self, q: _Queue, slot: int, raw: bytes) -> None:
        if not 0 <= slot < q.size:
            return
        old = q.cache.get(slot)
        # A slot the device was already shown available keeps that view (a driver may not take it back).
        if old is None or not self._available(q, slot, old) or self._available(q, slot, raw):
            q.cache[slot] = raw

    def _available(self, q: _Queue, slot: int, raw: bytes) -> bool:
        flags = int.from_bytes(raw[14:16], "little")
        wrap = q.avail_wrap if slot >= q.next_avail else q.avail_wrap ^ 1
        return bool(flags & _AVAIL) == bool(wrap) and bool(flags & _USED) != bool(wrap)

    def _walk(self, q: _Queue) -> None:
        """Consume available descriptors in ring order (2.8.1) into chains (2.8.6)."""
        while q.dead is None:
            raw = q.cache.get(q.next_avail)
            if raw is None or not self._available(q, q.next_avail, raw):
                return
            del q.cache[q.next_avail]
            q.next_avail += 1
            if q.next_avail == q.size:
                q.next_avail = 0
                q.avail_wrap ^= 1
            d = spec.PACKED_DESC.unpack(raw)
            flags = d["flags"]
            if q.chain is None:
                self._seq += 1
                q.chain = _Buffer(q.index, self._seq)
                q.outstanding.append(q.chain)
                self.buffers_published += 1
            chain = q.chain
            if flags & _INDIRECT:  # 2.8.19: not offered, so the table is nobody's buffer
                q.dead = "INDIRECT descriptor (VIRTIO_F_INDIRECT_DESC is not offered)"
            elif flags & _NEXT and len(chain.descs) + 1 >= q.size:  # 2.8.6: never longer than the queue
                q.dead = f"chain longer than the queue ({q.size} descriptors)"
            if q.dead is not None:
                end = d["addr"] + max(1, d["len"])
                q.rejected.append(_Retired(d["addr"], end, "malformed-chain", q.dead))
                return
            chain.descs.append(_Desc(d["addr"], d["len"], bool(flags & _WRITE), chain))
            if not flags & _NEXT:
                chain.id = d["id"]
                chain.complete = True
                q.chain = None

    # ---- device -> host: completions of the host's register reads (resets) -----------------------------
    def _register_read_done(self, tlp: Tlp) -> None:
        req = self._host_reads.pop(tlp.tag, None)
        if req is None or tlp.fmt_type != TlpType.CPL_DATA or tlp.status != CplStatus.SC:
            return
        start, nbytes, qsel = req
        lead = tlp.lower_address & 3
        value = bytes(tlp.data[lead : lead + nbytes])
        status_off = _COMMON + _FIELDS["device_status"][0]
        if start <= status_off < start + len(value) and value[status_off - start] == 0:
            self._device_reset_done("device reset")
        qr_off = _COMMON + _FIELDS["queue_reset"][0]
        if start <= qr_off and qr_off + 2 <= start + len(value) and qsel < len(self.queues):
            q = self.queues[qsel]
            if q.resetting and int.from_bytes(value[qr_off - start : qr_off - start + 2], "little") == 0:
                self._queue_reset_done(q)

    def _retire_queue(self, q: _Queue, rule: str, why: str) -> None:
        if q.live:
            ring_end = q.desc + q.size * DESC_BYTES
            self._retired.append(_Retired(q.desc, ring_end, rule, f"ring of queue {q.index} {why}"))
            for name, at in (("driver", q.driver), ("device", q.device)):
                self._retired.append(_Retired(at, at + EVENT_BYTES, rule, f"{name} area of queue {q.index} {why}"))
            for buf in q.outstanding:
                for d in buf.descs:
                    self._retired.append(_Retired(d.addr, d.end, rule, f"buffer of queue {q.index} {why}"))
        q.live = False
        q.resetting = False
        q.epoch += 1
        q.reg_size, q.reg_desc, q.reg_driver, q.reg_device = device_map.MAX_QUEUE_SIZE, 0, 0, 0
        q._start_state()

    def _device_reset_done(self, what: str) -> None:
        if not (self.reset_pending or self.status or any(q.live for q in self.queues)):
            return  # already in reset: nothing changes
        why = f"ended by the {what} at {self.now_ns():.1f} ns"
        for q in self.queues:
            self._retire_queue(q, "after-reset", why)
        self.reset_pending = False
        self.status = 0
        self.queue_select = 0
        self.driver_feature_select = 0
        self.driver_features = 0
        self._ring_reads.clear()
        self.resets.append((self.now_ns(), "device", None))

    def _queue_reset_done(self, q: _Queue) -> None:
        self._retire_queue(q, "after-queue-reset", f"ended by its queue reset at {self.now_ns():.1f} ns")
        self.resets.append((self.now_ns(), "queue", q.index))

    # ---- device -> host: its requests ----------------------------------------------------------------
    def device_tlp(self, tlp: Tlp) -> None:
        t = tlp.fmt_type
        if t in _READS:
            self.tlps_checked += 1
            self.reads_checked += 1
            self._device_read(tlp)
        elif t in _WRITES:
            self.tlps_checked += 1
            self.writes_checked += 1
            self._device_write(tlp)
        elif t in _COMPLETIONS:
            self._register_read_done(tlp)

    def _device_read(self, tlp: Tlp) -> None:
        addr = tlp.address + tlp.get_first_be_offset()
        n = tlp.get_be_byte_count()
        end = addr + max(n, 1)
        for q in self.queues:
            if not q.live:
                continue
            ring_end = q.desc + q.size * DESC_BYTES
            if q.desc <= addr < ring_end or q.desc < end <= ring_end:
                if addr < q.desc or end > ring_end:
                    self._violate("ring-bounds", "MemRd", addr, n, q.index, f"ring {q.desc:#x}+{ring_end - q.desc}")
                else:
                    self._ring_reads[tlp.tag] = [q.index, q.epoch, addr, n, bytearray(n), bytearray(n)]
                return
            if q.driver <= addr and end <= q.driver + EVENT_BYTES:
                return
            if q.device <= addr and end <= q.device + EVENT_BYTES:
                self._violate("device-area-read", "MemRd", addr, n, q.index, f"device area {q.device:#x}")
                return
        if self._in_buffer(addr, end, writable=False):
            return
        self._explain("MemRd", addr, n, end, writable=False)

    def _device_write(self, tlp: Tlp) -> None:
        addr = tlp.address + tlp.get_first_be_offset()
        n = tlp.get_be_byte_count()
        end = addr + max(n, 1)
        if n == 4 and self._is_msix(addr, tlp):
            self.msix_writes += 1
            return
        for q in self.queues:
            if not q.live:
                continue
            ring_end = q.desc + q.size * DESC_BYTES
            if q.desc <= addr < ring_end or q.desc < end <= ring_end:
                self._used_write(q, tlp, addr, n, end, ring_end)
                return
            if q.device <= addr and end <= q.device + EVENT_BYTES:
                return
            if q.driver <= addr and end <= q.driver + EVENT_BYTES:
                self._violate("driver-area-write", "MemWr", addr, n, q.index, f"driver area {q.driver:#x}")
                return
        if self._in_buffer(addr, end, writable=True):
            return
        if RC_MSI_BASE <= addr < RC_MSI_BASE + RC_MSI_SIZE and n == 4:
            self._violate("msix-address", "MemWr", addr, n, None, f"programmed: {self._msix_entries()}")
            return
        self._explain("MemWr", addr, n, end, writable=True)

    def _used_write(self, q: _Queue, tlp: Tlp, addr: int, n: int, end: int, ring_end: int) -> None:
        if addr < q.desc or end > ring_end:
            self._violate("ring-bounds", "MemWr", addr, n, q.index, f"ring {q.desc:#x}+{ring_end - q.desc}")
            return
        slot, within = divmod(addr - q.desc, DESC_BYTES)
        if slot != q.next_used or within + n > DESC_BYTES:
            self._violate(
                "used-slot",
                "MemWr",
                addr,
                n,
                q.index,
                f"wrote slot {slot} byte {within}, the used position is slot {q.next_used} (wrap {q.used_wrap})",
            )
            return
        shadow = q.used_shadow.setdefault(slot, bytearray(DESC_BYTES))
        written = set()
        for i, b in _enabled_bytes(tlp):
            pos = (tlp.address & ~3) + i - q.desc - slot * DESC_BYTES
            if 0 <= pos < DESC_BYTES:
                shadow[pos] = b
                written.add(pos)
        if not {14, 15} <= written:
            return  # flags not written yet: the element is not visible to the driver (2.8.4)
        del q.used_shadow[slot]
        self.used_elements += 1
        elem = spec.PACKED_DESC.unpack(bytes(shadow))
        flags, buf_id, length = elem["flags"], elem["id"], elem["len"]
        wrap_ok = bool(flags & _AVAIL) == bool(q.used_wrap) and bool(flags & _USED) == bool(q.used_wrap)
        done = [b for b in q.outstanding if b.complete and b.id == buf_id][:1]
        if done and self.driver_features >> Feature.IN_ORDER & 1:
            upto = q.outstanding.index(done[0])
            done = [b for b in q.outstanding[: upto + 1] if b.complete]
        problem = None
        if not wrap_ok:
            problem = f"flags {flags:#06x} do not carry the used wrap counter {q.used_wrap} in AVAIL and USED"
        elif not done:
            problem = f"id {buf_id} is not an outstanding buffer of the queue"
        elif length > done[-1].writable_bytes:
            problem = f"len {length} above the buffer's {done[-1].writable_bytes} device-writable bytes"
        if problem is not None:
            self._violate("used-element", "MemWr", addr, n, q.index, f"used element in slot {slot}: {problem}")
        count = sum(len(b.descs) for b in done) or 1
        for b in done:
            q.outstanding.remove(b)
            for d in b.descs:
                what = f"buffer id {b.id} of queue {q.index}, returned as used"
                self._retired.append(_Retired(d.addr, d.end, "not-outstanding", what))
        q.next_used += count
        while q.next_used >= q.size:
            q.next_used -= q.size
            q.used_wrap ^= 1

    def _in_buffer(self, addr: int, end: int, *, writable: bool) -> bool:
        for q in self.queues:
            for buf in q.outstanding:
                for d in buf.descs:
                    if d.writable == writable and d.addr <= addr and end <= d.end:
                        return True
        return False

    def _explain(self, kind: str, addr: int, n: int, end: int, *, writable: bool) -> None:
        """Name the rule a request broke: the most specific structure it touches."""
        for q in self.queues:
            for buf in q.outstanding:
                for d in buf.descs:
                    if d.addr <= addr < d.end or (n == 0 and addr == d.addr):
                        if d.writable != writable:
                            rule = "write-to-readable" if writable else "read-of-writable"
                            what = "device-writable" if d.writable else "device-readable"
                            detail = f"{what} descriptor {d.addr:#x}+{d.length} of buffer id {buf.id}"
                        else:
                            rule = "beyond-buffer"
                            detail = f"descriptor {d.addr:#x}+{d.length} ends at {d.end:#x}, the request at {end:#x}"
                        self._violate(rule, kind, addr, n, q.index, detail)
                        return
            for r in q.rejected:
                if r.start <= addr < r.end:
                    self._violate(r.rule, kind, addr, n, q.index, f"descriptor {r.start:#x}: {r.what}")
                    return
        for r in reversed(self._retired):
            if r.start <= addr < r.end:
                self._violate(r.rule, kind, addr, n, None, f"{r.what} ({r.start:#x}+{r.end - r.start})")
                return
        live = [q.index for q in self.queues if q.live]
        state = f"live queues {live}" if live else "no queue is live"
        self._violate("outside", kind, addr, n, None, f"in no ring, event structure or outstanding buffer ({state})")

    def _msix_entries(self) -> list[tuple[int, int]]:
        out = []
        for v in range(device_map.NUM_MSIX_VECTORS):
            e = self.msix_table[16 * v : 16 * v + 16]
            address = int.from_bytes(e[0:8], "little")
            if address:
                out.append((address, int.from_bytes(e[8:12], "little")))
        return out

    def _is_msix(self, addr: int, tlp: Tlp) -> bool:
        data = int.from_bytes(bytes(tlp.data[:4]), "little")
        return any(a == addr and d == data for a, d in self._msix_entries())

    def _violate(self, rule: str, kind: str, addr: int, n: int, queue: int | None, detail: str) -> None:
        v = Violation(rule, kind, addr, n, float(self.now_ns()), self.cycle(), queue, detail)
        self.violation_count += 1
        if len(self.violations) < self.max_violations:
            self.violations.append(v)
        if self.violation_count == 1:
            self.log.error("DMA monitor: %s", v)
        for callback in self.on_violation:
            callback(v)


def _enabled_bytes(tlp: Tlp) -> list[tuple[int, int]]:
    """(offset from the TLP's dword-aligned address, byte) of every byte a memory write enables."""
    data = tlp.data
    ndw = len(data) // 4
    out = []
    for i in range(len(data)):
        dw, k = divmod(i, 4)
        if dw == 0:
            on = tlp.first_be >> k & 1
        elif dw == ndw - 1:
            on = tlp.last_be >> k & 1
        else:
            on = 1
        if on:
            out.append((i, data[i]))
    return out


def _tap(port, handler: Callable[[Tlp], None]) -> None:
    """Call ``handler`` with every TLP ``port`` transmits, before it goes on the wire."""
    original = port.handle_tx

    async def handle_tx(pkt) -> None:
        if isinstance(pkt, Tlp):
            handler(pkt)
        await original(pkt)

    port.handle_tx = handle_tx


__all__ = ["RULES", "DmaMonitor", "StrayDma", "Violation"]
