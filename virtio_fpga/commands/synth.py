"""``virtio-fpga synth``: resource, logic-depth and Fmax figures for the endpoint from open tools, no Vivado.

Three real tool runs ("flows", see ``boards/opentools.py`` for why each is set up the way it is): Yosys
``synth_xilinx -family xcup`` with the major blocks kept for UltraScale+ LUT/FF/BRAM/DSP counts per block
(``xcup``); the same synthesis flattened, for the logic depth in LUT levels of every path, the deepest one
with its start and end points and the deepest per block (``depth``); and a synth_ecp5 + nextpnr-ecp5
place-and-route of the same endpoint for an Fmax from a second, independent tool flow (``ecp5``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from virtio_fpga.cli import CliError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "synth",
        help="synthesize the endpoint with Yosys (UltraScale+) and place-and-route it with nextpnr (ECP5)",
        description="Resource figures (Yosys synth_xilinx -family xcup, per major block) and Fmax (nextpnr-ecp5) "
        "of the virtio-net endpoint, without the PCIe hard IP.",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
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
    p.add_argument(
        "--unit",
        metavar="PATH",
        help="synthesize one block of the endpoint alone (its module path, e.g. core.tx_mover): its ports become "
        "the path boundaries, so a block's own depth shows without the paths that cross into its neighbours",
    )
    p.add_argument("--ecp5-device", default="LFE5UM5G-85F", help="ECP5 part for place-and-route")
    p.add_argument("--ecp5-package", default="CABGA381")
    p.add_argument("--freq", type=float, default=125.0, help="ECP5 target frequency in MHz (guides nextpnr)")
    p.add_argument("--seed", type=int, default=1, help="nextpnr placement seed")
    p.add_argument(
        "--no-ecp5", action="store_true", help="skip the ECP5 place-and-route (same as leaving it out of --flows)"
    )
    p.add_argument(
        "--flows",
        default=",".join(FLOWS),
        help=f"comma-separated tool runs: {', '.join(f'{k} ({v})' for k, v in FLOWS.items())}; default all",
    )
    p.add_argument(
        "--ecp5-timing-driven",
        action="store_true",
        help="timing-driven ECP5 placement: a higher Fmax, but its annealing takes several minutes more; the "
        "default (nextpnr --no-tmdriv) keeps the whole command under 10 minutes on 2 cores",
    )
    p.set_defaults(func=run)


#: The tool runs this command knows, in the order they are reported.
FLOWS = {
    "xcup": "UltraScale+ resources per block",
    "depth": "UltraScale+ logic depth, flattened",
    "ecp5": "ECP5 place-and-route Fmax",
}


def parse_flows(text: str, no_ecp5: bool = False) -> list[str]:
    """``--flows`` as a list in :data:`FLOWS` order; an unknown or empty selection is a one-line error."""
    asked = [f.strip() for f in text.split(",") if f.strip()]
    unknown = [f for f in asked if f not in FLOWS]
    if unknown:
        raise CliError(f"unknown flow {unknown[0]!r} in --flows; known: {', '.join(FLOWS)}")
    flows = [f for f in FLOWS if f in asked and not (no_ecp5 and f == "ecp5")]
    if not flows:
        raise CliError("--flows selects no tool run")
    return flows


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


def unit_module(verilog: str, unit: str | None) -> str:
    """The Verilog module name of ``--unit`` (``core.tx_mover`` -> ``virtio_net_endpoint.core.tx_mover``)."""
    if not unit:
        return "virtio_net_endpoint"
    from boards import opentools

    names = opentools._module_names(verilog)
    name = unit if unit.startswith("virtio_net_endpoint") else f"virtio_net_endpoint.{unit}"
    if name not in names:
        near = sorted(n.removeprefix("virtio_net_endpoint.") for n in names if n.count(".") <= 2 and "." in n)
        raise CliError(f"no block {unit!r} in the endpoint; blocks: {', '.join(near)}")
    return name


def collect(args: argparse.Namespace) -> dict:
    """Run the tools and gather every figure in one JSON-able dict (also used by the tests)."""
    from boards import opentools

    if args.ecp5_device not in opentools.ECP5_DEVICES:
        raise CliError(f"unknown ECP5 device {args.ecp5_device}; known: {', '.join(opentools.ECP5_DEVICES)}")
    flows = parse_flows(getattr(args, "flows", ",".join(FLOWS)), args.no_ecp5)
    t0 = time.monotonic()
    family = getattr(args, "family", "usp")
    verilog, ports = _endpoint(args.data_width, family)
    clock = "coreclkout_hip" if family == "ptile" else "user_clk"
    out = args.output.resolve()
    top_name = unit_module(verilog, getattr(args, "unit", None))
    if top_name != "virtio_net_endpoint" and "ecp5" in flows:
        raise CliError("--unit works with the Yosys flows only; add --flows xcup,depth")
    if top_name != "virtio_net_endpoint":
        out = out / top_name.removeprefix("virtio_net_endpoint.")
    jobs = {
        "xcup": lambda: opentools.synth_xcup(verilog, top_name, out / "xcup", depth=args.depth),
        "depth": lambda: opentools.depth_xcup(verilog, top_name, out / "depth", depth=args.depth),
        "ecp5": lambda: opentools.pnr_ecp5(
            verilog, "virtio_net_endpoint", ports, out / "ecp5", clock=clock, device=args.ecp5_device,
            package=args.ecp5_package, target_mhz=args.freq, seed=args.seed, timing_driven=args.ecp5_timing_driven,
        ),
    }  # fmt: skip
    # The flows are independent single-threaded tool runs: on two cores two run side by side.  ECP5 is the
    # longest, so it starts first and the two Yosys runs share the other core.
    order = sorted(flows, key=lambda f: f != "ecp5")
    done: dict = {}
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {f: pool.submit(jobs[f]) for f in order}
        try:
            _wait_with_progress(futures, done, t0)
        except opentools.ToolError as exc:
            for fut in futures.values():
                fut.cancel()
            raise CliError(str(exc).splitlines()[0]) from exc
    x, dp, e = done.get("xcup"), done.get("depth"), done.get("ecp5")
    result: dict = {
        "family": family,
        "unit": top_name.removeprefix("virtio_net_endpoint.") if top_name != "virtio_net_endpoint" else None,
        "data_width": args.data_width,
        "flows": flows,
        "luts": x.total.luts if x else None,
        "ffs": x.total.ffs if x else None,
        "brams": x.total.brams if x else None,
        "dsps": x.total.dsps if x else None,
        "urams": x.total.urams if x else None,
        "lutram": x.total.lutram if x else None,
        "logic_levels": dp.levels if dp else None,
        "fmax_mhz": e.fmax_mhz if e else None,
        "xcup": None,
        "depth": depth_dict(dp) if dp else None,
        "ecp5": None,
        "seconds": None,
        "workdir": str(out),
    }
    if x is not None:
        result["xcup"] = {
            "tool": x.yosys,
            "command": x.command,
            "total": opentools.as_dict(x.total),
            "blocks": [opentools.as_dict(b) for b in x.blocks],
            "unmapped_cells": x.unmapped_cells,
            "seconds": round(x.seconds, 1),
            "cpu_seconds": round(x.cpu_seconds, 1),
        }
    if e is not None:
        ecp5 = opentools.as_dict(e)
        ecp5.pop("utilization")
        ecp5["seconds"] = round(e.seconds, 1)
        ecp5["cpu_seconds"] = round(e.cpu_seconds, 1)
        result["ecp5"] = ecp5
    result["seconds"] = round(time.monotonic() - t0, 1)
    return result


def _wait_with_progress(futures: dict, done: dict, t0: float) -> None:
    """Wait for every flow, showing which are still running and the elapsed time on stderr (rich)."""
    from concurrent.futures import FIRST_COMPLETED, wait

    from rich.console import Console

    console = Console(stderr=True)
    pending = dict(futures)
    quiet = not sys.stderr.isatty()  # in a log, one line per finished flow instead of a live spinner
    with console.status("", spinner="dots") if not quiet else _Null() as status:
        while pending:
            finished, _ = wait(list(pending.values()), timeout=1.0, return_when=FIRST_COMPLETED)
            for name, fut in list(pending.items()):
                if fut in finished:
                    done[name] = fut.result()  # a tool error propagates from here
                    del pending[name]
                    console.print(f"synth: {name} ({FLOWS[name]}) done after {time.monotonic() - t0:.0f} s")
            if status is not None and pending:
                status.update(f"synth: running {', '.join(pending)} - {time.monotonic() - t0:.0f} s elapsed")


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def depth_dict(d: object) -> dict:
    """The depth result as JSON: histogram keys become strings (JSON object keys), the rest as stored."""
    from boards import opentools

    out = opentools.as_dict(d) if not isinstance(d, dict) else dict(d)
    out["histogram"] = {str(k): v for k, v in out["histogram"].items()}
    out["ff_bits_over_budget"] = sum(v for k, v in out["histogram"].items() if int(k) > out["budget"])
    out["seconds"] = round(out["seconds"], 1)
    out["cpu_seconds"] = round(out["cpu_seconds"], 1)
    return out


def _print_depth(console, d: dict) -> None:
    from rich.table import Table

    p = d["path"]
    t = Table(title=f"Logic depth (LUT/MUXF/INV levels; budget {d['budget']} at 250 MHz)")
    for col in ("end block", "levels", "deepest path: start", "end", "FF bits", f"FF bits > {d['budget']}"):
        t.add_column(col, justify="right" if col in ("levels", "FF bits") or col.startswith("FF") else "left")
    for b in d["blocks"]:
        bp = b["path"] or {"start": "", "end": ""}
        t.add_row(b["name"], str(b["levels"]), bp["start"], bp["end"], str(b["ff_bits"]), str(b["ff_bits_over_budget"]))
    console.print(t)
    if p:
        ltp = f" (Yosys ltp: {d['ltp_levels']})" if d.get("ltp_levels") is not None else ""
        console.print(f"deepest path: {p['levels']} levels{ltp}, {p['start']} -> {p['end']}")
    console.print(f"{d['ff_bits_over_budget']} register bits have paths deeper than {d['budget']} levels")
    if d["worst"]:
        console.print("deepest registers: " + "; ".join(f"{w['end']} {w['levels']} (from {w['start']})"
                                                        for w in d["worst"][:8]))  # fmt: skip


def _print_tables(r: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if r["xcup"]:
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
    if r.get("depth"):
        _print_depth(console, r["depth"])
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
    """The figures as Markdown: one row per kept block and the total, the depth per block, the ECP5 line."""
    lines: list[str] = []
    x = r.get("xcup")
    if x:
        lines += [
            f"UltraScale+ (Yosys `{x['command']}`), data width {r['data_width']}:",
            "",
            "| block | LUTs | of which LUTRAM/SRL | FFs | BRAM36 | URAM | DSPs |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for b in [*x["blocks"], {**x["total"], "name": "**total** (virtio_net_endpoint)"}]:
            cells = [b["name"], b["luts"], b["lutram"], b["ffs"], f"{b['brams']:g}", b["urams"], b["dsps"]]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    d = r.get("depth")
    if d:
        p = d["path"] or {"start": "-", "end": "-"}
        lines += [
            *([""] if lines else []),
            f"Logic depth (Yosys `{d['command']}`), LUT levels of the deepest path ending in each block "
            f"(budget {d['budget']} at 250 MHz): **{d['levels']} levels overall**, `{p['start']}` -> `{p['end']}`; "
            f"{d['ff_bits_over_budget']} register bits over budget.",
            "",
            f"| end block | levels | deepest path | FF bits | FF bits > {d['budget']} |",
            "|---|---:|---|---:|---:|",
        ]
        for b in d["blocks"]:
            bp = b["path"] or {"start": "-", "end": "-"}
            lines.append(f"| {b['name']} | {b['levels']} | `{bp['start']}` -> `{bp['end']}` | {b['ff_bits']} | "
                         f"{b['ff_bits_over_budget']} |")  # fmt: skip
    e = r.get("ecp5")
    if e:
        lines += [
            "",
            f"ECP5 {e['device']} ({e['package']}, speed {e['speed']}): **Fmax {e['fmax_mhz']:.1f} MHz**; "
            f"{e['luts']} LUT4/carry cells, {e['ffs']} FFs (of which {e['wrapper_ffs']} in the I/O wrapper), "
            f"{e['brams']} DP16KD, {e['dsps']} MULT18X18D.  Method: {e['method']}.",
        ]
    runs = [(name, f) for name, f in (("xcup", x), ("depth", d), ("ECP5", e)) if f]
    wall = ", ".join(f"{name} {f['seconds']:.0f} s" for name, f in runs)
    cpu = ", ".join(f"{name} {f.get('cpu_seconds', 0):.0f} s" for name, f in runs)
    together = ", two at a time" if len(runs) > 1 else ""
    lines += ["", f"Wall time {r['seconds']:.0f} s ({wall}{together}; CPU time {cpu})."]
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
