"""Hand a PCI function to vfio-pci and give it back: the sysfs side of using a device through VFIO.

Why a tool: binding by hand (unbind, driver_override, drivers_probe) is easy to get half right, and the
mistakes are silent: a group with another member still on a host driver cannot be opened, a device on a
machine without an IOMMU has no group at all, and the original driver is forgotten.  :func:`bind` checks all
of that before touching anything, records the previous driver in a state file, and :func:`unbind` restores
it.

Every refusal is a :class:`BindError` with a one-line message (the CLI prints it and exits with status 2).
Checks run in this order, each before any change is made: PCI address syntax, device present, virtio vendor
(0x1af4, unless ``any_device``), IOMMU group present, vfio-pci available, group viable, permission to write
sysfs.

The state directory is ``/run/virtio-fpga/bind`` (``$VIRTIO_FPGA_STATE_DIR`` overrides): /run is cleared at
boot, exactly when a remembered binding stops being true.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from host.vfio import normalize_bdf

SYSFS = Path("/sys")
VIRTIO_VENDOR = 0x1AF4
#: Drivers a group member may have while the group stays viable for VFIO (drivers/vfio/group.c and
#: vfio_pci_core: vfio-pci itself, pci-stub, and pcieport on bridges).
VIABLE_DRIVERS = {"vfio-pci", "pci-stub", "pcieport", None}
PCI_CLASS_BRIDGE = 0x0604


class BindError(Exception):
    """Why a bind or unbind was refused, in one line."""


@dataclass
class GroupMember:
    bdf: str
    driver: str | None
    vendor_device: str
    is_bridge: bool

    @property
    def blocks_viability(self) -> bool:
        return not self.is_bridge and self.driver not in VIABLE_DRIVERS


@dataclass
class DeviceState:
    """What sysfs says about one function right now."""

    bdf: str
    vendor: int
    device: int
    driver: str | None
    override: str | None
    iommu_group: int | None
    others: list[GroupMember] = field(default_factory=list)  # the rest of its IOMMU group

    @property
    def is_virtio(self) -> bool:
        return self.vendor == VIRTIO_VENDOR and 0x1000 <= self.device <= 0x107F


def state_dir() -> Path:
    return Path(os.environ.get("VIRTIO_FPGA_STATE_DIR", "/run/virtio-fpga/bind"))


def _pci_dir(bdf: str) -> Path:
    return SYSFS / "bus" / "pci" / "devices" / bdf


def _read(path: Path) -> str:
    return path.read_text().strip()


def _driver_of(dev: Path) -> str | None:
    link = dev / "driver"
    return link.resolve().name if link.exists() else None


def inspect(bdf: str) -> DeviceState:
    """The device, its driver and its IOMMU group; BindError if the address is bad or absent."""
    try:
        bdf = normalize_bdf(bdf)
    except ValueError as exc:
        raise BindError(str(exc)) from None
    dev = _pci_dir(bdf)
    if not dev.exists():
        raise BindError(f"no such device: {bdf} (not in {dev.parent})")
    override_text = _read(dev / "driver_override") if (dev / "driver_override").exists() else "(null)"
    group_link = dev / "iommu_group"
    group = int(group_link.resolve().name) if group_link.exists() else None
    state = DeviceState(
        bdf=bdf,
        vendor=int(_read(dev / "vendor"), 16),
        device=int(_read(dev / "device"), 16),
        driver=_driver_of(dev),
        override=None if override_text == "(null)" else override_text,
        iommu_group=group,
    )
    if group is not None:
        for member in sorted((group_link.resolve() / "devices").iterdir()):
            if member.name == bdf:
                continue
            state.others.append(
                GroupMember(
                    bdf=member.name,
                    driver=_driver_of(member),
                    vendor_device=f"{_read(member / 'vendor')[2:]}:{_read(member / 'device')[2:]}",
                    is_bridge=int(_read(member / "class"), 16) >> 8 == PCI_CLASS_BRIDGE,
                )
            )
    return state


def _write(path: Path, text: str) -> None:
    """One sysfs write, with the two failures a user can act on turned into one-line errors."""
    try:
        with open(path, "w") as f:
            f.write(text)
    except PermissionError:
        raise BindError(f"not permitted: cannot write {path} (run as root)") from None
    except OSError as exc:
        raise BindError(f"writing {text.strip()!r} to {path} failed: {exc.strerror}") from None


def _require_writable(paths: list[Path]) -> None:
    for path in paths:
        if not os.access(path, os.W_OK):
            raise BindError(f"not permitted: cannot write {path} (run as root)")


def _ensure_vfio_pci() -> Path:
    drv = SYSFS / "bus" / "pci" / "drivers" / "vfio-pci"
    if not drv.exists():
        subprocess.run(["modprobe", "vfio-pci"], capture_output=True)
    if not drv.exists():
        raise BindError("the vfio-pci driver is not available (modprobe vfio-pci failed; CONFIG_VFIO_PCI?)")
    return drv


def _state_file(bdf: str) -> Path:
    return state_dir() / f"{bdf}.json"


def _wait_for_driver(bdf: str, want: str | None, tries: int = 50) -> str | None:
    """Probing is synchronous for PCI, but a driver's probe may defer; poll briefly for the link."""
    current = _driver_of(_pci_dir(bdf))
    for _ in range(tries):
        if current == want:
            break
        time.sleep(0.02)
        current = _driver_of(_pci_dir(bdf))
    return current


@dataclass
class BindResult:
    bdf: str
    previous_driver: str | None
    iommu_group: int
    others: list[GroupMember]
    already_bound: bool = False

    def lines(self) -> list[str]:
        how = "already bound to" if self.already_bound else "bound to"
        was = "" if self.already_bound else f" (was {self.previous_driver or 'no driver'})"
        out = [f"{self.bdf}: {how} vfio-pci{was}; IOMMU group {self.iommu_group} (/dev/vfio/{self.iommu_group})"]
        for m in self.others:
            out.append(f"  group member {m.bdf} [{m.vendor_device}] driver {m.driver or '-'}")
        return out


def bind(bdf: str, *, any_device: bool = False) -> BindResult:
    """Bind ``bdf`` to vfio-pci after every check passed; remember what it was bound to."""
    state = inspect(bdf)
    bdf = state.bdf
    if not any_device and not state.is_virtio:
        raise BindError(
            f"not a virtio device: {bdf} is {state.vendor:04x}:{state.device:04x}, "
            f"virtio is {VIRTIO_VENDOR:04x}:1000-107f (--any binds it anyway)"
        )
    if state.iommu_group is None:
        raise BindError(
            f"no IOMMU: {bdf} is in no IOMMU group (enable VT-d/AMD-Vi and boot with intel_iommu=on or amd_iommu=on)"
        )
    group = state.iommu_group
    if state.driver == "vfio-pci":
        return BindResult(bdf, state.driver, group, state.others, already_bound=True)
    blockers = [m for m in state.others if m.blocks_viability]
    if blockers:
        names = ", ".join(f"{m.bdf} ({m.driver})" for m in blockers)
        raise BindError(f"group not viable: IOMMU group {group} also holds {names}; bind those to vfio-pci first")
    dev = _pci_dir(bdf)
    writable = [dev / "driver_override", SYSFS / "bus" / "pci" / "drivers_probe"]
    if state.driver:
        writable.append(dev / "driver" / "unbind")
    _require_writable(writable)
    _ensure_vfio_pci()
    try:
        state_dir().mkdir(parents=True, exist_ok=True)
        _state_file(bdf).write_text(
            json.dumps({"bdf": bdf, "previous_driver": state.driver, "previous_override": state.override}) + "\n"
        )
    except PermissionError:
        raise BindError(f"not permitted: cannot write the state file in {state_dir()}") from None
    _write(dev / "driver_override", "vfio-pci")
    if state.driver:
        _write(dev / "driver" / "unbind", bdf)
    _write(SYSFS / "bus" / "pci" / "drivers_probe", bdf)
    now = _wait_for_driver(bdf, "vfio-pci")
    if now != "vfio-pci":
        raise BindError(f"{bdf} did not bind to vfio-pci (driver now: {now or 'none'}; see dmesg)")
    return BindResult(bdf, state.driver, group, state.others)


def unbind(bdf: str) -> str | None:
    """Release ``bdf`` from vfio-pci and give it back to the driver it had before :func:`bind`.

    Without a state file (bound by hand, or after a reboot) the kernel picks the driver, as at boot.
    Returns the driver the device ends up with.
    """
    state = inspect(bdf)
    bdf = state.bdf
    dev = _pci_dir(bdf)
    saved_path = _state_file(bdf)
    saved = json.loads(saved_path.read_text()) if saved_path.exists() else {}
    if state.driver != "vfio-pci" and not saved and state.override != "vfio-pci":
        raise BindError(f"{bdf} is not bound to vfio-pci (driver: {state.driver or 'none'})")
    writable = [dev / "driver_override", SYSFS / "bus" / "pci" / "drivers_probe"]
    if state.driver:
        writable.append(dev / "driver" / "unbind")
    _require_writable(writable)
    if state.driver == "vfio-pci":
        _write(dev / "driver" / "unbind", bdf)
    # An empty write clears the override ("\n" is what the kernel documents for this).
    _write(dev / "driver_override", saved.get("previous_override") or "\n")
    previous = saved.get("previous_driver")
    if _driver_of(dev) is None:
        target = SYSFS / "bus" / "pci" / "drivers" / previous / "bind" if previous else None
        if target is not None and target.exists():
            try:
                _write(target, bdf)
            except BindError:
                _write(SYSFS / "bus" / "pci" / "drivers_probe", bdf)
        else:
            _write(SYSFS / "bus" / "pci" / "drivers_probe", bdf)
    now = _wait_for_driver(bdf, previous) if previous else _driver_of(dev)
    if saved_path.exists():
        saved_path.unlink()
    if previous and now != previous:
        raise BindError(f"{bdf} released from vfio-pci but {previous} did not take it back (driver: {now or 'none'})")
    return now
