"""``virtio-fpga bench``: steady-state throughput of the RTL endpoint in simulated clock cycles, as a sweep.

Each case (mode x frame size x host read latency x NOTIFICATION_DATA x EVENT_IDX, see :mod:`sim.benchmath`) is
one independent simulator process running :func:`sim.throughput.steady_state`; ``--jobs`` of them run side by
side.  Simulated cycles are exact and machine-independent, so the figures compare between runs and commits;
wall-clock time is recorded only to show what the simulation cost.  Writes ``results/bench.json`` (schema in
:func:`sim.benchmath.validate`), ``results/bench.png`` and ``results/bench.html``; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

from virtio_fpga.cli import CliError

METHOD = (
    "the driver polls every 32 ns and keeps both rings full, posting in batches of 16 with one doorbell each; "
    "per-frame figures span the completion of the last warm-up frame to the completion of the last measured "
    "frame (RX used element for loopback and rx, TX for tx)."
)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v, 0) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}") from None
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"need non-negative numbers: {text!r}")
    return values


def _jobs(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("--jobs must be at least 1")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="steady-state throughput sweep of the RTL endpoint in simulated cycles",
        description="Cycles per frame, Mpps, Gbit/s, link use, reads in flight, descriptor reads and interrupts "
        "of the RTL endpoint, per case of a sweep; writes JSON, a PNG plot and an HTML report.",
    )
    p.add_argument("--output", type=Path, default=Path("results/bench.json"), help="JSON file (PNG/HTML beside)")
    p.add_argument("--full", action="store_true", help="the whole sweep (336 cases) instead of the default subset")
    p.add_argument("--jobs", type=_jobs, default=os.cpu_count() or 1, help="simulations in parallel (default: cores)")
    p.add_argument("--mode", action="append", choices=["loopback", "tx", "rx"], help="only these modes")
    p.add_argument("--sizes", type=_int_list, help="only these frame sizes, e.g. 64,1500")
    p.add_argument("--read-latency-ns", type=_int_list, metavar="NS[,NS]", help="only these host read latencies (ns)")
    p.add_argument("--frames", type=int, default=None, help="measured frames per case (default depends on size)")
    p.add_argument("--case", action="append", default=[], help="only the cases with this label (repeatable)")
    p.add_argument("--list", action="store_true", help="list the selected cases and exit")
    p.add_argument("--json", action="store_true", help="print the JSON document on stdout instead of a table")
    p.add_argument("--no-plot", action="store_true", help="write only the JSON")
    p.add_argument("--markdown", action="store_true", help="print the cases as a Markdown table (for READMEs)")
    p.add_argument(
        "--from-json",
        type=Path,
        metavar="FILE",
        help="render a saved bench.json (table, --markdown, plot); run nothing",
    )
    from virtio_fpga.commands.demo import add_family_argument

    add_family_argument(p)
    p.set_defaults(func=run)


def select_cases(args: argparse.Namespace) -> list:
    from sim.benchmath import default_matrix, full_matrix

    cases = full_matrix() if args.full else default_matrix()
    if args.mode:
        cases = [c for c in cases if c.mode in args.mode]
    if args.sizes:
        cases = [c for c in cases if c.frame_bytes in args.sizes]
    if args.read_latency_ns is not None:
        wanted = set(args.read_latency_ns)
        kept = [c for c in cases if c.read_latency_ns in wanted]
        if not kept and cases:  # a latency outside the sweep: run the selected points at that latency
            from dataclasses import replace

            base = {(c.mode, c.frame_bytes, c.notification_data, c.event_idx): c for c in cases}
            kept = [replace(c, read_latency_ns=lat) for c in base.values() for lat in sorted(wanted)]
        cases = kept
    if args.case:
        labels = {c.label for c in cases}
        unknown = set(args.case) - labels
        if unknown:
            raise CliError(f"unknown case {', '.join(sorted(unknown))} (see --list)")
        cases = [c for c in cases if c.label in args.case]
    if not cases:
        raise CliError("no case selected")
    if args.frames is not None and args.frames < 1:
        raise CliError("--frames must be at least 1")
    return cases


def run_case(case_dict: dict[str, Any], frames: int | None, family: str = "usp") -> dict[str, Any]:
    """One case in this (worker) process: the simulator runs as its child.  Never raises."""
    from sim.benchmath import Case
    from sim.runner import SimulationError, run_scenario

    case = Case(**case_dict)
    started = time.monotonic()
    try:
        raw = run_scenario(
            "sim.throughput:steady_state",
            case.scenario_args(frames),
            read_latency_ns=case.read_latency_ns,
            family=family,
        )
    except (SimulationError, OSError, ValueError) as exc:
        raw = {"ok": False, "errors": [f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"]}
    raw["wall_seconds"] = round(time.monotonic() - started, 1)
    return raw


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from sim.benchmath import CLOCK_MHZ, case_figures, validate

    if args.from_json is not None:
        return _render_saved(args)
    cases = select_cases(args)
    if args.list:
        for c in cases:
            print(c.label)
        return 0
    try:
        from sim.runner import build
    except ImportError as exc:
        raise CliError(f"the RTL simulation is not available: {exc}") from None
    err = Console(stderr=True)
    started = time.monotonic()
    err.print(f"bench: {len(cases)} cases, {min(args.jobs, len(cases))} in parallel; building the design")
    build(256, family=args.family)  # once, before the workers: they find it cached
    rows: list[dict[str, Any] | None] = [None] * len(cases)
    raws: list[dict[str, Any] | None] = [None] * len(cases)
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("case {task.completed} of {task.total}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=False) as progress, ProcessPoolExecutor(args.jobs) as pool:
        task = progress.add_task("bench", total=len(cases))
        pending = {pool.submit(run_case, c.as_dict(), args.frames, args.family): i for i, c in enumerate(cases)}
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                i = pending.pop(fut)
                raw = fut.result()
                raws[i] = raw
                row = case_figures(cases[i], raw, data_width=256, clock_mhz=CLOCK_MHZ)
                row["wall_seconds"] = raw.get("wall_seconds")
                rows[i] = row
                cpf = f"{row['cycles_per_frame']:.1f} cycles/frame" if row["cycles_per_frame"] else "FAILED"
                progress.update(task, advance=1, description=f"{cases[i].label}: {cpf}")
                if not err.is_terminal:  # a log: one line per case (a live bar shows only on a terminal)
                    n = sum(r is not None for r in rows)
                    elapsed = int(time.monotonic() - started)
                    err.print(f"bench: case {n} of {len(cases)} [{elapsed // 60}:{elapsed % 60:02d}] "
                              f"{cases[i].label}: {cpf}", highlight=False)  # fmt: skip
    done = [r for r in rows if r is not None]
    bringups = sorted({r["bringup_cycles"] for r in done if r.get("bringup_cycles")})
    first_raw = next((r for r in raws if r and "eth_width" in r), {})
    doc = {
        "family": args.family,
        "clock_mhz": CLOCK_MHZ,
        "data_width": first_raw.get("data_width", 256),
        "eth_width": first_raw.get("eth_width"),
        "link": f"Gen{first_raw.get('link_generation', 3)} x{first_raw.get('link_lanes', 8)}",
        "command": " ".join(["virtio-fpga", *sys.argv[1:]]) if sys.argv[0].endswith("virtio-fpga") else "make bench",
        "method": METHOD,
        "bringup_cycles": bringups[0] if len(bringups) == 1 else bringups,
        "python": platform.python_version(),
        "wall_seconds": round(time.monotonic() - started, 1),
        "cases": done,
    }
    problems = validate(doc)
    if problems:  # a bug of the bench itself, not of the design: say so loudly
        raise CliError("bench.json does not have its schema: " + "; ".join(problems[:5]))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(doc, indent=2) + "\n")
    written = [args.output]
    if not args.no_plot:
        from virtio_fpga.bench_report import write_reports

        written += write_reports(doc, args.output)
    _show(doc, args)
    err.print(f"written: {', '.join(str(p) for p in written)} ({doc['wall_seconds']:.0f} s)")
    return 0 if all(r["ok"] for r in done) else 1


def _show(doc: dict[str, Any], args: argparse.Namespace) -> None:
    if args.json:
        print(json.dumps(doc, indent=2))
    elif args.markdown:
        from virtio_fpga.bench_report import markdown

        print(markdown(doc))
    else:
        _print_table(doc)


def _render_saved(args: argparse.Namespace) -> int:
    from sim.benchmath import validate

    try:
        doc = json.loads(args.from_json.read_text())
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read {args.from_json}: {exc}") from None
    problems = validate(doc) if isinstance(doc, dict) else ["not a JSON object"]
    if problems:
        raise CliError(f"{args.from_json} is not a bench.json: {problems[0]}")
    if not args.no_plot:
        from virtio_fpga.bench_report import write_reports

        write_reports(doc, args.from_json)
    _show(doc, args)
    return 0


def _print_table(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console() if sys.stdout.isatty() else Console(width=160)
    console.print(f"driver bring-up: {doc['bringup_cycles']} cycles (not part of any per-frame figure)")
    t = Table(title=f"steady state, {doc['data_width']}-bit at {doc['clock_mhz']} MHz (simulated cycles)")
    for col in ("case", "cycles/frame", "Mpps", "Gbit/s", "link dev/host", "reads in flight", "desc rd/desc",
                "used wr/frame", "irq/frame", "ok"):  # fmt: skip
        t.add_column(col, justify="left" if col == "case" else "right")
    for r in doc["cases"]:
        if r["cycles_per_frame"] is None:
            t.add_row(r["label"], *["-"] * 8, "FAIL: " + "; ".join(r["errors"])[:60])
            continue
        t.add_row(
            r["label"],
            f"{r['cycles_per_frame']:.1f}",
            f"{r['mpps']:.2f}",
            f"{r['gbps']:.2f}",
            f"{r['link_fraction_to_device']:.1%} / {r['link_fraction_to_host']:.1%}",
            f"{r['reads_in_flight_max']} / {r['reads_in_flight_mean']:.2f}",
            f"{r['desc_reads_per_desc']:.3f}",
            f"{r['used_writes_per_frame']:.2f}",
            f"{r['irqs_per_frame']:.3f}",
            "yes" if r["ok"] else "NO: " + "; ".join(r["errors"])[:60],
        )
    console.print(t)
