"""Linux's own drivers against our device, checked inside the guest; writes ``results.json`` for the host.

Runs in the guest booted by ``vm/linux_vm.py`` with two of our devices (software device or RTL, each served
over vfio-user) whose Ethernet ports are joined back to back.  Order is the order of real use: the boot-time
binding (``virtio_pci`` + ``virtio_net``), what ``lspci`` and sysfs show, traffic through the kernel's stack
between two network namespaces, driver tools (ethtool, counters, link down/up), unbind/rebind, a module
reload, then the project's own driver over VFIO in this guest, and last the kernel driver again.

Each check is recorded separately (the host asserts them one by one); a check that raises is recorded as
failed with its traceback.  Usage (in the guest): ``python vm/linux_guest.py OUTDIR [--tcp-bytes N] [--vfio]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

CHECKOUT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(CHECKOUT))

from virtio_fpga import device_map as dm  # noqa: E402
from virtio_fpga import spec  # noqa: E402

PCI = Path("/sys/bus/pci/devices")
VIRTIO_NET_DRIVER = Path("/sys/bus/virtio/drivers/virtio_net")
MODULES_ROOT = "/run/modules"  # where the initramfs put the kernel's modules for kmod (vm/qemu_vm.py INIT_SCRIPT)
#: What Linux 6.12's virtio core and virtio_net accept of our offer (drivers/virtio/virtio_ring.c
#: vring_transport_features, drivers/net/virtio_net.c features[]): everything but IN_ORDER, which the ring code
#: of 6.12 does not implement.
LINUX_612_UNKNOWN = 1 << spec.Feature.IN_ORDER
ADDRS = ("10.77.0.1", "10.77.0.2")
results: dict[str, Any] = {}


OUTDIR: Path | None = None


def record(name: str, ok: bool, **detail: Any) -> None:
    results[name] = {"ok": bool(ok), **detail}
    print(f"[{'PASS' if ok else 'FAIL'}] {name}: {json.dumps(detail, default=str)[:400]}", flush=True)
    save()


def save() -> None:
    """results.json after every check: if the VM dies (the fault checks provoke that), what ran is kept."""
    if OUTDIR is not None:
        tmp = OUTDIR / "results.json.tmp"
        tmp.write_text(json.dumps(results, indent=1, default=str))
        tmp.rename(OUTDIR / "results.json")


SELECTED: set[str] | None = None  # None: every check
TCP_TIMEOUT = 120.0


def check(name: str):
    def wrap(fn):
        if SELECTED is not None and name not in SELECTED:
            return fn
        start = time.monotonic()
        try:
            fn(name)
        except Exception as exc:  # noqa: BLE001 - every failure must land in the report
            record(name, False, exception=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
        results.setdefault(name, {"ok": False, "error": "check recorded nothing"})
        results[name]["seconds"] = round(time.monotonic() - start, 2)
        return fn

    return wrap


def sh(cmd: str, timeout: float = 60.0, check_rc: bool = True) -> str:
    proc = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=timeout)
    if check_rc and proc.returncode != 0:
        raise RuntimeError(f"`{cmd}` exited {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-800:]}")
    return proc.stdout


def ours() -> list[str]:
    """Our devices by BDF (vendor 1af4, modern net 1041, subsystem 0001 as device_map says)."""
    found = []
    for dev in sorted(PCI.iterdir()):
        if (dev / "vendor").read_text().strip() != f"{dm.VENDOR_ID:#06x}":
            continue
        if (dev / "device").read_text().strip() != f"{dm.DEVICE_ID:#06x}":
            continue
        if (dev / "subsystem_device").read_text().strip() == f"{dm.SUBSYSTEM_ID:#06x}":
            found.append(dev.name)
    return found


def driver_of(path: Path) -> str | None:
    link = path / "driver"
    return link.resolve().name if link.exists() else None


def virtio_dev(bdf: str) -> Path | None:
    devs = sorted((PCI / bdf).glob("virtio*"))
    return devs[0] if devs else None


def netdev(bdf: str, wait: float = 10.0) -> str | None:
    """The interface virtio_net made for the device (waits a little: probing is asynchronous)."""
    deadline = time.monotonic() + wait
    while True:
        vdev = virtio_dev(bdf)
        names = sorted(p.name for p in vdev.glob("net/*")) if vdev else []
        if names or time.monotonic() > deadline:
            return names[0] if names else None
        time.sleep(0.1)


def into_namespaces(devs: list[str]) -> list[str]:
    """Move each device's interface into its own namespace (ns0, ns1) with an address; returns the names."""
    names = []
    for i, bdf in enumerate(devs):
        ns = f"ns{i}"
        name = netdev(bdf)
        if name is None:
            raise RuntimeError(f"{bdf} has no network interface")
        sh(f"ip netns add {ns} 2>/dev/null || true")
        sh(f"ip link set {name} netns {ns}")
        sh(f"ip -n {ns} link set lo up")
        sh(f"ip -n {ns} addr replace {ADDRS[i]}/24 dev {name}")
        sh(f"ip -n {ns} link set {name} up")
        names.append(name)
    return names


def back_from_namespaces() -> None:
    for ns in ("ns0", "ns1"):
        sh(f"ip netns del {ns} 2>/dev/null || true", check_rc=False)


def ping(src: int, dst: int, count: int = 3, deadline: int = 30) -> dict[str, Any]:
    """``count`` echo requests; waits for all replies up to ``deadline`` s (the RTL's round trip is seconds)."""
    cmd = f"ip netns exec ns{src} ping -c {count} -i 0.2 -w {deadline} {ADDRS[dst]}"
    out = sh(cmd, timeout=deadline + 30, check_rc=False)
    sent = received = 0
    for line in out.splitlines():
        if "packets transmitted" in line:
            sent = int(line.split()[0])
            received = int(line.split(",")[1].split()[0])
    return {"count": count, "sent": sent, "received": received, "summary": out.strip().splitlines()[-2:]}


def ping_both(count: int = 3) -> tuple[bool, dict[str, Any]]:
    ab, ba = ping(0, 1, count), ping(1, 0, count)
    return ab["received"] >= count and ba["received"] >= count, {"a_to_b": ab, "b_to_a": ba}


def link_stats(ns: str, name: str) -> dict[str, int]:
    data = json.loads(sh(f"ip -n {ns} -s -j link show dev {name}"))[0]
    stats = data.get("stats64") or data.get("stats")
    return {
        "rx_packets": stats["rx"]["packets"],
        "rx_bytes": stats["rx"]["bytes"],
        "tx_packets": stats["tx"]["packets"],
        "tx_bytes": stats["tx"]["bytes"],
        "rx_errors": stats["rx"]["errors"],
        "tx_errors": stats["tx"]["errors"],
        "mtu": data["mtu"],
    }


TCP_SERVER = r"""
import hashlib, socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 5001)); s.listen(1); open(sys.argv[2] + ".ready", "w").close()
c, _ = s.accept(); h = hashlib.sha256(); n = 0
while True:
    b = c.recv(1 << 16)
    if not b: break
    h.update(b); n += len(b)
c.sendall(h.hexdigest().encode()); c.close()
open(sys.argv[2], "w").write(f"{n} {h.hexdigest()}")
"""

TCP_CLIENT = r"""
import hashlib, os, socket, sys, time
n = int(sys.argv[2]); data = os.urandom(n); t = time.monotonic()
c = socket.create_connection((sys.argv[1], 5001), timeout=float(sys.argv[3]))
for i in range(0, n, 1 << 16):
    c.sendall(data[i : i + (1 << 16)])
    if len(sys.argv) > 4 and i >= 1 << 20 and not os.path.exists(sys.argv[4]):
        open(sys.argv[4], "w").write(f"{i}\n")  # a MiB is through: tell the host the transfer is under way
c.shutdown(socket.SHUT_WR)
echo = c.recv(64).decode(); dt = time.monotonic() - t
print(n, hashlib.sha256(data).hexdigest(), echo, f"{dt:.3f}")
"""


def tcp_transfer(
    nbytes: int, outdir: Path, timeout: float = 120.0, marker: Path | None = None
) -> tuple[bool, dict[str, Any]]:
    """nbytes of random data from ns0 to ns1 over TCP; sha256 on both ends, and the receiver's echo of it."""
    tmp = Path("/run/tmp")
    (tmp / "tcp_server.py").write_text(TCP_SERVER)
    (tmp / "tcp_client.py").write_text(TCP_CLIENT)
    result = tmp / "tcp_result"
    for p in (result, Path(f"{result}.ready")):
        p.unlink(missing_ok=True)
    py = shlex.quote(sys.executable)
    server = subprocess.Popen(
        f"ip netns exec ns1 {py} -S {tmp}/tcp_server.py {ADDRS[1]} {result}", shell=True, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 30
    while not Path(f"{result}.ready").exists() and time.monotonic() < deadline and server.poll() is None:
        time.sleep(0.05)
    try:
        client = f"{py} -S {tmp}/tcp_client.py {ADDRS[1]} {nbytes} {timeout} {marker or ''}"
        out = sh(f"ip netns exec ns0 {client}", timeout=timeout + 60)
    finally:
        if server.poll() is None:
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    sent_n, sent_hash, echoed, seconds = out.split()
    got_n, got_hash = result.read_text().split() if result.exists() else ("0", "")
    ok = int(got_n) == nbytes == int(sent_n) and sent_hash == got_hash == echoed
    detail = {"bytes": nbytes, "received": int(got_n), "sha256": sent_hash, "sha256_received": got_hash}
    return ok, {**detail, "seconds": float(seconds), "mbit_s": round(nbytes * 8 / float(seconds) / 1e6, 2)}


def features_of(vdev: Path) -> int:
    bits = (vdev / "features").read_text().strip()
    return sum(1 << i for i, c in enumerate(bits) if c == "1")


def main(outdir: Path, tcp_bytes: int, vfio: bool) -> int:
    t0 = time.monotonic()
    devs = ours()
    results["devices"] = devs

    @check("bound")
    def _(name: str) -> None:
        state = {}
        for bdf in devs:
            vdev = virtio_dev(bdf)
            state[bdf] = {
                "pci_driver": driver_of(PCI / bdf),
                "virtio_driver": driver_of(vdev) if vdev else None,
                "netdev": netdev(bdf),
            }
        ok = len(devs) >= 1 and all(
            s["pci_driver"] == "virtio-pci" and s["virtio_driver"] == "virtio_net" and s["netdev"]
            for s in state.values()
        )
        record(name, ok, state=state)

    @check("lspci")
    def _(name: str) -> None:
        per = {}
        for bdf in devs:
            text = sh(f"lspci -vv -s {bdf}")
            vendor_caps = [ln.strip() for ln in text.splitlines() if "Vendor Specific Information: VirtIO" in ln]
            msix = [ln.strip() for ln in text.splitlines() if "MSI-X:" in ln]
            per[bdf] = {"virtio_caps": vendor_caps, "msix": msix, "text": text}
        ok = all(
            len(v["virtio_caps"]) == 5
            and any(f"Enable+ Count={dm.NUM_MSIX_VECTORS}" in m for m in v["msix"])
            and all(kind in " ".join(v["virtio_caps"]) for kind in ("CommonCfg", "Notify", "ISR", "DeviceCfg"))
            for v in per.values()
        )
        record(name, ok and bool(per), devices=per)

    @check("features")
    def _(name: str) -> None:
        expected = dm.DEVICE_FEATURES & ~LINUX_612_UNKNOWN
        per = {}
        for bdf in devs:
            got = features_of(virtio_dev(bdf))
            per[bdf] = {"negotiated": spec.feature_names(got), "missing": spec.feature_names(expected & ~got)}
            per[bdf]["unexpected"] = spec.feature_names(got & ~expected)
        ok = all(features_of(virtio_dev(bdf)) == expected for bdf in devs)
        record(name, ok and bool(devs), expected=spec.feature_names(expected), devices=per)

    @check("config")
    def _(name: str) -> None:
        per = {}
        for bdf in devs:
            nd = netdev(bdf)
            per[bdf] = {
                "mac": Path(f"/sys/class/net/{nd}/address").read_text().strip(),
                "mtu": int(Path(f"/sys/class/net/{nd}/mtu").read_text()),
                "carrier_status": Path(f"/sys/class/net/{nd}/operstate").read_text().strip(),
            }
        macs = [v["mac"] for v in per.values()]
        ok = len(set(macs)) == len(macs) and all(v["mtu"] == dm.DEFAULT_MTU for v in per.values())
        record(name, ok, devices=per)

    if len(devs) < 2:
        record("pair_present", False, devices=devs)
        return finish(outdir, t0)
    a, b = devs[:2]
    names: list[str] = []

    @check("ping")
    def _(name: str) -> None:
        names[:] = into_namespaces([a, b])
        ok, detail = ping_both(5)
        record(name, ok, interfaces=names, **detail)

    @check("tcp")
    def _(name: str) -> None:
        ok, detail = tcp_transfer(tcp_bytes, outdir, timeout=TCP_TIMEOUT)
        record(name, ok, **detail)

    @check("ethtool")
    def _(name: str) -> None:
        per = {}
        for i, bdf in enumerate((a, b)):
            text = sh(f"ip netns exec ns{i} ethtool -i {names[i]}")
            info = dict(line.split(": ", 1) for line in text.strip().splitlines() if ": " in line)
            per[bdf] = info
        ok = all(v.get("driver") == "virtio_net" and v.get("bus-info") == bdf for bdf, v in per.items())
        record(name, ok, devices=per)

    @check("counters")
    def _(name: str) -> None:
        before = [link_stats(f"ns{i}", names[i]) for i in (0, 1)]
        ok_ping, detail = ping_both(4)
        after = [link_stats(f"ns{i}", names[i]) for i in (0, 1)]
        delta = [{k: after[i][k] - before[i][k] for k in after[i]} for i in (0, 1)]
        # 4 echo requests and 4 replies each way at least (ARP may add a few)
        ok = ok_ping and all(d["tx_packets"] >= 8 and d["rx_packets"] >= 8 for d in delta)
        ok = ok and all(s["rx_errors"] == 0 and s["tx_errors"] == 0 for s in after)
        record(name, ok, before=before, after=after, delta=delta)

    @check("link_down_up")
    def _(name: str) -> None:
        sh(f"ip -n ns0 link set {names[0]} down")
        down = ping(1, 0, 2, deadline=3)
        sh(f"ip -n ns0 link set {names[0]} up")
        sh(f"ip -n ns0 addr replace {ADDRS[0]}/24 dev {names[0]}")
        time.sleep(0.5)
        ok, detail = ping_both(3)
        record(name, ok and down["received"] == 0, while_down=down, **detail)

    @check("unbind_rebind")
    def _(name: str) -> None:
        back_from_namespaces()
        vdevs = [virtio_dev(bdf).name for bdf in (a, b)]
        for v in vdevs:
            (VIRTIO_NET_DRIVER / "unbind").write_text(v)
        gone = [netdev(bdf, wait=0) for bdf in (a, b)]
        for v in vdevs:
            (VIRTIO_NET_DRIVER / "bind").write_text(v)
        names[:] = into_namespaces([a, b])
        ok, detail = ping_both(3)
        record(name, ok and gone == [None, None], interfaces_while_unbound=gone, **detail)

    @check("module_reload")
    def _(name: str) -> None:
        back_from_namespaces()
        sh(f"depmod -b {MODULES_ROOT}")
        sh("rmmod virtio_net")
        gone = [netdev(bdf, wait=0) for bdf in (a, b)]
        sh(f"modprobe -d {MODULES_ROOT} virtio_net")
        names[:] = into_namespaces([a, b])
        ok, detail = ping_both(3)
        ok_tcp, tcp = tcp_transfer(64 * 1024, outdir)
        record(name, ok and ok_tcp and gone == [None, None], interfaces_while_removed=gone, tcp=tcp, **detail)

    @check("intx")
    def _(name: str) -> None:
        """Device a without MSI (msi_bus=0, driver rebound): virtio_pci falls back to INTx; traffic still flows."""
        back_from_namespaces()
        msi_bus = PCI / a / "msi_bus"
        pci_driver = Path("/sys/bus/pci/drivers/virtio-pci")
        try:
            msi_bus.write_text("0")
            (pci_driver / "unbind").write_text(a)
            (pci_driver / "bind").write_text(a)
            vname = virtio_dev(a).name
            lines = [ln for ln in Path("/proc/interrupts").read_text().splitlines() if ln.split()[-1:] == [vname]]
            before = sum(int(x) for ln in lines for x in ln.split()[1:2])
            names[:] = into_namespaces([a, b])
            ok_ping, detail = ping_both(3)
            ok_tcp, tcp = tcp_transfer(256 * 1024, outdir, timeout=TCP_TIMEOUT)
            lines = [ln for ln in Path("/proc/interrupts").read_text().splitlines() if ln.split()[-1:] == [vname]]
            after = sum(int(x) for ln in lines for x in ln.split()[1:2])
            kinds = [ln.split()[2] for ln in lines]
            ok = ok_ping and ok_tcp and len(lines) == 1 and "MSI" not in kinds[0] and after > before
            record(name, ok, irq_lines=lines, interrupts=after - before, tcp=tcp, **detail)
        finally:
            back_from_namespaces()
            msi_bus.write_text("1")
            (pci_driver / "unbind").write_text(a)
            (pci_driver / "bind").write_text(a)
            netdev(a)  # wait until virtio_net has probed it again

    if vfio:
        vfio_checks(a, b)

    @check("server_exit")
    def _(name: str) -> None:
        """The host kills the peer's server during a transfer: the transfer fails in bounded time."""
        start = time.monotonic()
        try:
            ok_tcp, tcp = tcp_transfer(64 << 20, outdir, timeout=10, marker=outdir / "traffic_started")
        except Exception as exc:  # noqa: BLE001 - the expected outcome: the transfer breaks off
            ok_tcp, tcp = False, {"error": f"{type(exc).__name__}: {str(exc)[-300:]}"}
        after = ping(0, 1, 2, deadline=5)
        dmesg = [ln for ln in sh("dmesg", check_rc=False).splitlines() if "virtio" in ln or "vfio" in ln][-8:]
        started = (outdir / "traffic_started").exists()
        ok = started and not ok_tcp and after["received"] == 0
        record(
            name,
            ok,
            started_before_the_kill=started,
            transfer=tcp,
            ping_after=after,
            seconds_to_fail=round(time.monotonic() - start, 1),
            dmesg=dmesg,
        )

    return finish(outdir, t0)


def vfio_checks(a: str, b: str) -> None:
    """The project's own driver over VFIO in this guest, on our devices (the checks run against QEMU's NIC)."""
    import asyncio

    from host import bind as hbind
    from virtio_fpga import cli
    from vm import guest_checks

    back_from_namespaces()

    @check("vfio_bind")
    def _(name: str) -> None:
        codes = {}
        for bdf in (a, b):
            codes[bdf] = cli_code("bind", bdf)
        drivers = {bdf: driver_of(PCI / bdf) for bdf in (a, b)}
        ok = all(c == 0 for c in codes.values()) and set(drivers.values()) == {"vfio-pci"}
        ok = ok and all(Path(f"/dev/vfio/{hbind.inspect(bdf).iommu_group}").exists() for bdf in (a, b))
        record(name, ok, codes=codes, drivers=drivers)

    @check("vfio_transport")
    def _(name: str) -> None:
        # "a device still on its kernel driver" for the transport's refusal check: the 9p device
        other = next(d.name for d in sorted(PCI.iterdir()) if driver_of(d) == "virtio-pci")
        guest_checks.roles_cache["nic_loop"] = other
        ok, detail = asyncio.run(guest_checks.transport_checks(a))
        record(name, ok, **detail)

    @check("vfio_pair")
    def _(name: str) -> None:
        from host.vfio_pair import run_pair

        report = run_pair(a, b, frames=64)
        results["vfio_pair_report"] = report
        record(name, bool(report.get("ok")), errors=report.get("error_messages"))

    @check("vfio_unbind")
    def _(name: str) -> None:
        codes = {bdf: cli_code("unbind", bdf) for bdf in (a, b)}
        drivers = {bdf: driver_of(PCI / bdf) for bdf in (a, b)}
        nets = {bdf: netdev(bdf) for bdf in (a, b)}
        ok = all(c == 0 for c in codes.values()) and set(drivers.values()) == {"virtio-pci"} and all(nets.values())
        names = into_namespaces([a, b]) if ok else []
        ok_ping, detail = ping_both(3) if ok else (False, {})
        record(name, ok and ok_ping, codes=codes, drivers=drivers, interfaces=names, **detail)

    del cli


def cli_code(*argv: str) -> int:
    from virtio_fpga import cli

    return cli.main(list(argv))


def finish(outdir: Path, t0: float) -> int:
    results["guest_seconds"] = round(time.monotonic() - t0, 2)
    results["kernel"] = os.uname().release
    save()
    failed = [k for k, v in results.items() if isinstance(v, dict) and v.get("ok") is False]
    print(f"linux guest checks: {len(failed)} failed {failed} in {results['guest_seconds']} s", flush=True)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--tcp-bytes", type=int, default=1 << 20)
    parser.add_argument("--tcp-timeout", type=float, default=120.0, help="socket timeout of the transfer (s)")
    parser.add_argument("--vfio", action="store_true")
    parser.add_argument("--checks", help="comma-separated names of the checks to run (default: all but faults)")
    args = parser.parse_args()
    if args.checks:
        SELECTED = set(args.checks.split(","))
    else:
        SELECTED = {"bound", "lspci", "features", "config", "ping", "tcp", "ethtool", "counters", "link_down_up"}
        SELECTED |= {
            "unbind_rebind",
            "module_reload",
            "intx",
            "vfio_bind",
            "vfio_transport",
            "vfio_pair",
            "vfio_unbind",
        }
    TCP_TIMEOUT = args.tcp_timeout
    OUTDIR = args.outdir
    sys.exit(main(args.outdir, args.tcp_bytes, args.vfio))
