"""Register windows of ``VirtioNetCore``: common configuration, ISR, device config, notify, provisioning."""

from __future__ import annotations

import pytest
from test_hdl_virtio_harness import (
    BASE_FEATURES,
    C,
    Registers,
    common_addr,
    make_sim,
    run,
)

from hdl.virtio.core import VirtioNetCore
from virtio_fpga import device_map, spec
from virtio_fpga.spec import Feature, Status

NO_VECTOR = spec.VIRTIO_MSI_NO_VECTOR


def simulate(testbench, core: VirtioNetCore | None = None) -> VirtioNetCore:
    core = core or VirtioNetCore()
    sim, _, _ = make_sim(core, loopback=False)

    async def tb(ctx):
        await testbench(ctx, core, Registers(core))

    run(sim, tb)
    return core


def test_reset_values_and_feature_window() -> None:
    async def tb(ctx, core, regs):
        features = 0
        for sel in range(2):
            await regs.common_write(ctx, "device_feature_select", sel)
            assert await regs.common_read(ctx, "device_feature_select") == sel
            features |= await regs.common_read(ctx, "device_feature") << (32 * sel)
        assert features == device_map.DEVICE_FEATURES
        await regs.common_write(ctx, "device_feature_select", 2)
        assert await regs.common_read(ctx, "device_feature") == 0  # 4.1.4.3: beyond the feature bits
        assert await regs.common_read(ctx, "num_queues") == device_map.NUM_QUEUES
        assert await regs.common_read(ctx, "device_status") == 0
        assert await regs.common_read(ctx, "config_msix_vector") == NO_VECTOR
        for q in range(device_map.NUM_QUEUES):
            await regs.common_write(ctx, "queue_select", q)
            assert await regs.common_read(ctx, "queue_size") == device_map.MAX_QUEUE_SIZE
            assert await regs.common_read(ctx, "queue_msix_vector") == NO_VECTOR
            assert await regs.common_read(ctx, "queue_enable") == 0
            assert await regs.common_read(ctx, "queue_notify_off") == device_map.queue_notify_off(q)
            assert await regs.common_read(ctx, "queue_notify_data") == q
        # 4.1.4.3: a queue_select beyond num_queues reads queue_size 0.
        await regs.common_write(ctx, "queue_select", device_map.NUM_QUEUES)
        assert await regs.common_read(ctx, "queue_size") == 0

    simulate(tb)


def test_queue_window_registers_and_halves() -> None:
    async def tb(ctx, core, regs):
        await regs.common_write(ctx, "queue_select", 1)
        await regs.common_write(ctx, "queue_size", 5)  # not a power of two (2.8.10.1)
        assert await regs.common_read(ctx, "queue_size") == 5
        await regs.common_write(ctx, "queue_size", 0)  # invalid: ignored
        assert await regs.common_read(ctx, "queue_size") == 5
        await regs.common_write(ctx, "queue_size", device_map.MAX_QUEUE_SIZE + 1)  # invalid: ignored
        assert await regs.common_read(ctx, "queue_size") == 5
        await regs.common_write(ctx, "queue_desc", 0x1122_3344_5566_7780)
        assert await regs.common_read(ctx, "queue_desc") == 0x1122_3344_5566_7780
        # The same register as two 32-bit halves (4.1.3.1 allows 64-bit fields as two 32-bit accesses).
        base = common_addr("queue_driver")
        await regs.write(ctx, base, 4, 0xDEAD_BEE0)
        await regs.write(ctx, base + 4, 4, 0x0000_0001)
        assert await regs.read(ctx, base, 4) == 0xDEAD_BEE0
        assert await regs.read(ctx, base + 4, 4) == 0x1
        assert await regs.common_read(ctx, "queue_driver") == 0x1_DEAD_BEE0
        await regs.common_write(ctx, "queue_device", 0xABCD_0000)
        await regs.common_write(ctx, "queue_msix_vector", 2)
        assert await regs.common_read(ctx, "queue_msix_vector") == 2
        # 4.1.5.1.2.1: a vector the device cannot map reads back NO_VECTOR.
        await regs.common_write(ctx, "queue_msix_vector", device_map.NUM_MSIX_VECTORS)
        assert await regs.common_read(ctx, "queue_msix_vector") == NO_VECTOR
        await regs.common_write(ctx, "config_msix_vector", 0)
        assert await regs.common_read(ctx, "config_msix_vector") == 0
        # Queue 0 kept its reset values: the window really is per queue.
        await regs.common_write(ctx, "queue_select", 0)
        assert await regs.common_read(ctx, "queue_size") == device_map.MAX_QUEUE_SIZE
        assert await regs.common_read(ctx, "queue_desc") == 0
        # Writes to an out-of-range queue are ignored and read as 0.
        await regs.common_write(ctx, "queue_select", 7)
        await regs.common_write(ctx, "queue_desc", 0x1234)
        assert await regs.common_read(ctx, "queue_desc") == 0
        await regs.common_write(ctx, "queue_select", 1)
        assert await regs.common_read(ctx, "queue_size") == 5
        assert await regs.common_read(ctx, "queue_device") == 0xABCD_0000

    simulate(tb)


async def negotiate(ctx, regs: Registers, features: int) -> int:
    await regs.common_write(ctx, "device_status", Status.ACKNOWLEDGE | Status.DRIVER)
    for sel in range(2):
        await regs.common_write(ctx, "driver_feature_select", sel)
        await regs.common_write(ctx, "driver_feature", (features >> (32 * sel)) & 0xFFFF_FFFF)
    await regs.common_write(ctx, "device_status", Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK)
    return await regs.status(ctx)


@pytest.mark.parametrize(
    ("features", "accepted"),
    [
        (BASE_FEATURES, True),
        (device_map.DEVICE_FEATURES, True),
        (BASE_FEATURES & ~spec.feature_bit(Feature.RING_PACKED), False),  # split ring: not implemented
        (BASE_FEATURES & ~spec.feature_bit(Feature.VERSION_1), False),  # legacy
        (BASE_FEATURES | spec.feature_bit(Feature.INDIRECT_DESC), False),  # not offered
        (BASE_FEATURES | spec.feature_bit(spec.NetFeature.MRG_RXBUF), False),
    ],
)
def test_features_ok_refusal(features: int, accepted: bool) -> None:
    async def tb(ctx, core, regs):
        status = await negotiate(ctx, regs, features)
        assert bool(status & Status.FEATURES_OK) == accepted, spec.status_names(status)
        assert status & (Status.ACKNOWLEDGE | Status.DRIVER) == Status.ACKNOWLEDGE | Status.DRIVER
        for sel in range(2):
            await regs.common_write(ctx, "driver_feature_select", sel)
            assert await regs.common_read(ctx, "driver_feature") == (features >> (32 * sel)) & 0xFFFF_FFFF

    simulate(tb)


def test_driver_features_frozen_after_features_ok() -> None:
    """3.1.1: the driver writes its features before FEATURES_OK; a later write (a hostile driver's) is ignored.
    Found by ``virtio-fpga fuzz --device rtl``: the guard was an 8-bit ``~`` that was never zero."""

    async def tb(ctx, core, regs):
        assert await negotiate(ctx, regs, BASE_FEATURES) & Status.FEATURES_OK
        for sel in range(2):
            await regs.common_write(ctx, "driver_feature_select", sel)
            await regs.common_write(ctx, "driver_feature", 0)
            assert await regs.common_read(ctx, "driver_feature") == (BASE_FEATURES >> (32 * sel)) & 0xFFFF_FFFF

    simulate(tb)


def test_reset_clears_state_and_waits_for_dma_idle() -> None:
    async def tb(ctx, core, regs):
        assert await negotiate(ctx, regs, BASE_FEATURES) & Status.FEATURES_OK
        await regs.common_write(ctx, "queue_select", 1)
        await regs.common_write(ctx, "queue_size", 7)
        await regs.common_write(ctx, "queue_msix_vector", 1)
        ctx.set(core.dma_busy, 1)
        await regs.common_write(ctx, "device_status", 0)
        # 4.1.4.3.1 / 2.4.1: while DMA is in flight the reset has not completed: status is not yet 0.
        for _ in range(5):
            assert await regs.status(ctx) != 0
        ctx.set(core.dma_busy, 0)
        await ctx.tick()
        assert await regs.status(ctx) == 0
        assert await regs.common_read(ctx, "queue_select") == 0
        await regs.common_write(ctx, "queue_select", 1)
        assert await regs.common_read(ctx, "queue_size") == device_map.MAX_QUEUE_SIZE
        assert await regs.common_read(ctx, "queue_msix_vector") == NO_VECTOR
        for sel in range(2):
            await regs.common_write(ctx, "driver_feature_select", sel)
            assert await regs.common_read(ctx, "driver_feature") == 0

    simulate(tb)


def test_device_config_and_unimplemented() -> None:
    async def tb(ctx, core, regs):
        base = device_map.DEVICE_CFG_OFFSET
        # Linux reads the MAC byte by byte (virtio_cread8).
        mac = bytes([await regs.read(ctx, base + i, 1) for i in range(6)])
        assert mac == device_map.DEFAULT_MAC
        n = spec.NET_CONFIG
        assert await regs.read(ctx, base + n.offset_of("status"), 2) == spec.NET_S_LINK_UP
        assert await regs.read(ctx, base + n.offset_of("max_virtqueue_pairs"), 2) == 1
        assert await regs.read(ctx, base + n.offset_of("mtu"), 2) == device_map.DEFAULT_MTU
        # Unimplemented addresses read 0 and ignore writes (RegisterBus contract).
        for addr in (0x0FF8, 0x5000, 0x7FFC, base + 0x100):
            await regs.write(ctx, addr, 4, 0xFFFF_FFFF)
            assert await regs.read(ctx, addr, 4) == 0
        # Read-only registers ignore writes.
        await regs.common_write(ctx, "num_queues", 9)
        assert await regs.common_read(ctx, "num_queues") == device_map.NUM_QUEUES
        await regs.common_write(ctx, "device_feature", 0)
        assert await regs.common_read(ctx, "device_feature") == device_map.DEVICE_FEATURES & 0xFFFF_FFFF

    simulate(tb)


def test_provisioning_mask_only_in_reset() -> None:
    mask_addr = device_map.PROVISION_OFFSET
    drop = spec.feature_bit(Feature.NOTIFICATION_DATA) | spec.feature_bit(spec.NetFeature.MTU)

    async def tb(ctx, core, regs):
        assert await regs.read(ctx, mask_addr, 8) == (1 << 64) - 1
        await regs.write(ctx, mask_addr, 8, ~drop & ((1 << 64) - 1))
        features = 0
        for sel in range(2):
            await regs.common_write(ctx, "device_feature_select", sel)
            features |= await regs.common_read(ctx, "device_feature") << (32 * sel)
        assert features == device_map.DEVICE_FEATURES & ~drop
        # A driver asking for a masked-out feature is refused FEATURES_OK.
        status = await negotiate(ctx, regs, BASE_FEATURES | spec.feature_bit(Feature.NOTIFICATION_DATA))
        assert not status & Status.FEATURES_OK
        # While the driver owns the device, the mask is frozen.
        await regs.write(ctx, mask_addr, 8, (1 << 64) - 1)
        assert await regs.read(ctx, mask_addr, 8) == ~drop & ((1 << 64) - 1)
        # The mask survives a device reset (it is the operator's, like vdpa dev add ... device_features).
        await regs.common_write(ctx, "device_status", 0)
        assert await regs.status(ctx) == 0
        assert await regs.read(ctx, mask_addr, 4) == ~drop & 0xFFFF_FFFF
        await regs.write(ctx, mask_addr + 4, 4, 0xFFFF_FFFF)
        await regs.write(ctx, mask_addr, 4, 0xFFFF_FFFF)
        assert await regs.read(ctx, mask_addr, 8) == (1 << 64) - 1

    simulate(tb)


def test_common_layout_offsets_match_spec() -> None:
    # Offsets this file relies on, straight from the spec's struct (4.1.4.3).
    assert C.offset_of("queue_desc") == 0x20
    assert C.offset_of("queue_reset") == 0x3A


@pytest.mark.parametrize("notification_data", [False, True])
def test_notify_decode(notification_data: bool) -> None:
    """4.1.5.2: with NOTIFICATION_DATA a 32-bit write carries {vqn, next_off, next_wrap}; without it a 16-bit
    write of the vqn is a plain kick.  Doorbells of other queues or of no queue do not kick this one."""
    features = BASE_FEATURES | (spec.feature_bit(Feature.NOTIFICATION_DATA) if notification_data else 0)

    async def tb(ctx, core, regs):
        assert await negotiate(ctx, regs, features) & Status.FEATURES_OK
        tx = core.queue_states[spec.NET_TX_QUEUE]
        rx = core.queue_states[spec.NET_RX_QUEUE]
        word = spec.NOTIFY_DATA.to_int(vqn=spec.NET_TX_QUEUE, next_off=0x1234, next_wrap=1)
        await regs.write(ctx, device_map.notify_address(spec.NET_TX_QUEUE), 4, word)
        assert ctx.get(tx.kick_pending) == 1
        assert ctx.get(rx.kick_pending) == 0
        assert ctx.get(tx.hint_valid) == int(notification_data)
        if notification_data:
            assert (ctx.get(tx.hint_off), ctx.get(tx.hint_wrap)) == (0x1234, 1)
        # A 16-bit kick of the vqn: no hint (the engine falls back to checking flags).
        await regs.write(ctx, device_map.notify_address(spec.NET_RX_QUEUE), 2, spec.NET_RX_QUEUE)
        assert ctx.get(rx.kick_pending) == 1
        assert ctx.get(rx.hint_valid) == 0
        # A vqn beyond num_queues kicks nothing; reads of the notify region return 0.
        await regs.write(ctx, device_map.NOTIFY_OFFSET, 2, 7)
        assert await regs.read(ctx, device_map.notify_address(spec.NET_TX_QUEUE), 4) == 0

    simulate(tb)
