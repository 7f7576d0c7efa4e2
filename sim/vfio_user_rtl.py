"""The RTL endpoint behind a vfio-user socket: a VMM's guest drives the gateware in simulation (cocotb + Icarus).

The same :class:`vfio_user.server.Session` as for the software device, with a back-end that is the simulated
PCIe link (cocotbext-pcie RootComplex, the extended UltraScale+ hard-IP model of :mod:`sim.usp`, the DUT):

* **configuration accesses** become configuration requests on the link, so the guest's capability walk goes
  through the hard-IP model and, for the virtio capabilities, through the gateware's configuration-extend
  path.  Three things a VMM virtualises are kept here and not forwarded: the BAR registers (QEMU emulates
  them; the device keeps the addresses the root complex assigned, so the link's routing stays valid), and
  the MSI-X enable/function-mask bits (the platform, i.e. this server, owns the device's MSI-X table, below);
* **BAR accesses** become memory TLPs of exactly the guest's size at BAR offset + the assigned address;
* **guest memory** is the root complex's memory at guest-physical addresses: the DMA windows the client mapped
  are registered in the root complex's address space (below 2 GiB, in its pool's range, and from 4 GiB up), so
  the DUT's memory read/write TLPs land in the guest's RAM;
* **interrupts**: QEMU emulates the MSI-X table the guest sees, so the server programs the gateware's table
  once (vector k writes data k to the root complex's MSI window) and turns each MSI write into a signal on the
  eventfd of vector k;
* the **Ethernet port** (``eth_tx``/``eth_rx`` streams, loopback off) is a :class:`vfio_user.port.DatagramPort`
  when one is given, else the gateware's loopback.

Simulated time runs while the guest waits: between client messages the test advances the simulation in small
steps, and when neither the link nor the port has moved for a while it also waits on the sockets (wall time)
so an idle guest does not spin a core.  INTx is not wired (the gateware signals MSI-X only); the server says
so by logging any INTx use.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import cocotb
from cocotb.triggers import Timer
from cocotbext.axi import AxiStreamBus, AxiStreamFrame, AxiStreamSink, AxiStreamSource
from cocotbext.axi.address_space import Region

from sim.testbench import EndpointBench
from vfio_user import protocol as p
from vfio_user.memory import GuestMemory
from vfio_user.port import DatagramPort
from vfio_user.protocol import Message
from vfio_user.server import Interrupts, Session
from virtio_fpga import device_map as dm

log = logging.getLogger("vfio_user.rtl")
PCI_COMMAND = 0x04
BAR_REGS = range(0x10, 0x28)
ROM_REG = range(0x30, 0x34)
#: Config-request timeout on the simulated link (a hung gateware answers 0 rather than hang the guest).
REQUEST_TIMEOUT_NS = 100_000
#: Simulated time per idle step, and how many quiet steps before also waiting for the sockets in wall time.
STEP_NS = 400
QUIET_STEPS = 50
WALL_WAIT_S = 0.01


class GuestRam(Region):
    """A root-complex memory region whose bytes are the client's DMA windows (the guest's RAM)."""

    def __init__(self, memory_ref, base: int, size: int) -> None:
        super().__init__(size)
        self.memory_ref = memory_ref  # callable -> the current session's GuestMemory (None between clients)
        self.region_base = base
        self.reads = self.writes = 0

    async def _read(self, address: int, length: int, **kwargs) -> bytes:
        memory: GuestMemory | None = self.memory_ref()
        if memory is None:
            raise OSError(errno.EFAULT, "no client memory mapped")
        self.reads += 1
        return memory.read(self.region_base + address, length)

    async def _write(self, address: int, data: bytes, **kwargs) -> None:
        memory: GuestMemory | None = self.memory_ref()
        if memory is None:
            raise OSError(errno.EFAULT, "no client memory mapped")
        self.writes += 1
        memory.write(self.region_base + address, bytes(data))


class RtlBackend:
    """:class:`vfio_user.server.Backend` for the DUT on the simulated link."""

    def __init__(self, bench: EndpointBench, ep) -> None:
        self.bench = bench
        self.ep = ep
        self.config_size = 256
        self.bar_sizes = {dm.BAR: dm.BAR_SIZE}
        self.msix_vectors = dm.NUM_MSIX_VECTORS
        self.memory: GuestMemory | None = None
        self.irqs: Interrupts | None = None
        self.msix_cap = 0
        self.guest_msix_control = 0
        self.vectors = []
        self.activity = 0  # bumped by anything the device does on its own (MSI, frames out)
        self.irq_count = 0

    async def setup(self) -> None:
        """Find the MSI-X capability, register guest RAM, program the gateware's MSI-X table, enable it."""
        pos = (await self._cfg_read(0x34, 1)) & ~3
        while pos:
            if await self._cfg_read(pos, 1) == 0x11:
                self.msix_cap = pos
            pos = (await self._cfg_read(pos + 1, 1)) & ~3
        rc = self.bench.rc
        low = GuestRam(lambda: self.memory, 0, 0x8000_0000)
        rc.mem_pool.register_region(low, 0)  # the pool is an address space of its own at 0..2 GiB
        high = GuestRam(lambda: self.memory, 1 << 32, (1 << 63) - (1 << 32))
        rc.mem_address_space.register_region(high, 1 << 32)
        self.vectors = rc.msi_alloc_vectors(self.msix_vectors)
        for k, vec in enumerate(self.vectors):
            vec.cb.append(self._msi_handler(k))
        await self.program_msix()

    async def program_msix(self) -> None:
        window = self.ep.bar_window[dm.BAR]
        for k, vec in enumerate(self.vectors):
            entry = dm.MSIX_TABLE_OFFSET + 16 * k
            await window.write(entry, (vec.addr & 0xFFFF_FFFF).to_bytes(4, "little"))
            await window.write(entry + 4, (vec.addr >> 32).to_bytes(4, "little"))
            await window.write(entry + 8, vec.data.to_bytes(4, "little"))
            await window.write(entry + 12, (0).to_bytes(4, "little"))
        control = await self._cfg_read(self.msix_cap + 2, 2)
        await self.ep.config_write(self.msix_cap + 2, ((control | 0x8000) & ~0x4000).to_bytes(2, "little"))

    def _msi_handler(self, vector: int):
        async def handler() -> None:
            self.activity += 1
            self.irq_count += 1
            if self.irqs is not None:
                self.irqs.signal(vector)

        return handler

    async def _cfg_read(self, offset: int, size: int) -> int:
        data = await self.ep.config_read(offset, size, timeout=REQUEST_TIMEOUT_NS, timeout_unit="ns")
        return int.from_bytes(bytes(data), "little")

    def attach(self, memory: GuestMemory, irqs: Interrupts) -> None:
        self.memory = memory
        self.irqs = irqs

    def detach(self) -> None:
        self.memory = None
        self.irqs = None

    def intx_asserted(self) -> bool:
        return False

    def _msix_control(self, offset: int, size: int) -> bool:
        return self.msix_cap and offset < self.msix_cap + 4 and offset + size > self.msix_cap + 2

    async def config_read(self, offset: int, size: int) -> bytes:
        value = await self._cfg_read(offset, size)
        if self._msix_control(offset, size):  # the guest sees its own enable/mask bits (a VMM's view)
            shift = 8 * (self.msix_cap + 2 - offset)
            mask = 0xC000 << shift if shift >= 0 else 0xC000 >> -shift
            guest = self.guest_msix_control << shift if shift >= 0 else self.guest_msix_control >> -shift
            value = (value & ~mask) | (guest & mask)
        return (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")

    async def config_write(self, offset: int, data: bytes) -> None:
        if offset in BAR_REGS or offset in ROM_REG:
            return  # BARs belong to the link's enumeration; QEMU emulates the guest's view of them
        if self._msix_control(offset, len(data)):
            value = int.from_bytes(data, "little")
            shift = 8 * (self.msix_cap + 2 - offset)
            guest = value >> shift if shift >= 0 else value << -shift
            self.guest_msix_control = guest & 0xC000
            return
        await self.ep.config_write(offset, data, timeout=REQUEST_TIMEOUT_NS, timeout_unit="ns")

    async def bar_read(self, bar: int, offset: int, size: int) -> bytes:
        data = await self.ep.bar_window[bar].read(offset, size, timeout=REQUEST_TIMEOUT_NS, timeout_unit="ns")
        return bytes(data)

    async def bar_write(self, bar: int, offset: int, data: bytes) -> None:
        await self.ep.bar_window[bar].write(offset, bytes(data))

    async def reset(self) -> None:
        """Function reset: the user logic's reset, then the platform's MSI-X programming again."""
        await self.bench.reset()
        await self.program_msix()


def _send(conn: socket.socket, reply: Message) -> None:
    conn.setblocking(True)
    try:
        p.send_message(conn, reply)
    finally:
        conn.setblocking(False)


async def _serve(dut) -> None:
    sock_path = Path(os.environ["VIRTIO_FPGA_VFU_SOCKET"])
    ready = os.environ.get("VIRTIO_FPGA_VFU_READY")
    once = os.environ.get("VIRTIO_FPGA_VFU_ONCE") == "1"
    port_env = os.environ.get("VIRTIO_FPGA_VFU_PORT", "")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
    for name in ("vfio_user", "vfio_user.rtl"):
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).setLevel(logging.INFO)
        logging.getLogger(name).propagate = False
    bench = await EndpointBench.create(dut)
    link = None
    if port_env:
        local, remote = port_env.split(",")
        link = DatagramPort(Path(local), Path(remote))
        dut.loopback_enable.value = 0
    ep = await bench.init()
    backend = RtlBackend(bench, ep)
    await backend.setup()
    eth_out = eth_in = None
    if link is not None:
        eth_out = AxiStreamSink(AxiStreamBus.from_prefix(dut, "eth_tx"), dut.user_clk, dut.user_reset)
        eth_in = AxiStreamSource(AxiStreamBus.from_prefix(dut, "eth_rx"), dut.user_clk, dut.user_reset)
        for s in (eth_out, eth_in):
            s.log.setLevel(logging.WARNING)

        async def frames_out() -> None:
            while True:
                frame = await eth_out.recv()
                backend.activity += 1
                link.send(bytes(frame.tdata))

        cocotb.start_soon(frames_out())
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with contextlib.suppress(FileNotFoundError):
        sock_path.unlink()
    listener.bind(str(sock_path))
    listener.listen(1)
    listener.setblocking(False)
    if ready:
        Path(ready).write_text(f"{os.getpid()}\n")
    log.info("rtl: listening on %s (loopback %s)", sock_path, "off" if link else "on")

    quiet = 0
    last = (0, 0, 0)
    report = {"wall": time.monotonic(), "cycles": bench.counters.cycles}

    def progress() -> None:
        now = time.monotonic()
        if now - report["wall"] >= 30:
            rate = (bench.counters.cycles - report["cycles"]) / (now - report["wall"])
            log.info("rtl: %d simulated cycles so far, %.0f cycles/s lately", bench.counters.cycles, rate)
            report.update(wall=now, cycles=bench.counters.cycles)

    async def idle(fds: list) -> None:
        """Advance simulated time; when nothing moved for a while, also wait (wall time) for the sockets."""
        nonlocal quiet, last
        if link is not None:
            link.flush()
            while (frame := link.receive()) is not None:
                await eth_in.send(AxiStreamFrame(frame))
                backend.activity += 1
        now = (bench.counters.dma_read_requests + bench.counters.dma_write_requests, backend.activity, 0)
        quiet = 0 if now != last else quiet + 1
        last = now
        progress()
        if quiet > QUIET_STEPS:
            select.select(fds + ([link.sock] if link else []), [], [], WALL_WAIT_S)
        await Timer(STEP_NS, "ns")

    while True:
        conn = None
        while conn is None:
            try:
                conn, _ = listener.accept()
            except BlockingIOError:
                await idle([listener])
        conn.setblocking(False)
        session = Session(backend, name=f"rtl@{sock_path.name}")
        reader = p.MessageReader(conn)
        log.info("rtl: client connected")
        started = time.monotonic()
        try:
            while True:
                try:
                    msg = reader.poll()
                except p.StreamCorrupt as exc:
                    bad = reader.corrupt_header
                    log.warning("rtl: corrupt header (%s): closing the connection", exc)
                    if bad is not None:
                        with contextlib.suppress(OSError):
                            _send(conn, p.error_reply(Message(bad[0], bad[1], 0), errno.EINVAL))
                    break
                if msg is None:
                    await idle([conn])
                    continue
                quiet = 0
                progress()
                reply = await session.handle(msg)
                if reply is not None:
                    _send(conn, reply)
        except (p.Disconnected, OSError) as exc:
            log.info("rtl: client disconnected (%s)", exc)
        finally:
            reader.close()
            session.close()
            backend.detach()
            conn.close()
        log.info(
            "rtl: session ended after %.1f s wall, %d simulated cycles, %d MSI-X interrupts, messages %s",
            time.monotonic() - started,
            bench.counters.cycles,
            backend.irq_count,
            session.counts,
        )
        monitor = bench.dma_monitor
        if monitor is not None:  # a served device has no test to fail: say what the DMA monitor saw
            report_fn = log.error if monitor.violation_count else log.info
            report_fn(
                "rtl: DMA monitor %s%s",
                monitor.stats(),
                f"; first: {monitor.violations[0]}" if monitor.violations else "",
            )
        if once:
            break
    listener.close()
    if link is not None:
        link.close()


@cocotb.test(timeout_time=None)
async def serve_vfio_user(dut) -> None:
    """Serve the DUT on the socket named by VIRTIO_FPGA_VFU_SOCKET until the client leaves (or forever)."""
    await _serve(dut)


def serve(
    socket_path: Path,
    *,
    port: tuple[Path, Path] | None = None,
    mac: bytes | None = None,
    once: bool = False,
    data_width: int = 256,
) -> int:
    """Build (cached) and run the simulation that serves the RTL; returns when it ends (SIGTERM ends it too)."""
    from cocotb_tools.runner import get_runner

    from sim.runner import REPO, TOPLEVEL, build
    from virtio_fpga.errors import CliError

    if mac is not None and mac != dm.DEFAULT_MAC:
        raise CliError(f"the RTL's MAC is fixed by the gateware ({dm.DEFAULT_MAC.hex(':')}); drop --mac")
    print(
        f"vfio-user: rtl: building the {data_width}-bit design for Icarus (cached after the first time)",
        file=sys.stderr,
    )
    build_dir = build(data_width)
    print("vfio-user: rtl: starting the simulation", file=sys.stderr, flush=True)
    run_dir = build_dir / f"serve_{os.getpid()}"
    run_dir.mkdir(exist_ok=True)
    ready = run_dir / "ready"
    ready.unlink(missing_ok=True)
    env = {
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "COCOTB_LOG_LEVEL": os.environ.get("COCOTB_LOG_LEVEL", "WARNING"),
        "VIRTIO_FPGA_VFU_SOCKET": str(Path(socket_path).resolve()),
        "VIRTIO_FPGA_VFU_READY": str(ready),
        "VIRTIO_FPGA_VFU_ONCE": "1" if once else "0",
        "VIRTIO_FPGA_VFU_PORT": f"{Path(port[0]).resolve()},{Path(port[1]).resolve()}" if port else "",
    }
    # The simulator must not write to our stdout (a supervisor reads one line there): send it to stderr.
    announce_fd = os.dup(1)
    os.dup2(2, 1)
    stop = threading.Event()

    def announce() -> None:
        while not stop.is_set():
            if ready.exists():
                with os.fdopen(announce_fd, "w") as out:
                    where = f"{socket_path}" + (f", port {port[0]} -> {port[1]}" if port else ", port: loopback")
                    out.write(f"vfio-user: rtl device listening on {where}\n")
                    out.flush()
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=announce, daemon=True)
    watcher.start()

    def terminate(signum, frame):  # noqa: ANN001 - signal handler signature
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    runner = get_runner("icarus")
    try:
        runner.test(
            test_module="sim.vfio_user_rtl",
            hdl_toplevel=TOPLEVEL,
            hdl_toplevel_lang="verilog",
            testcase="serve_vfio_user",
            build_dir=build_dir,
            test_dir=run_dir,
            results_xml=str(run_dir / "results.xml"),
            extra_env=env,
            timescale=("1ns", "1ps"),
        )
    except SystemExit as exc:  # cocotb_tools exits non-zero when the test failed
        return int(exc.code or 1)
    finally:
        stop.set()
    return 0
