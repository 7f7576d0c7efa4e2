"""Scenarios as data, run by the driver on any transport, recorded as normalised traces.

A scenario is a feature set (what the driver refuses), queue sizes, chain lengths and a list of driver
operations.  :func:`run_scenario` performs them through :class:`host.net.VirtioNetDriver` and records what a
driver can observe, and nothing that depends on timing:

* ``status`` at each checkpoint, ``negotiated`` features;
* ``used``: every completed buffer as (queue, id, len), in completion order per queue, after IN_ORDER batches
  are expanded (how a device groups used writes is timing, the set and order of completions is behaviour).
  Between two other events, TX completions come first, then RX ones: whether a concurrent device (QEMU) had
  completed a TX buffer when the driver looked, at a later send or at the checkpoint, is timing too;
* ``rx``: received frame bytes (as a digest, with the length);
* ``irq``: per checkpoint, which vectors fired since the previous checkpoint (yes/no: coalescing of several
  interrupts into one is timing);
* ``error``: DEVICE_NEEDS_RESET, broken rings, refused features.

Counts that differ by design (DMA requests and bytes, interrupt totals, simulated time) go into ``stats``: they
are reported side by side, never compared.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import asdict, dataclass, field
from typing import Any

from host.driver import VirtioError
from host.net import CONFIG_VECTOR, RX_VECTOR, TX_VECTOR, VirtioNetDriver
from host.transport import Transport
from host.virtqueue import PackedVirtqueue, UsedBuffer, VirtqueueBroken, VirtqueueFull
from virtio_fpga import spec
from virtio_fpga.spec import PACKED_DESC, DescFlag, Status, feature_names, status_names

#: Operations a scenario may contain (first element of each op tuple).
OPS = (
    "send",  # ("send", size, kick)
    "kick",  # ("kick",): notify the TX queue
    "sync",  # ("sync",): wait for every expected completion, then record a checkpoint
    "cb",  # ("cb", queue, mode): mode "enable" | "disable" | "delayed:N"
    "reset",  # ("reset",): device reset and a fresh bring-up
    "queue_reset",  # ("queue_reset", queue)
    "malformed",  # ("malformed", kind): kind in MALFORMED
)
MALFORMED = ("zero_len", "write_on_tx", "chain_loop", "bad_addr", "indirect")


@dataclass
class Scenario:
    name: str
    ops: list[tuple]
    disable: list[str] = field(default_factory=list)
    queue_size: int = 8
    rx_chain: int = 1
    tx_chain: int = 1
    seed: int = 1
    description: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ops"] = [list(op) for op in self.ops]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scenario:
        d = dict(d)
        d["ops"] = [tuple(op) for op in d["ops"]]
        return cls(**d)


@dataclass
class Trace:
    device: str
    scenario: str
    events: list[list] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    def add(self, *event: Any) -> None:
        self.events.append(list(event))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _traffic(n: int, size: int = 128) -> list[tuple]:
    return [("send", size, i == n - 1) for i in range(n)] + [("sync",)]


def library() -> list[Scenario]:
    """The default scenario set: every feature path and error path a driver can reach."""
    mixed = [("send", s, True) for s in (14, 60, 61, 512, 1514, 4000, 9000, 9 * 1024 + 14)] + [("sync",)]
    return [
        Scenario("basic", _traffic(8), description="bring-up and eight 128-byte frames"),
        Scenario("sizes", mixed, queue_size=16, rx_chain=2, description="1 byte past the header up to 9 KiB"),
        Scenario("wrap", _traffic(4) * 8, queue_size=5, description="non-power-of-two ring, many laps"),
        Scenario("chains", _traffic(3, 3000) * 4, queue_size=12, rx_chain=3, tx_chain=4, description="long chains"),
        Scenario(
            "no-notification-data",
            _traffic(8) * 3,
            disable=["NOTIFICATION_DATA"],
            description="kicks without next_off/next_wrap",
        ),
        Scenario("no-in-order", _traffic(8) * 3, disable=["IN_ORDER"], description="per-buffer used elements"),
        Scenario(
            "minimal-features",
            _traffic(6),
            disable=["IN_ORDER", "NOTIFICATION_DATA", "EVENT_IDX", "RING_RESET", "MTU", "STATUS", "MAC"],
            description="only VERSION_1 and RING_PACKED",
        ),
        Scenario(
            "suppression",
            [
                ("cb", 0, "disable"),
                ("cb", 1, "disable"),
                *_traffic(4),
                ("cb", 0, "enable"),
                ("cb", 1, "enable"),
                *_traffic(4),
            ],
            description="event suppression DISABLE then ENABLE (2.8.10)",
        ),
        Scenario(
            "event-idx",
            [("cb", 1, "delayed:3"), ("cb", 0, "disable"), *_traffic(2), *_traffic(2), *_traffic(2)],
            disable=["IN_ORDER"],
            description="EVENT_IDX descriptor mode on the TX queue",
        ),
        Scenario("reset", [*_traffic(3), ("reset",), *_traffic(3)], description="device reset between traffic"),
        Scenario(
            "queue-reset",
            [*_traffic(3), ("queue_reset", 0), *_traffic(3), ("queue_reset", 1), *_traffic(3)],
            description="VIRTIO_F_RING_RESET on both queues",
        ),
        Scenario("refuse-split-ring", _traffic(1), disable=["RING_PACKED"], description="FEATURES_OK refused"),
        *[
            Scenario(
                f"malformed-{kind}",
                [*_traffic(2), ("malformed", kind), ("sync",), ("reset",), *_traffic(2)],
                description=f"malformed descriptor ({kind}) then recovery",
            )
            for kind in MALFORMED
        ],
    ]


def random_scenario(seed: int) -> Scenario:
    """A random but valid operation sequence (the comparison's fuzzing mode)."""
    rng = random.Random(seed)
    queue_size = rng.randint(2, 24)
    tx_chain = rng.randint(1, min(4, queue_size))
    rx_chain = rng.randint(1, min(3, queue_size))
    ops: list[tuple] = []
    for _ in range(rng.randint(3, 12)):
        roll = rng.random()
        if roll < 0.7:
            n = rng.randint(1, max(1, min(queue_size // tx_chain, queue_size // rx_chain)))
            ops += [("send", rng.randint(14, 3000), i == n - 1) for i in range(n)] + [("sync",)]
        elif roll < 0.8:
            ops.append(("cb", rng.randint(0, 1), rng.choice(["enable", "disable"])))
        elif roll < 0.9:
            ops.append(("queue_reset", rng.randint(0, 1)))
        else:
            ops.append(("reset",))
    ops.append(("sync",))
    disable = rng.sample(["IN_ORDER", "NOTIFICATION_DATA", "EVENT_IDX"], rng.randint(0, 2))
    return Scenario(
        f"random-{seed}", ops, disable=disable, queue_size=queue_size, rx_chain=rx_chain, tx_chain=tx_chain, seed=seed
    )


def find(name: str) -> Scenario:
    for sc in library():
        if sc.name == name:
            return sc
    if name.startswith("random-") and name[7:].isdigit():
        return random_scenario(int(name[7:]))
    raise KeyError(f"no scenario named {name!r}; known: {', '.join(s.name for s in library())}, random-N")


# ------------------------------------------------------------------------------------------------------------


class _Runner:
    def __init__(self, transport: Transport, scenario: Scenario, trace: Trace, settle: float, poll: float) -> None:
        self.t = transport
        self.poll = poll
        self.sc = scenario
        self.trace = trace
        self.settle = settle
        self.rng = random.Random(scenario.seed)
        self.drv: VirtioNetDriver | None = None
        self.expected_rx = 0
        self.seq = 0
        self.irq_seen = {v: transport.irq_count(v) for v in (CONFIG_VECTOR, RX_VECTOR, TX_VECTOR)}
        self.failed = False
        self.expect_error = False  # a malformed request was made: the next checkpoint waits for NEEDS_RESET
        #: Completions harvested since the last other event, per queue (TX first when flushed; see module doc).
        self.pending: dict[int, list[list]] = {1: [], 0: []}

    def event(self, *event: Any) -> None:
        """Record a non-completion event, after the completions harvested before it (grouped by queue)."""
        self.flush()
        self.trace.add(*event)

    def flush(self) -> None:
        for queue in (1, 0):
            self.trace.events.extend(self.pending[queue])
            self.pending[queue].clear()

    def mask(self) -> int:
        bits = [spec.feature_from_name(n) for n in self.sc.disable]
        return ((1 << 64) - 1) & ~spec.features_mask(bits)

    async def bring_up(self) -> None:
        if self.drv is not None:
            await self.drv.stop()
        self.drv = VirtioNetDriver(
            self.t,
            feature_mask=self.mask(),
            queue_size=self.sc.queue_size,
            rx_chain=self.sc.rx_chain,
            tx_chain=self.sc.tx_chain,
        )
        # The driver reclaims TX buffers itself before each send; a device that completes while the scenario is
        # still sending (QEMU runs concurrently) would have those completions vanish from the trace.
        self.drv.on_tx_used = self.tx_used
        self.expected_rx = 0
        self.failed = False
        self.expect_error = False
        try:
            await self.drv.start()
        except VirtioError as exc:
            self.event("error", type(exc).__name__, str(exc).split(" for driver features")[0])
            self.failed = True
            return
        self.event("negotiated", feature_names(self.drv.negotiated))
        self.event("config", self.drv.mac.hex(), self.drv.mtu, self.drv.link_up)

    def record_used(self, queue: int, vq: PackedVirtqueue) -> list:
        """Harvest a queue directly (not through the driver's helpers) so each completion is recorded."""
        out = []
        try:
            for used in vq.get_used():
                out.append(used)
        except VirtqueueBroken as exc:
            self.event("error", "VirtqueueBroken", str(exc))
            self.failed = True
        return out

    def tx_used(self, queue: int, used: UsedBuffer) -> None:
        self.pending[queue].append(["used", queue, used.id, used.length])

    def reclaim_tx(self) -> None:
        """The driver's TX reclaim (completions reach the trace through ``on_tx_used``); a broken ring is recorded."""
        assert self.drv is not None
        try:
            self.drv.reclaim_tx()
        except VirtqueueBroken as exc:
            self.event("error", "VirtqueueBroken", str(exc))
            self.failed = True

    async def sync(self) -> None:
        """Wait until every outstanding TX buffer is used and every expected frame arrived, then checkpoint.

        ``settle`` bounds the wait *since the last completion*, not the whole sync: a device that is slow but
        progressing (the software device in a loaded TCG guest, QEMU under TCG) is waited for, and only one
        that has stopped completing is cut off.  Otherwise how many completions make it into a checkpoint
        would depend on the machine's load, which is timing, not behaviour.  A device living in this process
        is first let run until it has nothing left to do (``quiesce_device``), so its traces never depend on
        how fast the host is.
        """
        drv = self.drv
        assert drv is not None and drv.txq is not None and drv.rxq is not None
        quiesce = getattr(self.t, "quiesce_device", None)
        deadline = self.t.now() + self.settle
        while not self.failed:
            if quiesce is not None:
                await quiesce()
            tx_before = drv.txq.outstanding
            self.reclaim_tx()
            progressed = drv.txq.outstanding != tx_before
            for used in self.record_used(0, drv.rxq):
                frame = drv.take_rx(used)
                self.expected_rx -= 1
                self.pending[0] += [["used", 0, used.id, used.length], ["rx", len(frame), digest(frame)]]
                progressed = True
            if progressed:
                deadline = self.t.now() + self.settle
            if drv.rxq.num_free >= drv.rx_chain:
                drv.refill_rx()
                await drv.rxq.kick()
            done = drv.txq.outstanding == 0 and self.expected_rx <= 0
            status = await drv.dev.get_status()
            if done or status & Status.DEVICE_NEEDS_RESET or self.t.now() > deadline:
                break
            await self.t.wait_irq(RX_VECTOR, self.poll)
        await self.checkpoint()

    async def await_error(self) -> None:
        """After a malformed request: wait (bounded) for DEVICE_NEEDS_RESET and its configuration interrupt."""
        drv = self.drv
        if drv is None or not drv.dev.caps:
            return
        deadline = self.t.now() + self.settle
        while self.t.now() <= deadline:
            if await drv.dev.get_status() & Status.DEVICE_NEEDS_RESET:
                await self.t.wait_irq(CONFIG_VECTOR, self.poll)  # 2.1.2: the config interrupt follows
                return
            await self.t.wait_irq(CONFIG_VECTOR, self.poll)

    async def checkpoint(self) -> None:
        drv = self.drv
        assert drv is not None
        status = await drv.dev.get_status()
        fired = []
        for vector in (CONFIG_VECTOR, RX_VECTOR, TX_VECTOR):
            count = self.t.irq_count(vector)
            if count != self.irq_seen[vector]:
                fired.append(vector)
            self.irq_seen[vector] = count
        self.event("checkpoint", status_names(status), fired)
        if status & Status.DEVICE_NEEDS_RESET:
            self.failed = True

    async def malformed(self, kind: str) -> None:
        drv = self.drv
        assert drv is not None and drv.txq is not None
        vq = drv.txq
        buf = self.t.alloc_dma(256)
        avail = int(DescFlag.AVAIL) if vq.avail_wrap_counter else int(DescFlag.USED)
        idx = vq.next_avail_idx
        addr, length, flags = buf.iova, 64, avail
        if kind == "zero_len":
            length = 0
        elif kind == "write_on_tx":
            flags |= DescFlag.WRITE
        elif kind == "bad_addr":
            addr = 0xDEAD_0000_0000
        elif kind == "indirect":
            flags |= DescFlag.INDIRECT
        elif kind == "chain_loop":
            # Every descriptor of the ring chained with NEXT: a chain longer than the queue (2.8.7 MUST NOT).
            for i in range(1, vq.size):
                j = idx + i
                wrap = vq.avail_wrap_counter if j < vq.size else vq.avail_wrap_counter ^ 1
                f = (int(DescFlag.AVAIL) if wrap else int(DescFlag.USED)) | DescFlag.NEXT
                j %= vq.size
                vq.ring.mem[j * 16 : j * 16 + 16] = PACKED_DESC.pack(addr=addr, len=16, id=0, flags=f)
            flags |= DescFlag.NEXT
            length = 16
        else:
            raise ValueError(f"unknown malformed kind {kind!r}")
        vq.ring.mem[idx * 16 : idx * 16 + 16] = PACKED_DESC.pack(addr=addr, len=length, id=0, flags=flags)
        # Advance the driver's view as a (buggy) driver making these descriptors available would, so that the
        # notification data names them (4.1.5.2: next_off/next_wrap is the next descriptor not yet available).
        made_available = vq.size if kind == "chain_loop" else 1
        vq.next_avail_idx += made_available
        if vq.next_avail_idx >= vq.size:
            vq.next_avail_idx -= vq.size
            vq.avail_wrap_counter ^= 1
        await vq.notify()
        self.failed = True  # the ring is no longer the driver's to use: only a reset brings it back
        self.expect_error = True

    async def run(self) -> None:
        await self.bring_up()
        for op in self.sc.ops:
            name = op[0]
            if name == "reset":
                await self.bring_up()
                continue
            if self.failed:
                if name == "sync":
                    if self.expect_error:
                        await self.await_error()
                    await self.checkpoint()
                continue
            drv = self.drv
            assert drv is not None and drv.txq is not None and drv.rxq is not None
            if name == "send":
                _, size, kick = op
                frame = _frame(self.seq, size, drv.mac, self.rng)
                self.seq += 1
                try:
                    await drv.send(frame, kick=bool(kick))
                except VirtqueueFull:
                    self.event("error", "VirtqueueFull", "scenario sent more than the ring holds")
                    continue
                except VirtqueueBroken as exc:  # the device wrote an impossible used element
                    self.event("error", "VirtqueueBroken", str(exc))
                    self.failed = True
                    continue
                self.expected_rx += 1
            elif name == "kick":
                await drv.txq.kick()
            elif name == "sync":
                await drv.txq.kick()
                await self.sync()
            elif name == "cb":
                _, queue, mode = op
                vq = drv.rxq if queue == 0 else drv.txq
                if mode == "enable":
                    vq.enable_cb()
                elif mode == "disable":
                    vq.disable_cb()
                else:
                    vq.enable_cb_delayed(int(mode.split(":")[1]))
            elif name == "queue_reset":
                vq = drv.rxq if op[1] == 0 else drv.txq
                await self.sync()
                try:
                    dropped = await drv.reset_queue(vq)
                except VirtioError as exc:
                    self.event("error", type(exc).__name__, str(exc))
                    continue
                self.event("queue_reset", op[1], dropped)
            elif name == "malformed":
                await self.malformed(op[1])
            else:
                raise ValueError(f"unknown scenario op {op!r}")
        self.flush()
        if self.drv is not None:
            await self.drv.stop()


def digest(frame: bytes) -> str:
    return hashlib.sha256(frame).hexdigest()[:16]


def _dma_stats(transport: Transport) -> dict[str, int]:
    """DMA counters if the transport can see them (requests and bytes each way): reported, never compared."""
    getter = getattr(transport, "dma_stats", None)
    return dict(getter()) if getter is not None else {}


def _frame(seq: int, size: int, mac: bytes, rng: random.Random) -> bytes:
    from host.demo import make_frame

    return make_frame(seq, size, mac, rng)


async def run_scenario(
    transport: Transport, scenario: Scenario | dict, *, settle: float = 0.05, poll: float = 0.001
) -> dict[str, Any]:
    """Run one scenario on ``transport`` and return its trace as a dict (JSON-able, for the sim bridge too).

    ``settle`` bounds how long a checkpoint waits for expected completions, ``poll`` how long one wait for an
    interrupt lasts before the ring is checked again (in the transport's time: simulated under cocotb).
    """
    sc = scenario if isinstance(scenario, Scenario) else Scenario.from_dict(scenario)
    trace = Trace(transport.name, sc.name)
    runner = _Runner(transport, sc, trace, settle, poll)
    t0 = transport.now()
    irq_before = {v: transport.irq_count(v) for v in (CONFIG_VECTOR, RX_VECTOR, TX_VECTOR)}
    dma_before = _dma_stats(transport)
    await runner.run()
    dma_after = _dma_stats(transport)
    trace.stats["dma"] = {k: dma_after[k] - dma_before.get(k, 0) for k in dma_after}
    trace.stats["interrupts"] = {str(v): transport.irq_count(v) - n for v, n in irq_before.items()}
    trace.stats["elapsed"] = transport.now() - t0
    return trace.to_dict()


async def run_scenarios(
    transport: Transport, scenarios: list[dict], *, settle: float = 0.05, poll: float = 0.001
) -> dict[str, Any]:
    """Several scenarios in a row on one transport (one simulation run can serve a whole comparison)."""
    traces = []
    for sc in scenarios:
        traces.append(await run_scenario(transport, sc, settle=settle, poll=poll))
    return {"traces": traces}
