"""QEMU's virtio-net as a device for the comparison harness: the project's scenarios, traced over real VFIO.

Why: the comparison harness (``host.scenario`` / ``virtio-fpga compare``) diffs what the driver sees of two
devices.  The RTL and the software device were both written here; QEMU's virtio-net-pci was not, so its
traces show where this project's reading of the spec and an established implementation differ.

The scenarios run on the guest's loopback NIC (its netdev returns every frame to it), bound to vfio-pci for
the run and handed back afterwards.

Making the comparison fair happens at the source, never by dropping events from a trace:

* **provisioning**: the loopback NIC is given the project's MAC (``device_map.DEFAULT_MAC``) and MTU
  (``host_mtu=device_map.DEFAULT_MTU``, which also makes QEMU offer VIRTIO_NET_F_MTU), so the ``config``
  event and the frames (which carry the MAC) are comparable byte for byte (``vm/qemu_vm.py``);
* **features**: before the scenarios run, the guest reads the features QEMU's device offers; every feature the
  driver supports but QEMU does not offer is added to each scenario's ``disable`` list (:func:`adapt`), and
  the other device runs exactly those adapted scenarios.  Both devices then negotiate the same set, and the
  ``negotiated`` events are compared as they are: if QEMU ever offers something else, the comparison says so;
* **meaning**: a scenario that cannot say anything about QEMU's device is not run on it, with the reason
  (:func:`not_meaningful`); everything that runs is compared in full (used ids and lengths, frames,
  DEVICE_NEEDS_RESET, interrupts per checkpoint).

Host side: :func:`trace_qemu` returns ``{"device_features", "disabled", "scenarios", "traces"}``: it boots the
VM (:func:`qemu_traces`), or, inside the test guest itself, traces directly (:func:`run_in_guest`).  Guest
side: ``python vm/qemu_traces.py --guest SCENARIOS.json OUT.json``.
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

#: How a QEMU trace is labelled in comparison reports (the guest BDF goes into the trace's stats).
DEVICE_NAME = "qemu"


def in_test_guest() -> bool:
    """Whether this process runs inside the VM that ``vm/qemu_vm.py`` boots (its kernel command line says so).

    Why: inside that guest QEMU's NIC is a local PCI function, so ``compare --devices qemu`` traces it directly
    instead of booting a VM inside the VM.  The marker is the boot argument only our initramfs reads, not the
    NIC's MAC, which a real board running this project's device would share.
    """
    try:
        return "vfpga.out=" in Path("/proc/cmdline").read_text()
    except OSError:
        return False


def find_loop_nic() -> str:
    """The PCI address of the NIC whose MAC is qemu_vm.MAC_LOOP (on virtio-net or vfio-pci)."""
    from vm.qemu_vm import MAC_LOOP

    for dev in sorted(Path("/sys/bus/pci/devices").iterdir()):
        if any(p.read_text().strip() == MAC_LOOP for p in dev.glob("virtio*/net/*/address")):
            return dev.name
    raise LookupError(f"no NIC with MAC {MAC_LOOP} (is this the test guest, and is it on virtio-net?)")


def not_meaningful(scenario: dict[str, Any]) -> str | None:
    """Why a scenario says nothing about QEMU's device (None if it does).

    Only reasons that are properties of what QEMU *is*, not of how it behaves: a behavioural difference must
    stay in the comparison as a mismatch.
    """
    if "RING_PACKED" in {name.upper() for name in scenario.get("disable", [])}:
        # The scenario checks that the device refuses FEATURES_OK without RING_PACKED.  QEMU implements split
        # rings too, so it rightly accepts; the driver only drives packed rings, so nothing after that means
        # anything.  A design difference between the devices, not a behaviour to compare.
        return "tests the refusal of split rings; QEMU implements split rings and accepts them by design"
    return None


def adapt(scenario: dict[str, Any], device_features: int) -> tuple[dict[str, Any], list[str]]:
    """The scenario with every driver-supported feature QEMU does not offer added to ``disable``.

    Returns (adapted scenario, names added).  Why at the driver, per scenario: the driver then negotiates the
    same features with both devices, so every device runs the identical scenario (the RTL has no provisioning
    mask; the software device's one would give the same negotiation).  Names are added in bit order after the
    scenario's own, so the adapted scenario is deterministic.
    """
    from host.driver import DRIVER_SUPPORTED
    from virtio_fpga import spec

    missing = DRIVER_SUPPORTED & ~device_features
    have = {spec.feature_from_name(name) for name in scenario.get("disable", [])}
    added = [name for name in spec.feature_names(missing) if spec.feature_from_name(name) not in have]
    return dict(scenario, disable=[*scenario.get("disable", []), *added]), added


async def _offered_features(bdf: str) -> int:
    """What the device offers (device_feature, both halves), read over VFIO after a function reset."""
    from host.driver import VirtioPciDevice
    from host.vfio import VfioTransport

    async with VfioTransport(bdf) as transport:
        transport.reset()
        dev = VirtioPciDevice(transport)
        await dev.probe()
        await dev.reset()
        return await dev.read_device_features()


async def _drain(transport: Any, quiet: float = 0.05, limit: float = 2.0) -> int:
    """Receive and discard frames still on the loopback wire; returns how many.

    Why: the loopback is a socket QEMU stops reading while its device cannot receive, so a scenario that ends
    with frames in flight (a malformed request, a queue QEMU reset) leaves them for the next scenario, whose
    first receive buffers would get the previous scenario's frames.  A throw-away bring-up takes them until
    the wire has been quiet for ``quiet`` seconds (the harness's hygiene, like unplugging a cable; reported in
    the trace's stats, never compared).
    """
    from host.net import VirtioNetDriver

    drv = VirtioNetDriver(transport)
    await drv.start()
    drained, start = 0, transport.now()
    while transport.now() - start < limit:
        got = await drv.receive(1 << 20, timeout=quiet)
        drained += len(got)
        if not got:
            break
    await drv.stop()
    return drained


def run_in_guest(scenarios: list[dict[str, Any]], *, settle: float = 1.0) -> dict[str, Any]:
    """Bind the loopback NIC, adapt ``scenarios`` to what it offers and run them over VFIO, unbind.

    Returns ``{"device_features": hex, "disabled": [names], "scenarios": [adapted], "traces": [...]}``;
    scenarios that are :func:`not_meaningful` are expected to have been filtered out by the caller (they would
    run, and fail for reasons that say nothing about QEMU).  ``settle`` (how long a sync waits after the last
    completion) is longer than the in-process default: QEMU under TCG answers in milliseconds, and a loaded host
    can stall the guest for a few hundred; it costs time only where a device never completes (malformed input).
    """
    from host import bind
    from host.scenario import run_scenario
    from host.vfio import VfioTransport

    bdf = find_loop_nic()
    bind.bind(bdf)
    try:

        async def main() -> dict[str, Any]:
            from host.driver import DRIVER_SUPPORTED
            from virtio_fpga.spec import feature_names

            offered = await _offered_features(bdf)
            adapted = [adapt(sc, offered)[0] for sc in scenarios]
            disabled = feature_names(DRIVER_SUPPORTED & ~offered)
            traces = []
            for sc in adapted:
                # A fresh transport per scenario, as the in-process harness does (interrupt counts start at 0),
                # and a function reset first: a malformed scenario may have left the device wedged.
                async with VfioTransport(bdf) as transport:
                    transport.reset()
                    drained = await _drain(transport)
                    transport.reset()
                    trace = await run_scenario(transport, sc, settle=settle)
                trace["device"] = DEVICE_NAME
                trace["stats"].update(bdf=bdf, stale_frames_drained=drained)
                traces.append(trace)
            return {"device_features": f"{offered:#018x}", "disabled": disabled, "scenarios": adapted, "traces": traces}

        return asyncio.run(main())
    finally:
        bind.unbind(bdf)


def qemu_traces(scenarios: list[dict[str, Any]], *, timeout: float = 300.0) -> dict[str, Any]:
    """Boot the test guest and trace ``scenarios`` (``Scenario.to_dict()`` form) on QEMU's virtio-net.

    Raises ``qemu_vm.VmUnavailable`` when QEMU cannot run here, RuntimeError (one line, naming the run's
    directory) when the guest did not produce traces.
    """
    from vm import qemu_vm

    image = qemu_vm.ensure_image()
    script = (
        f"cd {shlex.quote(str(CHECKOUT))} && printf '%s' {shlex.quote(json.dumps(scenarios))} > /run/tmp/sc.json && "
        f'exec {shlex.quote(sys.executable)} vm/qemu_traces.py --guest /run/tmp/sc.json "$VFPGA_OUT/traces.json"\n'
    )
    result = qemu_vm.run(script, timeout=timeout, image=image)
    out = result.outdir / "traces.json"
    if result.rc != 0 or not out.exists():
        last = (result.output.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"guest tracing failed (rc={result.rc}): {last} (logs in {result.outdir})")
    data = json.loads(out.read_text())
    data["vm_seconds"] = round(result.seconds, 1)
    return data


def trace_qemu(scenarios: list[dict[str, Any]]) -> dict[str, Any]:
    """QEMU's traces of ``scenarios``: directly inside the test guest, else in one VM boot."""
    return run_in_guest(scenarios) if in_test_guest() else qemu_traces(scenarios)


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "--guest":
        scenarios = json.loads(Path(argv[1]).read_text())
        Path(argv[2]).write_text(json.dumps(run_in_guest(scenarios)))
        return 0
    if len(argv) <= 1 and (not argv or argv[0] != "--guest"):
        from host.scenario import find, library

        chosen = [find(argv[0])] if argv else library()
        runnable = [sc.to_dict() for sc in chosen if not not_meaningful(sc.to_dict())]
        print(json.dumps(qemu_traces(runnable), indent=1))
        return 0
    print("usage: qemu_traces.py [SCENARIO] | --guest SCENARIOS.json OUT.json", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
