"""Everything the VM test checks, run inside the guest in one boot; writes ``results.json`` for the host.

Why one script in one boot: booting under TCG costs seconds, so the guest does all checks in order and
reports each one separately (the host-side test asserts them one by one, so a failure names its check).

Order matters and is the real order of use: bind's error paths first (while every device is still on its
boot-time driver), then bind both NICs, the transport alone (config space, capabilities, common config over
the BAR by mmap and by pread, DMA map/unmap, MSI-X, reset), the driver over the pair (features, traffic
with checked bytes, interrupts, reset), and last unbind, which must give each NIC back to virtio-pci.

Usage (in the guest): ``python vm/guest_checks.py OUTDIR``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

CHECKOUT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(CHECKOUT))

from host import bind as hbind  # noqa: E402
from host.vfio import VfioError, VfioTransport  # noqa: E402
from virtio_fpga import cli, spec  # noqa: E402
from vm.qemu_vm import MAC_A, MAC_B, MAC_LOOP  # noqa: E402

PCI = Path("/sys/bus/pci/devices")
#: Scenarios compared between the software device and QEMU in the test boot: traffic, jumbo frames, EVENT_IDX
#: interrupt suppression, two malformed requests (one QEMU flags, one it does not) and one not meaningful for
#: QEMU (skipped with its reason).  `virtio-fpga compare --devices soft,qemu` runs the whole library.
COMPARE_SCENARIOS = ("basic", "sizes", "event-idx", "malformed-chain_loop", "malformed-bad_addr", "refuse-split-ring")
results: dict[str, Any] = {}
roles_cache: dict[str, str] = {}


def record(name: str, ok: bool, **detail: Any) -> None:
    results[name] = {"ok": bool(ok), **detail}
    print(f"[{'PASS' if ok else 'FAIL'}] {name}: {json.dumps(detail, default=str)[:600]}", flush=True)


def check(name: str):
    """Run a check function; an exception is a failed check with its traceback, never a lost report."""

    def wrap(fn):
        start = time.monotonic()
        try:
            fn(name)
        except Exception as exc:  # noqa: BLE001 - the report must carry every failure
            record(name, False, exception=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
        results.setdefault(name, {"ok": False, "error": "check recorded nothing"})
        results[name]["seconds"] = round(time.monotonic() - start, 2)
        return fn

    return wrap


def driver_of(bdf: str) -> str | None:
    link = PCI / bdf / "driver"
    return link.resolve().name if link.exists() else None


def sysfs(bdf: str, name: str) -> str:
    return (PCI / bdf / name).read_text().strip()


def cli_run(*argv: str, as_nobody: bool = False) -> tuple[int, str, str]:
    """The real CLI entry point in-process (fast: no interpreter start over 9p), or forked as uid 65534."""
    if as_nobody:
        # Import every subcommand module while still root: the checkout may be a directory only root can read
        # (CI clones into a mktemp -d folder, mode 0700), and the point is uid 65534 meeting sysfs, not Python.
        cli.build_parser()
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: drop root, run the command, report through the pipe
            code = 1
            err = io.StringIO()
            try:
                os.setgroups([])
                os.setresgid(65534, 65534, 65534)
                os.setresuid(65534, 65534, 65534)
                with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                    code = cli.main(list(argv))
            except BaseException:  # an unexpected crash must show in the check's record, not vanish
                err.write(traceback.format_exc())
            finally:
                os.write(write_fd, err.getvalue().encode())
                os._exit(code)
        os.close(write_fd)
        with os.fdopen(read_fd) as f:
            err_text = f.read()
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status), "", err_text
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(argv))
    return code, out.getvalue(), err.getvalue()


def find_devices() -> dict[str, str]:
    """The fixture devices by role, found from sysfs rather than assumed addresses."""
    roles: dict[str, str] = {}
    for dev in sorted(PCI.iterdir()):
        vendor, device = sysfs(dev.name, "vendor"), sysfs(dev.name, "device")
        if vendor != "0x1af4":
            continue
        if device == "0x1041":
            macs = [p.read_text().strip() for p in dev.glob("virtio*/net/*/address")]
            if MAC_A in macs:
                roles["nic_a"] = dev.name
            elif MAC_B in macs:
                roles["nic_b"] = dev.name
            elif MAC_LOOP in macs:
                roles["nic_loop"] = dev.name
        elif device == "0x1044":
            if not (dev / "iommu_group").exists():
                roles["no_iommu"] = dev.name
            elif len(list((dev / "iommu_group" / "devices").iterdir())) > 1:
                roles.setdefault("shared_group", dev.name)
    roles["not_virtio"] = "0000:00:00.0"  # the q35 host bridge, 8086:29c0
    roles["absent"] = "0000:7f:1f.7"
    return roles


def main(outdir: Path) -> int:
    t0 = time.monotonic()
    roles = find_devices()
    roles_cache.update(roles)
    record("devices_found", {"nic_a", "nic_b", "nic_loop", "no_iommu", "shared_group"} <= roles.keys(), roles=roles)
    a, b = roles.get("nic_a", ""), roles.get("nic_b", "")
    boot_drivers = {bdf: driver_of(bdf) for bdf in (a, b) if bdf}

    # ---- bind: the refusals, each one line and exit status 2, nothing changed -----------------------------
    expectations = {
        "absent": "no such device",
        "not_virtio": "not a virtio device",
        "no_iommu": "no IOMMU",
        "shared_group": "group not viable",
    }
    for role, phrase in expectations.items():

        @check(f"bind_error_{role.replace('absent', 'no_such_device')}")
        def _(name: str, role: str = role, phrase: str = phrase) -> None:
            bdf = roles[role]
            before = driver_of(bdf) if (PCI / bdf).exists() else None
            code, out, err = cli_run("bind", bdf)
            lines = err.strip().splitlines()
            after = driver_of(bdf) if (PCI / bdf).exists() else None
            ok = code == 2 and len(lines) == 1 and phrase in lines[0] and before == after
            record(name, ok, bdf=bdf, code=code, stderr=err.strip(), driver_before=before, driver_after=after)

    @check("bind_error_not_permitted")
    def _(name: str) -> None:
        code, _, err = cli_run("bind", a, as_nobody=True)
        lines = err.strip().splitlines()
        ok = code == 2 and len(lines) == 1 and "not permitted" in lines[0] and driver_of(a) == boot_drivers[a]
        record(name, ok, code=code, stderr=err.strip(), driver=driver_of(a))

    @check("unbind_error_not_bound")
    def _(name: str) -> None:
        code, _, err = cli_run("unbind", a)
        lines = err.strip().splitlines()
        record(name, code == 2 and len(lines) == 1 and "not bound to vfio-pci" in lines[0], code=code, stderr=err)

    # ---- bind the pair ----------------------------------------------------------------------------------------
    @check("bind_pair")
    def _(name: str) -> None:
        outputs = {}
        for bdf in (a, b):
            code, out, err = cli_run("bind", bdf)
            outputs[bdf] = {"code": code, "stdout": out.strip(), "stderr": err.strip()}
        state = {bdf: (hbind.state_dir() / f"{bdf}.json").exists() for bdf in (a, b)}
        drivers = {bdf: driver_of(bdf) for bdf in (a, b)}
        ok = all(o["code"] == 0 for o in outputs.values()) and set(drivers.values()) == {"vfio-pci"}
        groups = {bdf: hbind.inspect(bdf).iommu_group for bdf in (a, b)}
        ok = ok and all(state.values()) and all(Path(f"/dev/vfio/{g}").exists() for g in groups.values())
        record(name, ok, outputs=outputs, drivers=drivers, state_files=state, boot_drivers=boot_drivers)

    # ---- the transport alone ----------------------------------------------------------------------------------
    @check("transport")
    def _(name: str) -> None:
        ok, detail = asyncio.run(transport_checks(a))
        record(name, ok, **detail)

    # ---- the driver over the pair -----------------------------------------------------------------------------
    @check("pair")
    def _(name: str) -> None:
        try:
            from host.vfio_pair import run_pair
        except ImportError as exc:
            record(name, False, error=f"host driver not available: {exc}")
            return
        report = run_pair(a, b, frames=64)
        results["pair_report"] = report
        record(name, bool(report.get("ok")), errors=report.get("error_messages"))

    @check("pair_pread")
    def _(name: str) -> None:
        """The same scenario with every register access a pread/pwrite of the device fd (no BAR mmap)."""
        from host.vfio_pair import run_pair

        report = run_pair(a, b, frames=8, reverse_frames=2, after_reset_frames=2, use_mmap=False)
        stats = report.get("a", {}).get("vfio", {}).get("stats", {})
        ok = bool(report.get("ok")) and stats.get("mmio_mmap") == 0 and stats.get("mmio_pio", 0) > 0
        record(name, ok, errors=report.get("error_messages"), stats=stats, bytes=report.get("bytes"))

    # ---- `virtio-fpga demo --device vfio:BDF` on the NIC whose frames come back to it --------------------------
    @check("demo_loopback")
    def _(name: str) -> None:
        loop = roles["nic_loop"]
        code, out, err = cli_run("bind", loop)
        if code != 0:
            record(name, False, bind_stderr=err)
            return
        try:
            code, out, err = cli_run("demo", "--device", f"vfio:{loop}", "--json", "--frames", "32")
        finally:
            unbind_code, _, unbind_err = cli_run("unbind", loop)
        report = json.loads(out) if out.strip().startswith("{") else {}
        ok = code == 0 and report.get("ok") is True and unbind_code == 0
        record(name, ok, code=code, report=report, stderr=err[-2000:], unbind=unbind_code, unbind_stderr=unbind_err)

    # ---- QEMU as a third device: `virtio-fpga compare --devices soft,qemu`, the real CLI, in this guest ----------
    @check("compare_qemu")
    def _(name: str) -> None:
        argv = ["compare", "--devices", "soft,qemu", "--json"]
        for scenario in COMPARE_SCENARIOS:
            argv += ["--scenario", scenario]
        code, out, err = cli_run(*argv)
        report = json.loads(out) if out.strip().startswith("{") else {}
        results["compare_report"] = report
        compared = [r["scenario"] for r in report.get("results", [])]
        skipped = [s["scenario"] for s in report.get("skipped", [])]
        # Verdicts on the comparison itself are the host test's; here: it ran, on every scenario, and the NIC
        # went back to its driver.
        ok = code in (0, 1) and sorted(compared + skipped) == sorted(COMPARE_SCENARIOS)
        ok = ok and driver_of(roles["nic_loop"]) == "virtio-pci"
        record(name, ok, code=code, stderr=err[-2000:], compared=compared, skipped=skipped)

    # ---- unbind restores the boot-time driver -------------------------------------------------------------------
    @check("unbind_restores")
    def _(name: str) -> None:
        outputs = {}
        for bdf in (a, b):
            code, out, err = cli_run("unbind", bdf)
            outputs[bdf] = {"code": code, "stdout": out.strip(), "stderr": err.strip()}
        drivers = {bdf: driver_of(bdf) for bdf in (a, b)}
        netdevs = {bdf: sorted(p.name for p in (PCI / bdf).glob("virtio*/net/*")) for bdf in (a, b)}
        state = {bdf: (hbind.state_dir() / f"{bdf}.json").exists() for bdf in (a, b)}
        ok = all(o["code"] == 0 for o in outputs.values()) and drivers == boot_drivers and not any(state.values())
        ok = ok and all(netdevs.values())
        record(name, ok, outputs=outputs, drivers=drivers, boot_drivers=boot_drivers, netdevs=netdevs)

    results["guest_seconds"] = round(time.monotonic() - t0, 2)
    results["kernel"] = os.uname().release
    (outdir / "results.json").write_text(json.dumps(results, indent=1, default=str))
    failed = [k for k, v in results.items() if isinstance(v, dict) and v.get("ok") is False]
    print(f"guest checks: {len(failed)} failed {failed} in {results['guest_seconds']} s", flush=True)
    return 0  # the verdicts are in results.json; a non-zero status means this script itself crashed


async def transport_checks(bdf: str) -> tuple[bool, dict[str, Any]]:
    """Config space, capability walk, common config via the BAR (mmap and pread agree), DMA, MSI-X, reset."""
    d: dict[str, Any] = {}
    problems: list[str] = []
    # Backend selection: Debian's kernels (6.12 backports, even 7.x in sid) build without CONFIG_IOMMUFD, so
    # "auto" must pick the container and an explicit "iommufd" must say why it cannot.
    d["iommufd_available"] = Path("/dev/iommu").exists()
    try:
        VfioTransport(bdf, backend="iommufd").close_sync()
        d["iommufd_open"] = "opened"
    except VfioError as exc:
        d["iommufd_open"] = str(exc)
    if not d["iommufd_available"] and "CONFIG_IOMMUFD" not in d["iommufd_open"]:
        problems.append(f"backend=iommufd without /dev/iommu: {d['iommufd_open']}")
    # A device still on its kernel driver: a one-line reason naming the fix, not an ioctl errno.
    try:
        VfioTransport(roles_cache["nic_loop"]).close_sync()
        d["unbound_open"] = "opened"
    except VfioError as exc:
        d["unbound_open"] = str(exc)
    if "virtio-fpga bind" not in d["unbound_open"]:
        problems.append(f"opening a device not on vfio-pci: {d['unbound_open']}")
    async with VfioTransport(bdf) as t:
        d["backend"] = t.backend
        vendor, device = await t.config_read(0, 2), await t.config_read(2, 2)
        d["id"] = f"{vendor:04x}:{device:04x}"
        if (vendor, device) != (0x1AF4, 0x1041):
            problems.append(f"config space id {d['id']}")
        d["command"] = await t.config_read(4, 2)
        if not d["command"] & 0x4:
            problems.append("bus mastering not enabled")
        caps: list[dict[str, int]] = []
        pos = await t.config_read(spec.PCI_CAPABILITY_LIST, 1) & ~3
        while pos and len(caps) < 48:
            cap_id = await t.config_read(pos, 1)
            entry = {"pos": pos, "id": cap_id}
            if cap_id == spec.PCI_CAP_ID_VNDR:
                entry.update(
                    cfg_type=await t.config_read(pos + 3, 1),
                    bar=await t.config_read(pos + 4, 1),
                    offset=await t.config_read(pos + 8, 4),
                    length=await t.config_read(pos + 12, 4),
                )
            elif cap_id == spec.PCI_CAP_ID_MSIX:
                entry["table_size"] = (await t.config_read(pos + 2, 2) & 0x7FF) + 1
            caps.append(entry)
            pos = await t.config_read(pos + 1, 1) & ~3
        d["caps"] = caps
        by_type = {c["cfg_type"]: c for c in caps if "cfg_type" in c}
        missing = {1, 2, 3, 4, 5} - by_type.keys()
        if missing:
            problems.append(f"virtio capabilities missing: {sorted(missing)}")
        msix = [c for c in caps if c["id"] == spec.PCI_CAP_ID_MSIX]
        common = by_type.get(1)
        if common:
            bar, base = common["bar"], common["offset"]
            d["common_bar"] = bar
            d["bar_mmapped"] = t.bar_is_mmapped(bar)
            features = 0
            for sel in (0, 1):
                await t.bar_write(bar, base + 0x00, 4, sel)
                features |= await t.bar_read(bar, base + 0x04, 4) << (32 * sel)
            d["device_features"] = f"{features:#018x}"
            d["device_feature_names"] = spec.feature_names(features)
            for bit in (spec.Feature.VERSION_1, spec.Feature.ACCESS_PLATFORM, spec.Feature.RING_PACKED):
                if not features >> bit & 1:
                    problems.append(f"feature {bit.name} not offered")
            d["num_queues"] = await t.bar_read(bar, base + 0x12, 2)
            if d["num_queues"] < 2:
                problems.append(f"num_queues {d['num_queues']}")
            # The same registers through pread/pwrite must read the same (the two access paths agree).
            region = t.regions[bar]
            via_pread = t._pread(region, base + 0x12, 2)
            if via_pread != d["num_queues"]:
                problems.append(f"num_queues via pread {via_pread} != via mmap {d['num_queues']}")
            await t.bar_write(bar, base + 0x16, 2, 0)
            d["queue0_max_size"] = await t.bar_read(bar, base + 0x18, 2)
            # Reset via device_status: write 0, read back 0 (spec 2.4 / 4.1.4.3.2).
            await t.bar_write(bar, base + 0x14, 1, 0)
            d["status_after_write0"] = await t.bar_read(bar, base + 0x14, 1)
            await t.bar_write(bar, base + 0x14, 1, 1)  # ACKNOWLEDGE
            d["status_ack"] = await t.bar_read(bar, base + 0x14, 1)
            if d["status_after_write0"] != 0 or d["status_ack"] != 1:
                problems.append(f"device_status {d['status_after_write0']} / {d['status_ack']}")
            t.reset()
            d["status_after_vfio_reset"] = await t.bar_read(bar, base + 0x14, 1)
            if d["status_after_vfio_reset"] != 0:
                problems.append(f"device_status after VFIO_DEVICE_RESET {d['status_after_vfio_reset']}")
            if not (await t.config_read(4, 2)) & 0x4:
                problems.append("bus mastering lost after reset")
        # DMA: allocations share an arena (one map), a big one gets its own, freeing it unmaps it.
        small = [t.alloc_dma(1500, align=64) for _ in range(8)]
        maps_after_small = t.stats["dma_maps"]
        big = t.alloc_dma(4 << 20)
        big.write(big.size - 4, b"\xde\xad\xbe\xef")
        d["dma_big_tail"] = big.read(big.size - 4, 4).hex()
        maps_after_big = t.stats["dma_maps"]
        t.free_dma(big)
        d["dma"] = {
            "maps_after_small": maps_after_small,
            "maps_after_big": maps_after_big,
            "unmaps_after_free": t.stats["dma_unmaps"],
            "hugepages": t.dma_summary()["hugepages"],
            "iovas": [f"{buf.iova:#x}" for buf in small[:2]],
            "zeroed": all(not any(buf.read(0, buf.size)) for buf in small),
        }
        if not (maps_after_small == 1 and maps_after_big == 2 and t.stats["dma_unmaps"] == 1 and d["dma"]["zeroed"]):
            problems.append(f"DMA accounting {d['dma']}")
        for buf in small:
            t.free_dma(buf)
        granted = await t.enable_msix(3)
        d["msix_granted"] = granted
        if msix and granted != min(3, msix[0]["table_size"]):
            problems.append(f"MSI-X granted {granted}")
        control = await t.config_read(msix[0]["pos"] + 2, 2) if msix else 0
        d["msix_enabled_in_config"] = bool(control & 0x8000)
        if not control & 0x8000:
            problems.append("MSI-X enable bit not set after VFIO_DEVICE_SET_IRQS")
        fired = await t.wait_irq(0, 0.01)
        d["spurious_irq"] = fired
        fds_before = [state.fd for state in t._irqs.values()]
        again = await t.enable_msix(3)
        d["msix_reenable_idempotent"] = again == granted and [state.fd for state in t._irqs.values()] == fds_before
        if not d["msix_reenable_idempotent"]:
            problems.append("a second enable_msix rewired the vectors")
        t.disable_msix()
        d["info"] = t.info()
    # Without hugepages (or with none free) DMA memory is page-aligned anonymous memory, mapped the same way.
    async with VfioTransport(bdf, hugepages=False) as t:
        buf = t.alloc_dma(3000)
        buf.write(0, b"\x5a" * 3000)
        d["anon_dma"] = {**t.dma_summary(), "iova": f"{buf.iova:#x}", "maps": t.stats["dma_maps"]}
        if d["anon_dma"]["hugepages"] or d["anon_dma"]["maps"] != 1 or buf.read(2999, 1) != b"\x5a":
            problems.append(f"anonymous DMA memory {d['anon_dma']}")
        t.free_dma(buf)
    d["problems"] = problems
    return not problems, d


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
