"""vfio-user wire format: the 16-byte header, command numbers, payload layouts and fd passing (SCM_RIGHTS).

Everything here follows QEMU's docs/interop/vfio-user.rst (protocol 0.x): host byte order (little-endian on
x86), a header of message id, command, total size, flags (type in bits 0-3, No_reply bit 4, Error bit 5) and an
errno.  Structures reused from <linux/vfio.h> keep their kernel names.

:class:`MessageReader` reads one message at a time and never past its end, so file descriptors that arrive
with a message (``SCM_RIGHTS`` on the segment that starts it) are always attributed to the right one.  It works
on a non-blocking socket, so the same reader serves an asyncio loop and a cocotb test that polls between
simulated clock cycles.
"""

from __future__ import annotations

import array
import contextlib
import enum
import os
import socket
import struct
from dataclasses import dataclass, field

MAJOR = 0
MINOR = 0
HEADER = struct.Struct("<HHIII")  # id, command, size, flags, error
assert HEADER.size == 16

#: Largest data count of one REGION_READ/WRITE we accept (the protocol's default max_data_xfer_size).
MAX_DATA_XFER = 1 << 20
#: Largest message we read: a data transfer plus its headers, or a VERSION with its JSON.  Anything bigger
#: cannot be a valid message from a client that read our VERSION reply; the stream cannot be resynchronised.
MAX_MESSAGE = MAX_DATA_XFER + 64
#: How many fds the server accepts with one message (told to the client as max_msg_fds).
MAX_MSG_FDS = 16


class Command(enum.IntEnum):
    VERSION = 1
    DMA_MAP = 2
    DMA_UNMAP = 3
    DEVICE_GET_INFO = 4
    DEVICE_GET_REGION_INFO = 5
    DEVICE_GET_REGION_IO_FDS = 6
    DEVICE_GET_IRQ_INFO = 7
    DEVICE_SET_IRQS = 8
    REGION_READ = 9
    REGION_WRITE = 10
    DMA_READ = 11
    DMA_WRITE = 12
    DEVICE_RESET = 13
    REGION_WRITE_MULTI = 15
    DEVICE_FEATURE = 16
    MIG_DATA_READ = 17
    MIG_DATA_WRITE = 18


class Flag(enum.IntFlag):
    REPLY = 0x1  # type field value 1 (bits 0-3); 0 is a command
    NO_REPLY = 0x10
    ERROR = 0x20


TYPE_MASK = 0xF

# <linux/vfio.h> numbers the protocol reuses
DEVICE_FLAGS_RESET = 1 << 0
DEVICE_FLAGS_PCI = 1 << 1
REGION_INFO_FLAG_READ = 1 << 0
REGION_INFO_FLAG_WRITE = 1 << 1
REGION_INFO_FLAG_MMAP = 1 << 2
DMA_MAP_FLAG_READ = 1 << 0
DMA_MAP_FLAG_WRITE = 1 << 1
DMA_UNMAP_FLAG_GET_DIRTY_BITMAP = 1 << 0
DMA_UNMAP_FLAG_ALL = 1 << 1
IRQ_INFO_EVENTFD = 1 << 0
IRQ_INFO_MASKABLE = 1 << 1
IRQ_INFO_AUTOMASKED = 1 << 2
IRQ_INFO_NORESIZE = 1 << 3
IRQ_SET_DATA_NONE = 1 << 0
IRQ_SET_DATA_BOOL = 1 << 1
IRQ_SET_DATA_EVENTFD = 1 << 2
IRQ_SET_ACTION_MASK = 1 << 3
IRQ_SET_ACTION_UNMASK = 1 << 4
IRQ_SET_ACTION_TRIGGER = 1 << 5
IRQ_SET_DATA_MASK = IRQ_SET_DATA_NONE | IRQ_SET_DATA_BOOL | IRQ_SET_DATA_EVENTFD
IRQ_SET_ACTION_MASK_ALL = IRQ_SET_ACTION_MASK | IRQ_SET_ACTION_UNMASK | IRQ_SET_ACTION_TRIGGER


class PciRegion(enum.IntEnum):
    """VFIO_PCI_*_REGION_INDEX."""

    BAR0 = 0
    BAR1 = 1
    BAR2 = 2
    BAR3 = 3
    BAR4 = 4
    BAR5 = 5
    ROM = 6
    CONFIG = 7
    VGA = 8


NUM_REGIONS = 9


class PciIrq(enum.IntEnum):
    """VFIO_PCI_*_IRQ_INDEX."""

    INTX = 0
    MSI = 1
    MSIX = 2
    ERR = 3
    REQ = 4


NUM_IRQS = 5

# payload layouts (after the header)
VERSION = struct.Struct("<HH")
DMA_MAP = struct.Struct("<IIQQQ")  # argsz, flags, offset, address, size
DMA_UNMAP = struct.Struct("<IIQQ")  # argsz, flags, address, size
DEVICE_INFO = struct.Struct("<IIII")  # argsz, flags, num_regions, num_irqs
REGION_INFO = struct.Struct("<IIIIQQ")  # argsz, flags, index, cap_offset, size, offset
IRQ_INFO = struct.Struct("<IIII")  # argsz, flags, index, count
IRQ_SET = struct.Struct("<IIIII")  # argsz, flags, index, start, count
REGION_RW = struct.Struct("<QII")  # offset, region, count


class ProtocolError(Exception):
    """A message the server cannot act on; ``errno`` goes into the error reply."""

    def __init__(self, errno_value: int, message: str) -> None:
        super().__init__(message)
        self.errno = errno_value


class Disconnected(Exception):
    """The peer closed the socket (or it broke); the session is over."""


class StreamCorrupt(Exception):
    """A header that cannot start a valid message: the byte stream cannot be trusted any more."""


@dataclass
class Message:
    """One vfio-user message: header fields, payload, and the fds that came with it (owned by the receiver)."""

    id: int
    command: int
    flags: int
    error: int = 0
    payload: bytes = b""
    fds: list[int] = field(default_factory=list)

    @property
    def is_reply(self) -> bool:
        return self.flags & TYPE_MASK == Flag.REPLY

    @property
    def no_reply(self) -> bool:
        return bool(self.flags & Flag.NO_REPLY)

    def encode(self) -> bytes:
        return HEADER.pack(self.id, self.command, HEADER.size + len(self.payload), self.flags, self.error) + bytes(
            self.payload
        )

    def close_fds(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds = []


def reply_to(msg: Message, payload: bytes = b"") -> Message:
    return Message(msg.id, msg.command, int(Flag.REPLY), 0, payload)


def error_reply(msg: Message, errno_value: int) -> Message:
    """Spec: an error reply carries only the header, with the Error flag and the errno."""
    return Message(msg.id, msg.command, int(Flag.REPLY | Flag.ERROR), errno_value, b"")


def send_message(sock: socket.socket, msg: Message, fds: list[int] | None = None) -> None:
    """Send a whole message (blocking until written), with ``fds`` as SCM_RIGHTS on its first segment."""
    data = memoryview(msg.encode())
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
    sent = sock.sendmsg([data], ancillary)
    while sent < len(data):
        data = data[sent:]
        sent = sock.send(data)


def _fds_from(ancdata: list) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(data[: len(data) - len(data) % arr.itemsize])
            fds.extend(arr)
    return fds


class MessageReader:
    """Incremental reader of one message at a time from a (non-blocking or blocking) stream socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buf = bytearray()
        self._fds: list[int] = []
        self._need = HEADER.size
        self._header: tuple[int, int, int, int, int] | None = None
        self.truncated_fds = 0  # messages whose fds did not all fit (MSG_CTRUNC)

    def _recv(self, n: int) -> bool:
        """Read up to n bytes; False if nothing is available now. Raises Disconnected at EOF."""
        space = socket.CMSG_SPACE(MAX_MSG_FDS * array.array("i").itemsize)
        try:
            data, ancdata, msg_flags, _ = self.sock.recvmsg(n, space)
        except (BlockingIOError, InterruptedError):
            return False
        except (ConnectionResetError, BrokenPipeError) as exc:
            raise Disconnected(str(exc)) from exc
        self._fds.extend(_fds_from(ancdata))
        if msg_flags & socket.MSG_CTRUNC:
            # More fds than max_msg_fds: the kernel closed the rest.  The message is still read whole; its
            # handler sees fewer fds than it needs and answers with an error.
            self.truncated_fds += 1
        if not data:
            raise Disconnected("peer closed the connection")
        self._buf += data
        return True

    def poll(self) -> Message | None:
        """The next complete message if one can be read now without blocking, else None."""
        while True:
            missing = self._need - len(self._buf)
            if missing > 0:
                if not self._recv(missing):
                    return None
                continue
            if self._header is None:
                header = HEADER.unpack(bytes(self._buf[: HEADER.size]))
                size = header[2]
                if size < HEADER.size or size > MAX_MESSAGE:
                    self._header = header
                    raise StreamCorrupt(f"message size {size} (command {header[1]}, id {header[0]})")
                self._header = header
                self._need = size
                continue
            msg_id, command, _size, flags, error = self._header
            msg = Message(msg_id, command, flags, error, bytes(self._buf[HEADER.size :]), self._fds)
            self._buf = bytearray()
            self._fds = []
            self._need = HEADER.size
            self._header = None
            return msg

    @property
    def corrupt_header(self) -> tuple[int, int, int, int, int] | None:
        """The header that made :meth:`poll` raise StreamCorrupt (to address the error reply)."""
        return self._header

    def close(self) -> None:
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = []
