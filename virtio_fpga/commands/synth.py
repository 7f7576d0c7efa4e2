"""``virtio-fpga synth``: resource and Fmax figures for the endpoint from open tools, no Vivado needed.

Two real tool runs (see ``boards/opentools.py`` for why each is set up the way it is): Yosys
``synth_xilinx -family xcup`` for UltraScale+ LUT/FF/BRAM/DSP counts per major block, and a synth_ecp5 +
nextpnr-ecp5 place-and-route of the same endpoint for an Fmax from a second, independent tool flow.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from virtio_fpga.cli import CliError
from virtio_fpga.progress import StepReporter


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "synth",
        help="synthesize the endpoint with Yosys (UltraScale+) and place-and-route it with nextpnr (ECP5)",
        description="Resource figures (Yosys synth_xilinx -family xcup, per major block) and Fmax (nextpnr-ecp5) "
        "of the virtio-net endpoint, without the PCIe hard IP.",
    )
    p.add_argument(
        "--json", action="store_true", help="print one JSON object instead of tables (progress goes to stderr)"
    )
    p.add_argument("--markdown", action="store_true", help="print the figures as a Markdown table (for READMEs)")
    p.add_argument("--from-json", type=Path, metavar="FILE", help="render a saved `synth --json` result, run nothing")
    p.add_argument("--data-width", type=int, default=256, choices=(128, 256, 512), help="AXI-stream width")
    p.add_argument(
        "--family",
        default="usp",
        choices=("usp", "ptile"),
        help="the endpoint built for the UltraScale+ user interface (usp) or the P-tile Avalon-ST one (ptile, 256)",
    )
    p.add_argument("-o", "--output", type=Path, default=Path("build/synth"), help="work directory (logs, netlists)")
    p.add_argument("--depth", type=int, default=2, help="hierarchy depth of the blocks reported separately")
    p.add_argument("--ecp5-device", default="LFE5UM5G-85F", help="ECP5 part for place-and-route")
    p.add_argument("--ecp5-package", default="CABGA381")
    p.add_argument("--freq", type=float, default=125.0, help="ECP5 target frequency in MHz (guides nextpnr)")
    p.add_argument("--seed", type=int, default=1, help="nextpnr placement seed")
    p.add_argument("--no-ecp5", action="store_true", help="skip the ECP5 place-and-route (UltraScale+ only)")
    p.add_argument(
        "--ecp5-timing-driven",
        action="store_true",
        help="timing-driven ECP5 placement: a higher Fmax, but its annealing takes several minutes more; the "
        "default (nextpnr --no-tmdriv) keeps the whole command under 10 minutes on 2 cores",
    )
    p.set_defaults(func=run)


def _endpoint(data_width: int, family: str = "usp") -> tuple[str, list[tuple[str, str, int]]]:
    """The endpoint's Verilog and port list, from hdl/top.py or hdl/pcie/ptile/top.py (imported late)."""
    try:
        if family == "ptile":
            from hdl.pcie.ptile import top as ptile_top

            if data_width != 256:
                raise CliError(f"--data-width {data_width}: the P-tile build implements 256 bits")
        else:
            from hdl import top
    except ImportError as exc:  # the 'hdl' extra missing, or the endpoint not written yet
        raise CliError(f"cannot import the endpoint (hdl.top): {exc}") from exc
    try:
        if family == "ptile":
            return ptile_top.generate_verilog(data_width=data_width), list(ptile_top.ptile_top_ports(data_width))
        return top.generate_verilog(data_width=data_width), list(top.top_ports(data_width))
    except Exception as exc:  # an elaboration error of the design is reported, not a crash of this command
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CliError(f"the endpoint does not elaborate: {type(exc).__name__}: {first}") from exc


def collect(args: argparse.Namespace) -> dict:
    """Run the tools and gather every figure in one JSON-able dict (also used by the tests)."""
    from boards import opentools

    if args.ecp5_device not in opentools.ECP5_DEVICES:
        raise CliError(f"unknown ECP5 device {args.ecp5_device}; known: {', '.join(opentools.ECP5_DEVICES)}")
    t0 = time.monotonic()
    family = getattr(args, "family", "usp")
    with StepReporter("synth") as progress:
        progress.update(f"elaborating the endpoint ({family}, {args.data_width} bits, Amaranth -> Verilog)")
        verilog, ports = _endpoint(args.data_width, family)
        out = args.output.resolve()
        progress.watch(lambda: flow_steps(out, since=time.time() - progress.elapsed, ecp5=not args.no_ecp5))
        return _collect_flows(args, verilog, ports, out, t0)


def flow_steps(out: Path, *, since: float, ecp5: bool) -> str:
    """What each tool flow is doing now, from the files its tools have written in the work directory since
    ``since`` (a wall-clock time; older files are from an earlier run)."""

    def fresh(path: Path) -> bool:
        try:
            return path.stat().st_mtime >= since
        except OSError:
            return False

    x = out / "xcup"
    xcup = "done" if fresh(x / "stat_xcup.json") else "yosys synth_xilinx" if fresh(x / "yosys_xcup.stdout") else "-"
    steps = [f"UltraScale+: {xcup}"]
    if ecp5:
        e = out / "ecp5"
        if fresh(e / "report_ecp5.json"):
            state = "done"
        elif fresh(e / "nextpnr_ecp5.stdout"):
            state = "nextpnr-ecp5 place and route"
        elif fresh(e / "yosys_ecp5.stdout"):
            state = "yosys synth_ecp5"
        else:
            state = "-"
        steps.append(f"ECP5: {state}")
    return " | ".join(steps)


def _collect_flows(args: argparse.Namespace, verilog: str, ports: list, out: Path, t0: float) -> dict:
    from boards import opentools

    family = getattr(args, "family", "usp")
    clock = "coreclkout_hip" if family == "ptile" else "user_clk"

    # The two flows are independent single-threaded tool runs: on two cores they run side by side.
    with ThreadPoolExecutor(max_workers=2) as pool:
        xf = pool.submit(opentools.synth_xcup, verilog, "virtio_net_endpoint", out / "xcup", depth=args.depth)
        ef = None
        if not args.no_ecp5:
            ef = pool.submit(
                opentools.pnr_ecp5, verilog, "virtio_net_endpoint", ports, out / "ecp5", clock=clock,
                device=args.ecp5_device, package=args.ecp5_package, target_mhz=args.freq, seed=args.seed,
                timing_driven=args.ecp5_timing_driven,
            )  # fmt: skip
        try:
            x = xf.result()
            e = ef.result() if ef is not None else None
        except opentools.ToolError as exc:
            raise CliError(str(exc).splitlines()[0]) from exc
    result: dict = {
        "family": family,
        "data_width": args.data_width,
        "luts": x.total.luts,
        "ffs": x.total.ffs,
        "brams": x.total.brams,
        "dsps": x.total.dsps,
        "urams": x.total.urams,
        "lutram": x.total.lutram,
        "fmax_mhz": e.fmax_mhz if e else None,
        "xcup": {
            "tool": x.yosys,
            "command": x.command,
            "total": opentools.as_dict(x.total),
            "blocks": [opentools.as_dict(b) for b in x.blocks],
            "unmapped_cells": x.unmapped_cells,
            "seconds": round(x.seconds, 1),
            "cpu_seconds": round(x.cpu_seconds, 1),
        },
        "ecp5": None,
        "seconds": None,
        "workdir": str(out),
    }
    if e is not None:
        ecp5 = opentools.as_dict(e)
        ecp5.pop("utilization")
        ecp5["seconds"] = round(e.seconds, 1)
        ecp5["cpu_seconds"] = round(e.cpu_seconds, 1)
        result["ecp5"] = ecp5
    result["seconds"] = round(time.monotonic() - t0, 1)
    return result


def _print_tables(r: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    build = "P-tile Avalon-ST build" if r.get("family") == "ptile" else "UltraScale+ build"
    t = Table(title=f"{build}: Yosys synth_xilinx -family xcup, data width {r['data_width']}")
    for col in ("block", "LUTs", "of which LUTRAM/SRL", "FFs", "BRAM36", "URAM", "DSPs", "CARRY"):
        t.add_column(col, justify="left" if col == "block" else "right")
    rows = [*r["xcup"]["blocks"], r["xcup"]["total"]]
    for b in rows:
        name = b["name"] if b is not r["xcup"]["total"] else "total (virtio_net_endpoint)"
        t.add_row(name, str(b["luts"]), str(b["lutram"]), str(b["ffs"]), f"{b['brams']:g}", str(b["urams"]),
                  str(b["dsps"]), str(b["carry"]))  # fmt: skip
    console.print(t)
    if r["xcup"]["unmapped_cells"]:
        console.print(f"cells not classified: {', '.join(r['xcup']['unmapped_cells'])}")
    e = r["ecp5"]
    if e:
        console.print(
            f"ECP5 {e['device']} ({e['package']}, speed {e['speed']}): Fmax {e['fmax_mhz']:.1f} MHz "
            f"(target {e['target_mhz']:g}), {e['luts']} LUT4/comb, {e['ffs']} FFs incl. {e['wrapper_ffs']} wrapper "
            f"FFs, {e['brams']} DP16KD, {e['dsps']} MULT18"
        )
        console.print(f"ECP5 method: {e['method']}")
    console.print(f"total {r['seconds']:.0f} s; logs in {r['workdir']}")


def markdown(r: dict) -> str:
    """The figures as Markdown: one row per kept block, the total, and the ECP5 line."""
    lines = [
        f"UltraScale+ (Yosys `{r['xcup']['command']}`), data width {r['data_width']}:",
        "",
        "| block | LUTs | of which LUTRAM/SRL | FFs | BRAM36 | URAM | DSPs |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for b in [*r["xcup"]["blocks"], {**r["xcup"]["total"], "name": "**total** (virtio_net_endpoint)"}]:
        cells = [b["name"], b["luts"], b["lutram"], b["ffs"], f"{b['brams']:g}", b["urams"], b["dsps"]]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    e = r["ecp5"]
    if e:
        lines += [
            "",
            f"ECP5 {e['device']} ({e['package']}, speed {e['speed']}): **Fmax {e['fmax_mhz']:.1f} MHz**; "
            f"{e['luts']} LUT4/carry cells, {e['ffs']} FFs (of which {e['wrapper_ffs']} in the I/O wrapper), "
            f"{e['brams']} DP16KD, {e['dsps']} MULT18X18D.  Method: {e['method']}.",
        ]
    x = r["xcup"]
    cpu = f"; CPU time xcup {x.get('cpu_seconds', 0):.0f} s" + (f", ECP5 {e.get('cpu_seconds', 0):.0f} s" if e else "")
    lines += ["", f"Wall time {r['seconds']:.0f} s (xcup {x['seconds']:.0f} s"
              + (f", ECP5 {e['seconds']:.0f} s" if e else "") + f", side by side{cpu})."]  # fmt: skip
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.from_json is not None:
        try:
            result = json.loads(args.from_json.read_text())
        except (OSError, ValueError) as exc:
            raise CliError(f"cannot read {args.from_json}: {exc}") from exc
    else:
        result = collect(args)
    if args.json:
        print(json.dumps(result, indent=2))
    elif args.markdown:
        print(markdown(result))
    else:
        _print_tables(result)
    return 0
