"""QEMU as a comparison device, the parts that need no VM: scenario adaptation, skips, and the CLI's errors.

The comparison itself (QEMU's real traces against the software device) is asserted in ``tests/test_vm.py``,
from the one VM boot that test pays for.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from host.driver import DRIVER_SUPPORTED  # noqa: E402
from host.scenario import find, library  # noqa: E402
from virtio_fpga.cli import main as cli_main  # noqa: E402
from virtio_fpga.spec import feature_names  # noqa: E402
from vm import qemu_traces  # noqa: E402

#: device_feature of QEMU 10.0.2's virtio-net-pci as vm/qemu_vm.py configures the loopback NIC (read in the guest).
QEMU_10_0_2_OFFER = 0x0000010730BF802C


def test_adapt_disables_exactly_what_qemu_does_not_offer() -> None:
    sc = find("event-idx").to_dict()
    adapted, added = qemu_traces.adapt(sc, QEMU_10_0_2_OFFER)
    assert sc["disable"] == ["IN_ORDER"], "the library scenario itself is untouched"
    assert added == ["ORDER_PLATFORM", "NOTIFICATION_DATA"], "IN_ORDER was disabled already"
    assert adapted["disable"] == ["IN_ORDER", "ORDER_PLATFORM", "NOTIFICATION_DATA"]
    assert qemu_traces.adapt(adapted, QEMU_10_0_2_OFFER) == (adapted, []), "adapting twice changes nothing"
    # what remains for the driver to negotiate is what QEMU offers, and it includes MTU (host_mtu is set)
    remaining = DRIVER_SUPPORTED & QEMU_10_0_2_OFFER
    assert {"MTU", "MAC", "STATUS", "EVENT_IDX", "RING_RESET", "RING_PACKED"} <= set(feature_names(remaining))
    # a device offering everything the driver supports needs no adaptation
    assert qemu_traces.adapt(sc, DRIVER_SUPPORTED) == (sc, [])


def test_only_the_split_ring_refusal_is_not_meaningful_for_qemu() -> None:
    reasons = {sc.name: qemu_traces.not_meaningful(sc.to_dict()) for sc in library()}
    assert {name for name, why in reasons.items() if why} == {"refuse-split-ring"}
    assert "split rings" in reasons["refuse-split-ring"]


def test_cli_all_skipped_reports_reasons_without_a_vm(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    rc = cli_main(["compare", "--devices", "soft,qemu", "--scenario", "refuse-split-ring", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert rc == 0 and report["scenarios"] == 0 and report["devices"] == ["soft", "qemu"]
    assert report["skipped"] == [
        {"scenario": "refuse-split-ring", "reason": qemu_traces.not_meaningful(find("refuse-split-ring").to_dict())}
    ]
    assert "vm_seconds" not in report["qemu"], "nothing to run: no VM was booted"


def test_cli_qemu_unavailable_is_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("VIRTIO_FPGA_VM_CACHE", "/proc/virtio-fpga-no-cache-here")
    rc = cli_main(["compare", "--devices", "soft,qemu", "--scenario", "basic"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("virtio-fpga compare: error: qemu"), err


def test_cli_refuses_a_fault_planted_in_qemu(capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli_main(["compare", "--devices", "soft,qemu", "--plant", "flip-rx-byte", "--scenario", "basic"])
    assert rc == 2 and "put soft or soft-pcie second" in capsys.readouterr().err
