"""The driver against the software reference device: negotiation, traffic, rings, notifications, suppression."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from host.demo import make_frame, run_demo
from host.driver import DRIVER_SUPPORTED
from host.inproc import InProcessTransport
from host.net import RX_VECTOR, TX_VECTOR, VirtioNetDriver
from virtio_fpga import device_map as dm
from virtio_fpga.spec import Feature, Status, feature_names, features_mask

OPTIONAL = [
    Feature.IN_ORDER,
    Feature.NOTIFICATION_DATA,
    Feature.EVENT_IDX,
    Feature.RING_RESET,
    Feature.ACCESS_PLATFORM,
    Feature.ORDER_PLATFORM,
]


def mask_without(bits) -> int:
    return ((1 << 64) - 1) & ~features_mask(bits)


@pytest.mark.parametrize(
    "dropped",
    [combo for n in range(len(OPTIONAL) + 1) for combo in itertools.combinations(OPTIONAL, n)],
    ids=lambda c: "+".join(f.name for f in c) or "none",
)
def test_negotiation_every_subset(run, dropped) -> None:
    """driver_features = device_features & supported & mask for every subset of the optional features (2.2)."""

    async def main() -> None:
        t = InProcessTransport()
        result = await run_demo(t, frames=3, disable=[f.name for f in dropped], queue_size=5)
        expected = dm.DEVICE_FEATURES & DRIVER_SUPPORTED & mask_without(dropped)
        assert int(result["driver_features"], 16) == expected
        assert set(result["negotiated"]) == set(feature_names(expected))
        assert result["ok"], result["error_messages"]

    run(main())


TRAFFIC_CASES = [
    (size, rx, tx)
    for size in (1, 3, 7, 16, 100, 256)
    for rx, tx in ((1, 1), (2, 3), (4, 1), (1, 8), (5, 5))
    if rx <= size and tx <= size  # 2.8.7: a chain is never longer than the queue
]


@pytest.mark.parametrize("queue_size,rx_chain,tx_chain", TRAFFIC_CASES)
def test_traffic_chains_and_sizes(run, queue_size: int, rx_chain: int, tx_chain: int) -> None:
    """Chains of 1..N descriptors on rings of sizes that are not powers of two, wrapping many times."""

    async def main() -> None:
        t = InProcessTransport()
        frames = max(3 * queue_size, 24)  # at least three trips around the ring
        result = await run_demo(
            t, frames=frames, min_size=14, max_size=3000, queue_size=queue_size, rx_chain=rx_chain, tx_chain=tx_chain
        )
        assert result["ok"], result["error_messages"]
        assert result["frames_received"] == frames
        # every chain was seen whole: one per frame in each direction, each descriptor read once
        assert t.device.counters.chains == 2 * frames
        c = t.device.counters
        assert c.descriptor_reads == frames * (rx_chain + tx_chain) + c.empty_polls

    run(main())


@pytest.mark.parametrize("notification_data", [True, False])
def test_notification_data_on_and_off(run, notification_data: bool) -> None:
    async def main() -> None:
        t = InProcessTransport()
        disable = [] if notification_data else ["NOTIFICATION_DATA"]
        result = await run_demo(t, frames=50, disable=disable, queue_size=9)
        assert result["ok"], result["error_messages"]
        assert ("NOTIFICATION_DATA" in result["negotiated"]) == notification_data
        c = t.device.counters
        # With the feature every kick carried next_off/next_wrap (4.1.5.2); without, a plain 16-bit queue index.
        assert c.notifications > 0
        assert c.notifications_with_data == (c.notifications if notification_data else 0)

    run(main())


def test_notification_data_matches_driver_state(run) -> None:
    async def main() -> None:
        t = InProcessTransport()
        drv = VirtioNetDriver(t, queue_size=5)
        await drv.start()
        mac = drv.mac
        rng = random.Random(3)
        for seq in range(12):
            await drv.send(make_frame(seq, 64, mac, rng))
            q = t.device.queues[1]
            assert q.notify_hint == (drv.txq.next_avail_idx, drv.txq.avail_wrap_counter)
            assert len(await drv.receive(1)) == 1
            await drv.wait_tx_done()

    run(main())


def test_event_suppression_disable_and_enable(run) -> None:
    """2.8.10: with the driver's flags at DISABLE the device sends no used-buffer interrupts, yet uses buffers."""

    async def main() -> None:
        t = InProcessTransport()
        drv = VirtioNetDriver(t, queue_size=8)
        await drv.start()
        rng = random.Random(1)
        drv.txq.disable_cb()
        drv.rxq.disable_cb()
        before = (t.irq_count(RX_VECTOR), t.irq_count(TX_VECTOR))
        for seq in range(4):
            await drv.send(make_frame(seq, 100, drv.mac, rng))
        await t.settle()
        assert (t.irq_count(RX_VECTOR), t.irq_count(TX_VECTOR)) == before
        assert t.device.counters.interrupts_suppressed >= 2
        assert len(drv.poll_rx()) == 4
        drv.txq.enable_cb()
        drv.rxq.enable_cb()
        await drv.rxq.kick()
        await drv.send(make_frame(9, 100, drv.mac, rng))
        await t.settle()
        assert t.irq_count(RX_VECTOR) == before[0] + 1 and t.irq_count(TX_VECTOR) == before[1] + 1

    run(main())


def test_event_idx_desc_mode(run) -> None:
    """EVENT_IDX (2.8.10, 2.8.14 RING_EVENT_FLAGS_DESC): interrupt only when the named descriptor is used."""

    async def main() -> None:
        t = InProcessTransport()
        drv = VirtioNetDriver(t, queue_size=8, feature_mask=mask_without([Feature.IN_ORDER]))
        await drv.start()
        assert drv.dev.negotiated(Feature.EVENT_IDX)
        rng = random.Random(2)
        drv.rxq.disable_cb()
        drv.txq.enable_cb_delayed(after=3)  # interrupt once the third outstanding TX descriptor is used
        base = t.irq_count(TX_VECTOR)
        for seq in range(2):
            await drv.send(make_frame(seq, 80, drv.mac, rng))
            await t.settle()
        assert t.irq_count(TX_VECTOR) == base
        await drv.send(make_frame(2, 80, drv.mac, rng))
        await t.settle()
        assert t.irq_count(TX_VECTOR) == base + 1
        await drv.send(make_frame(3, 80, drv.mac, rng))
        await t.settle()
        assert t.irq_count(TX_VECTOR) == base + 1  # event offset already passed: no further interrupt
        assert len(drv.poll_rx()) == 4

    run(main())


def test_device_event_suppression_disable_stops_kicks(run) -> None:
    """The device's own structure: DISABLE means the driver does not ring the doorbell (2.8.10)."""

    async def main() -> None:
        t = InProcessTransport()
        drv = VirtioNetDriver(t, queue_size=4)
        await drv.start()
        drv.txq.device_area.write(0, bytes([0, 0, 1, 0]))  # as if the device wrote flags=DISABLE
        notes = t.device.counters.notifications
        await drv.send(make_frame(0, 64, drv.mac, random.Random(0)))
        assert t.device.counters.notifications == notes
        assert drv.txq.kicks_suppressed == 1

    run(main())


def test_in_order_batches_used_writes(run) -> None:
    """With IN_ORDER the device may write one used element per batch (2.8.21); the driver completes them all."""

    async def main() -> None:
        t = InProcessTransport()
        drv = VirtioNetDriver(t, queue_size=16)
        await drv.start()
        assert drv.dev.negotiated(Feature.IN_ORDER)
        rng = random.Random(5)
        writes = t.device.counters.used_writes
        for seq in range(6):
            await drv.send(make_frame(seq, 70, drv.mac, rng), kick=(seq == 5))
        got = await drv.receive(6)
        assert len(got) == 6
        assert await drv.wait_tx_done()
        # 6 RX used elements but a single TX used element for the batch of 6
        assert t.device.counters.used_writes - writes == 7

    run(main())


def test_jumbo_frames_round_trip(run) -> None:
    async def main() -> None:
        t = InProcessTransport()
        result = await run_demo(t, frames=6, min_size=9000, max_size=9 * 1024 + 14, queue_size=4, rx_chain=3)
        assert result["ok"], result["error_messages"]

    run(main())


def test_reset_in_the_middle_of_traffic(run) -> None:
    """2.4: a reset stops the device; a fresh initialisation works and traffic flows again."""

    async def main() -> None:
        t = InProcessTransport()
        drv = VirtioNetDriver(t, queue_size=8)
        await drv.start()
        rng = random.Random(7)
        for seq in range(5):
            await drv.send(make_frame(seq, 200, drv.mac, rng), kick=False)
        await drv.txq.notify()
        await drv.dev.reset()
        assert await drv.dev.get_status() == 0
        assert all(not q.enable for q in t.device.queues)
        drv2 = VirtioNetDriver(t, queue_size=8)
        await drv2.start()
        frame = make_frame(99, 300, drv2.mac, rng)
        await drv2.send(frame)
        assert await drv2.receive(1) == [frame]

    run(main())


def test_queue_reset(run) -> None:
    """VIRTIO_F_RING_RESET (2.6.1, 4.1.4.3.2): once reset, queue_reset and queue_enable read 0; it comes back."""

    async def main() -> None:
        t = InProcessTransport()
        drv = VirtioNetDriver(t, queue_size=6)
        await drv.start()
        rng = random.Random(8)
        frame = make_frame(1, 64, drv.mac, rng)
        await drv.send(frame)
        assert await drv.receive(1) == [frame]
        await drv.dev.write_common("queue_select", 0)
        await drv.dev.write_common("queue_reset", 1)
        assert await drv.dev.read_common("queue_reset") == 0
        assert await drv.dev.read_common("queue_enable") == 0
        dropped = await drv.reset_queue(drv.rxq)
        assert dropped == drv.rxq.size  # every posted RX buffer was given up
        assert t.device.queues[0].reset == 0 and t.device.queues[0].enable == 1
        for seq in range(10):
            frame = make_frame(seq, 64, drv.mac, rng)
            await drv.send(frame)
            assert await drv.receive(1) == [frame]

    run(main())


def test_link_status_mac_mtu(run) -> None:
    async def main() -> None:
        t = InProcessTransport()
        drv = VirtioNetDriver(t)
        await drv.start()
        assert drv.mac == dm.DEFAULT_MAC
        assert drv.mtu == dm.DEFAULT_MTU
        assert drv.link_up
        assert await drv.dev.get_status() == Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK | Status.DRIVER_OK

    run(main())


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.integers(14, 2000), st.booleans()),
        st.tuples(st.just("poll"), st.just(0), st.just(False)),
        st.tuples(st.just("toggle_cb"), st.integers(0, 2), st.just(False)),
        st.tuples(st.just("reset_tx"), st.just(0), st.just(False)),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS, queue_size=st.integers(1, 12), chain=st.integers(1, 3), seed=st.integers(0, 1000))
def test_random_operation_sequences(run, ops, queue_size: int, chain: int, seed: int) -> None:
    """Hypothesis drives the driver; every frame that the device accepted comes back intact and in order."""
    chain = min(chain, queue_size)

    async def main() -> None:
        t = InProcessTransport()
        drv = VirtioNetDriver(t, queue_size=queue_size, rx_chain=chain, tx_chain=chain)
        await drv.start()
        rng = random.Random(seed)
        expected: list[bytes] = []
        got: list[bytes] = []
        seq = 0
        for op, arg, flag in ops:
            if op == "send":
                got += drv.poll_rx()
                await drv.rxq.kick()
                drv.reclaim_tx()
                if drv.txq.num_free < chain or len(expected) - len(got) >= drv.rxq.size // chain:
                    continue
                frame = make_frame(seq, arg, drv.mac, rng)
                seq += 1
                await drv.send(frame, kick=flag)  # unkicked frames wait for a later kick
                expected.append(frame)
            elif op == "poll":
                got += drv.poll_rx()
                await drv.rxq.kick()
            elif op == "toggle_cb":
                [drv.rxq.enable_cb, drv.rxq.disable_cb, drv.txq.disable_cb][arg]()
            elif op == "reset_tx":
                await t.settle()
                drv.reclaim_tx()
                if drv.txq.outstanding == 0:
                    await drv.reset_queue(drv.txq)
            await t.settle()
        await drv.txq.notify()
        await t.settle()
        got += await drv.receive(len(expected) - len(got), timeout=0.5)
        assert got == expected
        assert await drv.dev.get_status() & Status.DEVICE_NEEDS_RESET == 0
        assert drv.txq.broken is None and drv.rxq.broken is None

    run(main())
