"""``virtio-fpga bind BDF`` / ``virtio-fpga unbind BDF``: hand a PCI function to vfio-pci and give it back.

The work is in :mod:`host.bind`; this module only maps its one-line refusals onto the CLI's exit status 2.
"""

from __future__ import annotations

import argparse

from virtio_fpga.errors import CliError


def _bind(args: argparse.Namespace) -> int:
    from host.bind import BindError, bind

    try:
        result = bind(args.bdf, any_device=args.any)
    except BindError as exc:
        raise CliError(str(exc)) from None
    print("\n".join(result.lines()))
    return 0


def _unbind(args: argparse.Namespace) -> int:
    from host.bind import BindError, unbind

    try:
        driver = unbind(args.bdf)
    except BindError as exc:
        raise CliError(str(exc)) from None
    print(f"{args.bdf}: released from vfio-pci, now bound to {driver or 'no driver'}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bind",
        help="bind a PCI function to vfio-pci (checks its IOMMU group, remembers the previous driver)",
        description="Bind a PCI function to vfio-pci via driver_override and drivers_probe.",
    )
    p.add_argument("bdf", help="PCI address, e.g. 0000:01:00.0")
    p.add_argument("--any", action="store_true", help="allow a device that is not virtio (vendor 1af4)")
    p.set_defaults(func=_bind)
    u = sub.add_parser(
        "unbind",
        help="release a PCI function from vfio-pci and restore its previous driver",
        description="Release a PCI function from vfio-pci and give it back to the driver bind found.",
    )
    u.add_argument("bdf", help="PCI address, e.g. 0000:01:00.0")
    u.set_defaults(func=_unbind)
