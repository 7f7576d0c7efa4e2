"""The host driver against a device that lies (devices.lying): it must break the queue or refuse the device with
a clear error, and never corrupt memory.

"Never corrupts memory" is checked from the memory model's side after every lie: the device's DMA never
faulted, every buffer the device still holds stays mapped until the device reset (the driver gives nothing
back early), the driver writes nothing into the ring or a buffer once the queue is broken (every mapped byte
unchanged across the calls that must now refuse), no mapped buffer is left after stop() (no leak), and the
frames delivered before the lie are intact.  Then the device turns honest and a new driver brings it up and
moves traffic: a reset recovers.
"""

from __future__ import annotations

import random

import pytest

from devices.lying import Lie, LyingVirtioNet
from host.demo import make_frame
from host.driver import ConfigUnstable, DeviceStatusError
from host.inproc import InProcessTransport
from host.net import RX_VECTOR, VirtioNetDriver
from host.virtqueue import InterruptStorm, PackedVirtqueue, VirtqueueBroken
from virtio_fpga import spec
from virtio_fpga.spec import Feature, Status

DRIVER_BITS = Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK | Status.DRIVER_OK
NO_IN_ORDER = ((1 << 64) - 1) & ~(1 << Feature.IN_ORDER)


async def bring_up(dev: LyingVirtioNet, **kw) -> tuple[InProcessTransport, VirtioNetDriver]:
    t = InProcessTransport(device=dev)
    drv = VirtioNetDriver(t, queue_size=kw.pop("queue_size", 8), **kw)
    await drv.start()
    return t, drv


def memory_image(t: InProcessTransport) -> dict[int, bytes]:
    return {buf.iova: bytes(buf.mem) for buf in t.memory.mapped()}


async def assert_no_corruption(t: InProcessTransport, drv: VirtioNetDriver, vq: PackedVirtqueue, calls) -> None:
    """The audit after a broken queue (see the module docstring); ``calls`` must each refuse the broken queue."""
    await t.settle()
    assert t.memory.stats.faults == 0, "the device's DMA faulted"
    assert t.device.errors == [], t.device.errors  # the driver gave the device no reason to complain
    for state in vq.desc_state.values():
        if hasattr(state.token, "iova"):
            assert t.memory.is_mapped(state.token), "a buffer the device still holds was unmapped"
    before = memory_image(t)
    for call in calls:
        with pytest.raises(VirtqueueBroken):
            await call()
    await t.settle()
    assert memory_image(t) == before, "memory changed after the queue broke"
    await drv.stop()
    assert t.memory.mapped() == [], "DMA memory left mapped after stop()"
    assert await drv.dev.get_status() == 0


async def recovers(t: InProcessTransport) -> None:
    """Once the device behaves, a reset and a new bring-up give working traffic (2.1.2: reset recovers)."""
    t.device.honest = True
    drv = VirtioNetDriver(t, queue_size=4)
    await drv.start()
    rng = random.Random(1)
    frames = [make_frame(i, 80, drv.mac, rng) for i in range(6)]
    for frame in frames:
        await drv.send(frame)
        assert await drv.receive(1) == [frame]
    await drv.stop()


def queue_calls(drv: VirtioNetDriver, vq: PackedVirtqueue):
    """Driver operations on the broken queue, each of which must raise VirtqueueBroken."""
    frame = make_frame(99, 64, drv.mac or b"\2" * 6, random.Random(2))

    async def poll() -> None:
        drv.poll_rx()

    async def refill() -> None:
        drv.refill_rx()

    async def receive() -> None:
        await drv.receive(1, timeout=0.05)

    async def send() -> None:
        await drv.send(frame)

    async def reclaim() -> None:
        drv.reclaim_tx()

    async def wait_tx() -> None:
        await drv.wait_tx_done(timeout=0.05)

    return [poll, refill, receive] if vq is drv.rxq else [send, reclaim, wait_tx]


RING_CASES = [
    (lie, queue, in_order, after)
    for lie in (Lie.USED_ID, Lie.USED_LEN, Lie.USED_WRAP)
    for queue in (spec.NET_RX_QUEUE, spec.NET_TX_QUEUE)
    for in_order in (True, False)
    for after in (0, 5)
    if not (lie is Lie.USED_LEN and queue == spec.NET_TX_QUEUE)  # read-only buffers have no used length
]
MESSAGES = {Lie.USED_ID: "not an outstanding buffer", Lie.USED_LEN: "exceeds", Lie.USED_WRAP: "wrong wrap"}


@pytest.mark.parametrize(
    "lie,queue,in_order,after",
    RING_CASES,
    ids=[f"{c[0].value}-q{c[1]}-{'inorder' if c[2] else 'anyorder'}-after{c[3]}" for c in RING_CASES],
)
def test_used_element_lies_break_the_queue(run, lie: Lie, queue: int, in_order: bool, after: int) -> None:
    """A used element naming a buffer that is not outstanding, over-reporting its length or carrying the wrong
    wrap counter breaks that queue with a clear error at the first such element, mid-traffic too."""

    async def main() -> None:
        dev = LyingVirtioNet(lie, after=after, queues=frozenset({queue}))
        t, drv = await bring_up(dev, feature_mask=(1 << 64) - 1 if in_order else NO_IN_ORDER)
        assert drv.dev.negotiated(Feature.IN_ORDER) == in_order
        vq = drv.rxq if queue == spec.NET_RX_QUEUE else drv.txq
        rng = random.Random(0)
        sent: list[bytes] = []
        got: list[bytes] = []
        with pytest.raises(VirtqueueBroken, match=MESSAGES[lie]) as caught:
            for seq in range(3 * vq.size + after):
                frame = make_frame(seq, 60 + 7 * seq, drv.mac, rng)
                await drv.send(frame)
                sent.append(frame)
                got += await drv.receive(1, timeout=0.5)
                assert await drv.wait_tx_done(timeout=0.5)
        assert f"queue {queue}" in str(caught.value)
        assert vq.broken == str(caught.value)
        assert dev.lies_told >= 1 and dev.honest_used >= after
        assert got == sent[: len(got)], "a frame delivered before the lie came back altered"
        if queue == spec.NET_RX_QUEUE:
            assert len(got) == after  # every honest receive completion was delivered, none after the lie
        await assert_no_corruption(t, drv, vq, queue_calls(drv, vq))
        await recovers(t)

    run(main())


def test_interrupt_storm_breaks_the_queue_instead_of_spinning(run) -> None:
    """Interrupts with nothing used, without end: InterruptStorm well before the receive timeout."""

    async def main() -> None:
        dev = LyingVirtioNet(Lie.IRQ_STORM)
        t, drv = await bring_up(dev)
        start = t.now()
        with pytest.raises(InterruptStorm, match="interrupt storm"):
            await drv.receive(1, timeout=30.0)
        assert t.now() - start < 10.0
        assert drv.rxq.broken and drv.rxq.spurious_run >= PackedVirtqueue.STORM_LIMIT
        assert dev.lies_told >= PackedVirtqueue.STORM_LIMIT
        await assert_no_corruption(t, drv, drv.rxq, queue_calls(drv, drv.rxq))
        await recovers(t)

    run(main())


def test_interrupt_storm_with_traffic_flowing_is_tolerated(run) -> None:
    """Spurious interrupts between real completions are counted but break nothing: each completion ends the run,
    so more spurious interrupts than STORM_LIMIT in total, in runs shorter than it, leave the queues working."""

    async def main() -> None:
        dev = LyingVirtioNet(Lie.IRQ_STORM)
        t, drv = await bring_up(dev)
        rng = random.Random(3)
        per_frame = 30
        frames = PackedVirtqueue.STORM_LIMIT // per_frame + 5
        for seq in range(frames):
            for _ in range(per_frame):  # a register read fires the storm; the wake-up finds nothing used
                await drv.dev.check_needs_reset()
                assert await t.wait_irq(RX_VECTOR, 0.1)
                assert not drv.rxq.note_interrupt()
            frame = make_frame(seq, 64 + seq, drv.mac, rng)
            await drv.send(frame)
            assert await drv.receive(1) == [frame]
            assert await drv.wait_tx_done()
        assert drv.rxq.broken is None and drv.txq.broken is None
        assert drv.rxq.spurious_interrupts >= frames * per_frame > PackedVirtqueue.STORM_LIMIT
        assert drv.rxq.spurious_run < PackedVirtqueue.STORM_LIMIT
        await drv.stop()
        assert t.memory.mapped() == []

    run(main())


def test_config_generation_that_never_settles(run) -> None:
    """4.1.4.3.1 retry loop, bounded: ConfigUnstable names the field; the driver sets FAILED and maps nothing."""

    async def main() -> None:
        dev = LyingVirtioNet(Lie.CONFIG_GENERATION)
        t = InProcessTransport(device=dev)
        drv = VirtioNetDriver(t)
        with pytest.raises(ConfigUnstable, match=r"config_generation never settled .*device configuration 0x0\+1"):
            await drv.start()
        assert dev.status_writes[-1] & Status.FAILED  # 3.1.1: the driver SHOULD set FAILED when it gives up
        assert not dev.status_writes[-1] & Status.DRIVER_OK
        assert t.memory.mapped() == [] and t.memory.stats.reads == 0 and t.memory.stats.writes == 0
        await recovers(t)

    run(main())


STATUS_FLIPS = [
    (Status.DRIVER_OK, "lost DRIVER_OK"),
    (Status.FEATURES_OK, "lost FEATURES_OK"),
    (Status.ACKNOWLEDGE, "lost ACKNOWLEDGE"),
    (Status.FAILED, "shows FAILED"),
    (0x20, "shows 0x20"),
]


@pytest.mark.parametrize("flip,message", STATUS_FLIPS, ids=[m for _, m in STATUS_FLIPS])
@pytest.mark.parametrize("every", [1, 2])
def test_status_bits_that_flip_during_traffic(run, flip: int, message: str, every: int) -> None:
    """device_status that loses a driver bit or shows one nobody set, after DRIVER_OK: DeviceStatusError."""

    async def main() -> None:
        dev = LyingVirtioNet(Lie.STATUS_FLIP, flip=flip, every=every)
        t, drv = await bring_up(dev)
        writes = len(dev.status_writes)
        with pytest.raises(DeviceStatusError, match=message):
            await drv.receive(1, timeout=5.0)
        raised = 0
        for _ in range(every):  # with every=2 the bits come and go: one of the next two reads lies
            try:
                await drv.dev.check_needs_reset()
            except DeviceStatusError:
                raised += 1
        assert raised == 1
        assert len(dev.status_writes) == writes  # nothing of the lie was written back
        assert all(v & ~DRIVER_BITS == 0 for v in dev.status_writes)
        await drv.stop()
        assert t.memory.mapped() == [] and t.memory.stats.faults == 0
        await recovers(t)

    run(main())


@pytest.mark.parametrize("flip,message", [(Status.FAILED, "shows FAILED"), (Status.DRIVER, "lost DRIVER")])
def test_status_bits_that_flip_during_bring_up(run, flip: int, message: str) -> None:
    """A status lie during initialisation stops bring-up; the driver never copies the lie into its own writes."""

    async def main() -> None:
        dev = LyingVirtioNet(Lie.STATUS_FLIP, flip=flip, during_init=True)
        t = InProcessTransport(device=dev)
        drv = VirtioNetDriver(t)
        with pytest.raises(DeviceStatusError, match=message):
            await drv.start()
        *progress, last = dev.status_writes
        assert progress[0] == 0  # the reset
        assert all(v & ~DRIVER_BITS == 0 for v in progress), [hex(v) for v in progress]
        assert last & Status.FAILED and not last & Status.DRIVER_OK
        assert t.memory.mapped() == []
        await recovers(t)

    run(main())


def test_needs_reset_that_vanishes_is_a_lie(run) -> None:
    """DEVICE_NEEDS_RESET stays until reset (2.1.2): shown once and then gone is a status lie."""

    async def main() -> None:
        dev = LyingVirtioNet(Lie.STATUS_FLIP, flip=Status.DEVICE_NEEDS_RESET, every=2)
        t, drv = await bring_up(dev)
        assert await drv.dev.read_status() & Status.DEVICE_NEEDS_RESET  # shown (a lie, but an allowed one)
        with pytest.raises(DeviceStatusError, match="cleared DEVICE_NEEDS_RESET"):
            await drv.dev.read_status()
        await drv.stop()
        assert t.memory.mapped() == []

    run(main())
