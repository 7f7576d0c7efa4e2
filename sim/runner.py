"""Amaranth -> Verilog -> Icarus through ``cocotb_tools.runner``, callable from plain Python.

* :func:`build` generates ``virtio_net_endpoint`` for a data width and core and compiles it with Icarus.  The
  build is cached under ``build/sim/<key>``, where the key hashes every source the design is made from
  (``hdl/**.py``, ``virtio_fpga/{spec,device_map}.py``) and the parameters, so an unchanged design is not
  regenerated.  ``waves=True`` builds a separate copy that dumps an FST waveform.
* :func:`run_scenario` runs one host-side scenario (an ``async def fn(transport, **args) -> dict``) against the
  RTL through the generic bridge in :mod:`sim.bench`, and returns its result dict plus simulation statistics.
  It raises :class:`SimulationError` when the cocotb test fails, with the log's tail in the message.
* :func:`run_cocotb` runs arbitrary cocotb test modules against the same build.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUILD_ROOT = Path(os.environ.get("VIRTIO_FPGA_BUILD", REPO / "build" / "sim"))
TOPLEVEL = "virtio_net_endpoint"


class SimulationError(RuntimeError):
    """The simulation ran but its cocotb test failed (or produced no result)."""


#: PCIe families: "usp" (Xilinx UltraScale+, hdl/top.py) and "ptile" (Intel P-tile, hdl/pcie/ptile/top.py).
FAMILIES = ("usp", "ptile")


def _design_key(
    data_width: int, core: str, waves: bool, timeout: int, family: str = "usp", planted_bug: str | None = None
) -> str:
    h = hashlib.sha256()
    # the stand-in core does not use hdl/virtio: its builds survive edits there
    hdl_files = [
        f
        for f in sorted((REPO / "hdl").rglob("*.py"))
        if core != "test" or "virtio" not in f.relative_to(REPO / "hdl").parts
    ]
    files = hdl_files + [REPO / "virtio_fpga" / "spec.py", REPO / "virtio_fpga" / "device_map.py", Path(__file__)]
    for f in files:
        h.update(str(f.relative_to(REPO)).encode())
        h.update(f.read_bytes())
    h.update(f"{data_width}:{core}:{waves}:{timeout}:{family}".encode())
    if planted_bug is not None:
        h.update(f":planted:{planted_bug}".encode())
    return h.hexdigest()[:16]


_AUTO_TRIGGER = re.compile(r"^(\s*)reg (\\\$auto\$verilog_backend\S*)\s+= 0;$", re.MULTILINE)


def icarus_time_zero_fix(text: str) -> str:
    """Make Icarus evaluate every combinational block once after time 0.

    Yosys' Verilog backend gives each ``always @*`` block a dummy sensitivity register declared ``= 0`` so that
    it runs at time 0.  Icarus 11 applies declaration initialisers without an event, so a block whose real
    inputs never change (an FSM output decoded from a state that stays in reset) would stay X forever.
    Toggling the dummy register after 1 ns wakes every such block once; the logic itself is unchanged.
    """
    return _AUTO_TRIGGER.sub(lambda mo: f"{mo.group(0)}\n{mo.group(1)}initial #1 {mo.group(2)} = 1;", text)


def build(
    data_width: int = 256,
    *,
    core: str = "virtio",
    waves: bool = False,
    dma_timeout_cycles: int = 1 << 16,
    family: str = "usp",
    planted_bug: str | None = None,
) -> Path:
    """Generate and compile the design; returns the build directory (cached).

    ``planted_bug`` (TEST ONLY, one of ``hdl.virtio.core.PLANTED_BUGS``) builds the virtio core with that
    deliberate bug, for the DMA monitor's tests; it is kept in a build directory of its own.
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, not {family!r}")
    if planted_bug is not None and core != "virtio":
        raise ValueError("planted_bug needs the virtio core")
    key = _design_key(data_width, core, waves, dma_timeout_cycles, family, planted_bug)
    suffix = ("" if family == "usp" else f"_{family}") + (f"_planted_{planted_bug}" if planted_bug else "")
    build_dir = BUILD_ROOT / f"{TOPLEVEL}_{data_width}_{core}{suffix}_{key}"
    source = build_dir / f"{TOPLEVEL}.v"
    stamp = build_dir / ".built"
    if stamp.exists():
        return build_dir
    build_dir.mkdir(parents=True, exist_ok=True)
    with open(build_dir / ".lock", "w") as lock:  # two processes building the same design: one builds
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not stamp.exists():
            _build_locked(build_dir, source, stamp, data_width, core, waves, dma_timeout_cycles, family, planted_bug)
    return build_dir


def _build_locked(
    build_dir: Path,
    source: Path,
    stamp: Path,
    data_width: int,
    core: str,
    waves: bool,
    dma_timeout_cycles: int,
    family: str = "usp",
    planted_bug: str | None = None,
) -> None:
    from amaranth.back import verilog
    from cocotb_tools.runner import get_runner

    if family == "ptile":
        from hdl.pcie.ptile.top import PtileVirtioNetEndpoint as Top
    else:
        from hdl.top import VirtioNetEndpoint as Top

    if planted_bug is not None:
        from hdl.top import planted_bug_core

        top = Top(data_width, core=planted_bug_core(planted_bug), dma_timeout_cycles=dma_timeout_cycles)
    else:
        top = Top(data_width, core=core, dma_timeout_cycles=dma_timeout_cycles)
    source.write_text(icarus_time_zero_fix(verilog.convert(top, name=TOPLEVEL, emit_src=False)))
    runner = get_runner("icarus")
    runner.build(
        sources=[source],
        hdl_toplevel=TOPLEVEL,
        build_dir=build_dir,
        waves=waves,
        timescale=("1ns", "1ps"),
        always=True,
        log_file=build_dir / "build.log",
    )
    stamp.write_text("ok\n")


def run_cocotb(
    test_module: str,
    *,
    testcase: str | list[str] | None = None,
    data_width: int = 256,
    core: str = "virtio",
    waves: bool = False,
    extra_env: dict[str, str] | None = None,
    dma_timeout_cycles: int = 1 << 16,
    family: str = "usp",
    planted_bug: str | None = None,
) -> Path:
    """Run cocotb tests; raises :class:`SimulationError` if any fails.  Returns the run directory."""
    from cocotb_tools.runner import get_results, get_runner

    build_dir = build(
        data_width,
        core=core,
        waves=waves,
        dma_timeout_cycles=dma_timeout_cycles,
        family=family,
        planted_bug=planted_bug,
    )
    run_dir = Path(tempfile.mkdtemp(prefix="run_", dir=build_dir))
    results = run_dir / "results.xml"
    log_file = run_dir / "sim.log"
    env = {
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "COCOTB_LOG_LEVEL": os.environ.get("COCOTB_LOG_LEVEL", "WARNING"),
        "VIRTIO_FPGA_FAMILY": family,
        "VIRTIO_FPGA_CORE": core,  # the bench attaches the virtio DMA monitor to every core but the test core
    }
    env.update(extra_env or {})
    runner = get_runner("icarus")
    try:
        runner.test(
            test_module=test_module,
            hdl_toplevel=TOPLEVEL,
            hdl_toplevel_lang="verilog",
            testcase=testcase,
            build_dir=build_dir,
            test_dir=run_dir,
            results_xml=str(results),
            extra_env=env,
            waves=waves,
            log_file=log_file,
            timescale=("1ns", "1ps"),
        )
    except SystemExit:  # cocotb_tools exits when a test failed; the results file says which
        pass
    except Exception as exc:  # the runner raises when the simulator fails to produce results
        raise SimulationError(f"{test_module}: simulation failed: {exc}\n{_tail(log_file)}") from exc
    try:
        _, failed = get_results(results)
    except Exception as exc:
        raise SimulationError(f"{test_module}: no results ({exc})\n{_tail(log_file)}") from exc
    if waves:  # Icarus' dump module writes next to the build; keep each run's waves with its log
        dump = build_dir / f"{TOPLEVEL}.fst"
        if dump.exists():
            shutil.move(dump, run_dir / "waves.fst")
    if failed:
        raise SimulationError(f"{test_module}: {failed} cocotb test(s) failed; log {log_file}\n{_tail(log_file)}")
    return run_dir


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def read_latency_from_env() -> float:
    """``VIRTIO_FPGA_READ_LATENCY_NS`` as a number of nanoseconds (0 when unset); a bad value is an error."""
    text = os.environ.get("VIRTIO_FPGA_READ_LATENCY_NS", "").strip()
    try:
        value = float(text) if text else 0.0
    except ValueError:
        raise ValueError(f"VIRTIO_FPGA_READ_LATENCY_NS={text!r} is not a number of nanoseconds") from None
    if value < 0:
        raise ValueError(f"VIRTIO_FPGA_READ_LATENCY_NS={text!r} is negative")
    return value


def run_scenario(
    scenario: str,
    args: dict | None = None,
    *,
    waves: bool = False,
    data_width: int = 256,
    backpressure: bool = False,
    core: str = "virtio",
    seed: int = 1,
    target: str = "rtl",
    peer: str | None = None,
    sim_timeout_ms: float = 20.0,
    read_latency_ns: float | None = None,
    family: str = "usp",
    dma_monitor: str = "fail",
    planted_bug: str | None = None,
) -> dict:
    """Run ``module:function`` against the RTL; returns its dict plus ``sim_cycles``, DMA counts, guard check.

    The function is called as ``await fn(transport, **args)`` with a :class:`sim.transport.CocotbPcieTransport`.
    ``target="soft"`` runs it on the software reference device attached to the same RootComplex instead;
    ``peer="soft"`` attaches that device as well and passes its transport as ``peer_transport``.
    ``sim_timeout_ms`` bounds the scenario in simulated time (20 ms = 5 million cycles at 250 MHz).
    ``read_latency_ns`` delays the completions of every host memory read by that much (reads stay pipelined,
    see :class:`sim.testbench.ReadLatency`); ``None`` takes ``VIRTIO_FPGA_READ_LATENCY_NS`` from the
    environment (default 0, the model's own latency), so a whole test run can be repeated at a real host's.
    ``family`` picks the PCIe hard IP the endpoint is built for and simulated behind: ``"usp"`` (UltraScale+,
    :mod:`sim.usp`) or ``"ptile"`` (Intel P-tile with the VirtIO option, :mod:`sim.ptile`).
    ``dma_monitor``: ``"fail"`` stops the run at the first stray DMA request (:class:`SimulationError`);
    ``"stop"`` stops there too but returns the result, with the violation in ``result["dma_violations"]``;
    ``"record"`` lets the scenario run on and returns every violation there.
    ``planted_bug`` (TEST ONLY) runs a build of the core with that deliberate bug (see :func:`build`).
    """
    if read_latency_ns is None:
        read_latency_ns = read_latency_from_env()
    with tempfile.TemporaryDirectory(prefix="virtio_fpga_result_") as tmp:
        result_path = Path(tmp) / "result.json"
        env = {
            "VIRTIO_FPGA_SCENARIO": scenario,
            "VIRTIO_FPGA_ARGS": json.dumps(args or {}),
            "VIRTIO_FPGA_RESULT": str(result_path),
            "VIRTIO_FPGA_BACKPRESSURE": "1" if backpressure else "0",
            "VIRTIO_FPGA_SEED": str(seed),
            "VIRTIO_FPGA_TARGET": target,
            "VIRTIO_FPGA_PEER": peer or "",
            "VIRTIO_FPGA_SIM_TIMEOUT_MS": str(sim_timeout_ms),
            "VIRTIO_FPGA_READ_LATENCY_NS": repr(float(read_latency_ns)),
            "VIRTIO_FPGA_DMA_MONITOR": dma_monitor,
        }
        run_dir = run_cocotb(
            "sim.bench",
            testcase="run_scenario",
            data_width=data_width,
            core=core,
            waves=waves,
            extra_env=env,
            family=family,
            planted_bug=planted_bug,
        )
        if not result_path.exists():
            raise SimulationError(f"scenario {scenario} wrote no result ({run_dir})")
        result = json.loads(result_path.read_text())
        if waves:
            result["waves"] = str(run_dir / "waves.fst")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)  # logs of passing runs are not kept
        return result
