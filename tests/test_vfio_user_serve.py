"""``virtio-fpga serve`` end to end, without a VM: a vfio-user client on the socket of each back-end.

The software device and the RTL (cocotb + Icarus) answer the same conversation: VERSION, device info, the whole
config space (the virtio capabilities found by walking the list), BAR 0 (the MAC in device config), MSI-X
eventfds, guest memory from a memfd (DMA_MAP), a transmit queue set up in it, then a driver mistake (a
zero-length descriptor) that the device must find by DMA and answer with DEVICE_NEEDS_RESET and a
configuration interrupt on the vector the driver chose, delivered on its eventfd.
DEVICE_RESET clears it; the server (``--once``) exits when the client leaves.
"""

from __future__ import annotations

import mmap
import os
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_vfio_user import Client

from vfio_user import protocol as p
from vfio_user.protocol import Command, PciIrq, PciRegion
from virtio_fpga import device_map as dm
from virtio_fpga import spec
from virtio_fpga.spec import Status

ROOT = Path(__file__).resolve().parent.parent


def start(kind: str, sock: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "virtio_fpga.cli", "serve", "--device", kind, "--once", str(sock)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert "listening" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
    return proc


def common(field: str) -> int:
    return dm.COMMON_CFG_OFFSET + next(f.byte_offset for f in spec.COMMON_CFG.fields if f.name == field)


@pytest.mark.parametrize("kind", ["soft", pytest.param("rtl", marks=pytest.mark.rtl)])
def test_serve_conversation(kind: str, tmp_path: Path) -> None:
    sock_path = tmp_path / "dev.sock"
    proc = start(kind, sock_path)
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(sock_path))
        client = Client(sock)
        client.sock.settimeout(60)
        client.version()
        info = p.DEVICE_INFO.unpack(client.call(Command.DEVICE_GET_INFO, p.DEVICE_INFO.pack(16, 0, 0, 0)).payload)
        assert info[2:] == (9, 5)
        config = client.read(PciRegion.CONFIG, 0, 256)
        assert int.from_bytes(config[0:2], "little") == dm.VENDOR_ID
        assert int.from_bytes(config[2:4], "little") == dm.DEVICE_ID
        pos, cfg_types, ids = config[0x34], set(), []
        while pos and len(ids) < 32:
            ids.append(config[pos])
            if config[pos] == spec.PCI_CAP_ID_VNDR:
                cfg_types.add(config[pos + 3])
            pos = config[pos + 1]
        assert cfg_types == {1, 2, 3, 4, 5} and spec.PCI_CAP_ID_MSIX in ids, ids
        assert client.read(PciRegion.BAR0, dm.DEVICE_CFG_OFFSET, 6) == dm.DEFAULT_MAC
        efds = [os.eventfd(0, os.EFD_NONBLOCK) for _ in range(dm.NUM_MSIX_VECTORS)]
        flags = p.IRQ_SET_DATA_EVENTFD | p.IRQ_SET_ACTION_TRIGGER
        reply = client.call(Command.DEVICE_SET_IRQS, p.IRQ_SET.pack(20, flags, PciIrq.MSIX, 0, 3), fds=efds)
        assert not reply.flags & p.Flag.ERROR
        client.write(PciRegion.CONFIG, 4, b"\x06\x00")  # memory space + bus master
        # guest memory: a memfd mapped at guest-physical 0x100000, where the device DMAs
        gpa, ram_fd = 0x10_0000, os.memfd_create("guest")
        os.ftruncate(ram_fd, 0x10000)
        reply = client.call(Command.DMA_MAP, p.DMA_MAP.pack(32, 3, 0, gpa, 0x10000), fds=[ram_fd])
        assert not reply.flags & p.Flag.ERROR
        ram = mmap.mmap(ram_fd, 0x10000)

        def w(field: str, size: int, value: int) -> None:
            client.write(PciRegion.BAR0, common(field), value.to_bytes(size, "little"))

        w("device_status", 1, Status.ACKNOWLEDGE | Status.DRIVER)
        w("driver_feature_select", 4, 1)
        w("driver_feature", 4, (1 << (spec.Feature.VERSION_1 - 32)) | (1 << (spec.Feature.RING_PACKED - 32)))
        w("device_status", 1, Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK)
        assert client.read(PciRegion.BAR0, common("device_status"), 1)[0] & Status.FEATURES_OK
        w("queue_select", 2, spec.NET_TX_QUEUE)
        w("queue_size", 2, 8)
        for field, addr in (("queue_desc", gpa), ("queue_driver", gpa + 0x1000), ("queue_device", gpa + 0x2000)):
            client.write(PciRegion.BAR0, common(field), (addr & 0xFFFFFFFF).to_bytes(4, "little"))
            client.write(PciRegion.BAR0, common(field) + 4, (addr >> 32).to_bytes(4, "little"))
        w("queue_msix_vector", 2, 1)
        w("queue_enable", 2, 1)
        w("config_msix_vector", 2, 2)
        w("device_status", 1, Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK | Status.DRIVER_OK)
        # a zero-length descriptor made available (wrap counter 1: AVAIL set, USED clear): a driver error
        ram[0:16] = spec.PACKED_DESC.pack(addr=gpa + 0x4000, len=0, id=0, flags=int(spec.DescFlag.AVAIL))
        notify_off = int.from_bytes(client.read(PciRegion.BAR0, common("queue_notify_off"), 2), "little")
        notify = dm.NOTIFY_OFFSET + notify_off * dm.NOTIFY_OFF_MULTIPLIER
        client.write(PciRegion.BAR0, notify, spec.NET_TX_QUEUE.to_bytes(2, "little"))
        deadline = time.monotonic() + 60
        status = 0
        while time.monotonic() < deadline and not status & Status.DEVICE_NEEDS_RESET:
            status = client.read(PciRegion.BAR0, common("device_status"), 1)[0]
        assert status & Status.DEVICE_NEEDS_RESET, f"device_status {status:#x}"
        ready, _, _ = select.select(efds, [], [], 30)
        assert ready == [efds[2]], "the configuration interrupt arrives on vector 2's eventfd, only there"
        assert os.eventfd_read(efds[2]) >= 1
        assert not client.call(Command.DEVICE_RESET).flags & p.Flag.ERROR
        assert client.read(PciRegion.BAR0, common("device_status"), 1) == b"\0"
        sock.close()
        ram.close()
        os.close(ram_fd)
        for fd in efds:
            os.close(fd)
        assert proc.wait(timeout=60) == 0, proc.stderr.read()[-3000:]
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()
