"""One test per spec MUST that the software device or the driver enforces, named after the rule.

A malformed request must give a typed error, DEVICE_NEEDS_RESET and a configuration interrupt, never a hang,
and never a write outside a buffer (guarded by host.memory.HostMemory, which faults on any such access).
"""

from __future__ import annotations

import random

import pytest

from devices.softnet import DeviceError, MalformedDescriptor, QueueConfigError, SoftVirtioNet
from host.demo import make_frame, run_demo
from host.driver import DiscoveryError, FeatureNegotiationError, VirtioPciDevice
from host.inproc import InProcessTransport
from host.net import CONFIG_VECTOR, VirtioNetDriver
from host.virtqueue import VirtqueueBroken
from virtio_fpga import device_map as dm
from virtio_fpga import spec
from virtio_fpga.spec import PACKED_DESC, DescFlag, Feature, Status


async def started(queue_size: int = 8, **kw) -> tuple[InProcessTransport, VirtioNetDriver]:
    t = InProcessTransport()
    drv = VirtioNetDriver(t, queue_size=queue_size, **kw)
    await drv.start()
    return t, drv


def put_desc(vq, idx: int, addr: int, length: int, flags: int, buffer_id: int = 0) -> None:
    """Write a raw descriptor as a (misbehaving) driver would, bypassing add_chain's checks."""
    vq.ring.mem[idx * 16 : idx * 16 + 16] = PACKED_DESC.pack(addr=addr, len=length, id=buffer_id, flags=flags)


async def expect_needs_reset(t: InProcessTransport, drv: VirtioNetDriver, kind: type[DeviceError]) -> DeviceError:
    await t.settle()
    status = await drv.dev.get_status()
    assert status & Status.DEVICE_NEEDS_RESET, "device did not report DEVICE_NEEDS_RESET"
    assert t.irq_count(CONFIG_VECTOR) >= 1, "no configuration change interrupt"
    assert await drv.dev.read_isr() & spec.ISR_CONFIG
    assert t.device.errors and isinstance(t.device.errors[0], kind), t.device.errors
    # and the device recovers with a reset (2.1.2: the driver resets the device to recover)
    drv2 = VirtioNetDriver(t, queue_size=4)
    await drv2.start()
    frame = make_frame(0, 64, drv2.mac, random.Random(0))
    await drv2.send(frame)
    assert await drv2.receive(1) == [frame]
    return t.device.errors[0]


AVAIL1 = int(DescFlag.AVAIL)  # available in the first lap (wrap counter 1): AVAIL=1, USED=0


def test_device_must_not_accept_descriptor_of_zero_length(run) -> None:
    async def main() -> None:
        t, drv = await started()
        buf = t.alloc_dma(64)
        put_desc(drv.txq, 0, buf.iova, 0, AVAIL1)
        await drv.txq.notify()
        err = await expect_needs_reset(t, drv, MalformedDescriptor)
        assert "zero-length" in str(err)

    run(main())


def test_driver_must_not_create_chain_longer_than_queue_size(run) -> None:
    """2.8.7: a chain longer than the queue (here: NEXT on every descriptor, a loop) is refused."""

    async def main() -> None:
        t, drv = await started(queue_size=4)
        buf = t.alloc_dma(64)
        for i in range(4):
            put_desc(drv.txq, i, buf.iova, 16, AVAIL1 | DescFlag.NEXT)
        await drv.txq.notify()
        err = await expect_needs_reset(t, drv, MalformedDescriptor)
        assert "longer than the queue" in str(err) or "not available" in str(err)

    run(main())


def test_device_must_not_write_to_device_readable_buffer(run) -> None:
    """2.8.13.1 (device): never write a device-readable buffer; a read-only RX buffer is an error."""

    async def main() -> None:
        t = InProcessTransport()
        drv = VirtioNetDriver(t, queue_size=2)
        await drv.start()
        # Replace the posted RX buffers by a read-only one: reset the RX queue, then post it by hand.
        await drv.dev.write_common("queue_select", 0)
        await drv.dev.write_common("queue_reset", 1)
        drv.rxq.reset_state()
        await drv._program_queue(drv.rxq, 1)
        victim = t.alloc_dma(2048)
        victim.write(0, b"\xa5" * 2048)
        put_desc(drv.rxq, 0, victim.iova, 2048, AVAIL1)
        await drv.rxq.notify()
        await drv.send(make_frame(0, 100, drv.mac, random.Random(1)))
        await expect_needs_reset(t, drv, MalformedDescriptor)
        assert victim.read(0, 2048) == b"\xa5" * 2048

    run(main())


def test_transmit_buffer_must_be_device_readable(run) -> None:
    async def main() -> None:
        t, drv = await started()
        buf = t.alloc_dma(128)
        put_desc(drv.txq, 0, buf.iova, 128, AVAIL1 | DescFlag.WRITE)
        await drv.txq.notify()
        await expect_needs_reset(t, drv, MalformedDescriptor)

    run(main())


def test_device_dma_outside_mapped_memory_is_an_error_not_a_write(run) -> None:
    async def main() -> None:
        t, drv = await started()
        put_desc(drv.txq, 0, 0xDEAD_0000, 128, AVAIL1)
        await drv.txq.notify()
        await expect_needs_reset(t, drv, DeviceError)
        assert t.memory.stats.faults >= 1

    run(main())


def test_driver_must_not_set_indirect_without_feature(run) -> None:
    """2.8.8 (driver): DESC_F_INDIRECT only with VIRTIO_F_INDIRECT_DESC, which this device does not offer."""

    async def main() -> None:
        t, drv = await started()
        buf = t.alloc_dma(64)
        put_desc(drv.txq, 0, buf.iova, 64, AVAIL1 | DescFlag.INDIRECT)
        await drv.txq.notify()
        await expect_needs_reset(t, drv, MalformedDescriptor)

    run(main())


def test_receive_buffer_too_small_for_frame(run) -> None:
    async def main() -> None:
        t, drv = await started(rx_buffer_size=64)
        await drv.send(make_frame(0, 500, drv.mac, random.Random(2)))
        err = await expect_needs_reset(t, drv, MalformedDescriptor)
        assert "cannot hold" in str(err)

    run(main())


def test_notification_next_off_must_be_within_queue(run) -> None:
    async def main() -> None:
        t, drv = await started(queue_size=4)
        assert drv.dev.negotiated(Feature.NOTIFICATION_DATA)
        word = spec.NOTIFY_DATA.to_int(vqn=1, next_off=9, next_wrap=1)
        await t.bar_write(drv.txq.notify_bar, drv.txq.notify_offset, 4, word)
        await expect_needs_reset(t, drv, MalformedDescriptor)

    run(main())


def test_device_must_not_use_descriptor_not_made_available(run) -> None:
    """2.8.13.1 (device): only a descriptor whose AVAIL bit changed is used; wrong wrap bits are ignored."""

    async def main() -> None:
        t, drv = await started()
        buf = t.alloc_dma(64)
        put_desc(drv.txq, 0, buf.iova, 64, int(DescFlag.USED))  # AVAIL=0 USED=1: not available in lap 1
        await drv.txq.notify()
        await t.settle()
        assert t.device.counters.chains == 0
        assert not await drv.dev.get_status() & Status.DEVICE_NEEDS_RESET

    run(main())


def test_driver_must_configure_queue_after_features_ok(run) -> None:
    """3.1.1: queues are set up after FEATURES_OK; enabling one before is refused with NEEDS_RESET."""

    async def main() -> None:
        t = InProcessTransport()
        dev = VirtioPciDevice(t)
        await dev.probe()
        await dev.reset()
        await dev.set_status(Status.ACKNOWLEDGE | Status.DRIVER)
        await dev.write_common("queue_select", 0)
        await dev.write_common("queue_enable", 1)
        assert await dev.get_status() & Status.DEVICE_NEEDS_RESET
        assert isinstance(t.device.errors[0], QueueConfigError)

    run(main())


def test_queue_size_zero_is_refused(run) -> None:
    async def main() -> None:
        t = InProcessTransport()
        dev = VirtioPciDevice(t)
        await dev.probe()
        await dev.initialize()
        await dev.write_common("queue_select", 1)
        await dev.write_common("queue_size", 0)
        await dev.write_common("queue_enable", 1)
        assert await dev.get_status() & Status.DEVICE_NEEDS_RESET
        assert "size 0" in str(t.device.errors[0])

    run(main())


def test_device_must_refuse_features_ok_without_ring_packed(run) -> None:
    """Split rings are not implemented: a driver that drops RING_PACKED is refused at FEATURES_OK (2.2.1)."""

    async def main() -> None:
        t = InProcessTransport()
        result = await run_demo(t, frames=1, disable="RING_PACKED")
        assert not result["ok"]
        assert any("refused FEATURES_OK" in m for m in result["error_messages"])
        assert "VERSION_1" in result["error_messages"][0]  # the error names the features

    run(main())


def test_driver_must_not_accept_feature_device_did_not_offer(run) -> None:
    """3.1.1 step 4 (driver MUST NOT accept unoffered features): the device refuses FEATURES_OK."""

    async def main() -> None:
        t = InProcessTransport()
        dev = VirtioPciDevice(t)
        await dev.probe()
        await dev.reset()
        await dev.set_status(Status.ACKNOWLEDGE | Status.DRIVER)
        offered = await dev.read_device_features()
        await dev.write_driver_features(offered | 1 << Feature.INDIRECT_DESC)  # a buggy driver
        await dev.set_status(Status.FEATURES_OK)
        assert not await dev.get_status() & Status.FEATURES_OK
        # and the driver's own negotiation never does this: it reports the refusal clearly when it happens
        t.device.provision_mask = 0  # nothing offered at all, not even VERSION_1
        with pytest.raises(FeatureNegotiationError, match="VERSION_1"):
            await dev.initialize()

    run(main())


def test_driver_must_wait_for_reset_to_read_zero(run) -> None:
    async def main() -> None:
        t, drv = await started()
        await drv.dev.reset()
        assert await drv.dev.get_status() == 0
        assert drv.dev.status_log[-1] == 0

    run(main())


def test_isr_is_cleared_by_reading(run) -> None:
    """4.1.4.5: reading the ISR status clears it."""

    async def main() -> None:
        t, drv = await started()
        await drv.send(make_frame(0, 64, drv.mac, random.Random(0)))
        await t.settle()
        assert await drv.dev.read_isr() & spec.ISR_QUEUE
        assert await drv.dev.read_isr() == 0

    run(main())


def test_driver_must_not_trust_used_id(run) -> None:
    """A used element whose id is not outstanding marks the queue broken (Linux: BAD_RING)."""

    async def main() -> None:
        t, drv = await started()
        drv.rxq.ring.mem[0:16] = PACKED_DESC.pack(id=77, len=10, flags=DescFlag.AVAIL | DescFlag.USED | DescFlag.WRITE)
        with pytest.raises(VirtqueueBroken, match="not an outstanding buffer"):
            drv.poll_rx()
        assert drv.rxq.broken

    run(main())


def test_driver_must_not_trust_used_length(run) -> None:
    async def main() -> None:
        t, drv = await started(queue_size=2)
        head = PACKED_DESC.unpack(drv.rxq.ring.read(0, 16))
        drv.rxq.ring.mem[0:16] = PACKED_DESC.pack(
            id=head["id"], len=1 << 20, flags=DescFlag.AVAIL | DescFlag.USED | DescFlag.WRITE
        )
        with pytest.raises(VirtqueueBroken, match="exceeds"):
            drv.poll_rx()

    run(main())


def test_provisioning_mask_restricts_offered_features(run) -> None:
    async def main() -> None:
        t = InProcessTransport()
        mask = ((1 << 64) - 1) & ~(1 << Feature.NOTIFICATION_DATA)
        await t.bar_write(0, dm.PROVISION_OFFSET, 8, mask)
        result = await run_demo(t, frames=2)
        assert result["ok"]
        assert "NOTIFICATION_DATA" not in result["device_feature_names"]
        # once a driver has started (status != 0) the mask is read-only
        drv = VirtioNetDriver(t)
        await drv.start()
        await t.bar_write(0, dm.PROVISION_OFFSET, 8, (1 << 64) - 1)
        assert await t.bar_read(0, dm.PROVISION_OFFSET, 8) == mask

    run(main())


def test_pci_cfg_access_capability_reaches_the_bar(run) -> None:
    """4.1.4.9: the device MUST present a VIRTIO_PCI_CAP_PCI_CFG capability that accesses the BARs."""

    async def main() -> None:
        t = InProcessTransport()
        dev = VirtioPciDevice(t)
        await dev.probe()
        cap = dev.caps[spec.CfgType.PCI].cap_offset
        await t.config_write(cap + 4, 1, 0)  # bar
        await t.config_write(cap + 8, 4, dm.COMMON_CFG_OFFSET + spec.COMMON_CFG.offset_of("num_queues"))
        await t.config_write(cap + 12, 4, 2)  # length
        assert await t.config_read(cap + 16, 2) == dm.NUM_QUEUES

    run(main())


def test_discovery_rejects_non_virtio_and_looping_capabilities(run) -> None:
    async def main() -> None:
        t = InProcessTransport()
        t.device.config_space[0:2] = (0x10EE).to_bytes(2, "little")
        with pytest.raises(DiscoveryError, match="not virtio"):
            await VirtioPciDevice(t).probe()
        t = InProcessTransport()
        t.device.config_space[0x41] = 0x40  # first capability points at itself
        with pytest.raises(DiscoveryError, match="malformed"):
            await VirtioPciDevice(t).probe()
        t = InProcessTransport()
        t.device.config_space[0x02:0x04] = (0x1000).to_bytes(2, "little")  # transitional: unsupported
        with pytest.raises(DiscoveryError, match="modern"):
            await VirtioPciDevice(t).probe()

    run(main())


def test_notify_structure_outside_bar_is_rejected(run) -> None:
    async def main() -> None:
        device = SoftVirtioNet()
        t = InProcessTransport(device)
        notify_cap = next(
            a for a in range(0x40, 0x98, 4) if device.config_space[a] == 9 and device.config_space[a + 3] == 2
        )
        device.config_space[notify_cap + 8 : notify_cap + 12] = (dm.BAR_SIZE - 2).to_bytes(4, "little")
        with pytest.raises(DiscoveryError, match="outside BAR0"):
            await VirtioPciDevice(t).probe()

    run(main())
