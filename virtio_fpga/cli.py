"""The ``virtio-fpga`` command line.

Each subcommand lives in its own module under ``virtio_fpga.commands`` and is discovered at start-up: a module
defines ``register(subparsers)`` that adds its parser and sets ``func`` (an ``argparse`` handler returning the
exit status).  New subcommands therefore need no edit here.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import pkgutil
import sys

from virtio_fpga import commands
from virtio_fpga.errors import CliError

__all__ = ["CliError", "build_parser", "main"]


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad argument is reported in one line (no usage dump), exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="virtio-fpga",
        description="A virtio-net PCIe device in Amaranth gateware, its host driver and its software twin.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in _command_modules():
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    return parser


@functools.cache
def _command_modules() -> tuple:
    """The subcommand modules, found once per process (a process that later drops privileges keeps them)."""
    names = sorted(info.name for info in pkgutil.iter_modules(commands.__path__))
    return tuple(importlib.import_module(f"{commands.__name__}.{name}") for name in names)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CliError as exc:
        print(f"virtio-fpga {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
