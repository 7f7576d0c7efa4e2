"""Linux's own virtio_pci and virtio_net against our device, over vfio-user, in a QEMU 11.1 guest (``make linux-test``).

Two boots in the default run, each asserted check by check (``vm/linux_guest.py`` records them):

* two software devices joined back to back: binding, ``lspci -vv``, sysfs features, MAC/MTU, ping both ways
  between two network namespaces, a 1 MiB TCP transfer with its SHA-256, ethtool, counters, link down/up,
  unbind/rebind, rmmod/modprobe, and the project's own driver over VFIO in the guest on both devices; and the
  faults: device 0's server answers Linux's probe slowly, and device 1's server is killed in the middle of a
  last transfer (the transfer fails, nothing hangs, QEMU reports the lost server);
* the software device joined to the RTL (cocotb + Icarus behind ``virtio-fpga serve --device rtl``): binding,
  capabilities, features, ping both ways and a 64 KiB TCP transfer (the full list and 1 MiB are the slow run).

Skipped only where QEMU cannot run at all (not x86_64 Linux, no apt, not root); if the trixie root, the
kernel or the guest cannot be set up on a machine where it should work, the tests fail.
"""

from __future__ import annotations

import json
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from vm import linux_vm  # noqa: E402
from vm.linux_vm import DeviceSpec  # noqa: E402

pytestmark = [pytest.mark.vm, pytest.mark.linux]

SOFT_CHECKS = [
    "bound",
    "lspci",
    "features",
    "config",
    "ping",
    "tcp",
    "ethtool",
    "counters",
    "link_down_up",
    "unbind_rebind",
    "module_reload",
    "intx",
    "vfio_bind",
    "vfio_transport",
    "vfio_pair",
    "vfio_unbind",
]
RTL_QUICK = ["bound", "lspci", "features", "config", "ping", "tcp", "ethtool"]


@pytest.fixture(scope="module")
def image() -> linux_vm.LinuxImage:
    try:
        return linux_vm.ensure_image()
    except linux_vm.VmUnavailable as exc:
        pytest.skip(f"QEMU cannot run here: {exc}")


def boot(image, devices, args: str, *, timeout: float, during=None) -> dict[str, Any]:
    python = shlex.quote(sys.executable)
    script = f'cd {shlex.quote(str(ROOT))} && exec {python} vm/linux_guest.py "$VFPGA_OUT" {args}\n'
    run = linux_vm.run(script, devices, timeout=timeout, image=image, during=during)
    results_file = run.outdir / "results.json"
    assert results_file.exists(), (
        f"the guest wrote no results (rc={run.rc}, {run.seconds:.1f} s, files in {run.outdir})\n--- output\n"
        f"{run.output[-3000:]}\n--- console\n{run.console[-3000:]}\n--- qemu\n{run.qemu[-2000:]}"
    )
    results = json.loads(results_file.read_text())
    results["_run"] = {
        "rc": run.rc,
        "seconds": round(run.seconds, 1),
        "outdir": str(run.outdir),
        "output": run.output,
        "qemu": run.qemu,
        "servers": run.server_logs,
        "server_exit": run.server_exit,
    }
    return results


def pair(first: str, second: str, **kw) -> list[DeviceSpec]:
    return [
        DeviceSpec(first, "02:fa:11:00:00:01", peer=1, **kw),
        DeviceSpec(second, "02:fa:11:00:00:02", peer=0),
    ]


def assert_check(guest: dict[str, Any], name: str) -> None:
    assert name in guest, f"check {name} did not run; guest output:\n{guest['_run']['output'][-3000:]}"
    entry = guest[name]
    assert entry["ok"], json.dumps(entry, indent=1, default=str)[:6000]


# ---- two software devices ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def soft_guest(image) -> dict[str, Any]:
    """One boot for the software devices and the faults: device 0 answers its first 200 BAR accesses 20 ms
    late (the driver's probe), and the last check kills device 1's server in the middle of a transfer."""
    checks = ",".join([*SOFT_CHECKS, "server_exit"])
    devices = pair("soft", "soft", slow_ms=20, slow_count=200)
    args = f"--vfio --tcp-bytes 1048576 --checks {checks}"
    return boot(image, devices, args, timeout=300, during=kill_peer_mid_traffic)


@pytest.mark.parametrize("name", SOFT_CHECKS)
def test_soft(soft_guest: dict[str, Any], name: str) -> None:
    assert_check(soft_guest, name)


def qemu_aborted(guest: dict[str, Any]) -> bool:
    """QEMU 11.1.3 sometimes aborts when a vfio-user server dies with a request in flight (its own bug:
    ``util/error.c:62: error_setv: Assertion `*errp == NULL' failed``); the guest then never finishes."""
    run = guest["_run"]
    return run["rc"] is None and "error_setv: Assertion" in run["qemu"]


def test_soft_details(soft_guest: dict[str, Any]) -> None:
    """What the checks measured, beyond pass/fail: both ends, the bytes, the features by name."""
    assert soft_guest["_run"]["rc"] == 0 or qemu_aborted(soft_guest), soft_guest["_run"]["qemu"][-2000:]
    assert len(soft_guest["devices"]) == 2
    tcp = soft_guest["tcp"]
    assert tcp["bytes"] >= 1 << 20 and tcp["sha256"] == tcp["sha256_received"]
    for dev in soft_guest["features"]["devices"].values():
        for name in ("RING_PACKED", "NOTIFICATION_DATA", "EVENT_IDX", "RING_RESET", "MTU", "MAC"):
            assert name in dev["negotiated"], dev
    assert soft_guest["vfio_pair_report"]["a_to_b"]["frames_intact"] == 64


# ---- the software device joined to the RTL ----------------------------------------------------------------
@pytest.fixture(scope="module")
def rtl_guest(image) -> dict[str, Any]:
    return boot(image, pair("soft", "rtl"), f"--checks {','.join(RTL_QUICK)} --tcp-bytes 65536", timeout=420)


@pytest.mark.parametrize("name", RTL_QUICK)
def test_rtl(rtl_guest: dict[str, Any], name: str) -> None:
    assert_check(rtl_guest, name)


def test_rtl_is_the_gateware(rtl_guest: dict[str, Any]) -> None:
    """The second device is the RTL: its config space comes from the hard-IP model (PM, MSI-X, PCIe caps)."""
    rtl_bdf = rtl_guest["devices"][1]
    text = rtl_guest["lspci"]["devices"][rtl_bdf]["text"]
    assert "Power Management" in text and "Express" in text, text
    assert rtl_guest["config"]["devices"][rtl_bdf]["mac"] == "02:fa:11:c0:ff:ee"
    assert any("simulated cycles" in line for line in rtl_guest["_run"]["servers"]["dev1.sock"].splitlines())


@pytest.mark.slow
def test_rtl_full() -> None:
    """Every soft-device check (1 MiB TCP, unbind/rebind, module reload, VFIO in the guest) on the RTL."""
    image = linux_vm.ensure_image()
    guest = boot(image, pair("soft", "rtl"), "--vfio --tcp-bytes 1048576 --tcp-timeout 900", timeout=2400)
    failed = {n: guest[n] for n in SOFT_CHECKS if not guest.get(n, {}).get("ok")}
    assert not failed, json.dumps(failed, indent=1, default=str)[:8000]


# ---- faults ----------------------------------------------------------------------------------------------
def kill_peer_mid_traffic(servers, outdir: Path) -> None:
    """Wait until the guest says its transfer started, let it run a second, then SIGKILL the peer's server."""
    marker = outdir / "traffic_started"
    deadline = time.monotonic() + 600
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    if marker.exists():
        time.sleep(1.0)
        servers[1].proc.send_signal(signal.SIGKILL)


def test_slow_server_during_probe(soft_guest: dict[str, Any]) -> None:
    """Device 0 answered its first 200 BAR accesses (Linux's probe) 20 ms late: it still bound, negotiated and
    passed traffic like its peer."""
    for name in ("bound", "features", "config", "ping"):
        assert_check(soft_guest, name)
    log = soft_guest["_run"]["servers"]["dev0.sock"]
    assert "the first 200 BAR accesses answered 20 ms late" in log, log[-2000:]
    assert "BAR access 1 answered 20 ms late" in log and "BAR access 200 answered" in log, log[-2000:]


def test_server_exit_mid_traffic(soft_guest: dict[str, Any]) -> None:
    """The peer's server is killed during a transfer: nothing hangs.  Either the guest sees the transfer fail
    in bounded time and runs to its end while QEMU logs the lost connection, or QEMU itself aborts (a QEMU
    11.1.3 bug on this path, see :func:`qemu_aborted`); both end long before the boot's timeout."""
    run = soft_guest["_run"]
    assert run["server_exit"][1] == -signal.SIGKILL, "the peer's server was killed"
    assert run["seconds"] < 300 - 30, "the boot ended on its own, not by its timeout"
    if qemu_aborted(soft_guest):
        assert "vfio_unbind" in soft_guest, "QEMU aborted only in the last check, after the kill"
        assert (Path(run["outdir"]) / "traffic_started").exists(), "the kill came in the middle of the transfer"
        return
    assert_check(soft_guest, "server_exit")
    assert run["rc"] == 0, "the guest ran to its end and powered off"
    assert soft_guest["server_exit"]["seconds_to_fail"] < 120
    assert soft_guest["server_exit"]["started_before_the_kill"]
    assert "failed to read header" in run["qemu"] or "Broken pipe" in run["qemu"], run["qemu"][-2000:]
