"""``virtio-fpga demo``: the driver against a device, with an lspci-like view and checked loopback traffic."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from virtio_fpga.cli import CliError


def _positive(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="bring up a device, show it, loop traffic through it")
    p.add_argument(
        "--device",
        default="soft",
        help="soft (in-process software device), rtl (the gateware in simulation), vfio:BDF (real function)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the report")
    p.add_argument("--frames", type=_positive, default=64)
    p.add_argument("--min-size", type=_positive, default=60)
    p.add_argument("--max-size", type=_positive, default=1514)
    p.add_argument("--queue-size", type=_positive, default=64)
    p.add_argument("--rx-chain", type=_positive, default=1, help="descriptors per receive buffer")
    p.add_argument("--tx-chain", type=_positive, default=1, help="descriptors per transmit buffer")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--disable", default="", help="comma-separated feature names the driver must not accept")
    p.add_argument("--waves", action="store_true", help="rtl: dump waveforms")
    add_read_latency_argument(p)
    add_family_argument(p)
    p.set_defaults(func=run)


def _latency(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of nanoseconds: {text!r}") from None
    if not 0 <= value <= 1e6:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1000000 ns: {text!r}")
    return value


def add_read_latency_argument(p: argparse.ArgumentParser) -> None:
    """``--read-latency-ns``: host memory read latency of the simulated root complex (sim.testbench.ReadLatency)."""
    p.add_argument(
        "--read-latency-ns",
        type=_latency,
        default=None,
        metavar="NS",
        help="simulated PCIe bus only: delay every host memory read's completions by NS ns (reads stay pipelined; "
        "default 0, the model's own ~40 ns; also VIRTIO_FPGA_READ_LATENCY_NS)",
    )


#: PCIe hard-IP families the RTL is built for (see sim.runner.FAMILIES; the CLI must not import sim/ early).
FAMILIES = ("usp", "ptile")


def add_family_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--family",
        default="usp",
        choices=FAMILIES,
        help="rtl: the PCIe hard IP behind the gateware: usp (Xilinx UltraScale+) or ptile (Intel P-tile, VirtIO)",
    )


def demo_args(args: argparse.Namespace) -> dict[str, Any]:
    from host.demo import parse_feature_list

    if args.min_size > args.max_size:
        raise CliError(f"--min-size {args.min_size} is larger than --max-size {args.max_size}")
    try:
        parse_feature_list(args.disable)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    return {
        "frames": args.frames,
        "min_size": args.min_size,
        "max_size": args.max_size,
        "queue_size": args.queue_size,
        "rx_chain": args.rx_chain,
        "tx_chain": args.tx_chain,
        "seed": args.seed,
        "disable": args.disable,
    }


def run_on_device(
    device: str,
    kwargs: dict[str, Any],
    *,
    waves: bool = False,
    read_latency_ns: float | None = None,
    family: str = "usp",
) -> dict[str, Any]:
    """Run host.demo.run_demo on the named device; shared by demo, bench and compare.

    ``read_latency_ns`` is the simulated root complex's host read latency (rtl only; None: the environment's);
    ``family`` chooses the hard IP the RTL is built for and simulated behind (only for ``device="rtl"``).
    """
    if read_latency_ns and device != "rtl":
        raise CliError("--read-latency-ns applies to the simulated PCIe bus: use --device rtl")
    if device == "soft":
        from host.demo import run_demo
        from host.inproc import InProcessTransport

        async def main() -> dict[str, Any]:
            transport = InProcessTransport()
            try:
                return await run_demo(transport, **kwargs)
            finally:
                await transport.close()

        return asyncio.run(main())
    if device == "rtl":
        try:
            from sim.runner import run_scenario
        except ImportError as exc:
            raise CliError(f"the RTL simulation is not available: {exc}") from None
        return run_scenario("host.demo:run_demo", kwargs, waves=waves, read_latency_ns=read_latency_ns, family=family)
    if device.startswith("vfio:"):
        try:
            from host.vfio import open_transport
        except ImportError as exc:
            raise CliError(f"VFIO support is not available: {exc}") from None
        from host.demo import run_demo
        from host.transport import TransportError

        async def main_vfio() -> dict[str, Any]:
            try:
                transport = open_transport(device)
            except (TransportError, OSError, ValueError) as exc:
                raise CliError(f"{device}: {exc}") from None
            try:
                return await run_demo(transport, **kwargs)
            finally:
                await transport.close()

        return asyncio.run(main_vfio())
    raise CliError(f"unknown device {device!r}: use soft, rtl or vfio:BDF")


def run(args: argparse.Namespace) -> int:
    from host.demo import format_report

    if args.family != "usp" and args.device != "rtl":
        raise CliError(f"--family {args.family} applies to --device rtl only")
    kwargs = demo_args(args)
    if args.device == "rtl":  # minutes on a cold cache: show the steps on stderr
        from virtio_fpga.progress import Steps

        steps = Steps("demo", 2)
        try:
            from sim.runner import build
        except ImportError as exc:
            raise CliError(f"the RTL simulation is not available: {exc}") from None
        with steps.step(f"building the gateware for {args.family} (256 bits; cached after the first time)"):
            build(256, waves=args.waves, family=args.family)
        with steps.step(f"simulating {args.frames} frames through the RTL behind the {args.family} hard-IP model"):
            result = run_on_device(
                args.device, kwargs, waves=args.waves, read_latency_ns=args.read_latency_ns, family=args.family
            )
    else:
        result = run_on_device(
            args.device, kwargs, waves=args.waves, read_latency_ns=args.read_latency_ns, family=args.family
        )
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        print(format_report(result))
    return 0 if result.get("ok") else 1
