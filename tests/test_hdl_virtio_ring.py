"""The packed-ring engine end to end in the Amaranth simulator: TX ring -> eth_tx -> eth_rx -> RX ring."""

from __future__ import annotations

import random

from test_hdl_virtio_harness import (
    BASE_FEATURES,
    RX_VECTOR,
    TX_VECTOR,
    Scenario,
)

from virtio_fpga import spec
from virtio_fpga.spec import Feature, Status

NOTIF = spec.feature_bit(Feature.NOTIFICATION_DATA)
IN_ORDER = spec.feature_bit(Feature.IN_ORDER)
EVENT_IDX = spec.feature_bit(Feature.EVENT_IDX)
RING_RESET = spec.feature_bit(Feature.RING_RESET)


def frames_of(sizes: list[int], seed: int = 0) -> list[bytes]:
    rng = random.Random(seed)
    return [bytes(rng.randrange(256) for _ in range(n)) for n in sizes]


def check_received(sc: Scenario, frames: list[bytes]) -> None:
    got = [frame for _, frame in sc.received]
    assert got == frames
    for header, _ in sc.received:
        fields = spec.NET_HDR.unpack(header)
        assert fields["num_buffers"] == 1  # 5.1.6.4
        assert fields["flags"] == 0 and fields["gso_type"] == spec.NET_HDR_GSO_NONE


def test_loopback_basic() -> None:
    sc = Scenario(features=BASE_FEATURES | NOTIF)
    frames = frames_of([64, 1, 100, 1500, 60])

    async def tb(ctx):
        status = await sc.start(ctx)
        assert status & Status.DRIVER_OK and status & Status.FEATURES_OK
        await sc.transfer(ctx, frames)
        await sc.tick(ctx, 50)
        sc.reap()
        assert sc.tx_completed == len(frames)

    sc.run(tb)
    check_received(sc, frames)
    sc.check_memory()
    assert sc.irqs.count(RX_VECTOR) >= 1 and sc.irqs.count(TX_VECTOR) >= 1
