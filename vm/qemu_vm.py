"""A throw-away Linux guest under QEMU for real-VFIO tests: scripted, cached, and installing what it needs.

Why a VM: VFIO needs an IOMMU and a PCI function nobody else uses.  This machine has neither (and its KVM is
a PVM host that cannot run a stock kernel), but QEMU's TCG emulates both: q35 with an emulated intel-iommu
and QEMU's own virtio-net-pci (packed ring, ACCESS_PLATFORM), a device the project did not write.

What gets built, once, under ``~/.cache/virtio-fpga/vm`` (``$VIRTIO_FPGA_VM_CACHE`` overrides):

* QEMU 10 from Debian bookworm-backports (apt sources entry added if missing; Debian 12's QEMU 7.2 is
  replaced because it lacks fixes the TCG + MSI-X path needs),
* the Debian kernel ``linux-image-amd64`` from backports, unpacked (never installed on the host),
* a tiny initramfs: busybox-static plus the modules the test needs (vfio, vfio-pci, vfio_iommu_type1,
  virtio_net, 9p), an ``/init`` that mounts the host root read-only over 9p, chroots into it and runs one
  shell script, then powers off.

Results come back through a second, writable 9p share mounted at the same path as on the host, so the guest
command writes its output files exactly where the host will read them.

Command line: ``python vm/qemu_vm.py setup`` (build the cache), ``python vm/qemu_vm.py run -- CMD...``.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import io
import lzma
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
if str(CHECKOUT) not in sys.path:
    sys.path.insert(0, str(CHECKOUT))

from virtio_fpga.device_map import DEFAULT_MAC, DEFAULT_MTU  # noqa: E402
from vm import apt_sources  # noqa: E402

QEMU = "qemu-system-x86_64"
#: QEMU releases older than this are replaced by the backports package (7.2 crashes in the paths we use).
MIN_QEMU = (9, 0)
BACKPORTS = "bookworm-backports"
BACKPORTS_SOURCES = Path("/etc/apt/sources.list.d/virtio-fpga-bookworm-backports.sources")

#: Guest modules, in load order after dependency resolution (see _module_closure); everything else the
#: test needs (virtio_pci, intel-iommu, 9p transport core) is built into Debian's kernel.
GUEST_MODULES = ("vfio", "vfio_iommu_type1", "vfio-pci", "virtio_net", "9pnet_virtio", "9p")

#: Bump when the layout of the cached image changes, so stale caches are rebuilt instead of misused.
IMAGE_FORMAT = 1

INIT_SCRIPT = r"""#!/bin/busybox sh
# virtio-fpga test guest: modules, host root over 9p (read-only), one command in a chroot, power off.
/bin/busybox mkdir -p /proc /sys /dev /newroot /bin /sbin
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /modules.list); do insmod "/modules/$m.ko" || echo "vfpga-init: insmod $m failed"; done
out=$(sed -n 's/.*vfpga.out=\([^ ]*\).*/\1/p' /proc/cmdline)
opts=trans=virtio,version=9p2000.L,msize=512000
mount -t 9p -o "$opts,ro,cache=loose" hostroot /newroot || { echo "vfpga-init: no host root"; poweroff -f; }
mount -t 9p -o "$opts" vfpgaout "/newroot$out" || { echo "vfpga-init: no output share"; poweroff -f; }
mount -t proc proc /newroot/proc
mount -t sysfs sysfs /newroot/sys
mount -t devtmpfs devtmpfs /newroot/dev
mkdir -p /newroot/dev/pts /newroot/dev/hugepages
mount -t devpts devpts /newroot/dev/pts
mount -t hugetlbfs hugetlbfs /newroot/dev/hugepages
mount -t tmpfs tmpfs /newroot/run
mkdir -p /newroot/run/tmp
# the modules again where kmod finds them (modprobe -d /run/modules), so the guest can rmmod and modprobe
kdir="/newroot/run/modules/lib/modules/$(uname -r)"
mkdir -p "$kdir" && cp /modules/*.ko "$kdir/"
echo "vfpga-init: running $out/cmd.sh"
chroot /newroot /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/run/tmp TMPDIR=/run/tmp \
  PYTHONDONTWRITEBYTECODE=1 /bin/sh -c "cd / && exec /bin/sh $out/cmd.sh" > "/newroot$out/output.log" 2>&1
echo $? > "/newroot$out/rc"
dmesg > "/newroot$out/dmesg.log"
umount "/newroot$out"
sync
poweroff -f
"""


class VmUnavailable(Exception):
    """QEMU (or what it needs: the kernel, busybox, root to install them) truly cannot be had here."""


def cache_dir() -> Path:
    env = os.environ.get("VIRTIO_FPGA_VM_CACHE")
    if env:
        return Path(env)
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "virtio-fpga" / "vm"


def _log(msg: str) -> None:
    print(f"[vm] {msg}", file=sys.stderr, flush=True)


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, **kwargs)


# ---- QEMU ------------------------------------------------------------------------------------------------------
def qemu_version() -> tuple[int, int, int] | None:
    exe = shutil.which(QEMU)
    if exe is None:
        return None
    out = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
    match = re.search(r"version (\d+)\.(\d+)\.(\d+)", out)
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def _apt_install(packages: list[str], release: str | None) -> None:
    if os.geteuid() != 0:
        raise VmUnavailable(f"need root to apt-get install {' '.join(packages)} (run once as root)")
    if shutil.which("apt-get") is None:
        raise VmUnavailable(f"{QEMU} is missing and this is not a Debian system (no apt-get)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends"]
    if release:
        cmd += ["-t", release]
    _log(f"apt-get install {' '.join(packages)}" + (f" from {release}" if release else ""))
    result = subprocess.run(cmd + packages, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise VmUnavailable(f"apt-get install {' '.join(packages)} failed: {result.stderr.strip()[-300:]}")


def _ensure_backports_source() -> None:
    """Add a bookworm-backports entry unless some apt source already names that suite."""
    sources = list(Path("/etc/apt").glob("sources.list.d/*.sources")) + list(Path("/etc/apt").glob("**/*.list"))
    for path in sources:
        try:
            if BACKPORTS in path.read_text():
                return
        except OSError:
            continue
    if os.geteuid() != 0:
        raise VmUnavailable("need root to add the bookworm-backports apt source")
    try:
        mirror = apt_sources.debian_mirror()
    except apt_sources.NoMirror as exc:
        raise VmUnavailable(str(exc)) from exc
    _log(f"adding {BACKPORTS_SOURCES} ({mirror})")
    BACKPORTS_SOURCES.write_text(
        f"Types: deb\nURIs: {mirror}\nSuites: bookworm-backports\nComponents: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    )
    result = subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True)
    if result.returncode != 0:
        raise VmUnavailable(f"apt-get update failed: {result.stderr.strip()[-300:]}")


def _debian_codename() -> str:
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return ""
    match = re.search(r"^VERSION_CODENAME=(\S+)", text, re.M)
    return match[1] if match else ""


def ensure_host_packages() -> None:
    """QEMU >= MIN_QEMU and busybox-static on the host, installing them from Debian when missing."""
    version = qemu_version()
    need_qemu = version is None or version[:2] < MIN_QEMU
    need_busybox = not Path("/bin/busybox").exists() or b"static" not in _file_type(Path("/bin/busybox"))
    if not (need_qemu or need_busybox):
        return
    bookworm = _debian_codename() == "bookworm"
    if need_qemu:
        if bookworm:
            _ensure_backports_source()
        _apt_install(["qemu-system-x86"], BACKPORTS if bookworm else None)
        version = qemu_version()
        if version is None or version[:2] < MIN_QEMU:
            raise VmUnavailable(f"{QEMU} {version} after install; need >= {MIN_QEMU}")
    if need_busybox:
        _apt_install(["busybox-static"], None)


def _file_type(path: Path) -> bytes:
    """Whether an ELF has a PT_INTERP segment, spelled like file(1) would: b'static' or b'dynamic'."""
    data = path.read_bytes()[:4096]
    return b"dynamic" if b"/lib64/ld-linux" in data or b"ld-linux-x86-64" in data else b"static"


def device_properties(device: str) -> set[str]:
    """Property names QEMU lists for ``-device DEVICE,help`` (to use optional ones only where they exist)."""
    out = subprocess.run([QEMU, "-device", f"{device},help"], capture_output=True, text=True).stdout
    return {m[1] for m in re.finditer(r"^\s+([\w-]+)=", out, re.M)}


# ---- kernel and initramfs ---------------------------------------------------------------------------------------
def _kernel_package() -> str:
    """The ABI package linux-image-amd64 points at in backports (old ABI packages disappear from mirrors)."""
    out = subprocess.run(
        ["apt-cache", "depends", "-t", BACKPORTS, "linux-image-amd64"], capture_output=True, text=True
    ).stdout
    for line in out.splitlines():
        match = re.match(r"\s*Depends:\s*(linux-image-\S+)", line)
        if match:
            return match[1]
    out = subprocess.run(["apt-cache", "depends", "linux-image-amd64"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        match = re.match(r"\s*Depends:\s*(linux-image-\S+)", line)
        if match:
            return match[1]
    raise VmUnavailable("apt-cache cannot resolve linux-image-amd64 (no Debian apt sources?)")


def ensure_kernel(cache: Path) -> tuple[Path, Path]:
    """(vmlinuz, modules dir) of a Debian kernel unpacked into the cache."""
    for vmlinuz in sorted((cache / "kernel" / "boot").glob("vmlinuz-*")):
        release = vmlinuz.name[len("vmlinuz-") :]
        moddir = cache / "kernel" / "lib" / "modules" / release
        if moddir.is_dir():
            return vmlinuz, moddir
    if shutil.which("apt-get") is None:
        raise VmUnavailable("no cached guest kernel and no apt-get to download linux-image-amd64")
    if _debian_codename() == "bookworm":
        _ensure_backports_source()
    package = _kernel_package()
    download = cache / "download"
    download.mkdir(parents=True, exist_ok=True)
    _log(f"downloading {package}")
    result = subprocess.run(["apt-get", "download", package], cwd=download, capture_output=True, text=True)
    debs = sorted(download.glob(f"{package}_*.deb"))
    if result.returncode != 0 or not debs:
        raise VmUnavailable(f"apt-get download {package} failed: {result.stderr.strip()[-300:]}")
    staging = Path(tempfile.mkdtemp(dir=cache, prefix="kernel."))
    _run(["dpkg-deb", "-x", str(debs[-1]), str(staging)])
    shutil.rmtree(cache / "kernel", ignore_errors=True)
    staging.rename(cache / "kernel")
    debs[-1].unlink()
    return ensure_kernel(cache)


def _find_modules(moddir: Path) -> dict[str, Path]:
    """Module name (as in ``depends=``, dashes and underscores unified) -> file."""
    found = {}
    for path in moddir.rglob("*.ko*"):
        name = path.name.split(".ko")[0]
        found[name.replace("-", "_")] = path
    return found


def _module_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".zst"):
        return subprocess.run(["zstd", "-dc", str(path)], check=True, capture_output=True).stdout
    if path.name.endswith(".gz"):
        import gzip

        return gzip.decompress(data)
    return data


def _module_depends(image: bytes) -> list[str]:
    """The ``depends=`` entry of a module's .modinfo section (NUL-separated key=value strings)."""
    match = re.search(rb"(?:^|\x00)depends=([^\x00]*)\x00", image)
    if not match or not match[1]:
        return []
    return [d.decode().replace("-", "_") for d in match[1].split(b",") if d]


def _module_closure(moddir: Path, wanted: tuple[str, ...]) -> list[tuple[str, bytes]]:
    """Modules and their dependencies, dependencies first (the order insmod needs)."""
    available = _find_modules(moddir)
    ordered: list[tuple[str, bytes]] = []
    done: set[str] = set()

    def visit(name: str) -> None:
        key = name.replace("-", "_")
        if key in done:
            return
        if key not in available:
            raise VmUnavailable(f"kernel module {name} is not in {moddir}")
        image = _module_bytes(available[key])
        for dep in _module_depends(image):
            visit(dep)
        done.add(key)
        ordered.append((key, image))

    for name in wanted:
        visit(name)
    return ordered


def _cpio_newc(entries: list[tuple[str, int, bytes]]) -> bytes:
    """An uncompressed ``newc`` cpio archive (what the kernel unpacks as initramfs); no cpio(1) needed."""
    out = io.BytesIO()

    def pad4() -> None:
        out.write(b"\0" * (-out.tell() % 4))

    for ino, (name, mode, data) in enumerate([*entries, ("TRAILER!!!", 0, b"")], start=1):
        encoded = name.encode() + b"\0"
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0]
        out.write(b"070701" + b"".join(f"{v:08X}".encode() for v in fields))
        out.write(encoded)
        pad4()
        out.write(data)
        pad4()
    return out.getvalue()


def ensure_initramfs(cache: Path, moddir: Path) -> Path:
    """Busybox + modules + /init, rebuilt only when the kernel, the module list or the init script change."""
    busybox = Path("/bin/busybox")
    key = hashlib.sha256(
        f"{IMAGE_FORMAT}\0{moddir.name}\0{GUEST_MODULES}\0{INIT_SCRIPT}".encode() + busybox.read_bytes()
    ).hexdigest()[:16]
    target = cache / f"initramfs-{key}.cpio"
    if target.exists():
        return target
    _log(f"building {target.name}")
    modules = _module_closure(moddir, GUEST_MODULES)
    entries: list[tuple[str, int, bytes]] = [
        ("bin", 0o040755, b""),
        ("modules", 0o040755, b""),
        ("bin/busybox", 0o100755, busybox.read_bytes()),
        ("init", 0o100755, INIT_SCRIPT.encode()),
        ("modules.list", 0o100644, "\n".join(name for name, _ in modules).encode() + b"\n"),
    ]
    entries += [(f"modules/{name}.ko", 0o100644, image) for name, image in modules]
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(_cpio_newc(entries))
    tmp.rename(target)
    for stale in cache.glob("initramfs-*.cpio"):
        if stale != target:
            stale.unlink()
    return target


@dataclass
class VmImage:
    """Everything a boot needs, all from the cache."""

    kernel: Path
    initramfs: Path
    qemu_version: tuple[int, int, int]
    notification_data: bool  # QEMU's virtio-net-pci has the notification_data property


def ensure_image() -> VmImage:
    """Install and build whatever is missing; raise VmUnavailable with the reason if that is impossible."""
    if sys.platform != "linux" or os.uname().machine != "x86_64":
        raise VmUnavailable(f"the VM test needs an x86_64 Linux host, not {sys.platform}/{os.uname().machine}")
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    # One builder at a time: two test runs starting together must not both install or unpack.
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ensure_host_packages()
        vmlinuz, moddir = ensure_kernel(cache)
        initramfs = ensure_initramfs(cache, moddir)
    version = qemu_version()
    assert version is not None
    return VmImage(vmlinuz, initramfs, version, "notification_data" in device_properties("virtio-net-pci"))


# ---- running --------------------------------------------------------------------------------------------------
@dataclass
class VmResult:
    rc: int | None  # the guest command's exit status; None if the guest never reported one
    output: str  # the guest command's stdout and stderr
    console: str  # the serial console (kernel and init messages)
    dmesg: str
    outdir: Path
    seconds: float


#: MAC addresses of the two NICs (locally administered), so the guest can tell A from B.
MAC_A = "52:54:00:fa:00:0a"
MAC_B = "52:54:00:fa:00:0b"
#: The loopback NIC, QEMU's device in ``virtio-fpga compare``, carries this project's MAC (device_map.DEFAULT_MAC):
#: the MAC is provisioning, and the frames the scenarios send contain it, so it must match at the source.
MAC_LOOP = ":".join(f"{b:02x}" for b in DEFAULT_MAC)
#: ... and its MTU (``host_mtu``, which also makes QEMU offer VIRTIO_NET_F_MTU), so the driver sizes buffers and
#: accepts frames exactly as with the project's device (jumbo frames included).
MTU_LOOP = DEFAULT_MTU


def qemu_command(image: VmImage, outdir: Path) -> list[str]:
    """q35 + intel-iommu, two virtio-net-pci joined by a hub, and the fixtures for bind's error paths."""
    net_opts = "disable-legacy=on,iommu_platform=on,ats=on,packed=on,romfile="
    if image.notification_data:
        net_opts += ",notification_data=on"
    append = f"console=ttyS0 intel_iommu=on hugepages=16 panic=-1 quiet loglevel=4 vfpga.out={outdir}"
    return [
        QEMU,
        "-machine", "q35,accel=tcg,kernel-irqchip=split",
        "-cpu", "max",
        "-smp", "1",  # one vCPU boots ~3 s faster under TCG on a 2-core host than two
        "-m", "1024",
        "-nodefaults",
        "-no-user-config",
        "-display", "none",
        "-serial", f"file:{outdir / 'console.log'}",
        "-monitor", "none",
        "-no-reboot",
        "-kernel", str(image.kernel),
        "-initrd", str(image.initramfs),
        "-append", append,
        "-device", "intel-iommu,intremap=on,caching-mode=on,device-iotlb=on",
        # host root (read-only) and the writable output directory, both over 9p
        "-fsdev", "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap",
        "-device", "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot",
        "-fsdev", f"local,id=vfpgaout,path={outdir},security_model=none",
        "-device", "virtio-9p-pci,fsdev=vfpgaout,mount_tag=vfpgaout",
        # the two NICs under test, each behind its own root port (its own IOMMU group), on one hub
        "-netdev", "hubport,id=hpa,hubid=0",
        "-netdev", "hubport,id=hpb,hubid=0",
        "-device", "pcie-root-port,id=rpa,chassis=1,slot=1,bus=pcie.0,addr=0x10",
        "-device", f"virtio-net-pci,netdev=hpa,mac={MAC_A},bus=rpa,{net_opts}",
        "-device", "pcie-root-port,id=rpb,chassis=2,slot=2,bus=pcie.0,addr=0x11",
        "-device", f"virtio-net-pci,netdev=hpb,mac={MAC_B},bus=rpb,{net_opts}",
        # a third NIC whose netdev sends every frame back to itself (a unix datagram socket addressed to its
        # own path): QEMU's device as a loopback device, the shape `virtio-fpga demo` and the scenarios expect
        "-netdev", f"dgram,id=loop,local.type=unix,local.path={outdir / 'loop.sock'},"
        f"remote.type=unix,remote.path={outdir / 'loop.sock'}",
        "-device", "pcie-root-port,id=rpe,chassis=5,slot=5,bus=pcie.0,addr=0x14",
        "-device", f"virtio-net-pci,netdev=loop,mac={MAC_LOOP},host_mtu={MTU_LOOP},bus=rpe,{net_opts}",
        # a two-function device behind one root port: both functions share an IOMMU group ("not viable")
        "-device", "pcie-root-port,id=rpc,chassis=3,slot=3,bus=pcie.0,addr=0x12",
        "-device", "virtio-rng-pci,disable-legacy=on,bus=rpc,addr=0x0.0,multifunction=on",
        "-device", "virtio-rng-pci,disable-legacy=on,bus=rpc,addr=0x0.1",
        # a host bridge that bypasses the IOMMU: a virtio device in no IOMMU group ("no IOMMU")
        "-device", "pxb-pcie,id=pxb,bus_nr=0x80,bus=pcie.0,addr=0x13,bypass_iommu=on",
        "-device", "pcie-root-port,id=rpd,chassis=4,slot=4,bus=pxb",
        "-device", "virtio-rng-pci,disable-legacy=on,bus=rpd",
    ]  # fmt: skip


def run(script: str, *, timeout: float = 150.0, image: VmImage | None = None) -> VmResult:
    """Boot the guest, run ``script`` (sh) inside the chroot of the host root, and collect what it wrote.

    The host root is read-only in the guest; /run is the guest's own tmpfs (TMPDIR and HOME point there).
    The output directory lives in the cache and is kept for inspection; the newest few are retained.
    """
    image = image or ensure_image()
    runs = cache_dir() / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    for old in sorted(runs.iterdir())[:-5]:
        shutil.rmtree(old, ignore_errors=True)
    outdir = Path(tempfile.mkdtemp(dir=runs, prefix=time.strftime("%Y%m%d-%H%M%S-")))
    (outdir / "cmd.sh").write_text(f"export VFPGA_OUT={shlex.quote(str(outdir))}\n{script}")
    start = time.monotonic()
    proc = subprocess.Popen(qemu_command(image, outdir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        qemu_out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        qemu_out, _ = proc.communicate()
        qemu_out += f"\n[vm] guest killed after {timeout} s".encode()
    seconds = time.monotonic() - start

    def read(name: str) -> str:
        path = outdir / name
        return path.read_text(errors="replace") if path.exists() else ""

    rc_text = read("rc").strip()
    console = read("console.log") + qemu_out.decode(errors="replace")
    return VmResult(int(rc_text) if rc_text else None, read("output.log"), console, read("dmesg.log"), outdir, seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("setup", help="install QEMU, fetch the kernel, build the initramfs")
    run_p = sub.add_parser("run", help="boot and run a command in the guest")
    run_p.add_argument("--timeout", type=float, default=150.0)
    run_p.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    try:
        image = ensure_image()
    except VmUnavailable as exc:
        print(f"vm: unavailable: {exc}", file=sys.stderr)
        return 2
    if args.cmd == "setup":
        print(f"kernel {image.kernel}\ninitramfs {image.initramfs}\nqemu {'.'.join(map(str, image.qemu_version))}")
        return 0
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    result = run(f"cd {shlex.quote(os.getcwd())} && {shlex.join(command)}\n", timeout=args.timeout, image=image)
    sys.stdout.write(result.output)
    if result.rc is None:
        sys.stdout.write(result.console[-4000:])
    print(f"[vm] rc={result.rc} in {result.seconds:.1f} s, files in {result.outdir}", file=sys.stderr)
    return result.rc if result.rc is not None else 1


if __name__ == "__main__":
    sys.exit(main())
