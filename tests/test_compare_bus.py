"""The software device on the simulated PCIe bus behaves exactly as in-process: the bus path is faithful.

These run a real Icarus simulation with cocotbext-pcie's RootComplex (the RTL endpoint with its PCIe test
core sits on the bus too; only the software function is driven), so they carry the ``rtl`` marker.
"""

from __future__ import annotations

import asyncio

import pytest

from devices.softnet import Fault, SoftVirtioNet
from host.compare import compare_runs
from host.inproc import InProcessTransport
from host.scenario import find, library, run_scenario

pytestmark = pytest.mark.rtl


def in_process(scenarios, faults=frozenset()):
    async def go():
        return [await run_scenario(InProcessTransport(SoftVirtioNet(faults=faults)), sc) for sc in scenarios]

    return asyncio.run(go())


def test_library_on_the_bus_matches_in_process() -> None:
    from sim.compare_bus import run_on_bus

    scenarios = library()
    bus = run_on_bus(["soft-pcie"], [sc.to_dict() for sc in scenarios], core="test")["soft-pcie"]
    report = compare_runs(in_process(scenarios), bus)
    assert report["scenarios"] == len(scenarios)
    assert report["mismatched"] == 0, [r.get("first_difference") for r in report["results"] if not r["match"]]
    # the bus device really did DMA through the RootComplex
    assert all(t["stats"]["dma"]["read_requests"] > 0 for t in bus if t["scenario"] != "refuse-split-ring")


def test_planted_bug_on_the_bus_is_found_at_the_first_rx_completion() -> None:
    from sim.compare_bus import run_on_bus

    sc = [find("basic")]
    bus = run_on_bus(["soft-pcie"], [s.to_dict() for s in sc], faults=[Fault.USED_LEN_OFF_BY_ONE.value], core="test")
    report = compare_runs(in_process(sc), bus["soft-pcie"])
    assert report["mismatched"] == 1
    diff = report["results"][0]["first_difference"]
    first_rx_used = next(i for i, e in enumerate(bus["soft-pcie"][0]["events"]) if e[0] == "used" and e[1] == 0)
    assert diff["index"] == first_rx_used


def test_rtl_matches_the_software_device_on_the_whole_library(capsys) -> None:
    """Issue 4's claim: the gateware and the software device are indistinguishable to the driver."""
    import json

    from virtio_fpga.cli import main

    rc = main(["compare", "--devices", "rtl,soft-pcie", "--json", "--seed", "100", "--count", "3"])
    random_report = json.loads(capsys.readouterr().out)
    assert random_report["scenarios"] == 3
    rc_lib = main(["compare", "--devices", "rtl,soft-pcie", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["scenarios"] == len(library())
    mismatches = [r for r in report["results"] + random_report["results"] if not r["match"]]
    assert not mismatches, mismatches[0]["first_difference"]
    assert rc == 0 and rc_lib == 0


@pytest.mark.parametrize(
    "fault,scenario,first_kind",
    [
        ("used-len-off-by-one", "basic", "used"),
        ("ignore-event-suppression", "suppression", "checkpoint"),
        ("flip-rx-byte", "sizes", "rx"),
    ],
)
def test_planted_bug_against_the_rtl_is_found_at_the_first_differing_event(capsys, fault, scenario, first_kind):
    import json

    from virtio_fpga.cli import main

    rc = main(["compare", "--devices", "rtl,soft-pcie", "--scenario", scenario, "--plant", fault, "--json"])
    report = json.loads(capsys.readouterr().out)
    assert rc == 1 and report["mismatched"] == 1
    diff = report["results"][0]["first_difference"]
    assert diff["rtl"][0] == first_kind
    # everything before the reported event is identical on both sides
    context = diff["context"]
    assert (
        context["rtl"][: diff["index"] - diff["context_start"]]
        == context["soft-pcie*"][: diff["index"] - diff["context_start"]]
    )
