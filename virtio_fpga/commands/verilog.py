"""``virtio-fpga verilog -o DIR [--data-width N]``: write the top-level Verilog for a Vivado project.

The module is ``virtio_net_endpoint`` with the plain port names of the UltraScale+ PCIe IP's user interface
(see ``hdl/top.py``); a port list (name, direction, width) is written beside it as JSON so board scripts can
check their wiring without parsing Verilog.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from virtio_fpga.errors import CliError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verilog", help="write the top-level Verilog (virtio_net_endpoint) with Xilinx port names")
    p.add_argument("-o", "--output", type=Path, required=True, help="output directory")
    p.add_argument(
        "--data-width", type=int, default=256, help="AXI-stream width of the PCIe interfaces (128, 256, 512)"
    )
    p.add_argument(
        "--eth-width", type=int, default=64, help="Ethernet AXI-stream port width (64 for 10/25G .. 512 for 100G)"
    )
    p.add_argument(
        "--core",
        default="virtio",
        choices=["virtio", "test"],
        help="'test' builds the PCIe-only stand-in core instead of the virtio core",
    )
    p.add_argument(
        "--family",
        default="usp",
        choices=["usp", "ptile"],
        help="usp: UltraScale+ port names (hdl/top.py); ptile: Intel P-tile Avalon-ST (hdl/pcie/ptile/top.py, 256)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hdl.pcie.tlp import SUPPORTED_DATA_WIDTHS
    from hdl.top import ETH_WIDTHS, MODULE_NAME, generate_verilog, top_ports

    if getattr(args, "family", "usp") == "ptile":
        from hdl.pcie.ptile.avst import SUPPORTED_DATA_WIDTHS
        from hdl.pcie.ptile.top import generate_verilog
        from hdl.pcie.ptile.top import ptile_top_ports as top_ports
    if args.data_width not in SUPPORTED_DATA_WIDTHS:
        raise CliError(f"--data-width must be one of {', '.join(map(str, SUPPORTED_DATA_WIDTHS))}")
    if args.eth_width not in ETH_WIDTHS:
        raise CliError(f"--eth-width must be one of {', '.join(map(str, ETH_WIDTHS))}")
    out: Path = args.output
    out.mkdir(parents=True, exist_ok=True)
    text = generate_verilog(args.data_width, core=args.core, eth_width=args.eth_width)
    vfile = out / f"{MODULE_NAME}.v"
    vfile.write_text(text)
    ports = [{"name": n, "direction": d, "width": w} for n, d, w in top_ports(args.data_width, args.eth_width)]
    (out / f"{MODULE_NAME}.ports.json").write_text(json.dumps(ports, indent=1) + "\n")
    print(
        f"wrote {vfile} ({len(text.splitlines())} lines, {len(ports)} ports, data width {args.data_width}, "
        f"Ethernet port {args.eth_width} bits)"
    )
    return 0
