"""Malformed input, device reset and queue reset: the core must flag, recover, and never DMA out of bounds."""

from __future__ import annotations

import pytest
from test_hdl_virtio_harness import (
    BASE_FEATURES,
    CONFIG_VECTOR,
    HDR,
    Scenario,
)

from virtio_fpga import device_map, spec
from virtio_fpga.spec import DescFlag, Feature, Status

NOTIF = spec.feature_bit(Feature.NOTIFICATION_DATA)
RING_RESET = spec.feature_bit(Feature.RING_RESET)
FRAME = bytes(range(64))


async def wait_status(sc: Scenario, ctx, bit: int, cycles: int = 2000) -> int:
    for _ in range(cycles // 16):
        status = await sc.regs.status(ctx)
        if status & bit:
            return status
        await sc.tick(ctx, 16)
    return await sc.regs.status(ctx)


async def reset_device(sc: Scenario, ctx) -> None:
    await sc.regs.common_write(ctx, "device_status", 0)
    for _ in range(200):
        if await sc.regs.status(ctx) == 0:
            return
    raise AssertionError("device reset did not complete")


def inject(sc: Scenario, kind: str) -> int:
    """Make one malformed chain available; returns the queue to kick."""
    tx, rx = sc.tx, sc.rx
    base = sc.tx_slots[0]
    sc.mem.write(base, spec.NET_HDR.pack() + FRAME)
    good = (base, HDR + len(FRAME), False)
    if kind == "zero-length":
        tx.add_chain([(base, 0, False)])
    elif kind == "write-on-tx":
        tx.add_chain([(base, HDR + len(FRAME), True)])
    elif kind == "indirect":
        tx.add_chain([good], extra_flags=DescFlag.INDIRECT)
    elif kind == "chain-longer-than-queue":
        # Every descriptor of the ring says NEXT: the chain would exceed the queue size (2.8.6).
        tx.add_chain([(base, 16, False)] * tx.size, extra_flags=DescFlag.NEXT)
    elif kind == "dma-error":
        sc.mem.faulty.append((base, base + 16))
        tx.add_chain([good])
    elif kind == "tx-frame-too-big":
        tx.add_chain([(base, HDR + device_map.MAX_FRAME_LEN + 1, False)])
    elif kind == "header-only-short":
        tx.add_chain([(base, HDR - 1, False)])
    elif kind == "readonly-on-rx":
        # RX buffers are looked at when a frame arrives: send one.
        rx.add_chain([(sc.rx_slots[0], 2048, False)])
        tx.add_chain([good])
        return -1
    elif kind == "rx-buffer-too-small":
        rx_buf = sc.rx_slots[0]
        rx.add_chain([(rx_buf, 20, True), (rx_buf + 20, 30, True)])
        sc.allowed_writes.append((rx_buf, rx_buf + 50))
        tx.add_chain([good])
        return -1
    else:
        raise ValueError(kind)
    return spec.NET_TX_QUEUE


KINDS = [
    "zero-length",
    "write-on-tx",
    "indirect",
    "chain-longer-than-queue",
    "dma-error",
    "tx-frame-too-big",
    "header-only-short",
    "readonly-on-rx",
    "rx-buffer-too-small",
]


@pytest.mark.parametrize("kind", KINDS)
def test_malformed_sets_needs_reset_and_recovers(kind: str) -> None:
    sc = Scenario(features=BASE_FEATURES | NOTIF, tx_size=4, rx_size=4)

    async def tb(ctx):
        await sc.start(ctx)
        queue = inject(sc, kind)
        if queue < 0:
            await sc.kick(ctx, spec.NET_RX_QUEUE)
            await sc.kick(ctx, spec.NET_TX_QUEUE)
        else:
            await sc.kick(ctx, queue)
        status = await wait_status(sc, ctx, Status.DEVICE_NEEDS_RESET)
        assert status & Status.DEVICE_NEEDS_RESET, spec.status_names(status)
        assert sc.irqs.count(CONFIG_VECTOR) == 1  # the configuration change interrupt (4.1.4.5)
        # ISR bit 1 (configuration change), cleared by the read (read-to-clear).
        assert await sc.regs.read(ctx, device_map.ISR_OFFSET, 1) & spec.ISR_CONFIG
        assert await sc.regs.read(ctx, device_map.ISR_OFFSET, 1) == 0
        # The engine is stopped: more kicks cause no DMA at all.
        writes, reads = len(sc.mem.log.writes), len(sc.mem.log.reads)
        await sc.kick(ctx, spec.NET_TX_QUEUE)
        await sc.tick(ctx, 200)
        assert (len(sc.mem.log.writes), len(sc.mem.log.reads)) == (writes, reads)
        # The driver's way out (2.1.2): reset and re-initialise; traffic flows again.
        await reset_device(sc, ctx)
        sc.mem.faulty.clear()
        for ring in (sc.rx, sc.tx):
            sc.mem.write(ring.desc, bytes(16 * ring.size))
            _rewind(ring)
        sc.rx_free_slots = list(range(sc.rx.size))
        sc.tx_free_slots = list(range(sc.tx.size))
        sc.rx_chain_slot.clear()
        sc.tx_chain_slot.clear()
        assert (await sc.start(ctx)) & Status.DRIVER_OK
        await sc.transfer(ctx, [FRAME, FRAME[:10]])

    sc.run(tb)
    assert [f for _, f in sc.received] == [FRAME, FRAME[:10]]
    sc.check_memory()


def _rewind(ring) -> None:
    """The driver's ring state after a reset: everything back to the start (2.8.1, wrap counters 1)."""
    ring.next_avail_idx = 0
    ring.avail_wrap_counter = 1
    ring.last_used_idx = 0
    ring.used_wrap_counter = 1
    ring.free_ids = list(range(ring.size))
    ring.outstanding.clear()
    ring.order.clear()


def test_reset_in_the_middle_of_traffic() -> None:
    """Reset while frames are in flight: status reads 0 only when idle, and no DMA happens afterwards."""
    sc = Scenario(features=BASE_FEATURES | NOTIF, tx_size=4, rx_size=4, read_latency=20)
    frames = [bytes([i]) * 700 for i in range(4)]

    async def tb(ctx):
        await sc.start(ctx)
        sc.post_rx()
        await sc.kick(ctx, spec.NET_RX_QUEUE)
        for frame in frames:
            sc.post_tx(frame)
        await sc.kick(ctx, spec.NET_TX_QUEUE)
        await sc.tick(ctx, 150)  # mid-way: some frames done, one chain in progress
        await sc.regs.common_write(ctx, "device_status", 0)
        while await sc.regs.status(ctx) != 0:
            pass
        writes = len(sc.mem.log.writes)
        await sc.tick(ctx, 300)
        assert len(sc.mem.log.writes) == writes, "DMA write after the reset completed"
        for q in range(2):
            await sc.regs.common_write(ctx, "queue_select", q)
            assert await sc.regs.common_read(ctx, "queue_enable") == 0
        for ring in (sc.rx, sc.tx):
            sc.mem.write(ring.desc, bytes(16 * ring.size))
            _rewind(ring)
        sc.rx_free_slots = list(range(sc.rx.size))
        sc.tx_free_slots = list(range(sc.tx.size))
        sc.rx_chain_slot.clear()
        sc.tx_chain_slot.clear()
        sc.received.clear()
        assert (await sc.start(ctx)) & Status.DRIVER_OK
        await sc.transfer(ctx, frames[:2])

    sc.run(tb)
    assert [f for _, f in sc.received] == frames[:2]
    sc.check_memory()


def test_queue_reset() -> None:
    """RING_RESET (2.6.1, 4.1.4.3.2): queue_reset reads 1 until done, then 0 with queue_enable 0; the queue
    can be re-enabled on a fresh ring while the other queue keeps its state."""
    sc = Scenario(features=BASE_FEATURES | NOTIF | RING_RESET, tx_size=4, rx_size=4)

    async def tb(ctx):
        await sc.start(ctx)
        await sc.transfer(ctx, [FRAME])
        await sc.regs.common_write(ctx, "queue_select", spec.NET_TX_QUEUE)
        await sc.regs.common_write(ctx, "queue_reset", 1)
        for _ in range(50):
            if await sc.regs.common_read(ctx, "queue_reset") == 0:
                break
        assert await sc.regs.common_read(ctx, "queue_reset") == 0
        assert await sc.regs.common_read(ctx, "queue_enable") == 0
        assert await sc.regs.common_read(ctx, "queue_size") == device_map.MAX_QUEUE_SIZE
        # Re-enable TX on a zeroed ring; RX continues where it was.
        sc.mem.write(sc.tx.desc, bytes(16 * sc.tx.size))
        _rewind(sc.tx)
        sc.tx_free_slots = list(range(sc.tx.size))
        sc.tx_chain_slot.clear()
        await sc.regs.common_write(ctx, "queue_size", sc.tx.size)
        await sc.regs.common_write(ctx, "queue_desc", sc.tx.desc)
        await sc.regs.common_write(ctx, "queue_driver", sc.tx.driver_area)
        await sc.regs.common_write(ctx, "queue_device", sc.tx.device_area)
        await sc.regs.common_write(ctx, "queue_msix_vector", 2)
        await sc.regs.common_write(ctx, "queue_enable", 1)
        await sc.transfer(ctx, [FRAME[:33], FRAME])

    sc.run(tb)
    assert [f for _, f in sc.received] == [FRAME, FRAME[:33], FRAME]
    sc.check_memory()


def test_isr_without_msix() -> None:
    """4.1.4.5: with MSI-X disabled the device reports queue interrupts in the ISR (bit 0)."""
    sc = Scenario(features=BASE_FEATURES | NOTIF, msix=False)

    async def tb(ctx):
        await sc.start(ctx)
        await sc.transfer(ctx, [FRAME])
        await sc.tick(ctx, 200)  # let the TX completion land as well
        assert await sc.regs.read(ctx, device_map.ISR_OFFSET, 4) == spec.ISR_QUEUE
        assert await sc.regs.read(ctx, device_map.ISR_OFFSET, 4) == 0

    sc.run(tb)
    assert sc.irqs.vectors == []
