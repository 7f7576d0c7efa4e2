"""A Linux guest whose PCI devices are *our* virtio-net, served over vfio-user (QEMU 11.1 from a trixie root).

Why a second VM: the VFIO VM (``vm/qemu_vm.py``) runs Debian 12's QEMU against QEMU's own virtio-net.  To let
Linux's in-kernel ``virtio_pci``/``virtio_net`` drive our device, QEMU needs its vfio-user client (>= 10.1),
which Debian ships only in trixie-backports, built for trixie's glibc.  So QEMU runs from a small trixie root:

* built once with ``mmdebstrap --variant=minbase`` (sources: trixie and trixie-backports on the machine's own
  mirror, see ``vm/apt_sources.py``), ``qemu-system-x86`` from backports without recommends; cached under
  ``~/.cache/virtio-fpga/vm/trixie-<key>`` (about 55 MiB download, 260 MiB on disk, a minute to build);
* QEMU runs in a private mount namespace (``unshare``), chrooted into that root, with the host's root file
  system bind-mounted (not recursively) at ``/host`` so kernel, initramfs, sockets and the 9p shares keep their
  host paths under one prefix.

The guest is the VFIO VM's guest (Debian's 6.12 kernel, busybox initramfs, host root over 9p read-only, one
script, power off); guest RAM is a shared memfd (``memory-backend-memfd,share=on``) so the device servers can
map it.  Each device is a ``virtio-fpga serve`` process listening before QEMU starts.

Command line: ``python vm/linux_vm.py setup``; ``python vm/linux_vm.py run --device soft --device soft -- CMD``.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
if str(CHECKOUT) not in sys.path:
    sys.path.insert(0, str(CHECKOUT))

from vm import apt_sources, qemu_vm  # noqa: E402
from vm.qemu_vm import VmUnavailable, cache_dir  # noqa: E402

SUITE = "trixie"
BACKPORTS = "trixie-backports"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
#: Packages in the trixie root (QEMU only; --no-install-recommends keeps it small).
ROOT_PACKAGES = ("qemu-system-x86",)
#: Host (Debian 12) packages the guest's checks run: they reach the guest through the 9p host root.
GUEST_TOOLS = {
    "ping": "iputils-ping",
    "ethtool": "ethtool",
    "lspci": "pciutils",
    "modprobe": "kmod",
}
#: Bump when the trixie root's recipe changes (its cache directory name includes it).
ROOT_FORMAT = 1
MIN_QEMU = (10, 1)

_log = qemu_vm._log


# ---- the trixie root ----------------------------------------------------------------------------------------
def _root_key(mirror: str) -> str:
    text = f"{ROOT_FORMAT}\0{SUITE}\0{mirror}\0{ROOT_PACKAGES}"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def ensure_trixie_root(cache: Path) -> Path:
    """The trixie root with QEMU >= 10.1, built once (idempotent; an interrupted build is started over)."""
    try:
        mirror = apt_sources.debian_mirror()
    except apt_sources.NoMirror as exc:
        raise VmUnavailable(str(exc)) from exc
    root = cache / f"trixie-{_root_key(mirror)}"
    if (root / ".complete").exists():
        return root
    if os.geteuid() != 0:
        raise VmUnavailable("building the trixie root for QEMU 11 needs root (mmdebstrap, chroot)")
    if shutil.which("mmdebstrap") is None:
        qemu_vm._apt_install(["mmdebstrap"], None)
    if not Path(KEYRING).exists():
        qemu_vm._apt_install(["debian-archive-keyring"], None)
    shutil.rmtree(root, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(dir=cache, prefix="trixie.building."))
    sources = staging.with_suffix(".list")
    sources.write_text(
        f"deb [signed-by={KEYRING}] {mirror} {SUITE} main\ndeb [signed-by={KEYRING}] {mirror} {BACKPORTS} main\n"
    )
    hook = f'chroot "$1" apt-get install -y -qq --no-install-recommends -t {BACKPORTS} {" ".join(ROOT_PACKAGES)}'
    _log(f"building the {SUITE} root for QEMU ({mirror}; about a minute)")
    start = time.monotonic()
    result = subprocess.run(
        ["mmdebstrap", "--quiet", "--variant=minbase", f"--customize-hook={hook}", SUITE, str(staging), str(sources)],
        capture_output=True,
        text=True,
    )
    sources.unlink(missing_ok=True)
    if result.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise RuntimeError(f"mmdebstrap of {SUITE} failed (exit {result.returncode}): {result.stderr.strip()[-1500:]}")
    (staging / "host").mkdir(exist_ok=True)
    staging.rename(root)
    (root / ".complete").write_text(f"{time.monotonic() - start:.1f} s\n")
    for stale in cache.glob("trixie-*"):
        if stale != root and stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
    return root


def qemu_in_root_version(root: Path) -> tuple[int, int, int]:
    out = subprocess.run(["chroot", str(root), "qemu-system-x86_64", "--version"], capture_output=True, text=True)
    import re

    match = re.search(r"version (\d+)\.(\d+)\.(\d+)", out.stdout)
    if not match:
        raise RuntimeError(f"QEMU in {root} does not run: {out.stderr.strip()[-500:]}")
    return int(match[1]), int(match[2]), int(match[3])


def ensure_guest_tools() -> None:
    missing = [
        pkg for tool, pkg in GUEST_TOOLS.items() if shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin") is None
    ]
    if missing:
        qemu_vm._apt_install(sorted(set(missing)), None)


@dataclass
class LinuxImage:
    root: Path
    kernel: Path
    initramfs: Path
    qemu_version: tuple[int, int, int]


def ensure_image() -> LinuxImage:
    """Everything the vfio-user guest needs, installed or built when missing.

    Raises VmUnavailable only where QEMU cannot run at all (not x86_64 Linux, not root, no apt); a failure to
    build what should be buildable here (mmdebstrap, the kernel) raises RuntimeError, so the test fails.
    """
    if sys.platform != "linux" or os.uname().machine != "x86_64":
        raise VmUnavailable(f"the Linux-driver VM needs an x86_64 Linux host, not {sys.platform}")
    if shutil.which("apt-get") is None:
        raise VmUnavailable("not a Debian system (no apt-get): cannot install QEMU 11 or the guest kernel")
    if os.geteuid() != 0:
        raise VmUnavailable("the Linux-driver VM needs root (mmdebstrap, chroot, unshare)")
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            root = ensure_trixie_root(cache)
            if not (Path("/bin/busybox").exists() and qemu_vm._file_type(Path("/bin/busybox")) == b"static"):
                qemu_vm._apt_install(["busybox-static"], None)
            ensure_guest_tools()
            vmlinuz, moddir = qemu_vm.ensure_kernel(cache)
            initramfs = qemu_vm.ensure_initramfs(cache, moddir)
        except VmUnavailable as exc:
            # QEMU can run here (x86_64 Linux, root, apt): failing to set the guest up is a failure, not a skip
            raise RuntimeError(f"the Linux-driver VM could not be set up: {exc}") from exc
    version = qemu_in_root_version(root)
    if version[:2] < MIN_QEMU:
        raise RuntimeError(f"QEMU {version} in the trixie root has no vfio-user client (need >= {MIN_QEMU})")
    return LinuxImage(root, vmlinuz, initramfs, version)


# ---- device servers ----------------------------------------------------------------------------------------
@dataclass
class DeviceSpec:
    """One of our devices on a vfio-user socket: back-end, MAC, and optionally the peer it is cabled to."""

    kind: str  # "soft" or "rtl"
    mac: str
    peer: int | None = None  # index of the device this one's Ethernet port is joined to
    slow_ms: float = 0.0
    slow_count: int = 0
    extra: list[str] = field(default_factory=list)


@dataclass
class Server:
    spec: DeviceSpec
    socket: Path
    proc: subprocess.Popen
    log: Path


def start_servers(devices: list[DeviceSpec], workdir: Path, *, timeout: float = 120.0) -> list[Server]:
    """Start one ``virtio-fpga serve`` per device and wait until each says it listens."""
    servers = []
    for i, dev in enumerate(devices):
        sock = workdir / f"dev{i}.sock"
        cmd = [sys.executable, "-m", "virtio_fpga.cli", "serve", "--device", dev.kind, "-v"]
        if dev.kind == "soft":  # the RTL's MAC is fixed by the gateware
            cmd += ["--mac", dev.mac]
        if dev.peer is not None:
            cmd += ["--port-local", str(workdir / f"port{i}"), "--port-remote", str(workdir / f"port{dev.peer}")]
        if dev.slow_ms:
            cmd += ["--slow-ms", str(dev.slow_ms), "--slow-count", str(dev.slow_count)]
        cmd += [*dev.extra, str(sock)]
        log = workdir / f"dev{i}.log"
        log.write_text("")
        with open(log, "a") as err:  # append mode: the supervisor adds lines to the same file
            proc = subprocess.Popen(cmd, cwd=CHECKOUT, stdout=subprocess.PIPE, stderr=err, text=True)
        servers.append(Server(dev, sock, proc, log))
    deadline = time.monotonic() + timeout
    for srv in servers:
        line = ""
        while "listening" not in line:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([srv.proc.stdout], [], [], max(0.0, left))
            if not ready:
                stop_servers(servers)
                raise RuntimeError(f"device server {srv.socket.name} did not start: {srv.log.read_text()[-2000:]}")
            line = srv.proc.stdout.readline()
            with open(srv.log, "a") as out:
                out.write(line)
            if not line:
                stop_servers(servers)
                raise RuntimeError(f"device server {srv.socket.name} exited: {srv.log.read_text()[-2000:]}")
        # keep reading what else it prints, so a chatty server never blocks on a full pipe
        threading.Thread(target=_drain, args=(srv.proc.stdout, srv.log), daemon=True).start()
    return servers


def _drain(stream, log: Path) -> None:
    with open(log, "a") as out:
        for line in stream:
            out.write(line)


def stop_servers(servers: list[Server], timeout: float = 10.0) -> None:
    for srv in servers:
        if srv.proc.poll() is None:
            srv.proc.send_signal(signal.SIGTERM)
    for srv in servers:
        try:
            srv.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            srv.proc.kill()
            srv.proc.wait()
        if srv.proc.stdout:
            srv.proc.stdout.close()


# ---- running -----------------------------------------------------------------------------------------------
HOST = "/host"  # where the host's root file system appears inside the trixie root


def qemu_command(image: LinuxImage, outdir: Path, sockets: list[Path], *, mem_mb: int = 1024, iommu: bool = True,
                 append: str = "", msg_timeout_ms: int | None = None) -> list[str]:  # fmt: skip
    """q35 with guest RAM on a shared memfd, an emulated intel-iommu, 9p shares, and our devices by socket."""
    h = HOST
    # no_timer_check: under TCG on a loaded host the boot-time IO-APIC timer check can miss and panic
    cmdline = f"console=ttyS0 panic=-1 quiet loglevel=4 no_timer_check vfpga.out={outdir} hugepages=16 {append}".strip()
    if iommu:
        cmdline += " intel_iommu=on iommu.passthrough=1"
    cmd = [
        "qemu-system-x86_64",
        "-machine", "q35,accel=tcg,memory-backend=mem" + (",kernel-irqchip=split" if iommu else ""),
        "-object", f"memory-backend-memfd,id=mem,size={mem_mb}M,share=on",
        "-cpu", "max", "-smp", "1", "-m", f"{mem_mb}",
        "-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none", "-no-reboot",
        "-serial", f"file:{h}{outdir / 'console.log'}",
        "-kernel", f"{h}{image.kernel}", "-initrd", f"{h}{image.initramfs}", "-append", cmdline,
        "-fsdev", f"local,id=hostroot,path={h}/,security_model=none,readonly=on",
        "-device", "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot",
        "-fsdev", f"local,id=vfpgaout,path={h}{outdir},security_model=none",
        "-device", "virtio-9p-pci,fsdev=vfpgaout,mount_tag=vfpgaout",
    ]  # fmt: skip
    if iommu:
        cmd += ["-device", "intel-iommu,intremap=on,caching-mode=on"]
    for i, sock in enumerate(sockets):
        dev = {"driver": "vfio-user-pci", "id": f"vfu{i}", "socket": {"type": "unix", "path": f"{h}{sock}"}}
        dev.update(rombar=0, addr=f"{0x10 + i:#x}")
        if msg_timeout_ms is not None:
            dev["x-msg-timeout"] = msg_timeout_ms
        cmd += ["-device", json.dumps(dev)]
    return cmd


def chrooted(root: Path, command: list[str]) -> list[str]:
    """Run ``command`` in the trixie root: private mount namespace, /dev, /proc, and the host root at /host."""
    script = (
        'set -e; r="$1"; shift; '
        'mount --rbind /dev "$r/dev"; mount -t proc proc "$r/proc"; '
        f'mount --bind / "$r{HOST}"; '
        'exec chroot "$r" "$@"'
    )
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", str(root), *command]


@dataclass
class LinuxRun:
    rc: int | None
    output: str
    console: str
    dmesg: str
    qemu: str
    outdir: Path
    seconds: float
    server_logs: dict[str, str]
    server_exit: list[int | None]


def run(
    script: str,
    devices: list[DeviceSpec],
    *,
    timeout: float = 240.0,
    image: LinuxImage | None = None,
    during=None,
    msg_timeout_ms: int | None = None,
    append: str = "",
) -> LinuxRun:
    """Start the device servers, boot the guest, run ``script`` in it, collect what it wrote.

    ``during(servers, outdir)``, if given, runs on the host while the guest runs (fault tests use it to stop a
    server mid-traffic).  QEMU is killed after ``timeout`` seconds: nothing waits forever.
    """
    image = image or ensure_image()
    runs = cache_dir() / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    for old in sorted(runs.iterdir())[:-6]:
        shutil.rmtree(old, ignore_errors=True)
    outdir = Path(tempfile.mkdtemp(dir=runs, prefix=time.strftime("%Y%m%d-%H%M%S-vfu-")))
    (outdir / "cmd.sh").write_text(f"export VFPGA_OUT={shlex.quote(str(outdir))}\n{script}")
    # The cache's initramfs may be replaced by another checkout's (its name is a hash of the init script):
    # boot from a hard link of our own, which survives that.
    initramfs = outdir / "initramfs.cpio"
    try:
        os.link(image.initramfs, initramfs)
    except OSError:
        shutil.copyfile(image.initramfs, initramfs)
    image = LinuxImage(image.root, image.kernel, initramfs, image.qemu_version)
    start = time.monotonic()
    servers = start_servers(devices, outdir)
    qemu_log = outdir / "qemu.log"
    try:
        cmd = chrooted(
            image.root,
            qemu_command(image, outdir, [s.socket for s in servers], msg_timeout_ms=msg_timeout_ms, append=append),
        )
        with open(qemu_log, "w") as qlog:
            proc = subprocess.Popen(cmd, stdout=qlog, stderr=subprocess.STDOUT)
        try:
            if during is not None:  # beside the guest, never holding up QEMU's own timeout
                threading.Thread(target=during, args=(servers, outdir), daemon=True).start()
            proc.wait(timeout=max(1.0, timeout - (time.monotonic() - start)))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            with open(qemu_log, "a") as qlog:
                qlog.write(f"\n[vm] QEMU killed after {timeout} s\n")
    finally:
        stop_servers(servers)
    seconds = time.monotonic() - start

    def read(name: str) -> str:
        path = outdir / name
        return path.read_text(errors="replace") if path.exists() else ""

    rc_text = read("rc").strip()
    return LinuxRun(
        int(rc_text) if rc_text else None,
        read("output.log"),
        read("console.log"),
        read("dmesg.log"),
        read("qemu.log"),
        outdir,
        seconds,
        {s.socket.name: s.log.read_text(errors="replace") for s in servers},
        [s.proc.returncode for s in servers],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("setup", help="build the trixie root, fetch the kernel, build the initramfs")
    run_p = sub.add_parser("run", help="boot with our devices and run a command in the guest")
    run_p.add_argument("--device", action="append", choices=["soft", "rtl"], default=[])
    run_p.add_argument("--pair", action="store_true", help="join the first two devices' ports back to back")
    run_p.add_argument("--timeout", type=float, default=240.0)
    run_p.add_argument("--append", default="", help="extra guest kernel arguments (e.g. pci=nomsi for INTx)")
    run_p.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    try:
        image = ensure_image()
    except VmUnavailable as exc:
        print(f"vm: unavailable: {exc}", file=sys.stderr)
        return 2
    if args.cmd == "setup":
        print(f"root {image.root}\nkernel {image.kernel}\ninitramfs {image.initramfs}\nqemu {image.qemu_version}")
        return 0
    kinds = args.device or ["soft"]
    devices = [DeviceSpec(k, f"02:fa:11:00:00:{i + 1:02x}") for i, k in enumerate(kinds)]
    if args.pair and len(devices) >= 2:
        devices[0].peer, devices[1].peer = 1, 0
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    result = run(
        f"cd {shlex.quote(os.getcwd())} && {shlex.join(command)}\n", devices, timeout=args.timeout, image=image
    )
    sys.stdout.write(result.output)
    if result.rc is None:
        sys.stdout.write(result.console[-4000:] + result.qemu[-2000:])
    print(f"[vm] rc={result.rc} in {result.seconds:.1f} s, files in {result.outdir}", file=sys.stderr)
    return result.rc if result.rc is not None else 1


if __name__ == "__main__":
    sys.exit(main())
