"""Stateful fuzzing of driver behaviour: programs of driver steps, the model that predicts the device's answer,
and the executor that runs a program against any :class:`host.transport.Transport`.

The fuzzer plays a hostile driver (under vDPA the driver is an untrusted guest).  A *program* is a list of
steps, each ``[kind, {args}]`` with concrete, JSON-serialisable arguments (buffers are named by slot, not by
address, so one program runs on the software device and on the RTL alike).  :class:`FuzzDriver` holds both
halves of one state: the *model* part (:meth:`FuzzDriver.plan`, synchronous, no device) is what the hypothesis
state machine (:mod:`host.fuzz_machine`) uses to decide which steps are possible and what each predicts; the
*executor* part (:meth:`FuzzDriver.run`) performs the same steps on a device, through raw ring memory and BAR
accesses, and checks after every step:

* no hang: every wait is bounded (a number of polls of the event loop for the software device, simulated time
  for the RTL);
* no stray DMA: :class:`DmaRules` knows every region the driver published (rings, event-suppression areas,
  outstanding buffers with their direction and length) and flags any device access outside them, in the wrong
  direction, or after a reset read back 0 (the software device is checked access by access; the RTL from the
  requester-bus log of :class:`sim.testbench.BusCounters`);
* every used element names an outstanding, available chain, with the right length, flags and data;
* DEVICE_NEEDS_RESET exactly when a rule was broken (spec 2.1.2): :data:`PROFILES` says, per device, what each
  malformed input must do, from the spec (2.8 packed ring, 2.8.1 availability, 2.8.6 chains, 5.1.6 the net
  header, 3.1.1 the initialisation order) and from each device's documented rules (devices/softnet.py,
  hdl/virtio/README.md, hdl/virtio/chain.py, hdl/virtio/core.py).  Where a device's behaviour is
  implementation-defined, the profile says ``taint``: only the safety checks apply until the next device reset;
* full recovery after a device reset: every program ends with a reset, a fresh bring-up and checked traffic.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from host.transport import DmaBuffer, Transport
from virtio_fpga import device_map as dm
from virtio_fpga import spec
from virtio_fpga.spec import COMMON_CFG, NET_HDR, PACKED_DESC, DescFlag, EventFlags, Feature, NetFeature, Status

RX, TX = spec.NET_RX_QUEUE, spec.NET_TX_QUEUE
HDR = NET_HDR.size
#: An address nothing is mapped at: reads get an IOMMU fault (software device) or an Unsupported Request
#: completion from the root complex (RTL); posted writes there are dropped by the root complex.
UNMAPPED = 0x7_0000_0000
SLAB = 2048  # every buffer descriptor gets its own slab of host memory
RX_CAPACITY = HDR + 1514  # a well-formed receive chain holds the largest frame the fuzzer sends
MAX_TX_BYTES = HDR + dm.MAX_FRAME_LEN

OPTIONAL_FEATURES = (
    "IN_ORDER",
    "NOTIFICATION_DATA",
    "EVENT_IDX",
    "RING_RESET",
    "ACCESS_PLATFORM",
    "ORDER_PLATFORM",
    "MAC",
    "MTU",
    "STATUS",
)
#: Features the device never offers: asking for one must get FEATURES_OK refused (2.2.2, 3.1.1 step 6).
UNOFFERED_FEATURES = ("INDIRECT_DESC", "MRG_RXBUF", "CSUM", "bit50")

TX_KINDS = (
    "ok",
    "zero_len",  # 2.8.4 / chain.py: a buffer has a length
    "huge_len",  # 5.1.6.2 / chain.py: more than virtio_net_hdr + MAX_FRAME_LEN bytes
    "huge_len32",  # len 0xFFFFFFFF
    "unmapped",  # the read fails (IOMMU fault / UR)
    "write_flag",  # 5.1.6.2: transmitq buffers are device-readable
    "indirect",  # 2.8.19: INDIRECT_DESC is never offered
    "short",  # 5.1.6.2: shorter than virtio_net_hdr
    "into_ring",  # a buffer inside the descriptor ring: readable, so legal (content unpredictable)
    "overlap",  # a buffer inside another outstanding TX buffer: legal (reads only)
    "too_long",  # 2.8.6 / chain.py: a chain with more descriptors than the queue
)
RX_KINDS = (
    "ok",
    "zero_len",
    "readonly",  # 5.1.6.3: receiveq buffers are device-writable
    "too_small",  # 5.1.6.3.1: without MRG_RXBUF the frame must fit the chain
    "unmapped",  # posted writes: an IOMMU fault on the software device; dropped silently on PCIe
    "huge_len",  # a length the driver did not allocate: undetectable, the device writes only the frame
    "into_ring",  # the device's writes overwrite the ring: unpredictable
    "overlap",  # inside another outstanding RX buffer: legal, the contents of both are unpredictable
    "too_long",
)
KICK_MODES = ("exact", "under", "over", "out_of_range", "narrow")
RESET_VARIANTS = ("normal", "misaligned", "enable_early", "unoffered", "bad_size")

#: What each malformed input must do, per device: ``reset`` (DEVICE_NEEDS_RESET once the device reaches it),
#: ``ok`` (not an error: processed normally), ``taint`` (implementation-defined: only the safety checks apply
#: until the next device reset).  Keys are "tx:<kind>", "rx:<kind>", "kick:<mode>", "reset:<variant>", "lie:*".
_COMMON_RULES = {
    **{f"tx:{k}": "reset" for k in ("zero_len", "huge_len", "huge_len32", "unmapped", "write_flag", "indirect")},
    "tx:short": "reset",
    "tx:too_long": "reset",
    "tx:ok": "ok",
    "tx:into_ring": "ok",
    "tx:overlap": "ok",
    "rx:ok": "ok",
    "rx:zero_len": "reset",
    "rx:readonly": "reset",
    "rx:too_small": "reset",
    "rx:too_long": "reset",
    "rx:huge_len": "ok",
    "rx:overlap": "ok",
    "rx:into_ring": "taint",
    "lie:head": "ok",  # 2.8.1: a descriptor whose AVAIL/USED bits do not say "available" is not available
    "kick:exact": "ok",
    "kick:under": "ok",  # 2.9: the data is a hint; the rest is processed at the next notification
    "kick:over": "ok",  # 2.8.1: availability is decided by the flags, never by the hint
    "kick:narrow": "ok",
    "reset:normal": "ok",
    "reset:unoffered": "ok",  # FEATURES_OK refused (checked), then a normal bring-up
}
PROFILES: dict[str, dict[str, str]] = {
    # devices/softnet.py: an IOMMU-checked DMA path (HostMemory), checks at queue enable, and a chain that
    # continues into a descriptor that is not available is malformed (2.8.6).
    "soft": {
        **_COMMON_RULES,
        "rx:unmapped": "reset",  # DmaFault on the write -> DmaError
        "lie:continuation": "reset",  # "continues into a descriptor not available"
        "kick:out_of_range": "reset",  # "notification next_off >= size"
        "reset:enable_early": "reset",  # QueueConfigError: enabled before FEATURES_OK (3.1.1 step 7)
        "reset:bad_size": "reset",  # QueueConfigError: size outside 1..MAX at enable
        "reset:misaligned": "reset",  # QueueConfigError: ring addresses misaligned (2.8.10.1)
    },
    # hdl/virtio: posted writes have no completion, the fetcher waits for the rest of a chain, the core ignores
    # a queue_size write of 0 or above the maximum (core.py) and checks neither the order nor the alignment.
    "rtl": {
        **_COMMON_RULES,
        "rx:unmapped": "ok",  # the root complex drops the write; the used element is written as usual
        "lie:continuation": "taint",
        "kick:out_of_range": "ok",
        "reset:enable_early": "taint",
        "reset:bad_size": "ok",  # the write is ignored: the queue keeps the size written before
        "reset:misaligned": "taint",
    },
}

#: BAR accesses that must change nothing: reads anywhere, writes only to read-only or ignored registers, at
#: natural and odd widths (4.1.3.1 asks for natural widths; a device must survive the others).
SAFE_READS = tuple(
    [
        (off, size)
        for off in range(0, 0x40)
        for size in (1, 2, 4, 8)
        if off + size <= 0x40 and not off <= 0x14 < off + size
    ]
    + [(dm.ISR_OFFSET, 1), (dm.ISR_OFFSET + 1, 2), (dm.DEVICE_CFG_OFFSET, 4), (dm.DEVICE_CFG_OFFSET + 3, 2)]
    + [(dm.DEVICE_CFG_OFFSET + 6, 8), (0x5000, 4), (0x7F00, 8), (dm.NOTIFY_OFFSET + 8, 4), (dm.MSIX_PBA_OFFSET, 8)]
    + [(0xFFF8, 8), (0x1003, 1)]
)
SAFE_WRITES = (
    (0x04, 4),  # device_feature (RO)
    (0x05, 2),
    (0x06, 1),
    (0x12, 2),  # num_queues (RO)
    (0x15, 1),  # config_generation (RO)
    (0x1E, 2),  # queue_notify_off (RO)
    (0x38, 2),  # queue_notify_data (RO)
    (0x3C, 4),  # admin_queue_index/num (RO)
    (0x3D, 2),
    (0x20, 8),  # queue_desc of a running queue: ignored (4.1.4.3.2)
    (0x24, 4),
    (0x28, 8),
    (0x30, 4),
    (0x0C, 4),  # driver_feature after FEATURES_OK: ignored (3.1.1)
    (0x0E, 2),
    (dm.ISR_OFFSET, 1),  # ISR (RO)
    (dm.ISR_OFFSET, 4),
    (dm.DEVICE_CFG_OFFSET, 4),  # device configuration (RO)
    (dm.DEVICE_CFG_OFFSET + 1, 2),
    (dm.DEVICE_CFG_OFFSET + 8, 8),
    (0x5000, 4),  # nothing decoded there
    (0x5003, 1),
    (0x7F00, 8),
    (dm.NOTIFY_OFFSET + 8, 4),
    (0xFFFC, 4),
)


def rule(profile: str, key: str) -> str:
    return PROFILES[profile].get(key, "taint")


# ============================================ DMA rules (stray DMA) ==========================================
class DmaRules:
    """The regions the driver published, and the device accesses that fall outside them.

    A region is ``(start, end, mode)`` with mode "r" (device reads only), "w" (device writes only) or "rw".  An
    access is clean when one region contains all of it and allows its direction.  MSI-X messages (writes to the
    MSI window of :mod:`host.memory`) are allowed.
    """

    def __init__(self, msi_window: tuple[int, int] | None = None) -> None:
        self.regions: dict[tuple, tuple[int, int, str]] = {}
        self.violations: list[str] = []
        self.msi_window = msi_window
        self.accesses = 0

    def publish(self, key: tuple, start: int, length: int, mode: str) -> None:
        if length > 0:
            self.regions[key] = (start, start + length, mode)

    def retire(self, key: tuple) -> None:
        self.regions.pop(key, None)

    def retire_queue(self, queue: int) -> None:
        for key in [k for k in self.regions if k[1] == queue]:
            del self.regions[key]

    def clear(self) -> None:
        self.regions.clear()

    def check(self, kind: str, addr: int, length: int, where: str = "") -> None:
        self.accesses += 1
        if length <= 0:  # touches no byte (the software device "reads" a zero-length buffer as nothing)
            return
        if kind == "W" and self.msi_window and self.msi_window[0] <= addr < self.msi_window[1]:
            return
        need = "r" if kind == "R" else "w"
        for start, end, mode in self.regions.values():
            if start <= addr and addr + length <= end and need in mode:
                return
        what = "read" if kind == "R" else "write"
        inside = [f"{k[0]}{k[1:]}" for k, (s, e, _) in self.regions.items() if s <= addr < e]
        self.violations.append(
            f"device {what} of {length} bytes at {addr:#x}{where}: "
            + (f"wrong direction or past the end of {inside[0]}" if inside else "outside every published region")
        )


class CheckedDma:
    """A :class:`devices.softnet.DeviceDma` that checks every access of the software device against
    :class:`DmaRules` before passing it to the real memory (an accessor around :class:`host.memory.HostMemory`)."""

    def __init__(self, inner, rules: DmaRules) -> None:
        self.inner = inner
        self.rules = rules

    async def dma_read(self, addr: int, length: int) -> bytes:
        self.rules.check("R", addr, length)
        return await self.inner.dma_read(addr, length)

    async def dma_write(self, addr: int, data: bytes) -> None:
        self.rules.check("W", addr, len(data))
        await self.inner.dma_write(addr, data)


# ============================================ model state ====================================================
@dataclass
class Chain:
    serial: int
    id: int
    queue: int
    descs: list[list]  # [slot or None, addr_kind, length, flags] per descriptor
    kind: str
    frame_len: int = 0  # TX: frame bytes after the header; RX: capacity
    checked: bool = True  # the payload is predictable
    blocked: bool = False  # behind a head whose flags lie: not available (2.8.1)
    lie: bool = False  # this chain's head lies

    @property
    def ndesc(self) -> int:
        return len(self.descs)


@dataclass
class QueueModel:
    index: int
    size: int = 8
    enabled: bool = False
    avail_idx: int = 0
    avail_wrap: int = 1
    used_idx: int = 0
    used_wrap: int = 1
    outstanding: list[Chain] = field(default_factory=list)
    next_id: int = 0
    ring_offset: int = 0  # 8 for the misaligned variant
    suppressed: bool = False  # the driver's event suppression says DISABLE (2.8.10, 2.8.14)
    suppress_clean: bool = False  # ... since a quiescent sync: no interrupt of this queue may come now
    irq_base: int = 0

    def free(self) -> int:
        return self.size - sum(c.ndesc for c in self.outstanding)

    def stalled(self) -> bool:
        return any(c.lie for c in self.outstanding)


class Failure(Exception):
    """A check failed: the device broke a rule (or hung)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


@dataclass
class Stats:
    sequences: int = 0
    steps: int = 0
    failures: int = 0
    hangs: int = 0
    stray_dma: int = 0
    needs_reset_expected: int = 0
    needs_reset_seen: int = 0
    needs_reset_optional: int = 0  # episodes with an implementation-defined outcome (taint)
    faults: int = 0  # malformed inputs injected
    resets: int = 0  # device resets
    queue_resets: int = 0
    frames: int = 0  # frames received and checked
    used_checked: int = 0

    def add(self, other: Stats) -> None:
        for k, v in other.__dict__.items():
            setattr(self, k, getattr(self, k) + v)

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def frame_bytes(seed: int, serial: int, length: int) -> bytes:
    return random.Random(seed * 1_000_003 + serial).randbytes(length)


def split(total: int, parts: int) -> list[int]:
    parts = max(1, min(parts, total)) if total else max(1, parts)
    base = total // parts
    lens = [base] * parts
    lens[-1] += total - base * parts
    return lens


class FuzzDriver:
    """Model and executor of one program (see the module docstring)."""

    def __init__(self, profile: str, seed: int = 0) -> None:
        if profile not in PROFILES:
            raise ValueError(f"unknown device profile {profile!r}")
        self.profile = profile
        self.seed = seed
        self.queues = [QueueModel(RX), QueueModel(TX)]
        self.features: set[str] = set()
        self.running = False
        self.broken = False  # a rule was broken and the device reached it: NEEDS_RESET expected
        self.pending_break = False  # a rule was broken in a chain the device may not have reached yet
        self.armed = False  # ... and the next sync's notifications make the device reach it
        self.tainted = False
        self.loose = False  # after a queue reset, frames from before may still arrive
        self.stuck = 0  # at most this many such frames
        self.frames_pending: list[tuple[int, int, bool]] = []  # (serial, frame_len, checked), sent not received
        self.rx_assigned = 0  # RX chains (of outstanding) that a sent frame will land in
        self.serial = 0
        self.stats = Stats()
        self.episode_expected = False
        self.log: list[str] = []
        # executor state
        self.t: Transport | None = None
        self.dma: DmaRules | None = None

    # ---------------------------------------------------------------- model: what is possible -------------
    def rule(self, key: str) -> str:
        return rule(self.profile, key)

    def unchecked(self) -> bool:
        """Only safety checks apply (an error is expected or the outcome is implementation-defined)."""
        return self.broken or self.pending_break or self.tainted

    def has(self, feature: str) -> bool:
        return feature in self.features

    def can_post(self, queue: int, ndesc: int = 1) -> bool:
        """Posting stops once an error is certain or the outcome unknown; a malformed receive chain that no frame
        has reached yet (``pending_break``) still lets frames be sent, so that one can reach it."""
        q = self.queues[queue]
        return self.running and q.enabled and not (self.broken or self.tainted) and q.free() >= ndesc

    def can_repair(self, queue: int) -> bool:
        q = self.queues[queue]
        if not q.stalled() or self.broken or self.tainted:
            return False
        if queue == RX:
            return True
        ready = self.rx_ready_chains()
        return len(ready) > self.stuck and not any(c.blocked for c in ready[: self.stuck + 1])

    def rx_ready_chains(self) -> list[Chain]:
        """RX chains that no sent frame is headed for yet, in ring order."""
        return self.queues[RX].outstanding[self.rx_assigned :]

    def can_send(self, ndesc: int = 1) -> bool:
        """A frame may be sent when an unassigned, available RX chain is waiting for it (and for every frame that
        may still arrive from before a queue reset), so that the loopback never back-pressures TX."""
        if not self.can_post(TX, ndesc) or self.queues[TX].stalled():
            return False
        ready = self.rx_ready_chains()
        return len(ready) > self.stuck and not any(c.blocked for c in ready[: self.stuck + 1])

    def _taint(self) -> None:
        self.tainted = True

    def _apply_rule(self, key: str, *, reached: bool = True) -> None:
        outcome = self.rule(key)
        if outcome == "reset":
            if reached:
                self.broken = True
            else:
                self.pending_break = True
        elif outcome == "taint":
            self._taint()

    # ---------------------------------------------------------------- model: steps ------------------------
    def plan(self, step: list) -> None:
        """Update the model for ``step`` (no device access): what the hypothesis machine calls."""
        kind, args = step
        getattr(self, f"_plan_{kind}")(**args)

    def _plan_reset(self, features, sizes, variant="normal", bad_queue=0, bad_value=0) -> None:
        self.features = set(features)
        self.running = True
        self.broken = self.pending_break = self.armed = self.tainted = self.loose = False
        self.stuck = 0
        self.frames_pending = []
        self.rx_assigned = 0
        for q, size in zip(self.queues, sizes, strict=True):
            q.__dict__.update(QueueModel(q.index, size=size, enabled=True, next_id=q.next_id).__dict__)
        if variant == "misaligned":
            self.queues[bad_queue].ring_offset = 8
        self._apply_rule(f"reset:{variant}")

    def _new_chain(self, queue: int, descs: list[list], kind: str, frame_len: int = 0, checked: bool = True) -> Chain:
        q = self.queues[queue]
        self.serial += 1
        chain = Chain(self.serial, q.next_id, queue, descs, kind, frame_len, checked)
        q.next_id = (q.next_id + 1) & 0xFFFF
        chain.blocked = q.stalled()
        q.outstanding.append(chain)
        q.avail_idx += chain.ndesc
        while q.avail_idx >= q.size:
            q.avail_idx -= q.size
            q.avail_wrap ^= 1
        return chain

    def _plan_rx(self, kind="ok", ndesc=1, lie=False, capacity=RX_CAPACITY) -> None:
        q = self.queues[RX]
        w = int(DescFlag.WRITE)
        capacity = max(1, min(capacity, RX_CAPACITY))
        if kind == "too_long":
            descs = [[True, "slab", 64, w | DescFlag.NEXT] for _ in range(q.size)]
        elif kind == "zero_len":
            lens = split(RX_CAPACITY, ndesc)
            lens[-1] = 0
            descs = [[True, "slab", n, w] for n in lens]
        elif kind == "readonly":
            descs = [[True, "slab", n, 0] for n in split(RX_CAPACITY, ndesc)]
        elif kind == "too_small":
            descs = [[True, "slab", 20, w]]
        elif kind == "unmapped":
            descs = [[False, "unmapped", RX_CAPACITY, w]]
        elif kind == "huge_len":
            descs = [[True, "slab", 0xFFFF_0000, w]]
        elif kind == "into_ring":
            descs = [[False, "ring", RX_CAPACITY, w]]
        elif kind == "overlap":
            descs = [[False, "overlap", RX_CAPACITY, w]]
        else:  # a frame longer than the chain's capacity is the driver's error (5.1.6.3.1, no MRG_RXBUF)
            descs = [[True, "slab", n, w] for n in split(capacity, ndesc)]
        for d in descs[:-1]:
            d[3] |= DescFlag.NEXT
        checked = kind not in ("overlap", "into_ring", "unmapped")
        if kind == "overlap":  # the other buffer's contents become unpredictable too
            for c in q.outstanding:
                c.checked = False
            self.overlaps = getattr(self, "overlaps", 0) + 1
        chain = self._new_chain(RX, descs, kind, sum(d[2] for d in descs) if kind == "ok" else RX_CAPACITY, checked)
        chain.lie = lie
        chain.blocked = chain.blocked or lie
        self.stats.faults += kind != "ok"
        outcome = self.rule(f"rx:{kind}")
        if outcome == "taint" or (outcome == "reset" and self.loose):
            self._taint()
        elif outcome == "reset":
            # Reached when a frame is headed for it (the software device reads receive chains only then; the
            # RTL may flag it as soon as it fetches it, so until then NEEDS_RESET is allowed but not required).
            self.pending_break = True

    def _plan_tx(self, kind="ok", frame_len=60, ndesc=1, lie=False) -> None:
        total = HDR + frame_len
        checked = True
        if kind == "zero_len":
            lens = split(total, ndesc)
            lens[0] = 0
            descs = [[True, "slab", n, 0] for n in lens]
        elif kind == "huge_len":
            descs = [[True, "slab", MAX_TX_BYTES + 1, 0]]
        elif kind == "huge_len32":
            descs = [[True, "slab", 0xFFFF_FFFF, 0]]
        elif kind == "unmapped":
            descs = [[False, "unmapped", total, 0]]
        elif kind == "write_flag":
            descs = [[True, "slab", n, DescFlag.WRITE] for n in split(total, ndesc)]
        elif kind == "indirect":
            descs = [[True, "slab", 16, DescFlag.INDIRECT]]
        elif kind == "short":
            descs = [[True, "slab", HDR - 1, 0]]
        elif kind == "into_ring":
            descs, checked = [[False, "ring", total, 0]], False
        elif kind == "overlap":
            descs, checked = [[False, "overlap", total, 0]], False
        elif kind == "too_long":
            descs = [[True, "slab", 64, DescFlag.NEXT] for _ in range(self.queues[TX].size)]
        else:
            descs = [[True, "slab", n, 0] for n in split(total, min(ndesc, total))]
        for d in descs[:-1]:
            d[3] |= DescFlag.NEXT
        chain = self._new_chain(TX, descs, kind, frame_len, checked)
        chain.lie = lie
        chain.blocked = chain.blocked or lie
        self.stats.faults += kind != "ok"
        outcome = self.rule(f"tx:{kind}")
        if outcome == "ok":
            if not chain.blocked:
                self._frame_sent(chain)
        elif outcome == "reset":  # reached once the next sync notifies the queue
            self.pending_break = self.armed = True
        else:
            self._taint()

    def _frame_sent(self, chain: Chain) -> None:
        """A frame leaves on TX: it lands in the next receive chain no frame is headed for (devices fill receive
        chains in ring order; after a queue reset, up to ``stuck`` older frames may land first)."""
        self.frames_pending.append((chain.serial, chain.frame_len, chain.checked))
        rx = self.queues[RX].outstanding
        targets = rx[self.rx_assigned : self.rx_assigned + self.stuck + 1]
        self.rx_assigned += 1
        for target in targets:
            outcome = self.rule(f"rx:{target.kind}")
            if outcome == "ok" and target.kind == "ok" and HDR + chain.frame_len > target.frame_len:
                outcome = self.rule("rx:too_small")  # the frame does not fit this chain (5.1.6.3.1)
            if outcome == "reset" and not self.stuck:
                self.pending_break = self.armed = True
            elif outcome != "ok":
                self._taint()

    def _plan_lie(self, queue) -> None:
        self.stats.faults += 1
        if queue == TX:
            self._plan_tx("ok", 60, 1, lie=True)
        else:
            self._plan_rx("ok", 1, lie=True)

    def _plan_repair(self, queue) -> None:
        q = self.queues[queue]
        for c in q.outstanding:
            if c.lie:
                c.lie = False
                break
        stalled = False
        for c in q.outstanding:
            stalled = stalled or c.lie
            if c.blocked and not stalled:
                c.blocked = False
                if queue == TX:
                    self._frame_sent(c)

    def _plan_kick(self, queue, mode="exact") -> None:
        if mode != "exact":
            self.stats.faults += 1
        if mode == "out_of_range" and self.has("NOTIFICATION_DATA"):
            self._apply_rule("kick:out_of_range")

    def _plan_sync(self) -> None:
        """After a checked sync every available chain is used and every sent frame received."""
        if self.armed:
            self.broken = True
        if self.unchecked():
            return
        tx = self.queues[TX]
        tx.outstanding = [c for c in tx.outstanding if c.blocked]
        rx = self.queues[RX]
        received = min(self.rx_assigned, len(rx.outstanding))
        rx.outstanding = rx.outstanding[received:]
        self.rx_assigned -= received
        del self.frames_pending[:received]

    def _plan_queue_reset(self, queue, size) -> None:
        q = self.queues[queue]
        self.stats.queue_resets += 1
        if not self.has("RING_RESET"):
            self.stats.faults += 1
            return  # queue_reset is ignored without VIRTIO_F_RING_RESET (4.1.4.3.2)
        if queue == TX:
            # frames of the dropped chains may or may not have left: they become "stuck" (may still arrive)
            gone = {c.serial for c in q.outstanding}
            kept = [f for f in self.frames_pending if f[0] not in gone]
            self.stuck += len(self.frames_pending) - len(kept)
            self.rx_assigned -= len(self.frames_pending) - len(kept)
            self.frames_pending = kept
        else:
            self.stuck += len(self.frames_pending)
            self.frames_pending = []
            self.rx_assigned = 0
        self.loose = self.loose or self.stuck > 0
        q.__dict__.update(QueueModel(q.index, size=size, enabled=True, next_id=q.next_id).__dict__)

    def _plan_events(self, queue, disable) -> None:
        q = self.queues[queue]
        q.suppressed = bool(disable)
        q.suppress_clean = False

    def _plan_regs(self, accesses) -> None:
        pass

    def _plan_late_write(self, what) -> None:
        pass

    # ================================================================ executor =============================
    async def run(
        self,
        transport: Transport,
        program: list[list],
        *,
        dma_rules: DmaRules,
        drain: Callable[[], Awaitable[None]] | None = None,
        poll: Callable[[], Awaitable[None]] | None = None,
        poll_limit: int = 200,
        reset_polls: int = 200,
    ) -> Stats:
        """Run ``program`` (which must start with a ``reset`` step) and check every step; raises :class:`Failure`.

        ``drain`` feeds the device's DMA seen since the last call into ``dma_rules`` (the RTL's bus log; the
        software device is checked access by access through :class:`CheckedDma`); ``poll`` lets the device run
        for one poll interval (an event-loop turn, or some simulated time); ``poll_limit`` polls bound every
        wait for the device (beyond it the device hangs).
        """
        self.t = transport
        self.dma = dma_rules
        self._drain = drain
        self._poll = poll or (lambda: transport.sleep(0))
        self._poll_limit = poll_limit
        self._reset_polls = reset_polls
        self._mem_ready()
        self.stats.sequences += 1
        for i, step in enumerate(program):
            self._step = i
            await self._exec(step)
            self.stats.steps += 1
        # every program ends with a device reset, a fresh bring-up and checked traffic (full recovery)
        tail = [
            ["reset", {"features": ["IN_ORDER", "NOTIFICATION_DATA", "RING_RESET"], "sizes": [4, 4]}],
            ["rx", {"kind": "ok", "ndesc": 2}],
            ["rx", {"kind": "ok", "ndesc": 1}],
            ["tx", {"kind": "ok", "frame_len": 100, "ndesc": 2}],
            ["tx", {"kind": "ok", "frame_len": 1514, "ndesc": 1}],
            ["sync", {}],
        ]
        for step in tail:
            self._step = f"recovery:{step[0]}"
            await self._exec(step)
        await self._end_episode()
        await self._device_reset_only()
        return self.stats

    async def _exec(self, step: list) -> None:
        kind, args = step
        await getattr(self, f"_run_{kind}")(**args)
        await self._check_dma()

    # ---------------------------------------------------------------- memory --------------------------------
    def _mem_ready(self) -> None:
        t = self.t
        if getattr(t, "_fuzz_mem", None) is None:
            mem = {"ring": [], "drv": [], "dev": [], "slabs": [], "free": []}
            for _q in (RX, TX):
                mem["ring"].append(t.alloc_dma(dm.MAX_QUEUE_SIZE * PACKED_DESC.size + 64, align=4096))
                mem["drv"].append(t.alloc_dma(64, align=64))
                mem["dev"].append(t.alloc_dma(64, align=64))
            t._fuzz_mem = mem
        self.mem = t._fuzz_mem

    def _slab(self) -> tuple[int, DmaBuffer]:
        mem = self.mem
        if mem["free"]:
            index = mem["free"].pop()
        else:
            mem["slabs"].append(self.t.alloc_dma(SLAB, align=64))
            index = len(mem["slabs"]) - 1
        return index, mem["slabs"][index]

    def _ring(self, queue: int) -> tuple[DmaBuffer, int]:
        return self.mem["ring"][queue], self.queues[queue].ring_offset

    # ---------------------------------------------------------------- registers -----------------------------
    async def _common_write(self, name: str, value: int) -> None:
        f = COMMON_CFG[name]
        off = dm.COMMON_CFG_OFFSET + f.byte_offset
        if f.byte_size == 8:
            await self.t.bar_write(dm.BAR, off, 4, value & 0xFFFFFFFF)
            await self.t.bar_write(dm.BAR, off + 4, 4, value >> 32)
        else:
            await self.t.bar_write(dm.BAR, off, f.byte_size, value)

    async def _common_read(self, name: str) -> int:
        f = COMMON_CFG[name]
        return await self._bar_read(dm.COMMON_CFG_OFFSET + f.byte_offset, f.byte_size)

    async def _bar_read(self, offset: int, size: int) -> int:
        try:
            return await self.t.bar_read(dm.BAR, offset, size)
        except Exception as exc:
            if "timeout" in str(exc).lower() or "timed out" in str(exc).lower():
                raise Failure("hang", f"BAR read of {size} bytes at {offset:#x} got no completion: {exc}") from exc
            raise

    async def _status(self) -> int:
        return await self._common_read("device_status")

    async def _wait(self, cond: Callable[[], Awaitable[bool]], limit: int) -> bool:
        for _ in range(limit):
            if await cond():
                return True
            await self._poll()
        return await cond()

    async def _check_dma(self) -> None:
        if self._drain is not None:
            await self._drain()
        if self.dma.violations:
            self.stats.stray_dma += len(self.dma.violations)
            raise Failure("stray_dma", "; ".join(self.dma.violations[:3]))

    # ---------------------------------------------------------------- reset and bring-up ---------------------
    async def _device_reset_only(self) -> None:
        await self._common_write("device_status", 0)
        ok = await self._wait(lambda: self._status_is(0), self._reset_polls)
        if not ok:
            self.stats.hangs += 1
            raise Failure("hang", "device_status did not read back 0 after a reset (2.4.1)")
        await self._check_dma()  # DMA until the reset read back 0 is checked against what was published
        self.dma.clear()  # from now on, any DMA is stray until the queues are enabled again
        self.stats.resets += 1

    async def _status_is(self, value: int) -> bool:
        return await self._status() == value

    async def _run_reset(self, features, sizes, variant="normal", bad_queue=0, bad_value=0) -> None:
        await self._end_episode()
        await self._device_reset_only()
        for q in self.mem["ring"]:
            q.mem[:] = bytes(q.size)
        self._plan_reset(features, sizes, variant, bad_queue, bad_value)
        t = self.t
        await self._common_write("device_status", Status.ACKNOWLEDGE)
        await self._common_write("device_status", Status.ACKNOWLEDGE | Status.DRIVER)
        offered = 0
        for sel in (0, 1):
            await self._common_write("device_feature_select", sel)
            offered |= await self._common_read("device_feature") << (32 * sel)
        if variant == "unoffered":
            bad = spec.feature_from_name(UNOFFERED_FEATURES[bad_value % len(UNOFFERED_FEATURES)])
            await self._write_features(offered & dm.REQUIRED_FEATURES | (1 << bad))
            await self._common_write("device_status", Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK)
            status = await self._status()
            if status & Status.FEATURES_OK:
                raise Failure("features", f"FEATURES_OK accepted with unoffered feature bit {bad} (2.2.2, 3.1.1)")
            self.stats.faults += 1
            await self._device_reset_only()
            await self._common_write("device_status", Status.ACKNOWLEDGE)
            await self._common_write("device_status", Status.ACKNOWLEDGE | Status.DRIVER)
        wanted = dm.REQUIRED_FEATURES
        for name in features:
            wanted |= 1 << spec.feature_from_name(name)
        if wanted & ~offered:
            raise Failure("features", f"device does not offer {spec.feature_names(wanted & ~offered)}")
        await self._write_features(wanted)
        if variant == "enable_early":
            self.stats.faults += 1
            await self._setup_queue(RX, enable=True)
        await self._common_write("device_status", Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK)
        status = await self._status()
        if not status & Status.FEATURES_OK and not self.unchecked():
            raise Failure("features", f"FEATURES_OK refused for {spec.feature_names(wanted)}")
        for q in (RX, TX):
            if variant == "enable_early" and q == RX:
                continue
            bad = None
            if variant == "bad_size" and q == bad_queue:
                bad = bad_value
                self.stats.faults += 1
            if variant == "misaligned" and q == bad_queue:
                self.stats.faults += 1
            await self._setup_queue(q, bad_size=bad)
        if t.irq_count(0) == 0 and getattr(t, "_fuzz_msix", 0) == 0:
            t._fuzz_msix = await t.enable_msix(dm.NUM_MSIX_VECTORS)
        await self._common_write("config_msix_vector", 0)
        await self._common_write(
            "device_status", Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK | Status.DRIVER_OK
        )
        status = await self._status()
        if not self.unchecked():
            want = Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK | Status.DRIVER_OK
            if status != want:
                raise Failure(
                    "needs_reset_unexpected" if status & Status.DEVICE_NEEDS_RESET else "register",
                    f"device_status {spec.status_names(status)} after bring-up, expected {spec.status_names(want)}",
                )
        if self.broken:
            await self._expect_needs_reset("bring-up")

    async def _write_features(self, value: int) -> None:
        for sel in (0, 1):
            await self._common_write("driver_feature_select", sel)
            await self._common_write("driver_feature", (value >> (32 * sel)) & 0xFFFFFFFF)

    async def _setup_queue(self, queue: int, *, enable: bool = True, bad_size: int | None = None) -> None:
        q = self.queues[queue]
        ring, off = self._ring(queue)
        ring.mem[:] = bytes(ring.size)
        drv, dev = self.mem["drv"][queue], self.mem["dev"][queue]
        drv.write(0, spec.EVENT_SUPPRESS.pack(flags=EventFlags.ENABLE))
        dev.write(0, bytes(4))
        await self._common_write("queue_select", queue)
        await self._common_write("queue_size", q.size)
        if bad_size is not None:
            await self._common_write("queue_size", bad_size)
        await self._common_write("queue_msix_vector", 1 + queue)
        await self._common_write("queue_desc", ring.iova + off)
        await self._common_write("queue_driver", drv.iova)
        await self._common_write("queue_device", dev.iova)
        self.dma.publish(("ring", queue), ring.iova + off, q.size * PACKED_DESC.size, "rw")
        self.dma.publish(("drv", queue), drv.iova, 4, "r")
        self.dma.publish(("dev", queue), dev.iova, 4, "w")
        if enable:
            await self._common_write("queue_enable", 1)

    # ---------------------------------------------------------------- posting chains -------------------------
    def _write_desc(self, queue: int, idx: int, addr: int, length: int, id_: int, flags: int) -> None:
        ring, off = self._ring(queue)
        ring.write(off + idx * PACKED_DESC.size, PACKED_DESC.pack(addr=addr, len=length, id=id_, flags=flags))

    def _avail_flags(self, wrap: int) -> int:
        return int(DescFlag.AVAIL) if wrap else int(DescFlag.USED)

    def _post(self, chain: Chain, head_idx: int, head_wrap: int) -> None:
        """Write the chain's descriptors from ``head_idx``; the head's flags last (2.8.6, 2.8.21)."""
        q = self.queues[chain.queue]
        ring, off = self._ring(chain.queue)
        entries = []
        idx, wrap = head_idx, head_wrap
        bufs = []
        for i, (_slab, addr_kind, length, flags) in enumerate(chain.descs):
            if addr_kind == "slab":
                index, buf = self._slab()
                addr = buf.iova
                bufs.append(index)
                if chain.queue == TX and chain.checked:
                    start = sum(d[2] for d in chain.descs[:i])
                    payload = bytes(HDR) + frame_bytes(self.seed, chain.serial, chain.frame_len)
                    part = payload[start : start + min(length, SLAB)]
                    buf.write(0, part)
                elif chain.queue == RX:
                    buf.write(0, b"\x5a" * min(length, SLAB))
            elif addr_kind == "unmapped":
                addr = UNMAPPED
            elif addr_kind == "ring":
                addr = ring.iova + off + PACKED_DESC.size * (idx // 2)
            else:  # overlap: inside another outstanding buffer of the same queue (the machine makes sure of one)
                others = [b for c in q.outstanding if c is not chain for b in getattr(c, "bufs", [])]
                if not others:
                    raise Failure("program", "overlap step without another outstanding buffer")
                self.mem.setdefault("pinned", set()).add(others[0])  # never reused while it may be overlapped
                addr = self.mem["slabs"][others[0]].iova + 16
            fl = flags | self._avail_flags(wrap)
            if chain.lie and i == 0:  # the flags of the other lap: AVAIL = !wrap, USED = wrap (2.8.1)
                fl = flags | (int(DescFlag.USED) if wrap else int(DescFlag.AVAIL))
            entries.append((idx, addr, length, fl))
            self.dma.publish(("buf", chain.queue, chain.serial, i), addr, length, "w" if chain.queue == RX else "r")
            idx += 1
            if idx == q.size:
                idx, wrap = 0, wrap ^ 1
        chain.bufs = bufs
        chain.head = (head_idx, head_wrap)
        chain.entries = entries
        for idx_, addr, length, fl in entries[1:]:
            self._write_desc(chain.queue, idx_, addr, length, chain.id, fl)
        idx_, addr, length, fl = entries[0]
        self._write_desc(chain.queue, idx_, addr, length, chain.id, fl)

    async def _run_rx(self, kind="ok", ndesc=1, lie=False, capacity=RX_CAPACITY) -> None:
        q = self.queues[RX]
        head = (q.avail_idx, q.avail_wrap)
        self._plan_rx(kind, ndesc, lie, capacity)
        self._post(q.outstanding[-1], *head)

    async def _run_tx(self, kind="ok", frame_len=60, ndesc=1, lie=False) -> None:
        q = self.queues[TX]
        head = (q.avail_idx, q.avail_wrap)
        self._plan_tx(kind, frame_len, ndesc, lie)
        self._post(q.outstanding[-1], *head)

    async def _run_lie(self, queue) -> None:
        q = self.queues[queue]
        head = (q.avail_idx, q.avail_wrap)
        self._plan_lie(queue)
        self._post(q.outstanding[-1], *head)

    async def _run_repair(self, queue) -> None:
        q = self.queues[queue]
        target = next((c for c in q.outstanding if c.lie), None)
        self._plan_repair(queue)
        if target is not None:
            idx, addr, length, fl = target.entries[0]
            fl = (fl & ~(DescFlag.AVAIL | DescFlag.USED)) | self._avail_flags(target.head[1])
            target.entries[0] = (idx, addr, length, fl)
            self._write_desc(queue, idx, addr, length, target.id, fl)

    async def _run_kick(self, queue, mode="exact") -> None:
        self._plan_kick(queue, mode)
        await self._kick(queue, mode)

    async def _kick(self, queue: int, mode: str = "exact") -> None:
        q = self.queues[queue]
        addr = dm.notify_address(queue)
        if not self.has("NOTIFICATION_DATA"):
            await self.t.bar_write(dm.BAR, addr, 2, queue)
            return
        off, wrap = q.avail_idx, q.avail_wrap
        if mode == "under":
            off = max(0, off - 1)
        elif mode == "over":
            off = (off + 1) % q.size if q.size > 1 else off
        elif mode == "out_of_range":
            off = q.size + (self.serial % 7)
        if mode == "narrow":
            await self.t.bar_write(dm.BAR, addr, 2, queue)
            return
        value = spec.NOTIFY_DATA.to_int(vqn=queue, next_off=off & 0x7FFF, next_wrap=wrap)
        await self.t.bar_write(dm.BAR, addr, 4, value)

    # ---------------------------------------------------------------- checks --------------------------------
    async def _needs_reset(self) -> bool:
        return bool(await self._status() & Status.DEVICE_NEEDS_RESET)

    async def _expect_needs_reset(self, where: str) -> None:
        if not self.episode_expected:
            self.episode_expected = True

        async def cond() -> bool:
            await self._check_dma()  # a stray access is the earlier (and more precise) event
            return await self._needs_reset()

        ok = await self._wait(cond, self._poll_limit)
        if not ok:
            raise Failure(
                "needs_reset_missing", f"{where}: a rule was broken but DEVICE_NEEDS_RESET is not set (2.1.2)"
            )

    async def _end_episode(self) -> None:
        """Account the episode that a device reset ends: was NEEDS_RESET expected, optional, seen?"""
        if not self.running:
            return
        seen = await self._needs_reset()
        if self.broken or self.episode_expected:
            self.stats.needs_reset_expected += 1
            if not seen:
                raise Failure("needs_reset_missing", "a rule was broken but DEVICE_NEEDS_RESET is not set (2.1.2)")
        elif self.tainted or self.pending_break:
            self.stats.needs_reset_optional += 1
        elif seen:
            raise Failure("needs_reset_unexpected", "DEVICE_NEEDS_RESET set although no rule was broken")
        self.stats.needs_reset_seen += seen
        self.episode_expected = False

    def _used_at(self, queue: int) -> dict[str, int] | None:
        q = self.queues[queue]
        ring, off = self._ring(queue)
        raw = ring.read(off + q.used_idx * PACKED_DESC.size, PACKED_DESC.size)
        desc = PACKED_DESC.unpack(raw)
        avail = bool(desc["flags"] & DescFlag.AVAIL)
        used = bool(desc["flags"] & DescFlag.USED)
        if avail == used == bool(q.used_wrap):
            return desc
        return None

    def _consume(self, queue: int, desc: dict[str, int], strict: bool = True) -> list[Chain]:
        """The chains a used element completes (IN_ORDER: every chain up to the one it names, 2.8.21)."""
        q = self.queues[queue]
        ids = [c.id for c in q.outstanding]
        if desc["id"] not in ids:
            raise Failure("used_mismatch", f"queue {queue}: used id {desc['id']} is not outstanding (2.8.6)")
        pos = ids.index(desc["id"])
        if self.has("IN_ORDER"):
            if queue == RX and pos != 0 and strict:
                raise Failure("used_mismatch", f"queue {queue}: used id {desc['id']} skips receive buffers")
            done = q.outstanding[: pos + 1]
        else:
            done = [q.outstanding[pos]]
        for c in done:
            if c.blocked or c.lie:
                raise Failure(
                    "used_mismatch",
                    f"queue {queue}: chain id {c.id} used although its head was never made available (2.8.1)",
                )
            if strict and self.rule(f"{'rx' if queue == RX else 'tx'}:{c.kind}") == "reset":
                raise Failure("used_mismatch", f"queue {queue}: malformed chain ({c.kind}) completed as if valid")
        for c in done:
            q.outstanding.remove(c)
        q.used_idx += sum(c.ndesc for c in done)
        while q.used_idx >= q.size:
            q.used_idx -= q.size
            q.used_wrap ^= 1
        return done

    def _retire(self, chain: Chain) -> None:
        for i in range(chain.ndesc):
            self.dma.retire(("buf", chain.queue, chain.serial, i))
        pinned = self.mem.get("pinned", set())
        self.mem["free"].extend(b for b in chain.bufs if b not in pinned)

    def _check_rx(self, chain: Chain, desc: dict[str, int]) -> None:
        if not self.frames_pending:
            if self.loose and self.stuck:
                self.stuck -= 1
                return
            raise Failure("used_mismatch", f"RX used id {desc['id']} len {desc['len']}: no frame was sent for it")
        if self.loose:
            lens = [f[1] + HDR for f in self.frames_pending]
            if desc["len"] not in lens:
                if self.stuck:
                    self.stuck -= 1
                    return
                raise Failure("payload", f"RX used len {desc['len']} matches no frame sent ({lens[:8]})")
            frame = self.frames_pending.pop(lens.index(desc["len"]))
        else:
            frame = self.frames_pending.pop(0)
        serial, length, checked = frame
        if desc["len"] != HDR + length:
            raise Failure("used_mismatch", f"RX used len {desc['len']}, the frame was {length} + {HDR} header bytes")
        if not desc["flags"] & DescFlag.WRITE:
            raise Failure("used_mismatch", f"RX used element id {desc['id']} without WRITE (2.8.4)")
        self.stats.frames += 1
        if not (checked and chain.checked) or self.loose:
            return
        want = NET_HDR.pack(num_buffers=1) + frame_bytes(self.seed, serial, length)
        got = b""
        for i, (_idx, _addr, n, _fl) in enumerate(chain.entries):
            take = min(n, len(want) - len(got))
            if take <= 0:
                break
            got += self.mem["slabs"][chain.bufs[i]].read(0, take)
        if got != want:
            first = next((i for i in range(len(want)) if i >= len(got) or got[i] != want[i]), None)
            raise Failure("payload", f"RX chain id {chain.id}: frame bytes differ from what was sent (byte {first})")

    async def _run_sync(self) -> None:
        if self.armed:
            self.broken = True
        for queue in (RX, TX):  # receive buffers first, so that the frames find them
            if self.queues[queue].enabled:
                await self._kick(queue)
        strict = not self.unchecked()
        expect_tx = [c for c in self.queues[TX].outstanding if not c.blocked]
        tx_done: list[Chain] = []
        rx_done = 0
        rx_need = min(len(self.frames_pending), len([c for c in self.queues[RX].outstanding if not c.blocked]))

        async def progress() -> bool:
            nonlocal rx_done
            if self._drain is not None:  # DMA seen so far is checked while its buffers are still outstanding
                await self._drain()
            for queue in (TX, RX):
                while (desc := self._used_at(queue)) is not None:
                    self.stats.used_checked += 1
                    done = self._consume(queue, desc, strict)
                    if queue == TX:
                        if strict and (desc["len"] != 0 or desc["flags"] & DescFlag.WRITE):
                            raise Failure("used_mismatch", f"TX used id {desc['id']} len {desc['len']}: expected 0")
                        tx_done.extend(done)
                    else:
                        for c in done:
                            if strict:
                                self._check_rx(c, desc)
                            rx_done += 1
                    for c in done:
                        self._retire(c)
            return len(tx_done) >= len(expect_tx) and rx_done >= rx_need

        if not strict:
            # an error is expected (or the outcome is implementation-defined): used elements must still name
            # outstanding chains, and an expected NEEDS_RESET must come within the bound
            if self.broken:
                await self._expect_needs_reset("sync")
            else:
                for _ in range(min(20, self._poll_limit)):
                    await self._poll()
            await progress()
            # The receive chains used here took frames that were headed for them: later frames go to the chains
            # after them (without this, the next frame was expected in the chain behind the one it went into,
            # and a malformed chain there was taken as reached: a false needs_reset_missing, seed 1000000).
            self.rx_assigned = max(0, self.rx_assigned - rx_done)
            return
        if not await self._wait(progress, self._poll_limit):
            self.stats.hangs += 1
            raise Failure(
                "hang",
                f"available buffers not used: TX {len(tx_done)}/{len(expect_tx)}, RX {rx_done}/{rx_need} "
                f"(NEEDS_RESET={await self._needs_reset()})",
            )
        for _ in range(3):  # late extra used elements would be a device bug: look once more after a while
            await self._poll()
        await progress()
        if await self._needs_reset():
            raise Failure("needs_reset_unexpected", "DEVICE_NEEDS_RESET set although no rule was broken")
        self.rx_assigned = max(0, self.rx_assigned - rx_done)
        for _ in range(8):  # event reads and MSI-X of the last used elements: then the device is quiescent
            await self._poll()
        for q in self.queues:
            count = self.t.irq_count(1 + q.index)
            if q.suppressed and q.suppress_clean and count != q.irq_base:
                raise Failure(
                    "interrupt",
                    f"queue {q.index}: {count - q.irq_base} used buffer notification(s) although the driver's "
                    "event suppression said DISABLE (2.8.10, 2.8.14)",
                )
            q.irq_base = count
            q.suppress_clean = q.suppressed

    async def _run_queue_reset(self, queue, size) -> None:
        q = self.queues[queue]
        if not self.has("RING_RESET"):
            self._plan_queue_reset(queue, size)
            return
        await self._common_write("queue_select", queue)
        await self._common_write("queue_reset", 1)

        async def done() -> bool:
            await self._common_write("queue_select", queue)
            return await self._common_read("queue_reset") == 0 and await self._common_read("queue_enable") == 0

        if not await self._wait(done, self._reset_polls):
            self.stats.hangs += 1
            raise Failure("hang", f"queue {queue}: queue_reset did not read back 0 (4.1.4.3.2)")
        await self._check_dma()
        for c in q.outstanding:
            self._retire(c)
        self.dma.retire_queue(queue)
        self._plan_queue_reset(queue, size)
        if not self.unchecked() or True:
            await self._setup_queue(queue)

    async def _run_events(self, queue, disable) -> None:
        """The driver's event suppression structure: DISABLE or ENABLE used buffer notifications (2.8.10)."""
        self._plan_events(queue, disable)
        flags = EventFlags.DISABLE if disable else EventFlags.ENABLE
        self.mem["drv"][queue].write(0, spec.EVENT_SUPPRESS.pack(flags=flags))

    async def _run_regs(self, accesses) -> None:
        for op, offset, size, value in accesses:
            if op == "r":
                try:
                    await self._bar_read(offset, size)
                except Failure:
                    raise
                except Exception:
                    pass  # an Unsupported Request completion is a legal answer to an odd access
            else:
                await self.t.bar_write(dm.BAR, offset, size, value & ((1 << (8 * size)) - 1))
        if not self.unchecked():
            status = await self._status()
            want = Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK | Status.DRIVER_OK
            if status != want:
                raise Failure("register", f"device_status {spec.status_names(status)} after harmless accesses")

    async def _run_late_write(self, what) -> None:
        """Out-of-order accesses on a running device that it must ignore (3.1.1, 4.1.4.3.2)."""
        self.stats.faults += 1
        if what == "driver_feature":
            await self._common_write("driver_feature_select", 0)
            before = await self._common_read("driver_feature")
            await self._common_write("driver_feature", 0)
            if not self.unchecked():
                got = await self._common_read("driver_feature")
                want = 0
                for name in self.features:
                    bit = spec.feature_from_name(name)
                    want |= (1 << bit) if bit < 32 else 0
                if got != want:
                    raise Failure(
                        "register",
                        f"driver_feature (select 0) reads {got:#x} after a write of 0 following FEATURES_OK "
                        f"(read {before:#x} before it), expected {want:#x}: later writes are ignored (3.1.1)",
                    )
        else:
            queue = TX if what.endswith("tx") else RX
            await self._common_write("queue_select", queue)
            if what.startswith("queue_size"):
                await self._common_write("queue_size", 1)
                got = await self._common_read("queue_size")
                if got != self.queues[queue].size and not self.unchecked():
                    raise Failure("register", f"queue {queue}: queue_size of a running queue changed to {got}")
            else:
                await self._common_write("queue_desc", UNMAPPED)


__all__ = [
    "KICK_MODES",
    "PROFILES",
    "RESET_VARIANTS",
    "RX_KINDS",
    "SAFE_READS",
    "SAFE_WRITES",
    "TX_KINDS",
    "CheckedDma",
    "DmaRules",
    "Failure",
    "FuzzDriver",
    "Stats",
    "EventFlags",
    "Feature",
    "NetFeature",
    "Any",
]
