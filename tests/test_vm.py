"""Real VFIO against QEMU's virtio-net-pci in a guest: bind, transport, driver, traffic, interrupts, reset, unbind.

One boot runs every check (``vm/guest_checks.py``); each test below asserts one of them, so a failure names
what broke while the VM cost is paid once.  The guest runs this checkout's code with this interpreter (the
host root is shared read-only), so what is tested is exactly what is checked out.

Skipped only when QEMU truly cannot run here (not x86_64 Linux, or QEMU / the guest kernel can neither be
found nor installed); the skip says which.  The first run installs QEMU 10 and downloads the kernel (see
``vm/qemu_vm.py``); later runs use the cache.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from vm import qemu_vm  # noqa: E402

pytestmark = pytest.mark.vm

CHECKS = [
    "devices_found",
    "bind_error_no_such_device",
    "bind_error_not_virtio",
    "bind_error_no_iommu",
    "bind_error_shared_group",
    "bind_error_not_permitted",
    "unbind_error_not_bound",
    "bind_pair",
    "transport",
    "pair",
    "pair_pread",
    "compare_qemu",
    "unbind_restores",
]


@pytest.fixture(scope="module")
def image() -> qemu_vm.VmImage:
    try:
        return qemu_vm.ensure_image()
    except qemu_vm.VmUnavailable as exc:
        pytest.skip(f"QEMU cannot run here: {exc}")


@pytest.fixture(scope="module")
def guest(image: qemu_vm.VmImage) -> dict[str, Any]:
    """Boot once, run every check, return results.json (with the run's logs attached for failures)."""
    python = shlex.quote(sys.executable)
    script = f'cd {shlex.quote(str(ROOT))} && exec {python} vm/guest_checks.py "$VFPGA_OUT"\n'
    run = qemu_vm.run(script, timeout=150, image=image)
    results_file = run.outdir / "results.json"
    assert results_file.exists(), (
        f"the guest wrote no results (rc={run.rc}, {run.seconds:.1f} s)\n--- output\n{run.output[-3000:]}\n"
        f"--- console\n{run.console[-3000:]}"
    )
    results = json.loads(results_file.read_text())
    results["_run"] = {"rc": run.rc, "seconds": run.seconds, "outdir": str(run.outdir), "output": run.output}
    return results


@pytest.mark.parametrize("name", CHECKS)
def test_guest_check(guest: dict[str, Any], name: str) -> None:
    assert name in guest, f"check {name} did not run; guest output:\n{guest['_run']['output'][-3000:]}"
    entry = guest[name]
    assert entry["ok"], json.dumps(entry, indent=1, default=str)[:6000]


def test_guest_exit_status(guest: dict[str, Any]) -> None:
    run = guest["_run"]
    assert run["rc"] == 0, f"guest checks crashed (exit {run['rc']}); output:\n{run['output'][-3000:]}"


def test_traffic_is_checked_byte_for_byte(guest: dict[str, Any]) -> None:
    """A to B, B to A, and after a VFIO reset: every frame arrives intact, and interrupts carried it."""
    report = guest["pair_report"]
    for leg in ("a_to_b", "b_to_a", "after_reset"):
        data = report[leg]
        assert data["frames_sent"] > 0
        assert data["frames_received"] == data["frames_sent"] == data["frames_intact"], (leg, data)
        assert data["tx_completed"], (leg, data)
        assert data["rx_interrupts"] > 0 and data["tx_interrupts"] > 0, (leg, data)
    assert report["a_to_b"]["frames_sent"] == 64
    assert report["bytes"] == sum(report[leg]["bytes"] for leg in ("a_to_b", "b_to_a", "after_reset"))
    assert report["status_after_reset"] == [0, 0]


def test_feature_negotiation(guest: dict[str, Any], image: qemu_vm.VmImage) -> None:
    """Packed ring over the vIOMMU; NOTIFICATION_DATA exactly when this QEMU can offer it."""
    for side in ("a", "b"):
        dev = guest["pair_report"][side]
        assert {"VERSION_1", "ACCESS_PLATFORM", "RING_PACKED"} <= set(dev["negotiated"]), dev["negotiated"]
        assert dev["pci_id"] == "1af4:1041"
        assert dev["msix_vectors"] == 3
        assert dev["notification_data_offered"] == image.notification_data, dev["device_feature_names"]
        assert dev["notification_data_negotiated"] == image.notification_data
        assert dev["vfio"]["backend"] in ("container", "iommufd")
    assert guest["pair_report"]["a"]["mac"] == qemu_vm.MAC_A
    assert guest["pair_report"]["b"]["mac"] == qemu_vm.MAC_B


def test_transport_dma_and_interrupt_details(guest: dict[str, Any]) -> None:
    t = guest["transport"]
    assert t["id"] == "1af4:1041"
    assert t["bar_mmapped"], "QEMU's BAR is page-aligned: VFIO allows mmap and the transport must use it"
    assert t["dma"]["maps_after_small"] == 1 and t["dma"]["unmaps_after_free"] == 1
    assert t["dma"]["hugepages"], "the guest reserves hugepages: DMA arenas must come from them"
    assert t["msix_granted"] == 3 and t["msix_enabled_in_config"]
    assert t["status_after_vfio_reset"] == 0
    assert t["backend"] == ("iommufd" if t["iommufd_available"] else "container")
    assert "virtio-fpga bind" in t["unbound_open"]


def test_demo_command_over_vfio(guest: dict[str, Any]) -> None:
    """``virtio-fpga demo --device vfio:BDF --json`` on QEMU's NIC whose netdev loops frames back."""
    entry = guest["demo_loopback"]
    report = entry.get("report") or {}
    assert report, f"demo printed no JSON: {json.dumps(entry, default=str)[:3000]}"
    assert report["device"].startswith("vfio:") and report["frames_sent"] > 0
    assert entry["unbind"] == 0, entry.get("unbind_stderr")
    assert entry["ok"], json.dumps(entry, indent=1, default=str)[:6000]


# ---- QEMU as a third device in `virtio-fpga compare` (vm/guest_checks.py COMPARE_SCENARIOS) ----------------------
def compare_report(guest: dict[str, Any]) -> dict[str, Any]:
    report = guest.get("compare_report") or {}
    assert report, f"compare printed no JSON: {json.dumps(guest.get('compare_qemu'), default=str)[:3000]}"
    return report


def result_of(report: dict[str, Any], scenario: str) -> dict[str, Any]:
    by_name = {r["scenario"]: r for r in report["results"]}
    assert scenario in by_name, f"{scenario} was not compared: {sorted(by_name)}, skipped {report.get('skipped')}"
    return by_name[scenario]


def test_compare_soft_qemu_meaningful_scenarios_match(guest: dict[str, Any], image: qemu_vm.VmImage) -> None:
    """Traffic (jumbo frames included) and a chain longer than the ring: QEMU and the software device agree.

    Fair at the source: QEMU's NIC carries the project's MAC and MTU, and every feature it does not offer is
    disabled on both devices, so the traces are compared whole (negotiated features, config, used ids and
    lengths, frame digests, DEVICE_NEEDS_RESET and interrupts per checkpoint).
    """
    report = compare_report(guest)
    assert report["devices"] == ["soft", "qemu"]
    expected_disabled = ["IN_ORDER", "ORDER_PLATFORM"] + ([] if image.notification_data else ["NOTIFICATION_DATA"])
    assert report["qemu"]["disabled"] == expected_disabled, report["qemu"]
    for name in ("basic", "sizes", "malformed-chain_loop"):
        r = result_of(report, name)
        assert r["match"], json.dumps(r.get("first_difference"), indent=1)[:4000]
        assert r["events"][0] == r["events"][1] > 10
    sizes = result_of(report, "sizes")
    assert sizes["stats"]["qemu"]["interrupts"]["1"] > 0, "the jumbo frames came back on RX with interrupts"
    assert guest["compare_qemu"]["code"] == 1, "mismatches exist (below): compare must exit 1"


def test_compare_soft_qemu_bad_address_is_a_finding(guest: dict[str, Any]) -> None:
    """A descriptor with an IOVA the IOMMU does not map: the software device flags DEVICE_NEEDS_RESET and sends
    the configuration interrupt; QEMU reports nothing (the guest sees a DMAR fault) and completes the buffer.
    The comparison must show it at the checkpoint right after the malformed request, not hide it."""
    r = result_of(compare_report(guest), "malformed-bad_addr")
    assert not r["match"]
    diff = r["first_difference"]
    soft, qemu = diff["soft"], diff["qemu"]
    assert soft[0] == qemu[0] == "checkpoint", diff
    assert "DEVICE_NEEDS_RESET" in soft[1] and soft[2] == [0], diff
    assert "DEVICE_NEEDS_RESET" not in qemu[1] and 0 not in qemu[2], diff
    before = diff["context"]["soft"][: diff["index"] - diff["context_start"]]
    assert before[-1][0] == "checkpoint" and before == diff["context"]["qemu"][: len(before)], "same up to there"


def test_compare_soft_qemu_event_idx_first_notification(guest: dict[str, Any]) -> None:
    """EVENT_IDX on the TX queue asking for an interrupt at the third completion: QEMU also interrupts at the
    first completion after the queue is set up (virtio_packed_should_notify: ``!signalled_used_valid``), the
    software device does not.  A real, documented difference in interrupts per checkpoint."""
    r = result_of(compare_report(guest), "event-idx")
    assert not r["match"]
    diff = r["first_difference"]
    assert diff["soft"][0] == diff["qemu"][0] == "checkpoint", diff
    assert diff["soft"][2] == [] and diff["qemu"][2] == [2], diff
    first_checkpoint = next(i for i, e in enumerate(diff["context"]["soft"]) if e[0] == "checkpoint")
    assert diff["index"] == diff["context_start"] + first_checkpoint, "at the first checkpoint, nothing before"


def test_compare_soft_qemu_skips_with_reasons(guest: dict[str, Any]) -> None:
    report = compare_report(guest)
    skipped = {s["scenario"]: s["reason"] for s in report["skipped"]}
    assert set(skipped) == {"refuse-split-ring"}, skipped
    assert "split rings" in skipped["refuse-split-ring"]
    assert report["scenarios"] == 5 and report["matched"] == 3 and report["mismatched"] == 2, {
        r["scenario"]: r["match"] for r in report["results"]
    }
