"""``virtio-fpga fuzz``: stateful fuzzing of driver behaviour against the software device or the RTL.

``--device soft|rtl --count N [--seed S] [--jobs N] [--steps N] [--fault NAME] [--json]`` runs N sequences
(hypothesis programs of driver steps, :mod:`host.fuzz_machine`) over ``--jobs`` independent processes (default:
every core; for the RTL each job has its own simulator, :mod:`sim.fuzz`).  A rich progress display on stderr
shows sequences done, failures and the rate; ``--json`` prints one object on stdout.  Each failure is shrunk
by hypothesis and saved as a replayable scenario file (``--save-dir``, default ``results/fuzz``); the command to
replay it, ``virtio-fpga fuzz --replay FILE``, is printed.  Exit status 0 only when there were no failures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from virtio_fpga.errors import CliError


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must not be negative")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fuzz", help="stateful fuzzing of driver behaviour (malformed rings, resets, registers)")
    p.add_argument("--device", choices=["soft", "rtl"], default="soft", help="device under test (default: soft)")
    p.add_argument("--count", type=_positive, default=100, help="sequences to run (default: 100)")
    p.add_argument("--seed", type=_seed, default=0, help="campaign seed (default: 0)")
    p.add_argument("--jobs", type=_positive, default=None, help="independent processes (default: every core)")
    p.add_argument("--steps", type=_positive, default=30, help="most steps per sequence (default: 30)")
    p.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="NAME",
        help="plant a software-device bug (devices/softnet.py Fault), to see the fuzzer find it",
    )
    p.add_argument("--replay", type=Path, metavar="FILE", help="run one saved failing sequence again")
    p.add_argument("--save-dir", type=Path, default=Path("results/fuzz"), help="where failing sequences go")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(func=run)


def _check_faults(names: list[str], device: str) -> tuple[str, ...]:
    from devices.softnet import Fault

    known = {f.value for f in Fault}
    for name in names:
        if name not in known:
            raise CliError(f"--fault {name!r} is not one of {', '.join(sorted(known))}")
    if names and device != "soft":
        raise CliError("--fault plants bugs in the software device: use it with --device soft")
    return tuple(names)


#: Seconds between progress lines when stderr is a log, not a terminal.
LOG_EVERY = 15.0


def _log_line(err, args: argparse.Namespace, sequences: int, failures: int, steps: int, elapsed: float,
              *, final: bool = False) -> None:  # fmt: skip
    """One plain progress line for a log (what a terminal's live bar shows)."""
    done = sequences if final else min(sequences, args.count)
    err.print(
        f"fuzz {args.device}: {done} of {args.count} sequences{' (done)' if final else ''}, {failures} failures, "
        f"{steps} steps, {sequences / max(elapsed, 1e-6):.2f} seq/s [{int(elapsed) // 60}:{int(elapsed) % 60:02d}]",
        highlight=False,
        soft_wrap=True,
    )


def run(args: argparse.Namespace) -> int:
    if args.replay is not None:
        return _replay(args)
    faults = _check_faults(args.fault, args.device)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from sim.fuzz import run_campaign

    jobs = args.jobs or os.cpu_count() or 1
    err = Console(stderr=True)
    started = time.monotonic()
    columns = (
        TextColumn(f"fuzz {args.device}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("failures {task.fields[failures]}  {task.fields[rate]:.2f} seq/s  steps {task.fields[steps]}"),
        TimeElapsedColumn(),
    )
    in_log = not err.is_terminal  # a live bar shows only on a terminal; a log gets a line every LOG_EVERY s
    last_line = [started]
    with Progress(*columns, console=err, transient=False, disable=in_log) as progress:
        task = progress.add_task("fuzz", total=args.count, failures=0, rate=0.0, steps=0)

        def on_progress(stats) -> None:
            now = time.monotonic()
            elapsed = max(now - started, 1e-6)
            progress.update(
                task,
                completed=min(stats.sequences, args.count),
                failures=stats.failures,
                rate=stats.sequences / elapsed,
                steps=stats.steps,
            )
            if in_log and now - last_line[0] >= LOG_EVERY:
                last_line[0] = now
                _log_line(err, args, stats.sequences, stats.failures, stats.steps, elapsed)

        result = run_campaign(
            args.device,
            args.count,
            seed=args.seed,
            jobs=jobs,
            faults=faults,
            steps=args.steps,
            on_progress=on_progress,
        )
    if in_log:
        elapsed = time.monotonic() - started
        _log_line(err, args, result["sequences"], result["failures"], result["steps"], elapsed, final=True)
    replays = []
    for i, found in enumerate(result["found"]):
        path = _save(args.save_dir, args.device, result, found, faults, i)
        replays.append(str(path))
        err.print(f"[red]failure[/red] ({found['kind']}): {found['detail']}")
        err.print(f"  {len(found['program'])} steps saved to {path}; replay: virtio-fpga fuzz --replay {path}")
    for message in result["errors"]:
        err.print(f"[red]job error[/red]: {message}")
    result["replay"] = replays
    summary = {k: v for k, v in result.items() if k != "found"}
    summary["found"] = [{k: v for k, v in f.items() if k != "program"} for f in result["found"]]
    if args.json:
        print(json.dumps(summary))
    else:
        err.print(
            f"{result['sequences']} sequences, {result['steps']} steps, {result['failures']} failures, "
            f"{result['hangs']} hangs, {result['stray_dma']} stray DMA, NEEDS_RESET expected "
            f"{result['needs_reset_expected']} / seen {result['needs_reset_seen']} "
            f"({result['sequences_per_second']} seq/s on {result['jobs']} jobs)"
        )
    if result["interrupted"]:
        err.print("interrupted: the figures above are those of the sequences finished before Ctrl-C")
        return 130
    return 0 if result["failures"] == 0 else 1


def _save(directory: Path, device: str, result: dict, found: dict, faults: tuple[str, ...], index: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"fuzz-{device}-seed{found['seed']}-{index}.json"
    scenario = {
        "format": "virtio-fpga-fuzz/1",
        "device": device,
        "seed": found["seed"],
        "faults": list(faults),
        "failure": {"kind": found["kind"], "detail": found["detail"]},
        "program": found["program"],
    }
    path.write_text(json.dumps(scenario, indent=1) + "\n")
    return path


def _replay(args: argparse.Namespace) -> int:
    try:
        scenario = json.loads(args.replay.read_text())
    except OSError as exc:
        raise CliError(f"cannot read {args.replay}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise CliError(f"{args.replay} is not JSON: {exc.msg} (line {exc.lineno})") from None
    if not isinstance(scenario, dict) or scenario.get("format") != "virtio-fpga-fuzz/1" or "program" not in scenario:
        raise CliError(f"{args.replay} is not a fuzz scenario file (format virtio-fpga-fuzz/1)")
    device = scenario.get("device", "soft")
    if device not in ("soft", "rtl"):
        raise CliError(f"{args.replay}: unknown device {device!r}")
    faults = _check_faults(list(scenario.get("faults", [])), device)
    from host.fuzz import Failure

    seed = int(scenario.get("seed", 0))
    out: dict = {"device": device, "replay": str(args.replay), "steps": len(scenario["program"])}
    try:
        if device == "soft":
            from devices.softnet import Fault
            from host.fuzz_machine import run_soft

            stats = run_soft(scenario["program"], seed=seed, faults=frozenset(Fault(f) for f in faults))
        else:
            from sim.fuzz import RtlWorker

            worker = RtlWorker(seed)
            try:
                stats = worker.run(scenario["program"], seed)
            finally:
                worker.close()
        out.update(ok=True, stats=stats.as_dict())
    except Failure as exc:
        out.update(ok=False, kind=exc.kind, detail=exc.detail)
    if args.json:
        print(json.dumps(out))
    elif out["ok"]:
        print(f"replay of {args.replay} on {device}: passes now", file=sys.stderr)
    else:
        print(f"replay of {args.replay} on {device}: {out['kind']}: {out['detail']}", file=sys.stderr)
    return 0 if out["ok"] else 1
