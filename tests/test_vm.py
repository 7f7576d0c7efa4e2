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
    "qemu_traces",
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


#: What the project's driver reports when QEMU leaves VIRTQ_DESC_F_WRITE out of a used descriptor (it then
#: reads the used length as reserved, i.e. 0; see host.vfio_pair.UsedWriteFlagQuirk).


def test_demo_command_over_vfio(guest: dict[str, Any]) -> None:
    """``virtio-fpga demo --device vfio:BDF --json`` on QEMU's NIC whose netdev loops frames back.

    Known and expected to fail in exactly one way until the driver tolerates QEMU's used descriptors without
    VIRTQ_DESC_F_WRITE; any other outcome (including passing) is reported as it is.
    """
    entry = guest["demo_loopback"]
    report = entry.get("report") or {}
    assert report, f"demo printed no JSON: {json.dumps(entry, default=str)[:3000]}"
    assert report["device"].startswith("vfio:") and report["frames_sent"] > 0
    assert entry["unbind"] == 0, entry.get("unbind_stderr")
    assert entry["ok"], json.dumps(entry, indent=1, default=str)[:6000]
