"""The ``virtio-fpga`` command line.

Each subcommand lives in its own module under ``virtio_fpga.commands`` and is discovered at start-up: a module
defines ``register(subparsers)`` that adds its parser and sets ``func`` (an ``argparse`` handler returning the
exit status).  New subcommands therefore need no edit here.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from virtio_fpga import commands


class CliError(Exception):
    """A user mistake or an unmet precondition: printed as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="virtio-fpga",
        description="A virtio-net PCIe device in Amaranth gateware, its host driver and its software twin.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{commands.__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    return parser


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
