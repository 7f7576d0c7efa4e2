"""QEMU's virtio-net as a device for the comparison harness: the project's scenarios, traced over real VFIO.

Why: the comparison harness (``host.scenario`` / ``virtio-fpga compare``) diffs what the driver sees of two
devices.  The RTL and the software device were both written here; QEMU's virtio-net-pci was not, so its
traces show where this project's reading of the spec and an established implementation differ (for
example, QEMU leaves VIRTQ_DESC_F_WRITE out of used descriptors, which the driver reads as a zero length).

The scenarios run on the guest's loopback NIC (its netdev returns every frame to it), bound to vfio-pci for
the run and handed back afterwards.  Traces are recorded raw, without the pair test's quirk shim: an
observation must show the device as it is.

Host side: :func:`qemu_traces` boots the VM and returns one trace dict per scenario (``host.scenario``'s
format, device name ``vfio:BDF``).  Guest side: ``python vm/qemu_traces.py --guest SCENARIOS.json OUT.json``;
``vm/guest_checks.py`` calls :func:`run_in_guest` in the test boot as well.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import sys
from pathlib import Path
from typing import Any

CHECKOUT = Path(__file__).resolve().parent.parent
if str(CHECKOUT) not in sys.path:
    sys.path.insert(0, str(CHECKOUT))


def find_loop_nic() -> str:
    """The PCI address of the NIC whose MAC is qemu_vm.MAC_LOOP (on virtio-net or vfio-pci)."""
    from vm.qemu_vm import MAC_LOOP

    for dev in sorted(Path("/sys/bus/pci/devices").iterdir()):
        if any(p.read_text().strip() == MAC_LOOP for p in dev.glob("virtio*/net/*/address")):
            return dev.name
    raise LookupError(f"no NIC with MAC {MAC_LOOP} (is this the test guest, and is it on virtio-net?)")


#: QEMU's virtio-net MTU without host_mtu: frames beyond 1514 bytes (plus FCS room) are not its business.
QEMU_MAX_FRAME = 1514


def not_meaningful(scenario: dict[str, Any]) -> str | None:
    """Why a scenario says nothing about QEMU's device (None if it does): jumbo frames exceed its MTU."""
    sizes = [op[1] for op in scenario["ops"] if op[0] == "send"]
    if sizes and max(sizes) > QEMU_MAX_FRAME:
        return f"sends {max(sizes)}-byte frames; QEMU's virtio-net carries at most {QEMU_MAX_FRAME}"
    return None


def run_in_guest(scenarios: list[dict[str, Any]], *, settle: float = 0.2) -> list[dict[str, Any]]:
    """Bind the loopback NIC, run ``scenarios`` over VFIO, unbind; returns the traces.

    ``settle`` is longer than the in-process default: QEMU under TCG answers in milliseconds, not microseconds.
    """
    from host import bind
    from host.scenario import run_scenario
    from host.vfio import VfioTransport

    bdf = find_loop_nic()
    bind.bind(bdf)
    try:

        async def main() -> list[dict[str, Any]]:
            traces = []
            for sc in scenarios:
                reason = not_meaningful(sc)
                if reason:
                    traces.append({"device": f"vfio:{bdf}", "scenario": sc["name"], "events": [], "skipped": reason})
                    continue
                # A fresh transport per scenario, as the in-process harness does (interrupt counts start at 0),
                # and a function reset first: a malformed scenario may have left the device wedged.
                async with VfioTransport(bdf) as transport:
                    transport.reset()
                    traces.append(await run_scenario(transport, sc, settle=settle))
            return traces

        return asyncio.run(main())
    finally:
        bind.unbind(bdf)


def qemu_traces(scenarios: list[dict[str, Any]], *, timeout: float = 300.0) -> list[dict[str, Any]]:
    """Boot the test guest and trace ``scenarios`` (``Scenario.to_dict()`` form) on QEMU's virtio-net."""
    from vm import qemu_vm

    image = qemu_vm.ensure_image()
    runs = qemu_vm.cache_dir() / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    script = (
        f"cd {shlex.quote(str(CHECKOUT))} && printf '%s' {shlex.quote(json.dumps(scenarios))} > /run/tmp/sc.json && "
        f'exec {shlex.quote(sys.executable)} vm/qemu_traces.py --guest /run/tmp/sc.json "$VFPGA_OUT/traces.json"\n'
    )
    result = qemu_vm.run(script, timeout=timeout, image=image)
    out = result.outdir / "traces.json"
    if result.rc != 0 or not out.exists():
        raise RuntimeError(f"guest tracing failed (rc={result.rc}):\n{result.output[-3000:]}")
    return json.loads(out.read_text())


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "--guest":
        scenarios = json.loads(Path(argv[1]).read_text())
        Path(argv[2]).write_text(json.dumps(run_in_guest(scenarios)))
        return 0
    if len(argv) <= 1 and (not argv or argv[0] != "--guest"):
        from host.scenario import find, library

        chosen = [find(argv[0])] if argv else library()
        print(json.dumps(qemu_traces([sc.to_dict() for sc in chosen]), indent=1))
        return 0
    print("usage: qemu_traces.py [SCENARIO] | --guest SCENARIOS.json OUT.json", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
