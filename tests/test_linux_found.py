"""Device behaviour that Linux's own virtio_net exposed in the guest (make linux-test), each kept as a test.

Found by running Linux 6.12's virtio_net against the software device over vfio-user (vm/linux_guest.py):

* MTU: the device advertised mtu 9230 but refused TX frames longer than MAX_FRAME_LEN (9234).  Linux's TCP
  sends frames of mtu + 14 bytes (9244), so the first full-sized segment put the device into
  DEVICE_NEEDS_RESET and the interface stopped (TX watchdog).  The MTU is a layer-3 size (spec 5.1.6.2: "mtu
  (plus low level ethernet header length)"), so the device now offers MAX_FRAME_LEN - 18.
"""

from __future__ import annotations

import random

from host.demo import make_frame
from host.inproc import InProcessTransport
from host.net import VirtioNetDriver
from virtio_fpga import device_map as dm


def test_mtu_leaves_room_for_the_ethernet_header_and_a_vlan_tag() -> None:
    assert dm.DEFAULT_MTU + 14 + 4 <= dm.MAX_FRAME_LEN


def test_a_frame_of_mtu_plus_headers_goes_through(run) -> None:
    """The largest frame Linux may send at the advertised MTU (VLAN-tagged) comes back intact, no error."""

    async def main() -> None:
        t = InProcessTransport()
        drv = VirtioNetDriver(t)
        await drv.start()
        assert drv.mtu == dm.DEFAULT_MTU
        frame = make_frame(1, dm.DEFAULT_MTU + 14 + 4, drv.mac, random.Random(5))
        assert len(frame) == dm.DEFAULT_MTU + 18
        await drv.send(frame)
        assert await drv.receive(1) == [frame]
        assert t.device.errors == []

    run(main())
