"""``virtio-fpga bitstream --board NAME``: the vendor build tree for a board, and the bitstream if the tool is here.

UltraScale+ boards (family ``usp``) get a Vivado tree (``boards/vivado.py``), run when ``vivado`` is on PATH;
P-tile boards (family ``ptile``) get a Quartus Prime Pro tree (``boards/quartus.py``), run when ``quartus_sh``
is on PATH.  Without the tool the command says so in one line: the tree is the deliverable, to be built on a
machine that has it.  ``--list`` names the boards and their family.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from virtio_fpga.cli import CliError


def _boards() -> dict:
    from boards import ALL_BOARDS

    return ALL_BOARDS


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bitstream",
        help="write the Vivado build tree for a board (and build the bitstream when Vivado is installed)",
        description="Generated Verilog, PCIe IP Tcl, wrapper, XDC and run script for a board; runs Vivado if present.",
    )
    p.add_argument(
        "--board", metavar="NAME", help="board name (known: alveo-u50, vcu118, agilex7-fseries-dk; see --list)"
    )
    p.add_argument("--list", action="store_true", help="list the boards, their PCIe family and part, and exit")
    p.add_argument("-o", "--output", type=Path, default=None, help="output directory (default build/<board>)")
    p.add_argument(
        "--data-width", type=int, default=256, choices=(128, 256, 512),
        help="AXI-stream width; the link is sized to match at 250 MHz: 128 -> Gen3 x4, 256 -> x8, 512 -> x16",
    )  # fmt: skip
    p.add_argument("--no-run", action="store_true", help="only write the tree, even if Vivado is available")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from boards import FAMILY

    boards = _boards()
    if args.list:
        rows = [{"board": n, "family": FAMILY[n], "part": boards[n]().part, "title": boards[n].title} for n in boards]
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            for r in rows:
                print(f"{r['board']:20} {r['family']:6} {r['part']:22} {r['title']}")
        return 0
    if not args.board:
        raise CliError("--board NAME is required (or --list)")
    if args.board not in boards:
        raise CliError(f"unknown board {args.board!r}; known boards: {', '.join(sorted(boards))}")
    board = boards[args.board]()
    out: Path = (args.output or Path("build") / args.board).resolve()
    if FAMILY[args.board] == "ptile":
        return _run_ptile(args, board, out)

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


def _run_ptile(args: argparse.Namespace, board, out: Path) -> int:
    """The Quartus tree of a P-tile board (the endpoint's P-tile build), and the build when Quartus is here."""
    from boards import quartus

    if args.data_width not in quartus.SUPPORTED_WIDTHS:
        raise CliError(f"--data-width {args.data_width}: the P-tile build implements {quartus.SUPPORTED_WIDTHS}")
    try:
        from hdl.pcie.ptile import top as ptile_top
    except ImportError as exc:
        raise CliError(f"cannot import the endpoint (hdl.pcie.ptile.top): {exc}") from exc
    try:
        verilog = ptile_top.generate_verilog(data_width=args.data_width)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CliError(f"the endpoint does not elaborate: {type(exc).__name__}: {first}") from exc
    tree = quartus.write_tree(board, out, verilog, ptile_top.ptile_top_ports(args.data_width), args.data_width)
    summary: dict = {
        "board": args.board,
        "family": "ptile",
        "part": board.part,
        "tree": str(out),
        "files": sorted(tree.files),
        "warning": None,
    }
    ran = False
    if quartus.quartus_available() and not args.no_run:
        t0 = time.monotonic()
        proc = quartus.run_quartus(tree)
        summary["quartus_seconds"] = round(time.monotonic() - t0)
        if proc.returncode != 0:
            raise CliError(f"quartus failed (exit {proc.returncode}), log {out / 'build.log'}")
        ran = True
        summary["bitstream"] = str(out / "output_files" / f"{quartus.TOP}.sof")
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{board.title} ({board.part}): Quartus build tree written to {out}")
    if ran:
        print(f"bitstream: {summary['bitstream']}")
    elif args.no_run:
        print(f"not running Quartus (--no-run); build with {out / 'run.sh'}")
    else:
        print(f"quartus_sh not found on PATH: tree left ready, build it with {out / 'run.sh'} where Quartus is")
    return 0
