"""``virtio-fpga compare``: the same scenarios on two devices, one driver, a diff of what the driver saw."""

from __future__ import annotations

import argparse
import asyncio
import html
import json
from pathlib import Path
from typing import Any

from virtio_fpga.cli import CliError

DEVICES = ("rtl", "soft-pcie", "soft", "qemu")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="run scenarios on two devices and diff the driver-visible traces")
    p.add_argument(
        "--devices",
        default=None,
        help="REF,OTHER from rtl, soft-pcie (software device on the simulated PCIe bus), soft (in-process), "
        "qemu (QEMU's virtio-net-pci over VFIO in a QEMU guest, one VM boot); "
        "default rtl,soft-pcie when the RTL simulation is available, else soft,soft",
    )
    p.add_argument("--scenario", action="append", default=[], help="a named scenario (repeatable); default: all")
    p.add_argument("--seed", type=int, default=None, help="add random scenarios starting at this seed")
    p.add_argument("--count", type=int, default=1, help="how many random scenarios with --seed")
    p.add_argument("--plant", default=None, help="plant a bug in the second device: " + ", ".join(_fault_names()))
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--report", type=Path, default=None, help="write a report file (.html or .md)")
    p.add_argument("--list", action="store_true", help="list the named scenarios and exit")
    from virtio_fpga.commands.demo import add_family_argument, add_read_latency_argument

    add_read_latency_argument(p)
    add_family_argument(p)
    p.set_defaults(func=run)


def _fault_names() -> list[str]:
    from devices.softnet import Fault

    return [f.value for f in Fault]


def select_scenarios(names: list[str], seed: int | None, count: int) -> list:
    from host.scenario import find, library, random_scenario

    try:
        chosen = [find(n) for n in names] if names else ([] if seed is not None else library())
    except KeyError as exc:
        raise CliError(str(exc.args[0])) from None
    if seed is not None:
        if count < 1:
            raise CliError("--count must be at least 1")
        chosen += [random_scenario(seed + i) for i in range(count)]
    return chosen


def traces_in_process(scenarios: list, faults: frozenset) -> list[dict[str, Any]]:
    from devices.softnet import SoftVirtioNet
    from host.inproc import InProcessTransport
    from host.scenario import run_scenario

    async def main() -> list[dict[str, Any]]:
        out = []
        for sc in scenarios:
            transport = InProcessTransport(SoftVirtioNet(faults=faults))
            out.append(await run_scenario(transport, sc))
            await transport.close()
        return out

    return asyncio.run(main())


def rtl_available() -> bool:
    try:
        import cocotb_tools.runner  # noqa: F401

        import sim.compare_bus  # noqa: F401
    except ImportError:
        return False
    return True


def run_comparison(
    devices: list[str], scenarios: list, plant: str | None, read_latency_ns: float | None = None, family: str = "usp"
) -> dict[str, Any]:
    from devices.softnet import Fault
    from host.compare import compare_runs

    try:
        faults = frozenset({Fault(plant)}) if plant else frozenset()
    except ValueError:
        raise CliError(f"unknown fault {plant!r}: choose from {', '.join(_fault_names())}") from None
    for dev in devices:
        if dev not in DEVICES:
            raise CliError(f"unknown device {dev!r}: choose from {', '.join(DEVICES)}")
    if faults and devices[1] in ("rtl", "qemu"):
        raise CliError("faults are planted in the software device: put soft or soft-pcie second")
    traces: list[list[dict[str, Any]]] = [[], []]
    qemu: dict[str, Any] | None = None
    sim_devices = [d for d in devices if d not in ("soft", "qemu")]
    if read_latency_ns and not sim_devices:
        raise CliError("--read-latency-ns applies to the simulated PCIe bus: compare rtl or soft-pcie")
    if sim_devices and not rtl_available():
        raise CliError("the simulated PCIe bus (sim/) is not available")
    from virtio_fpga.progress import Steps

    steps = Steps("compare", devices.count("qemu") + bool(sim_devices) + ("soft" in devices))
    n = len(scenarios)
    if "qemu" in devices:
        # QEMU first: what its device offers decides the scenarios every device runs (see vm/qemu_traces.py).
        scenarios, qemu = run_qemu(
            scenarios, steps, f"booting a QEMU guest and tracing {n} scenarios on its virtio-net"
        )
        for k, dev in enumerate(devices):
            if dev == "qemu" and k != devices.index("qemu"):
                # qemu,qemu: a second boot for the second column (QEMU against itself: is it deterministic?)
                label = f"booting a second QEMU guest for the {len(scenarios)} scenarios"
                traces[k] = run_qemu(scenarios, steps, label)[1]["traces"]
            elif dev == "qemu":
                traces[k] = qemu["traces"]
    if sim_devices:
        from sim.compare_bus import run_on_bus

        with steps.step(
            f"{len(scenarios)} scenarios on {' and '.join(sim_devices)} on the simulated PCIe bus ({family})"
        ):
            by_dev = run_on_bus(
                sim_devices,
                [sc.to_dict() for sc in scenarios],
                faults=[f.value for f in faults],
                read_latency_ns=read_latency_ns,
                family=family,
            )
        for k, dev in enumerate(devices):
            if dev in sim_devices:
                traces[k] = by_dev[dev]
    if "soft" in devices:
        with steps.step(f"{len(scenarios)} scenarios on the in-process software device"):
            for k, dev in enumerate(devices):
                if dev == "soft":
                    traces[k] = traces_in_process(scenarios, faults if k == 1 else frozenset())
    if faults:
        for trace in traces[1]:
            trace["device"] += "*"  # marks the device with the planted bug
    report = compare_runs(traces[0], traces[1])
    if qemu is not None:
        report["devices"] = report["devices"] or list(devices)
        report["skipped"] = qemu["skipped"]
        report["qemu"] = {k: v for k, v in qemu.items() if k not in ("traces", "scenarios", "skipped")}
    return report


def run_qemu(scenarios: list, steps: Any = None, label: str = "tracing on QEMU") -> tuple[list, dict[str, Any]]:
    """Trace the scenarios meaningful for QEMU's virtio-net; returns (the adapted scenarios, QEMU's results).

    Why QEMU decides the scenarios: every driver-supported feature QEMU does not offer is disabled in each
    scenario (``vm.qemu_traces.adapt``), so the other device runs exactly what QEMU ran and both negotiate the
    same features; nothing is removed from the traces afterwards.  Scenarios that say nothing about QEMU are
    returned in ``skipped`` with the reason.  One VM boot for all of them (none when all are skipped).

    ``steps`` (a :class:`virtio_fpga.progress.Steps`) gets the boot as a step, started only after the cheap
    checks (is there anything to run, can the VM cache directory be made), so a machine that cannot run QEMU
    gets the one-line error alone and no half-started step.
    """
    from contextlib import nullcontext

    from host.scenario import Scenario

    try:
        from vm import qemu_traces as qt
        from vm.qemu_vm import VmUnavailable, cache_dir
    except ImportError as exc:
        raise CliError(f"the vm package is not importable ({exc}); reinstall the checkout (make deps)") from None
    skipped, runnable = [], []
    for sc in scenarios:
        reason = qt.not_meaningful(sc.to_dict())
        if reason:
            skipped.append({"scenario": sc.name, "reason": reason})
        else:
            runnable.append(sc.to_dict())
    result: dict[str, Any] = {"traces": [], "scenarios": [], "disabled": [], "device_features": None}
    if runnable:
        if not qt.in_test_guest():
            try:
                cache_dir().mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise CliError(f"qemu: cannot make the VM cache directory {cache_dir()}: {exc.strerror}") from None
        try:
            with steps.step(label) if steps is not None else nullcontext():
                result = qt.trace_qemu(runnable)
        except VmUnavailable as exc:
            raise CliError(f"QEMU cannot run here: {exc}") from None
        except (RuntimeError, OSError, LookupError) as exc:
            raise CliError(f"qemu: {' '.join(str(exc).split())}") from None
    result["skipped"] = skipped
    return [Scenario.from_dict(d) for d in result["scenarios"]], result


def _qemu_notes(report: dict[str, Any]) -> list[str]:
    """Lines for the human-readable reports: what was disabled to match QEMU, and what was skipped and why."""
    if "qemu" not in report:
        return []
    lines = []
    disabled = report["qemu"].get("disabled") or []
    if disabled:
        lines.append(f"  (features QEMU does not offer, disabled on both devices: {', '.join(disabled)})")
    for s in report.get("skipped", []):
        lines.append(f"  skipped   {s['scenario']}: {s['reason']}")
    return lines


def run(args: argparse.Namespace) -> int:
    from host.compare import render_html, render_markdown, render_text

    if args.list:
        from host.scenario import library

        for sc in library():
            print(f"{sc.name:28} {sc.description}")
        return 0
    if args.devices:
        devices = [d.strip() for d in args.devices.split(",")]
        if len(devices) != 2:
            raise CliError("--devices takes exactly two devices, e.g. rtl,soft-pcie")
    else:
        devices = ["rtl", "soft-pcie"] if rtl_available() else ["soft", "soft"]
    scenarios = select_scenarios(args.scenario, args.seed, args.count)
    report = run_comparison(devices, scenarios, args.plant, args.read_latency_ns, family=args.family)
    notes = _qemu_notes(report)
    if args.report:
        if args.report.suffix in (".html", ".htm"):
            text = render_html(report)
            if notes:
                extra = "".join(f"<li>{html.escape(line.strip())}</li>" for line in notes)
                text = text.replace("</body>", f"<h2>QEMU</h2><ul>{extra}</ul></body>")
        else:
            text = render_markdown(report)
            if notes:
                text += "\n## QEMU\n\n" + "".join(f"- {line.strip()}\n" for line in notes)
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(text)
    if args.json:
        print(json.dumps(report, sort_keys=True))
    else:
        print("\n".join([render_text(report), *notes]))
        if args.report:
            print(f"report written to {args.report}")
    return 0 if report["mismatched"] == 0 else 1
