"""``virtio-fpga serve --device soft|rtl SOCKET``: serve our virtio-net device to a VMM over vfio-user.

QEMU (>= 10.1) attaches it with ``-device vfio-user-pci,socket.type=unix,socket.path=SOCKET`` and guest RAM on
a shared memfd (see README "Linux's own drivers").  One line on stdout says where the server listens; it must
be listening before QEMU starts.  ``--port-local/--port-remote`` join the device's Ethernet port to another
device's (UNIX datagram sockets, one frame per datagram); without them the port loops back.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path

from virtio_fpga.errors import CliError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve the device (software model or RTL) on a vfio-user socket")
    p.add_argument("socket", type=Path, help="UNIX socket path to listen on")
    p.add_argument("--device", choices=["soft", "rtl"], default="soft", help="back-end (default: soft)")
    p.add_argument("--port-local", type=Path, help="datagram socket of this device's Ethernet port")
    p.add_argument("--port-remote", type=Path, help="datagram socket of the peer device's port")
    p.add_argument("--mac", help="MAC address (default: the device's 02:fa:11:c0:ff:ee)")
    p.add_argument("--once", action="store_true", help="exit when the first client disconnects")
    p.add_argument("--slow-ms", type=float, default=0.0, help="delay BAR accesses by this many ms (fault test)")
    p.add_argument("--slow-count", type=int, default=0, help="delay only the first N BAR accesses (0: all)")
    p.add_argument("-v", "--verbose", action="store_true", help="log every protocol error and connection")
    p.set_defaults(func=run)


def _mac(text: str | None) -> bytes | None:
    if text is None:
        return None
    parts = text.split(":")
    try:
        raw = bytes(int(x, 16) for x in parts)
    except ValueError:
        raw = b""
    if len(parts) != 6 or len(raw) != 6:
        raise CliError(f"--mac {text!r} is not six hex bytes separated by ':'")
    return raw


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if (args.port_local is None) != (args.port_remote is None):
        raise CliError("--port-local and --port-remote go together")
    if not args.socket.parent.is_dir():
        raise CliError(f"directory {args.socket.parent} does not exist")
    mac = _mac(args.mac)
    port = (args.port_local, args.port_remote) if args.port_local else None

    def announce(line: str) -> None:
        print(line, flush=True)

    if args.device == "soft":
        from vfio_user import soft

        async def main() -> None:
            task = asyncio.current_task()
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGTERM, task.cancel)  # a supervisor's stop: exit cleanly, status 0
            with contextlib.suppress(asyncio.CancelledError):
                await soft.run(
                    args.socket,
                    port=port,
                    mac=mac,
                    once=args.once,
                    slow=args.slow_ms / 1000,
                    slow_count=args.slow_count,
                    on_listen=announce,
                )

        try:
            asyncio.run(main())
        except KeyboardInterrupt:
            return 130
        return 0
    from sim import vfio_user_rtl

    return vfio_user_rtl.serve(args.socket, port=port, mac=mac, once=args.once)
