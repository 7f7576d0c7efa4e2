"""One vfio-user session: the protocol's commands mapped onto a device back-end, independent of the event loop.

:class:`Session` turns each client message into calls on a :class:`Backend` (configuration space, BAR 0, reset)
and keeps the session's resources: the DMA windows (:class:`vfio_user.memory.GuestMemory`) and the interrupt
eventfds (:class:`Interrupts`).  It awaits only the back-end, so it runs under asyncio (the software device,
:func:`serve_asyncio`) and under cocotb (the RTL, ``sim.vfio_user_rtl``) alike.

Malformed or unexpected input gets an error reply with an errno and one log line; it never raises out of
:meth:`Session.handle`.  A header that cannot start a valid message ends the connection after its error reply,
since the byte stream can no longer be trusted.  Disconnection unmaps all client memory and closes every fd
the client passed; the device keeps its state (spec: "Client Disconnection").
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from vfio_user import protocol as p
from vfio_user.memory import GuestMemory
from vfio_user.protocol import Command, Message, PciIrq, PciRegion, ProtocolError

log = logging.getLogger("vfio_user")


class Backend(Protocol):
    """What a device offers the session.  Sizes are exact: one guest access of N bytes is one device access."""

    config_size: int
    bar_sizes: dict[int, int]  # region index -> size, for the BARs the device implements
    msix_vectors: int

    def attach(self, memory: GuestMemory, irqs: Interrupts) -> None: ...

    async def config_read(self, offset: int, size: int) -> bytes: ...

    async def config_write(self, offset: int, data: bytes) -> None: ...

    async def bar_read(self, bar: int, offset: int, size: int) -> bytes: ...

    async def bar_write(self, bar: int, offset: int, data: bytes) -> None: ...

    async def reset(self) -> None: ...

    def intx_asserted(self) -> bool: ...


def _close(fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


@dataclass
class Interrupts:
    """The eventfds the client gave for MSI-X vectors and INTx, and how the device signals them.

    QEMU emulates the MSI-X table itself and hands one eventfd per vector, so the device raises *vector k*
    here rather than writing an MSI message.  INTx is level-triggered and automasked, as VFIO does it: a
    trigger masks the line until the client's UNMASK, and an UNMASK while the device still asserts its line
    triggers again.
    """

    msix_count: int
    msix: list[int | None] = field(default_factory=list)
    intx: int | None = None
    intx_masked: bool = False
    intx_unmask_fd: int | None = None
    signals: dict[str, int] = field(default_factory=dict)
    lost: int = 0  # interrupts raised while no eventfd was set for them
    level: Callable[[], bool] = lambda: False

    def __post_init__(self) -> None:
        self.msix = [None] * self.msix_count

    @property
    def msix_active(self) -> bool:
        return any(fd is not None for fd in self.msix)

    def write_eventfd(self, fd: int, key: str) -> None:
        try:
            os.eventfd_write(fd, 1)
        except OSError as exc:
            log.warning("eventfd write for %s failed: %s", key, exc)
            return
        self.signals[key] = self.signals.get(key, 0) + 1

    def signal(self, vector: int) -> None:
        """The device raises an interrupt for ``vector`` (MSI-X), or its INTx line when MSI-X is not in use."""
        if self.msix_active:
            fd = self.msix[vector] if 0 <= vector < self.msix_count else None
            if fd is None:
                self.lost += 1
                return
            self.write_eventfd(fd, f"msix{vector}")
            return
        self.assert_intx()

    def assert_intx(self) -> None:
        if self.intx is None:
            self.lost += 1
            return
        if self.intx_masked:
            return  # still masked from the last trigger: the client unmasks and then sees the level
        self.intx_masked = True
        self.write_eventfd(self.intx, "intx")

    def unmask_intx(self) -> None:
        self.intx_masked = False
        if self.level():
            self.assert_intx()

    def set_msix(self, start: int, fds: list[int | None]) -> None:
        for i, fd in enumerate(fds):
            _close(self.msix[start + i])
            self.msix[start + i] = fd

    def set_intx(self, fd: int | None) -> None:
        _close(self.intx)
        self.intx = fd
        self.intx_masked = False

    def close(self) -> None:
        self.set_msix(0, [None] * self.msix_count)
        self.set_intx(None)
        _close(self.intx_unmask_fd)
        self.intx_unmask_fd = None


def _chunks(offset: int, size: int, widest: int) -> list[tuple[int, int]]:
    """Split an access into naturally aligned pieces of at most ``widest`` bytes (1, 2, 4, 8)."""
    out = []
    while size > 0:
        n = widest
        while n > 1 and (offset % n or n > size):
            n //= 2
        out.append((offset, n))
        offset += n
        size -= n
    return out


class Session:
    """The state of one client connection and the handler of its commands."""

    def __init__(self, backend: Backend, *, name: str = "vfio-user") -> None:
        self.backend = backend
        self.name = name
        self.memory = GuestMemory()
        self.irqs = Interrupts(backend.msix_vectors, level=backend.intx_asserted)
        self.backend.attach(self.memory, self.irqs)
        self.version_done = False
        self.counts: dict[str, int] = {}
        self.errors: list[str] = []

    # ---- entry point ------------------------------------------------------------------------------------
    async def handle(self, msg: Message) -> Message | None:
        """The reply to one message (None when the client asked for none).  Never raises for bad input."""
        try:
            name = Command(msg.command).name
        except ValueError:
            name = f"command-{msg.command}"
        self.counts[name] = self.counts.get(name, 0) + 1
        try:
            if msg.is_reply:
                raise ProtocolError(errno.EINVAL, "a reply from the client, but the server sent no request")
            if msg.flags & p.TYPE_MASK:
                raise ProtocolError(errno.EINVAL, f"unknown message type {msg.flags & p.TYPE_MASK}")
            handler = self._handlers().get(msg.command)
            if handler is None:
                raise ProtocolError(errno.ENOSYS, f"{name} is not supported by this server")
            if not self.version_done and msg.command != Command.VERSION:
                raise ProtocolError(errno.EINVAL, f"{name} before VERSION negotiation")
            payload = await handler(msg)
            reply = p.reply_to(msg, payload)
        except ProtocolError as exc:
            self._log_error(msg, name, exc.errno, str(exc))
            reply = p.error_reply(msg, exc.errno)
        except Exception as exc:  # noqa: BLE001 - a back-end failure is reported to the client, not fatal
            log.exception("%s: %s failed in the device back-end", self.name, name)
            self._log_error(msg, name, errno.EIO, f"device back-end error: {type(exc).__name__}: {exc}")
            reply = p.error_reply(msg, errno.EIO)
        finally:
            msg.close_fds()  # handlers take the fds they keep out of msg.fds
        return None if msg.no_reply else reply

    def _log_error(self, msg: Message, name: str, errno_value: int, text: str) -> None:
        line = f"{name} (id {msg.id}): {errno.errorcode.get(errno_value, errno_value)}: {text}"
        self.errors.append(line)
        log.warning("%s: %s", self.name, line)

    def close(self) -> None:
        """Client gone: unmap its memory and close its fds; the device keeps its state."""
        self.memory.unmap_all()
        self.irqs.close()

    def _handlers(self) -> dict[int, Callable[[Message], Awaitable[bytes]]]:
        return {
            Command.VERSION: self._version,
            Command.DMA_MAP: self._dma_map,
            Command.DMA_UNMAP: self._dma_unmap,
            Command.DEVICE_GET_INFO: self._device_info,
            Command.DEVICE_GET_REGION_INFO: self._region_info,
            Command.DEVICE_GET_IRQ_INFO: self._irq_info,
            Command.DEVICE_SET_IRQS: self._set_irqs,
            Command.REGION_READ: self._region_read,
            Command.REGION_WRITE: self._region_write,
            Command.DEVICE_RESET: self._reset,
        }

    @staticmethod
    def _need(msg: Message, size: int, what: str) -> None:
        if len(msg.payload) < size:
            raise ProtocolError(errno.EINVAL, f"{what} payload of {len(msg.payload)} bytes, need {size}")

    # ---- commands --------------------------------------------------------------------------------------
    async def _version(self, msg: Message) -> bytes:
        self._need(msg, p.VERSION.size, "VERSION")
        major, minor = p.VERSION.unpack_from(msg.payload)
        if major != p.MAJOR:
            raise ProtocolError(errno.ENOTSUP, f"client protocol {major}.{minor}; this server speaks {p.MAJOR}.x")
        text = msg.payload[p.VERSION.size :].rstrip(b"\0")
        if text:
            try:
                caps = json.loads(text)
            except (UnicodeDecodeError, ValueError) as exc:
                raise ProtocolError(errno.EINVAL, f"VERSION capabilities are not JSON: {exc}") from exc
            if not isinstance(caps, dict):
                raise ProtocolError(errno.EINVAL, "VERSION capabilities are not a JSON object")
        caps = {
            "capabilities": {
                "max_msg_fds": p.MAX_MSG_FDS,
                "max_data_xfer_size": p.MAX_DATA_XFER,
                "pgsizes": 4096,
                "max_dma_maps": 65535,
            }
        }
        self.version_done = True
        return p.VERSION.pack(p.MAJOR, min(minor, p.MINOR)) + json.dumps(caps).encode() + b"\0"

    async def _dma_map(self, msg: Message) -> bytes:
        self._need(msg, p.DMA_MAP.size, "DMA_MAP")
        _argsz, flags, offset, address, size = p.DMA_MAP.unpack_from(msg.payload)
        if len(msg.fds) > 1:
            raise ProtocolError(errno.EINVAL, f"DMA_MAP with {len(msg.fds)} fds")
        fd = msg.fds.pop() if msg.fds else None
        self.memory.map(address, size, offset, flags, fd)
        return b""

    async def _dma_unmap(self, msg: Message) -> bytes:
        self._need(msg, p.DMA_UNMAP.size, "DMA_UNMAP")
        _argsz, flags, address, size = p.DMA_UNMAP.unpack_from(msg.payload)
        if flags & p.DMA_UNMAP_FLAG_GET_DIRTY_BITMAP:
            raise ProtocolError(errno.ENOTSUP, "dirty page tracking is not supported")
        if flags & p.DMA_UNMAP_FLAG_ALL:
            self.memory.unmap_all()
        else:
            self.memory.unmap(address, size)
        return msg.payload[: p.DMA_UNMAP.size]

    async def _device_info(self, msg: Message) -> bytes:
        self._need(msg, p.DEVICE_INFO.size, "DEVICE_GET_INFO")
        flags = p.DEVICE_FLAGS_RESET | p.DEVICE_FLAGS_PCI
        return p.DEVICE_INFO.pack(p.DEVICE_INFO.size, flags, p.NUM_REGIONS, p.NUM_IRQS)

    def _region_size(self, index: int) -> int:
        if index == PciRegion.CONFIG:
            return self.backend.config_size
        return self.backend.bar_sizes.get(index, 0)

    async def _region_info(self, msg: Message) -> bytes:
        self._need(msg, p.REGION_INFO.size, "DEVICE_GET_REGION_INFO")
        argsz, _flags, index, _cap, _size, _offset = p.REGION_INFO.unpack_from(msg.payload)
        if argsz < p.REGION_INFO.size:
            raise ProtocolError(errno.EINVAL, f"argsz {argsz} is smaller than struct vfio_region_info")
        if index >= p.NUM_REGIONS:
            raise ProtocolError(errno.EINVAL, f"no region {index}")
        size = self._region_size(index)
        flags = (p.REGION_INFO_FLAG_READ | p.REGION_INFO_FLAG_WRITE) if size else 0
        return p.REGION_INFO.pack(p.REGION_INFO.size, flags, index, 0, size, 0)

    def _irq_count(self, index: int) -> tuple[int, int]:
        if index == PciIrq.INTX:
            return 1, p.IRQ_INFO_EVENTFD | p.IRQ_INFO_MASKABLE | p.IRQ_INFO_AUTOMASKED
        if index == PciIrq.MSIX:
            return self.backend.msix_vectors, p.IRQ_INFO_EVENTFD
        return 0, p.IRQ_INFO_EVENTFD  # no MSI capability, no error or request interrupts

    async def _irq_info(self, msg: Message) -> bytes:
        self._need(msg, p.IRQ_INFO.size, "DEVICE_GET_IRQ_INFO")
        _argsz, _flags, index, _count = p.IRQ_INFO.unpack_from(msg.payload)
        if index >= p.NUM_IRQS:
            raise ProtocolError(errno.EINVAL, f"no IRQ index {index}")
        count, flags = self._irq_count(index)
        return p.IRQ_INFO.pack(p.IRQ_INFO.size, flags, index, count)

    async def _set_irqs(self, msg: Message) -> bytes:
        self._need(msg, p.IRQ_SET.size, "DEVICE_SET_IRQS")
        _argsz, flags, index, start, count = p.IRQ_SET.unpack_from(msg.payload)
        data, action = flags & p.IRQ_SET_DATA_MASK, flags & p.IRQ_SET_ACTION_MASK_ALL
        if bin(data).count("1") != 1 or bin(action).count("1") != 1 or flags & ~0x3F:
            raise ProtocolError(errno.EINVAL, f"SET_IRQS flags {flags:#x}: exactly one data and one action flag")
        if index >= p.NUM_IRQS:
            raise ProtocolError(errno.EINVAL, f"no IRQ index {index}")
        total, _ = self._irq_count(index)
        if data == p.IRQ_SET_DATA_NONE and count == 0 and action == p.IRQ_SET_ACTION_TRIGGER:
            if start != 0:
                raise ProtocolError(errno.EINVAL, "disable-all with a non-zero start")
            self._disable(index)
            return b""
        if start + count > total or count == 0:
            raise ProtocolError(errno.EINVAL, f"IRQ index {index}: sub-indexes {start}+{count} of {total}")
        selected = list(range(start, start + count))
        if data == p.IRQ_SET_DATA_BOOL:
            bools = msg.payload[p.IRQ_SET.size : p.IRQ_SET.size + count]
            if len(bools) != count:
                raise ProtocolError(errno.EINVAL, f"SET_IRQS DATA_BOOL with {len(bools)} of {count} booleans")
            selected = [i for i, b in zip(selected, bools, strict=True) if b]
        if data == p.IRQ_SET_DATA_EVENTFD:
            if msg.fds and len(msg.fds) != count:
                raise ProtocolError(errno.EINVAL, f"SET_IRQS with {len(msg.fds)} eventfds for {count} interrupts")
            fds: list[int | None] = list(msg.fds) if msg.fds else [None] * count
            msg.fds = []
            self._assign(index, action, start, fds)
            return b""
        for i in selected:  # DATA_NONE / DATA_BOOL: act now
            self._act(index, action, i)
        return b""

    def _disable(self, index: int) -> None:
        if index == PciIrq.MSIX:
            self.irqs.set_msix(0, [None] * self.irqs.msix_count)
        elif index == PciIrq.INTX:
            self.irqs.set_intx(None)

    def _assign(self, index: int, action: int, start: int, fds: list[int | None]) -> None:
        if index == PciIrq.MSIX and action == p.IRQ_SET_ACTION_TRIGGER:
            self.irqs.set_msix(start, fds)
        elif index == PciIrq.INTX and action == p.IRQ_SET_ACTION_TRIGGER:
            self.irqs.set_intx(fds[0])
        elif index == PciIrq.INTX and action == p.IRQ_SET_ACTION_UNMASK:
            _close(self.irqs.intx_unmask_fd)  # kept only to be closed: the client unmasks by message here
            self.irqs.intx_unmask_fd = fds[0]
        else:
            for fd in fds:
                _close(fd)
            raise ProtocolError(errno.EINVAL, f"IRQ index {index}: eventfds for action {action:#x} not supported")

    def _act(self, index: int, action: int, sub: int) -> None:
        if index == PciIrq.INTX and action == p.IRQ_SET_ACTION_UNMASK:
            self.irqs.unmask_intx()
        elif index == PciIrq.INTX and action == p.IRQ_SET_ACTION_MASK:
            self.irqs.intx_masked = True
        elif action == p.IRQ_SET_ACTION_TRIGGER:
            if index == PciIrq.MSIX:
                fd = self.irqs.msix[sub]
                if fd is not None:
                    self.irqs.write_eventfd(fd, f"msix{sub}")
            else:
                self.irqs.assert_intx()
        elif index == PciIrq.MSIX:
            pass  # QEMU masks MSI-X vectors in its own emulated table; nothing to do in the device
        else:
            raise ProtocolError(errno.EINVAL, f"IRQ index {index}: action {action:#x} not supported")

    def _check_rw(self, msg: Message, write: bool) -> tuple[int, int, int, bytes]:
        what = "REGION_WRITE" if write else "REGION_READ"
        self._need(msg, p.REGION_RW.size, what)
        offset, region, count = p.REGION_RW.unpack_from(msg.payload)
        data = msg.payload[p.REGION_RW.size :]
        if write and len(data) != count:
            raise ProtocolError(errno.EINVAL, f"{what} count {count} with {len(data)} data bytes")
        if not write and data:
            raise ProtocolError(errno.EINVAL, f"{what} with {len(data)} unexpected data bytes")
        if count == 0 or count > p.MAX_DATA_XFER:
            raise ProtocolError(errno.EINVAL, f"{what} of {count} bytes")
        size = self._region_size(region) if region < p.NUM_REGIONS else 0
        if size == 0:
            raise ProtocolError(errno.EINVAL, f"{what}: no region {region}")
        if offset + count > size:
            raise ProtocolError(errno.EINVAL, f"{what} of {count} bytes at {offset:#x} outside region {region}")
        return offset, region, count, data

    async def _region_read(self, msg: Message) -> bytes:
        offset, region, count, _ = self._check_rw(msg, write=False)
        out = bytearray()
        if region == PciRegion.CONFIG:
            for off, n in _chunks(offset, count, 4):
                out += await self.backend.config_read(off, n)
        else:
            for off, n in _chunks(offset, count, 8):
                out += await self.backend.bar_read(region, off, n)
        return p.REGION_RW.pack(offset, region, count) + bytes(out)

    async def _region_write(self, msg: Message) -> bytes:
        offset, region, count, data = self._check_rw(msg, write=True)
        pos = 0
        widest = 4 if region == PciRegion.CONFIG else 8
        for off, n in _chunks(offset, count, widest):
            piece = data[pos : pos + n]
            pos += n
            if region == PciRegion.CONFIG:
                await self.backend.config_write(off, piece)
            else:
                await self.backend.bar_write(region, off, piece)
        return p.REGION_RW.pack(offset, region, count)

    async def _reset(self, msg: Message) -> bytes:
        await self.backend.reset()
        return b""


# ---- the asyncio runner (software back-ends) -----------------------------------------------------------------
async def _readable(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    loop.add_reader(sock.fileno(), lambda: fut.done() or fut.set_result(None))
    try:
        await fut
    finally:
        loop.remove_reader(sock.fileno())


async def serve_connection(
    conn: socket.socket, session: Session, *, delay: Callable[[Message], float] | None = None
) -> None:
    """Answer one client until it disconnects (or sends a header that breaks the stream)."""
    conn.setblocking(False)
    reader = p.MessageReader(conn)
    try:
        while True:
            try:
                msg = reader.poll()
            except p.StreamCorrupt as exc:
                bad = reader.corrupt_header
                log.warning("%s: corrupt message header (%s): closing the connection", session.name, exc)
                if bad is not None:
                    stub = Message(bad[0], bad[1], 0)
                    with contextlib.suppress(OSError):
                        conn.setblocking(True)
                        p.send_message(conn, p.error_reply(stub, errno.EINVAL))
                session.errors.append(f"corrupt header: {exc}")
                return
            if msg is None:
                await _readable(conn)
                continue
            if delay is not None and (seconds := delay(msg)) > 0:
                await asyncio.sleep(seconds)
            reply = await session.handle(msg)
            if reply is not None:
                await asyncio.get_running_loop().sock_sendall(conn, reply.encode())
    except (p.Disconnected, ConnectionError, OSError) as exc:
        log.info("%s: client disconnected (%s)", session.name, exc)
    finally:
        log.info("%s: session ended: messages %s, %d errors", session.name, session.counts, len(session.errors))
        summary = getattr(session.backend, "summary", None)
        if summary is not None:
            log.info("%s: device: %s", session.name, summary())
        reader.close()
        session.close()
        conn.close()


def listen(path: Path) -> socket.socket:
    """A listening UNIX stream socket at ``path`` (a stale socket file from an earlier run is replaced)."""
    path = Path(path)
    if path.is_socket():
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(1)
    sock.setblocking(False)
    return sock


async def serve_asyncio(
    sock: socket.socket,
    backend: Backend,
    *,
    once: bool = False,
    name: str = "vfio-user",
    delay: Callable[[Message], float] | None = None,
) -> list[Session]:
    """Accept clients one after another on ``sock``; the device (``backend``) persists across them."""
    loop = asyncio.get_running_loop()
    sessions = []
    while True:
        conn, _ = await loop.sock_accept(sock)
        log.info("%s: client connected", name)
        session = Session(backend, name=name)
        sessions.append(session)
        await serve_connection(conn, session, delay=delay)
        if once:
            return sessions
