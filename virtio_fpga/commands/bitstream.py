"""``virtio-fpga bitstream --board NAME``: the Vivado build tree for a board, and the bitstream if Vivado is here.

The UltraScale+ PCIe integrated block can only be placed by Vivado, so this command always writes a complete,
self-contained tree (see ``boards/vivado.py``) and runs it only when ``vivado`` is on PATH.  Without Vivado
it says so in one line: the tree is the deliverable, to be built on a machine that has it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from virtio_fpga.cli import CliError


def _boards() -> dict:
    from boards import BOARDS

    return BOARDS


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bitstream",
        help="write the Vivado build tree for a board (and build the bitstream when Vivado is installed)",
        description="Generated Verilog, PCIe IP Tcl, wrapper, XDC and run script for a board; runs Vivado if present.",
    )
    p.add_argument("--board", required=True, metavar="NAME", help="board name (known: alveo-u50, vcu118)")
    p.add_argument("-o", "--output", type=Path, default=None, help="output directory (default build/<board>)")
    p.add_argument(
        "--data-width", type=int, default=256, choices=(128, 256, 512),
        help="AXI-stream width; the link is sized to match at 250 MHz: 128 -> Gen3 x4, 256 -> x8, 512 -> x16",
    )  # fmt: skip
    p.add_argument("--no-run", action="store_true", help="only write the tree, even if Vivado is available")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    boards = _boards()
    if args.board not in boards:
        raise CliError(f"unknown board {args.board!r}; known boards: {', '.join(sorted(boards))}")
    board = boards[args.board]()
    out: Path = (args.output or Path("build") / args.board).resolve()

    from boards import vivado

    try:
        from hdl import top
    except ImportError as exc:
        raise CliError(f"cannot import the endpoint (hdl.top): {exc}") from exc
    try:
        verilog = top.generate_verilog(data_width=args.data_width)
    except Exception as exc:  # an elaboration error of the design is reported, not a crash of this command
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CliError(f"the endpoint does not elaborate: {type(exc).__name__}: {first}") from exc
    try:
        tree = vivado.write_tree(
            board, out, verilog, list(top.top_ports(args.data_width)),
            data_width=args.data_width,
        )  # fmt: skip
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    summary: dict = {"board": args.board, "part": board.part, "tree": str(out), "files": sorted(tree.files)}
    warning = vivado.cfg_ext_warning(board, [tuple(w) for w in tree.manifest["cfg_ext_windows"]])
    summary["warning"] = " ".join(warning) or None
    ran = False
    if vivado.vivado_available() and not args.no_run:
        t0 = time.monotonic()
        proc = vivado.run_vivado(tree)
        summary["vivado_seconds"] = round(time.monotonic() - t0)
        if proc.returncode != 0:
            tail = " / ".join(proc.stdout.strip().splitlines()[-3:])
            raise CliError(f"vivado failed (exit {proc.returncode}, log {out / 'build.log'}): {tail}")
        ran = True
        bit = out / f"{vivado.TOP}.bit"
        summary["bitstream"] = str(bit)
        summary["utilization"] = vivado.parse_utilization((out / "reports/utilization.rpt").read_text())
        summary["timing"] = vivado.parse_timing((out / "reports/timing_summary.rpt").read_text())
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{board.title} ({board.part}): Vivado build tree written to {out}")
    if warning:
        print(f"warning: {' '.join(warning)}", file=sys.stderr)
    if ran:
        u, t = summary["utilization"], summary["timing"]
        print(f"bitstream: {summary['bitstream']}")
        print("utilisation: " + ", ".join(f"{k} {v:g}" for k, v in u.items()))
        if t:
            print(f"timing: WNS {t['wns_ns']} ns, WHS {t['whs_ns']} ns ({'met' if t['met'] else 'NOT met'})")
    elif args.no_run:
        print(f"not running Vivado (--no-run); build with {out / 'run.sh'}")
    else:
        print(f"vivado not found on PATH: tree left ready, build it with {out / 'run.sh'} where Vivado is installed")
    return 0
