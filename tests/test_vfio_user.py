"""vfio-user protocol handling of the device server: framing, fd passing, error replies, disconnects.

The server (``vfio_user``) with the software device runs on its own asyncio loop in a thread; the test is the
client, speaking the wire format over a real UNIX socket pair, with real memfds and eventfds passed by
SCM_RIGHTS.  Nothing is mocked: the device behind the socket is ``devices.softnet.SoftVirtioNet``.
"""

from __future__ import annotations

import asyncio
import errno
import json
import mmap
import os
import select
import socket
import struct
import threading

import pytest

from vfio_user import protocol as p
from vfio_user.protocol import Command, Message, PciIrq, PciRegion
from vfio_user.server import Session, serve_connection
from vfio_user.soft import SoftBackend
from virtio_fpga import device_map as dm
from virtio_fpga import spec


class Client:
    """A minimal vfio-user client: send a command (with fds), read its reply."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.settimeout(10)
        self.next_id = 1

    def send_raw(self, data: bytes, fds: list[int] | None = None) -> None:
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))] if fds else []
        self.sock.sendmsg([data], anc)

    def recv(self) -> Message:
        self.sock.setblocking(True)
        self.sock.settimeout(10)
        header = self._exact(p.HEADER.size)
        msg_id, command, size, flags, error = p.HEADER.unpack(header)
        return Message(msg_id, command, flags, error, self._exact(size - p.HEADER.size))

    def _exact(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise EOFError("server closed the connection")
            out += chunk
        return out

    def call(self, command: int, payload: bytes = b"", fds: list[int] | None = None, flags: int = 0) -> Message:
        msg = Message(self.next_id, command, flags, 0, payload)
        self.next_id += 1
        self.send_raw(msg.encode(), fds)
        reply = self.recv()
        assert reply.id == msg.id and reply.command == command
        assert reply.flags & p.TYPE_MASK == p.Flag.REPLY
        return reply

    def version(self) -> dict:
        caps = json.dumps({"capabilities": {"max_msg_fds": 16}}).encode() + b"\0"
        reply = self.call(Command.VERSION, p.VERSION.pack(0, 0) + caps)
        assert not reply.flags & p.Flag.ERROR
        return json.loads(reply.payload[4:].rstrip(b"\0"))

    def read(self, region: int, offset: int, count: int) -> bytes:
        reply = self.call(Command.REGION_READ, p.REGION_RW.pack(offset, region, count))
        assert not reply.flags & p.Flag.ERROR, reply.error
        assert p.REGION_RW.unpack_from(reply.payload) == (offset, region, count)
        return reply.payload[p.REGION_RW.size :]

    def write(self, region: int, offset: int, data: bytes) -> Message:
        return self.call(Command.REGION_WRITE, p.REGION_RW.pack(offset, region, len(data)) + data)


@pytest.fixture
def served():
    """(client, session, backend) with the server answering on its own loop; joined at the end."""
    server_sock, client_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    backend = SoftBackend()
    session = Session(backend, name="test")
    thread = threading.Thread(target=lambda: asyncio.run(serve_connection(server_sock, session)), daemon=True)
    thread.start()
    client = Client(client_sock)
    yield client, session, backend
    client_sock.close()
    thread.join(10)
    assert not thread.is_alive(), "the server did not notice the disconnect"


def test_version_negotiation_replies_nul_terminated_json(served) -> None:
    client, session, _ = served
    caps = client.version()["capabilities"]
    assert caps["max_msg_fds"] >= 1 and caps["max_data_xfer_size"] == p.MAX_DATA_XFER
    assert "write_multiple" not in caps, "REGION_WRITE_MULTI is not implemented, so it must not be advertised"
    assert session.version_done


def test_commands_before_version_and_unknown_commands_get_errors(served) -> None:
    client, session, _ = served
    reply = client.call(Command.DEVICE_GET_INFO, p.DEVICE_INFO.pack(16, 0, 0, 0))
    assert reply.flags & p.Flag.ERROR and reply.error == errno.EINVAL and reply.payload == b""
    client.version()
    reply = client.call(99, b"")
    assert reply.flags & p.Flag.ERROR and reply.error == errno.ENOSYS
    reply = client.call(Command.VERSION, p.VERSION.pack(1, 0))
    assert reply.flags & p.Flag.ERROR and reply.error == errno.ENOTSUP
    assert any("command-99" in e for e in session.errors)


def test_malformed_payloads_get_einval_and_the_session_goes_on(served) -> None:
    client, session, _ = served
    client.version()
    bad = [
        (Command.DEVICE_GET_REGION_INFO, b"\x20\0\0\0"),  # truncated
        (Command.DEVICE_GET_REGION_INFO, p.REGION_INFO.pack(32, 0, 42, 0, 0, 0)),  # no such region
        (Command.REGION_READ, p.REGION_RW.pack(0, PciRegion.CONFIG, 4097)),  # past config space
        (Command.REGION_READ, p.REGION_RW.pack(dm.BAR_SIZE - 2, PciRegion.BAR0, 4)),  # past BAR 0
        (Command.REGION_READ, p.REGION_RW.pack(0, PciRegion.BAR1, 4)),  # BAR 1 is not implemented
        (Command.REGION_WRITE, p.REGION_RW.pack(0, PciRegion.BAR0, 4) + b"\0\0"),  # count != data
        (Command.DEVICE_SET_IRQS, p.IRQ_SET.pack(20, 0x3, PciIrq.MSIX, 0, 1)),  # two data flags
        (Command.DEVICE_SET_IRQS, p.IRQ_SET.pack(20, 0x24, PciIrq.MSIX, 2, 5)),  # beyond the vectors
        (Command.VERSION, p.VERSION.pack(0, 0) + b"{not json\0"),
    ]
    for command, payload in bad:
        reply = client.call(command, payload)
        assert reply.flags & p.Flag.ERROR, (command, payload)
        assert reply.error == errno.EINVAL, (command, reply.error)
        assert reply.payload == b"", "an error reply carries only the header"
    assert len(session.errors) == len(bad)
    assert client.read(PciRegion.CONFIG, 0, 2) == dm.VENDOR_ID.to_bytes(2, "little"), "still serving"


def test_no_reply_flag_suppresses_the_reply(served) -> None:
    client, _, backend = served
    client.version()
    msg = Message(500, Command.REGION_WRITE, int(p.Flag.NO_REPLY), 0, p.REGION_RW.pack(0, 0, 4) + b"\1\0\0\0")
    client.send_raw(msg.encode())
    assert client.read(PciRegion.BAR0, 0, 4) == b"\1\0\0\0", "the next reply is the read's: none for the write"
    assert backend.device.device_feature_select == 1


def test_device_and_region_info(served) -> None:
    client, _, _ = served
    client.version()
    info = client.call(Command.DEVICE_GET_INFO, p.DEVICE_INFO.pack(16, 0, 0, 0))
    argsz, flags, regions, irqs = p.DEVICE_INFO.unpack(info.payload)
    assert flags == p.DEVICE_FLAGS_RESET | p.DEVICE_FLAGS_PCI and regions == 9 and irqs == 5
    sizes = {}
    for index in range(regions):
        reply = client.call(Command.DEVICE_GET_REGION_INFO, p.REGION_INFO.pack(32, 0, index, 0, 0, 0))
        _a, rflags, rindex, _c, size, _o = p.REGION_INFO.unpack(reply.payload)
        assert rindex == index and not rflags & p.REGION_INFO_FLAG_MMAP
        sizes[index] = size
    assert sizes[PciRegion.BAR0] == dm.BAR_SIZE and sizes[PciRegion.CONFIG] == 256
    assert all(sizes[i] == 0 for i in (1, 2, 3, 4, 5, 6, 8))
    irq = client.call(Command.DEVICE_GET_IRQ_INFO, p.IRQ_INFO.pack(16, 0, PciIrq.MSIX, 0))
    assert p.IRQ_INFO.unpack(irq.payload)[3] == dm.NUM_MSIX_VECTORS


def test_config_space_reads_have_exact_sizes(served) -> None:
    client, _, backend = served
    client.version()
    whole = client.read(PciRegion.CONFIG, 0, 256)
    assert whole == bytes(backend.device.config_space), "a full config read is the device's config image"
    assert whole[0x34] == 0x40 and whole[0x40] == spec.PCI_CAP_ID_VNDR
    # an 8-byte BAR access reaches the device as one 8-byte access (queue_desc is a 64-bit register)
    client.write(PciRegion.BAR0, 0x16, b"\0\0")  # queue_select = 0
    offset = next(f.byte_offset for f in spec.COMMON_CFG.fields if f.name == "queue_desc")
    client.write(PciRegion.BAR0, offset, (0x1234_5678_9ABC_DEF0).to_bytes(8, "little"))
    assert backend.device.queues[0].desc == 0x1234_5678_9ABC_DEF0
    assert client.read(PciRegion.BAR0, offset, 8) == (0x1234_5678_9ABC_DEF0).to_bytes(8, "little")


def test_unmap_of_a_covering_range_removes_the_windows_inside(served) -> None:
    """QEMU's vIOMMU unmaps whole power-of-two ranges (several windows, or none): accepted, like VFIO type1."""
    client, session, _ = served
    client.version()
    for addr in (0x1000_0000, 0x1010_0000):
        fd = os.memfd_create("ram")
        os.ftruncate(fd, 0x10000)
        assert not client.call(Command.DMA_MAP, p.DMA_MAP.pack(32, 3, 0, addr, 0x10000), fds=[fd]).flags & p.Flag.ERROR
        os.close(fd)
    empty = client.call(Command.DMA_UNMAP, p.DMA_UNMAP.pack(24, 0, 0x8000_0000, 0x4000_0000))
    assert not empty.flags & p.Flag.ERROR and len(session.memory.windows) == 2
    both = client.call(Command.DMA_UNMAP, p.DMA_UNMAP.pack(24, 0, 0, 1 << 63))
    assert not both.flags & p.Flag.ERROR and session.memory.windows == []


def _fd_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_dma_map_mmaps_the_memfd_and_unmap_closes_it(served) -> None:
    client, session, backend = served
    client.version()
    fd = os.memfd_create("guest-ram")
    os.ftruncate(fd, 0x20000)
    ram = mmap.mmap(fd, 0x20000)
    before = set(os.listdir("/proc/self/fd"))
    reply = client.call(Command.DMA_MAP, p.DMA_MAP.pack(32, 3, 0x10000, 0x4000_0000, 0x10000), fds=[fd])
    assert not reply.flags & p.Flag.ERROR, reply.error
    [window] = session.memory.windows
    server_fd = window.fd
    assert server_fd is not None and _fd_open(server_fd)
    # the device's DMA lands in the client's memory at the window's file offset, and the other way round
    asyncio.run(backend.device.dma.dma_write(0x4000_0010, b"virtio"))
    assert ram[0x10010:0x10016] == b"virtio"
    ram[0x10100:0x10104] = b"ring"
    assert asyncio.run(backend.device.dma.dma_read(0x4000_0100, 4)) == b"ring"
    with pytest.raises(Exception, match="not in a mapped"):
        asyncio.run(backend.device.dma.dma_read(0x4000_FFFE, 4))  # runs past the window's end
    overlap = client.call(Command.DMA_MAP, p.DMA_MAP.pack(32, 3, 0, 0x4000_8000, 0x10000), fds=[fd])
    assert overlap.flags & p.Flag.ERROR and overlap.error == errno.EEXIST
    split = client.call(Command.DMA_UNMAP, p.DMA_UNMAP.pack(24, 0, 0x4000_0000, 0x8000))
    assert split.flags & p.Flag.ERROR and split.error == errno.EINVAL, "half a window cannot be unmapped"
    reply = client.call(Command.DMA_UNMAP, p.DMA_UNMAP.pack(24, 0, 0x4000_0000, 0x10000))
    assert not reply.flags & p.Flag.ERROR and reply.payload == p.DMA_UNMAP.pack(24, 0, 0x4000_0000, 0x10000)
    assert session.memory.windows == []
    assert server_fd != fd and not _fd_open(server_fd), "the server closed the fd it received"
    assert set(os.listdir("/proc/self/fd")) <= before | {str(server_fd)}, "and no other fd stayed open"
    ram.close()
    os.close(fd)


def test_eventfds_for_msix_vectors_and_intx(served) -> None:
    client, session, backend = served
    client.version()
    efds = [os.eventfd(0, os.EFD_NONBLOCK) for _ in range(dm.NUM_MSIX_VECTORS)]
    reply = client.call(
        Command.DEVICE_SET_IRQS,
        p.IRQ_SET.pack(20, p.IRQ_SET_DATA_EVENTFD | p.IRQ_SET_ACTION_TRIGGER, PciIrq.MSIX, 0, len(efds)),
        fds=efds,
    )
    assert not reply.flags & p.Flag.ERROR
    backend.device.irq_hook(2)  # what the device does on a used-buffer notification for vector 2
    assert select.select([efds[2]], [], [], 1)[0] == [efds[2]] and os.eventfd_read(efds[2]) == 1
    assert not select.select(efds[:2], [], [], 0)[0]
    # deassign (eventfd flag, no fds), then disable-all: the device falls back to INTx
    client.call(Command.DEVICE_SET_IRQS, p.IRQ_SET.pack(20, 0x24, PciIrq.MSIX, 1, 2))
    assert session.irqs.msix[1:] == [None, None] and session.irqs.msix_active
    client.call(Command.DEVICE_SET_IRQS, p.IRQ_SET.pack(20, p.IRQ_SET_DATA_NONE | 0x20, PciIrq.MSIX, 0, 0))
    assert not session.irqs.msix_active
    intx = os.eventfd(0, os.EFD_NONBLOCK)
    client.call(Command.DEVICE_SET_IRQS, p.IRQ_SET.pack(20, 0x24, PciIrq.INTX, 0, 1), fds=[intx])
    backend.device.isr = 1
    backend.device.irq_hook(spec.VIRTIO_MSI_NO_VECTOR)
    assert os.eventfd_read(intx) == 1
    backend.device.irq_hook(spec.VIRTIO_MSI_NO_VECTOR)  # automasked until UNMASK
    assert not select.select([intx], [], [], 0)[0]
    client.call(Command.DEVICE_SET_IRQS, p.IRQ_SET.pack(20, p.IRQ_SET_DATA_NONE | 0x10, PciIrq.INTX, 0, 1))
    assert os.eventfd_read(intx) == 1, "unmask with the line still asserted (ISR set) triggers again"
    for fd in [*efds, intx]:
        os.close(fd)


def test_reset_restores_power_on_state(served) -> None:
    client, _, backend = served
    client.version()
    client.write(PciRegion.CONFIG, 4, b"\x06\0")
    client.write(PciRegion.BAR0, 0x14, b"\x01")  # device_status = ACKNOWLEDGE
    assert backend.device.status == 1
    reply = client.call(Command.DEVICE_RESET)
    assert not reply.flags & p.Flag.ERROR
    assert backend.device.status == 0 and client.read(PciRegion.CONFIG, 4, 2) == b"\0\0"


def test_corrupt_header_gets_an_error_reply_then_the_connection_closes(served) -> None:
    client, session, _ = served
    client.version()
    client.send_raw(p.HEADER.pack(77, Command.REGION_READ, 8, 0, 0))  # size smaller than the header itself
    reply = client.recv()
    assert reply.id == 77 and reply.flags & p.Flag.ERROR and reply.error == errno.EINVAL
    with pytest.raises(EOFError):
        client.recv()
    assert any("corrupt header" in e for e in session.errors)


def test_disconnect_unmaps_memory_and_closes_irq_fds() -> None:
    server_sock, client_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    backend = SoftBackend()
    session = Session(backend, name="test")
    thread = threading.Thread(target=lambda: asyncio.run(serve_connection(server_sock, session)), daemon=True)
    thread.start()
    client = Client(client_sock)
    client.version()
    fd = os.memfd_create("ram")
    os.ftruncate(fd, 0x10000)
    client.call(Command.DMA_MAP, p.DMA_MAP.pack(32, 3, 0, 0, 0x10000), fds=[fd])
    efd = os.eventfd(0)
    client.call(Command.DEVICE_SET_IRQS, p.IRQ_SET.pack(20, 0x24, PciIrq.MSIX, 1, 1), fds=[efd])
    client.write(PciRegion.BAR0, 0x14, b"\x01")
    kept = [w.fd for w in session.memory.windows] + [session.irqs.msix[1]]
    assert all(_fd_open(k) for k in kept)
    client_sock.close()
    thread.join(10)
    assert not thread.is_alive()
    assert session.memory.windows == [] and not session.irqs.msix_active
    assert backend.device.status == 1, "the device keeps its state across a client disconnect"
    os.close(fd)
    os.close(efd)


def test_flr_through_the_pcie_capability_resets_the_function(served) -> None:
    """Linux's vfio-pci resets a function by FLR: the device offers it (DevCap bit 28) and performs it."""
    client, _, backend = served
    client.version()
    config = client.read(PciRegion.CONFIG, 0, 256)
    pos, caps = config[0x34], {}
    while pos:
        caps[config[pos]] = pos
        pos = config[pos + 1]
    assert {spec.PCI_CAP_ID_VNDR, spec.PCI_CAP_ID_MSIX, 0x10} <= caps.keys()
    exp = caps[0x10]
    assert int.from_bytes(config[exp + 4 : exp + 8], "little") >> 28 & 1, "FLR capable"
    client.write(PciRegion.BAR0, 0x14, b"\x01")
    client.write(PciRegion.CONFIG, exp + 8, (0x8000).to_bytes(2, "little"))  # Initiate Function Level Reset
    assert backend.device.status == 0
    assert client.read(PciRegion.CONFIG, exp + 8, 2) == b"\0\0"


def test_datagram_ports_queue_frames_instead_of_dropping(tmp_path) -> None:
    """More frames than a UNIX datagram queue holds: none is lost, they wait until the peer reads."""
    from vfio_user.port import DatagramPort

    a = DatagramPort(tmp_path / "a", tmp_path / "b")
    b = DatagramPort(tmp_path / "b", tmp_path / "a")
    waiting = []
    a.on_backlog = waiting.append
    frames = [bytes([i]) * (60 + i) for i in range(50)]
    for frame in frames:
        a.send(frame)
    assert waiting == [True] and a.queue, "the peer's queue filled up: frames wait"
    got = []
    while len(got) < len(frames):
        while (frame := b.receive()) is not None:
            got.append(frame)
        a.flush()
    assert got == frames and a.dropped == 0 and waiting == [True, False]
    b.close()
    a.send(b"x" * 60)
    assert a.dropped == 1, "nobody listens: dropped and counted"
    a.close()


def test_serve_cli_bad_arguments_get_one_line(tmp_path) -> None:
    import subprocess
    import sys

    def serve(*argv: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "virtio_fpga.cli", "serve", *argv]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)

    for argv, phrase in [
        ((str(tmp_path / "missing" / "s.sock"),), "does not exist"),
        (("--mac", "zz:00", str(tmp_path / "s.sock")), "six hex bytes"),
        (("--port-local", str(tmp_path / "p"), str(tmp_path / "s.sock")), "go together"),
        (("--device", "fpga", str(tmp_path / "s.sock")), "invalid choice"),
    ]:
        result = serve(*argv)
        assert result.returncode == 2, (argv, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and phrase in result.stderr, result.stderr
