"""``virtio-fpga bench``: speed figures measured in simulated clock cycles, written to a results file.

Simulated cycles are exact and machine-independent, so these numbers are comparable between runs and
between commits; wall-clock time is recorded only to show what the simulation cost.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

from virtio_fpga.cli import CliError

#: (label, demo arguments): loopback of equal-sized frames, notification data on and off, chains.
CASES: list[tuple[str, dict[str, Any]]] = [
    ("64B", {"frames": 32, "min_size": 64, "max_size": 64}),
    ("1500B", {"frames": 32, "min_size": 1500, "max_size": 1500}),
    ("9000B", {"frames": 8, "min_size": 9000, "max_size": 9000, "queue_size": 16}),
    ("64B-no-notification-data", {"frames": 32, "min_size": 64, "max_size": 64, "disable": "NOTIFICATION_DATA"}),
    ("1500B-chains-4", {"frames": 32, "min_size": 1500, "max_size": 1500, "rx_chain": 4, "tx_chain": 4}),
]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="measure cycles per frame and DMA requests in RTL simulation")
    p.add_argument("--output", type=Path, default=Path("results/bench.json"))
    p.add_argument("--device", default="rtl", choices=["rtl", "soft"])
    p.add_argument("--case", action="append", default=[], help="only these cases (by label)")
    from virtio_fpga.commands.demo import add_family_argument

    add_family_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from virtio_fpga.commands.demo import run_on_device

    labels = {label for label, _ in CASES}
    unknown = set(args.case) - labels
    if unknown:
        raise CliError(f"unknown case {', '.join(sorted(unknown))}: choose from {', '.join(sorted(labels))}")
    results = []
    failed = False
    for label, kwargs in CASES:
        if args.case and label not in args.case:
            continue
        started = time.monotonic()
        r = run_on_device(args.device, {"queue_size": 64, "batch": 16, **kwargs}, family=args.family)
        wall = time.monotonic() - started
        frames = r.get("frames_received", 0)
        row = {
            "case": label,
            "ok": bool(r.get("ok")),
            "frames": frames,
            "bytes": r.get("bytes", 0),
            "wall_seconds": round(wall, 2),
        }
        for key in ("sim_cycles", "dma_read_requests", "dma_write_requests", "dma_read_bytes", "dma_write_bytes"):
            if key in r:
                row[key] = r[key]
        if frames and "sim_cycles" in r:
            row["cycles_per_frame"] = round(r["sim_cycles"] / frames, 1)
            row["bytes_per_cycle"] = round(r["bytes"] / r["sim_cycles"], 3)
        if frames and "dma_read_requests" in r:
            row["dma_read_requests_per_frame"] = round(r["dma_read_requests"] / frames, 2)
        failed |= not row["ok"]
        results.append(row)
        print(json.dumps(row, sort_keys=True))
    out = {
        "device": args.device,
        "family": args.family,
        "python": platform.python_version(),
        "command": "make bench",
        "results": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")
    print(f"results written to {args.output}")
    return 1 if failed else 0
