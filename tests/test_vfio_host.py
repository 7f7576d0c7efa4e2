"""The parts of the VFIO transport and the bind tool that need no IOMMU: run on any host, in milliseconds.

Everything that needs VFIO itself runs in the VM test (tests/test_vm.py); these cover the logic around it
against this machine's real sysfs, so a regression shows up without booting anything.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from host import bind
from host.vfio import IovaAllocator, VfioError, VfioTransport, normalize_bdf, open_transport, parse_spec

ROOT = Path(__file__).resolve().parent.parent
#: The CLI as the installed ``virtio-fpga`` script runs it.
CLI = [sys.executable, "-c", "import sys; from virtio_fpga.cli import main; sys.exit(main())"]
ABSENT = "0000:7f:1f.7"  # a bus number no test machine populates


def test_normalize_bdf() -> None:
    assert normalize_bdf("01:00.0") == "0000:01:00.0"
    assert normalize_bdf("0000:AB:1f.7") == "0000:ab:1f.7"
    for bad in ("", "1:0.0", "0000:01:00.8", "0000:01:00", "vfio:01:00.0"):
        with pytest.raises(ValueError):
            normalize_bdf(bad)


def test_parse_spec() -> None:
    assert parse_spec("vfio:01:00.0") == ("0000:01:00.0", {})
    assert parse_spec("vfio:0000:01:00.0,backend=container,mmap=off") == (
        "0000:01:00.0",
        {"backend": "container", "mmap": "off"},
    )
    with pytest.raises(ValueError, match="unknown VFIO options"):
        parse_spec("vfio:01:00.0,speed=fast")
    with pytest.raises(ValueError, match="not a VFIO device spec"):
        parse_spec("soft")
    with pytest.raises(ValueError, match="expected on or off"):
        open_transport("vfio:01:00.0,mmap=maybe")


def test_iova_allocator_alignment_holes_and_coalescing() -> None:
    # Two ranges with the x86 MSI window carved out, as intel-iommu reports them.
    alloc = IovaAllocator([(0, 0xFEDF_FFFF), (0xFEF0_0000, (1 << 39) - 1)])
    a = alloc.alloc(0x1000, 0x1000)
    assert a == 0x10_0000  # nothing below the floor: a device DMAing near 0 is a bug worth a fault
    b = alloc.alloc(0x20_0000, 0x20_0000)
    assert b % 0x20_0000 == 0 and b >= a + 0x1000
    big = alloc.alloc(0x1_0000_0000, 0x1000)  # does not fit below the MSI window: must land above it
    assert big >= 0xFEF0_0000
    for iova, size in ((a, 0x1000), (b, 0x20_0000), (big, 0x1_0000_0000)):
        alloc.release(iova, size)
    assert alloc.free == [(0x10_0000, 0xFEE0_0000), (0xFEF0_0000, 1 << 39)]  # fully coalesced again
    with pytest.raises(VfioError, match="exhausted"):
        alloc.alloc(1 << 40, 0x1000)


def test_iova_allocator_refuses_empty_space() -> None:
    with pytest.raises(VfioError, match="no usable IOVA range"):
        IovaAllocator([(0, 0xFFFF)])


def test_transport_reports_absent_device() -> None:
    with pytest.raises(VfioError, match=f"no PCI device {ABSENT}"):
        VfioTransport(ABSENT)


def test_bind_refuses_absent_device_via_cli() -> None:
    """The real CLI, the real sysfs: a one-line error and exit status 2, before anything is touched."""
    result = subprocess.run([*CLI, "bind", ABSENT], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"virtio-fpga bind: error: no such device: {ABSENT} (not in /sys/bus/pci/devices)"
    ]
    result = subprocess.run([*CLI, "unbind", "nonsense"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "not a PCI address" in result.stderr


def test_bind_checks_host_devices_without_changing_them() -> None:
    """inspect() on every PCI function of this machine: reads only, and agrees with sysfs."""
    devices = sorted(Path("/sys/bus/pci/devices").iterdir()) if Path("/sys/bus/pci/devices").is_dir() else []
    if not devices:
        pytest.skip("this machine has no PCI bus in sysfs")
    for dev in devices:
        state = bind.inspect(dev.name)
        assert state.bdf == dev.name
        assert state.vendor == int((dev / "vendor").read_text(), 16)
        assert state.iommu_group == (
            int((dev / "iommu_group").resolve().name) if (dev / "iommu_group").exists() else None
        )
