"""``virtio-fpga formal``: prove the ring engine's safety properties (SymbiYosys + Yices, all from PyPI).

Each property of :mod:`hdl.formal.properties` is reported as ``proven`` (k-induction closed), ``bounded`` (no
violation within N cycles from reset; induction did not close), or ``failed`` with its counterexample trace
(a VCD file).  ``--planted`` also runs every property's planted bug (a miswired stage instance) and expects
it to fail: the proof machinery is shown to catch what it claims to.  Progress goes to stderr; ``--json``
prints one object on stdout.  Exit status 0 only when nothing failed or errored and every planted bug failed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from virtio_fpga.errors import CliError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "formal",
        help="prove the engine's safety properties (k-induction, else bounded model checking)",
        description="Formal checks of the ring engine's stages with yowasp-sby and yices: each property is proven, "
        "bounded to a depth, or failed with a counterexample trace.",
    )
    p.add_argument("names", nargs="*", help="properties or groups (e.g. used, rx.write_in_buffer); default all")
    p.add_argument("--ci", action="store_true", help="only the properties that fit the default test suite")
    p.add_argument("--planted", action="store_true", help="also run the planted bugs, which must fail")
    p.add_argument("--no-cover", action="store_true", help="skip the non-vacuity cover runs")
    p.add_argument("--list", action="store_true", help="list the properties and exit")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="solver runs in parallel (default: cores)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per solver run before it counts as error")
    p.add_argument("-o", "--output", type=Path, default=Path("build/formal"), help="work directory (traces, logs)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hdl.formal.properties import select

    if args.jobs < 1:
        raise CliError("--jobs must be at least 1")
    try:
        props = select(args.names, ci_only=args.ci)
    except KeyError as exc:
        raise CliError(exc.args[0]) from None
    if args.list:
        for p in props:
            print(f"{p.name:28s} {p.stage:16s} {'ci' if p.ci else 'slow':4s} {p.rule}")
        return 0
    if not props:
        raise CliError("no property selected")
    return _prove(args, props)


def _prove(args: argparse.Namespace, props: list) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from hdl.formal.runner import FormalToolMissing, result_dict, run_property, tool_env

    try:
        tool_env()
    except FormalToolMissing as exc:
        raise CliError(str(exc)) from None
    jobs = [(p, None) for p in props]
    if args.planted:
        jobs += [(p, p.planted) for p in props if p.planted]
    out: Path = args.output
    out.mkdir(parents=True, exist_ok=True)
    err = Console(stderr=True)
    started = time.monotonic()
    results = []
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=err, transient=False) as progress, ThreadPoolExecutor(args.jobs) as pool:
        task = progress.add_task("formal", total=len(jobs))
        futures = [
            pool.submit(run_property, p, out, mutation=mut, cover=not args.no_cover, timeout=args.timeout)
            for p, mut in jobs
        ]
        for fut in futures:
            res = fut.result()
            results.append(res)
            label = res.name + (f" +{res.mutation}" if res.mutation else "")
            progress.console.print(f"{label}: {res.summary()} ({res.seconds:.1f} s)", highlight=False)
            progress.advance(task)
    real = [r for r in results if r.mutation is None]
    planted = [r for r in results if r.mutation is not None]
    bad = [r for r in real if r.status in ("failed", "error")]
    missed = [r for r in planted if r.status != "failed"]
    summary = {
        "properties": len(real),
        "proven": sum(r.status == "proven" for r in real),
        "bounded": sum(r.status == "bounded" for r in real),
        "failed": sum(r.status == "failed" for r in real),
        "errors": sum(r.status == "error" for r in real),
        "planted": len(planted),
        "planted_caught": len(planted) - len(missed),
        "seconds": round(time.monotonic() - started, 1),
        "jobs": args.jobs,
        "results": [result_dict(r) for r in results],
    }
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        _table(real, planted)
        print(
            f"{summary['proven']} proven, {summary['bounded']} bounded, {summary['failed']} failed, "
            f"{summary['errors']} errors; planted bugs caught {summary['planted_caught']}/{len(planted)}; "
            f"{summary['seconds']} s on {args.jobs} jobs"
        )
    (out / "formal.json").write_text(json.dumps(summary, indent=1) + "\n")
    sys.stdout.flush()
    return 1 if bad or missed else 0


def _table(real: list, planted: list) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="ring-engine properties")
    for col in ("property", "stage", "status", "reached", "s"):
        table.add_column(col)
    for r in real + planted:
        name = r.name + (f" +{r.mutation} (planted)" if r.mutation else "")
        table.add_row(name, r.stage, r.summary(), "-" if r.reached is None else str(r.reached), f"{r.seconds:.0f}")
    Console().print(table)
