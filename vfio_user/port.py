"""A device's Ethernet port as a UNIX datagram socket: one frame per datagram, like QEMU's ``-netdev dgram``.

Two devices whose ports name each other (A: local=a, remote=b; B: local=b, remote=a) are joined back to back,
as a cable would join two NICs: every frame one transmits is received by the other.  A frame sent while the
peer is not listening is dropped and counted, as on a cable with nothing plugged in.
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

MAX_DATAGRAM = 65536


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
        self.sent = self.received = self.dropped = 0

    def send(self, frame: bytes) -> None:
        try:
            self.sock.sendto(frame, str(self.remote))
            self.sent += 1
        except (FileNotFoundError, ConnectionRefusedError, BlockingIOError, OSError):
            self.dropped += 1

    def receive(self) -> bytes | None:
        """One waiting frame, or None."""
        try:
            frame = self.sock.recv(MAX_DATAGRAM)
        except (BlockingIOError, InterruptedError):
            return None
        self.received += 1
        return frame

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()
        with contextlib.suppress(OSError):
            os.unlink(self.local)
