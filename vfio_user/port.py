"""A device's Ethernet port as a UNIX datagram socket: one frame per datagram, like QEMU's ``-netdev dgram``.

Two devices whose ports name each other (A: local=a, remote=b; B: local=b, remote=a) are joined back to back,
as a cable would join two NICs: every frame one transmits is received by the other.  Frames are not lost on
the way: a UNIX datagram socket holds only a few datagrams (net.unix.max_dgram_qlen, 10 by default) before the
sender gets EAGAIN, so frames wait in a queue here until the peer has read some (the socket is connected to the
peer, so the kernel reports it writable exactly then).  Only a frame sent while no peer listens is dropped and
counted, as on a cable with nothing plugged in, and the queue is bounded like a switch's buffer.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections import deque
from collections.abc import Callable
from pathlib import Path

MAX_DATAGRAM = 65536
QUEUE_LIMIT = 4096


class DatagramPort:
    """The local end of a point-to-point frame link between two device processes."""

    def __init__(self, local: Path, remote: Path) -> None:
        self.local = Path(local)
        self.remote = Path(remote)
        with contextlib.suppress(FileNotFoundError):
            if self.local.is_socket():
                self.local.unlink()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.local))
        self.sock.setblocking(False)
        self.connected = False
        self.queue: deque[bytes] = deque()
        self.sent = self.received = self.dropped = 0
        #: Called with True when frames wait for the peer (watch the socket for writability), False when not.
        self.on_backlog: Callable[[bool], None] | None = None
        self._waiting = False

    def _connect(self) -> bool:
        try:
            self.sock.connect(str(self.remote))
        except OSError:
            return False
        self.connected = True
        return True

    def send(self, frame: bytes) -> None:
        if len(self.queue) >= QUEUE_LIMIT:
            self.dropped += 1
            return
        self.queue.append(bytes(frame))
        self.flush()

    def flush(self) -> None:
        """Send queued frames until the peer's queue is full (then wait for writability) or none are left."""
        while self.queue:
            if not self.connected and not self._connect():
                self.dropped += len(self.queue)  # nobody listens at the other end
                self.queue.clear()
                break
            try:
                self.sock.send(self.queue[0])
            except (BlockingIOError, InterruptedError):
                self._set_waiting(True)
                return
            except (ConnectionRefusedError, FileNotFoundError, ConnectionResetError, OSError):
                self.connected = False  # the peer went away (or restarted): reconnect on the next frame
                self.dropped += 1
                self.queue.popleft()
                continue
            self.queue.popleft()
            self.sent += 1
        self._set_waiting(False)

    def _set_waiting(self, waiting: bool) -> None:
        if waiting != self._waiting:
            self._waiting = waiting
            if self.on_backlog is not None:
                self.on_backlog(waiting)

    def receive(self) -> bytes | None:
        """One waiting frame, or None."""
        try:
            frame = self.sock.recv(MAX_DATAGRAM)
        except (BlockingIOError, InterruptedError, ConnectionRefusedError):
            return None
        self.received += 1
        return frame

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()
        with contextlib.suppress(OSError):
            os.unlink(self.local)
