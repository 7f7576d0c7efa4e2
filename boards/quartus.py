"""The Quartus Prime Pro build tree for a P-tile board: endpoint Verilog, hard-IP Tcl, wrapper, .qsf, .sdc, run script.

Everything is derived, as in ``boards/vivado.py``: the PCI identity, BAR 0, the MSI-X table and PBA and the five
virtio capabilities (BAR, offset, length, notify_off_multiplier) come from ``virtio_fpga.device_map``; the
endpoint's ports from ``hdl.pcie.ptile.top.ptile_top_ports()``; pins from the board's Amaranth platform.
``tests/test_boards_ptile.py`` regenerates the tree and checks every one of these links.

Tree (``write_tree``)::

    virtio_net_endpoint.v   the endpoint (Amaranth output, P-tile build)
    virtio_fpga_top.v       wrapper: P-tile hard IP instance, reset release, endpoint instance, LEDs
    pcie_ip.tcl             qsys-script: the intel_pcie_ptile_ast instance with its VirtIO option, and the
                            Reset Release IP; saved as pcie_ptile.ip / reset_release.ip
    virtio_fpga_top.qpf     the Quartus project
    virtio_fpga_top.qsf     device, top entity, sources, pins and I/O standards from the board file
    virtio_fpga_top.sdc     the reference clock, PERST# as an asynchronous input (the IP's own .sdc constrains
                            coreclkout_hip and its internal clocks)
    run.sh                  qsys-script, qsys-generate, quartus_sh --flow compile
    manifest.json           every number above, for tools and tests

What is taken from Intel document 683059 and what is assumed (the ``*_hwtcl`` parameter names and the ``p0_``
port names are those of the IP as shipped with Quartus Prime Pro 23.x-25.x as far as public material shows;
they are checked by Quartus itself, not here): see ``boards/README.md``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from amaranth.build import DiffPairs, Pins

from boards.intel import PtileBoardPlatform
from virtio_fpga import device_map
from virtio_fpga.spec import CfgType

Port = tuple[str, str, int]

TOP = "virtio_fpga_top"
ENDPOINT = "virtio_net_endpoint"
IP_NAME = "pcie_ptile"
IP_COMPONENT = "intel_pcie_ptile_ast"
RESET_IP_NAME = "reset_release"
SUPPORTED_WIDTHS = (256,)

#: Endpoint ports that the wrapper drives itself (not from the hard IP): the Ethernet side and loopback.
ETH_PREFIXES = ("eth_tx_", "eth_rx_")


def topology(board: PtileBoardPlatform, data_width: int) -> str:
    """The IP's "Hard IP mode" (683059 5.2 "Top-Level Settings"): 256 bits carry Gen4 x8 at 250 MHz."""
    if data_width not in SUPPORTED_WIDTHS:
        raise ValueError(f"data width {data_width}: the P-tile build implements {SUPPORTED_WIDTHS}")
    return f"Gen{board.pcie.gen}x{board.pcie.lanes}, Interface - {data_width} bit"


def ip_port_name(name: str, direction: str) -> str:
    """The hard IP's name for an endpoint port: ``p0_`` + name + ``_o`` (IP output) or ``_i`` (IP input).

    The clock leaves the IP as ``coreclkout_hip`` without a port prefix (683059 4.2 "Clocks").
    """
    if name == "coreclkout_hip":
        return name
    return f"p0_{name}_{'o' if direction == 'in' else 'i'}"


def ip_ports(ports: Sequence[Port], board: PtileBoardPlatform) -> dict[str, tuple[str, int]]:
    """{IP port: (direction seen from the IP, width)}: the user side mirrors the endpoint, plus the IP's own pins."""
    out: dict[str, tuple[str, int]] = {}
    for name, direction, width in ports:
        if name.startswith(ETH_PREFIXES) or name == "loopback_enable":
            continue
        out[ip_port_name(name, direction)] = ("o" if direction == "in" else "i", width)
    lanes = board.pcie.lanes
    out.update(
        {
            "refclk0": ("i", 1),
            "refclk1": ("i", 1),
            "pin_perst_n": ("i", 1),
            "ninit_done": ("i", 1),
            "p0_pin_perst_n": ("o", 1),
            "p0_link_up_o": ("o", 1),
            "p0_dl_up_o": ("o", 1),
            "p0_ltssm_state_o": ("o", 6),
        }
    )
    for i in range(lanes):
        out[f"rx_p_in{i}"] = ("i", 1)
        out[f"rx_n_in{i}"] = ("i", 1)
        out[f"tx_p_out{i}"] = ("o", 1)
        out[f"tx_n_out{i}"] = ("o", 1)
    return out


def _cap(cfg_type: CfgType) -> device_map.VirtioCap:
    return next(c for c in device_map.VIRTIO_CAPS if c.cfg_type == cfg_type)


def ip_parameters(board: PtileBoardPlatform, data_width: int) -> dict[str, str]:
    """``set_instance_parameter_value`` of the P-tile instance, from ``device_map`` (PF0 on port 0 = core16)."""
    dm = device_map
    c = "core16_"
    pf = f"{c}pf0_"
    params = {
        "top_topology_hwtcl": topology(board, data_width),
        f"{c}pld_clk_freq_hwtcl": "250MHz",
        "ctrl_hwtcl": "Endpoint",  # port type
        f"{c}enable_rx_buffer_limit_ports_hwtcl": "1",
        f"{c}enable_virtio_hwtcl": "1",
        # identity (683059 5.x "Device Identification Registers")
        f"{pf}pci_type0_vendor_id_hwtcl": f"0x{dm.VENDOR_ID:04X}",
        f"{pf}pci_type0_device_id_hwtcl": f"0x{dm.DEVICE_ID:04X}",
        f"{pf}subsys_vendor_id_hwtcl": f"0x{dm.SUBSYSTEM_VENDOR_ID:04X}",
        f"{pf}subsys_dev_id_hwtcl": f"0x{dm.SUBSYSTEM_ID:04X}",
        f"{pf}revision_id_hwtcl": f"0x{dm.REVISION_ID:02X}",
        f"{pf}class_code_hwtcl": f"0x{dm.CLASS_CODE:06X}",
        # BAR 0: 64-bit non-prefetchable memory, address width log2(size) (683059 5.x "Base Address Registers")
        f"{pf}bar0_type_hwtcl": "64-bit non-prefetchable memory",
        f"{pf}bar0_address_width_hwtcl": str(dm.BAR_SIZE.bit_length() - 1),
        # MSI-X (683059 4.6.3): table and PBA in BAR 0, implemented by the endpoint; MSI off (3.2.2.1)
        f"{pf}pci_msix_enable_hwtcl": "1",
        f"{pf}pci_msix_table_size_hwtcl": str(dm.NUM_MSIX_VECTORS - 1),
        f"{pf}pci_msix_bir_hwtcl": str(dm.BAR),
        f"{pf}pci_msix_table_offset_hwtcl": f"0x{dm.MSIX_TABLE_OFFSET:08X}",
        f"{pf}pci_msix_pba_hwtcl": str(dm.BAR),
        f"{pf}pci_msix_pba_offset_hwtcl": f"0x{dm.MSIX_PBA_OFFSET:08X}",
        f"{pf}pci_msi_enable_hwtcl": "0",
    }
    # the VirtIO capabilities (683059 3.2.2.5 registers, 5.x "VirtIO Parameters"): BAR indicator, offset, length
    names = {
        CfgType.COMMON: "common_cfg",
        CfgType.NOTIFY: "notification",
        CfgType.ISR: "isr_status",
        CfgType.DEVICE: "device_specific",
    }
    for cfg_type, short in names.items():
        cap = _cap(cfg_type)
        params[f"{pf}virtio_{short}_bar_indicator_hwtcl"] = str(cap.bar)
        params[f"{pf}virtio_{short}_bar_offset_hwtcl"] = f"0x{cap.offset:08X}"
        params[f"{pf}virtio_{short}_structure_length_hwtcl"] = f"0x{cap.length:08X}"
    params[f"{pf}virtio_device_specific_cap_enable_hwtcl"] = "1"
    params[f"{pf}virtio_notification_notify_off_multiplier_hwtcl"] = str(dm.NOTIFY_OFF_MULTIPLIER)
    params[f"{pf}virtio_pci_cfg_access_enable_hwtcl"] = "1"
    return params


def ip_tcl(board: PtileBoardPlatform, data_width: int) -> str:
    """qsys-script: the hard IP and the Reset Release IP as .ip files."""
    L = [
        f"# Generated by `virtio-fpga bitstream --board {board.board_name}` (boards/quartus.py): do not edit.",
        "# qsys-script --script=pcie_ip.tcl --quartus-project=virtio_fpga_top",
        "# The P-tile Avalon-ST hard IP with its VirtIO option (Intel 683059 3.2.2): the hard IP presents the",
        "# common, notify, ISR, device and PCI-cfg-access capabilities from these parameters; the endpoint serves",
        "# the structures in BAR 0 and the virtio_pcicfg_* interface.  All numbers come from device_map.",
        "# Parameter names: see boards/README.md (checked by Quartus at generation, not by this project).",
        "package require qsys",
        f"create_system {IP_NAME}",
        f"set_project_property DEVICE {board.part}",
        "set_project_property DEVICE_FAMILY {Agilex 7}",
        f"add_instance {IP_NAME}_0 {IP_COMPONENT}",
    ]
    for k, v in ip_parameters(board, data_width).items():
        L.append(f"set_instance_parameter_value {IP_NAME}_0 {{{k}}} {{{v}}}")
    L += [
        f"set_instance_property {IP_NAME}_0 AUTO_EXPORT true",
        f"save_system {IP_NAME}.ip",
        "",
        "# ninit_done for the hard IP: the Reset Release IP (683059 4.2: hold the IP in reset until the device",
        "# has entered user mode)",
        f"create_system {RESET_IP_NAME}",
        f"set_project_property DEVICE {board.part}",
        "set_project_property DEVICE_FAMILY {Agilex 7}",
        f"add_instance {RESET_IP_NAME}_0 altera_s10_user_rst_clkgate",
        f"set_instance_property {RESET_IP_NAME}_0 AUTO_EXPORT true",
        f"save_system {RESET_IP_NAME}.ip",
        "",
    ]
    return "\n".join(L)


def _rng(w: int) -> str:
    return f"[{w - 1}:0] " if w > 1 else ""


def wrapper_verilog(board: PtileBoardPlatform, ports: Sequence[Port], data_width: int) -> str:
    """The board top: the hard IP, the reset release, the endpoint joined port by port, LEDs."""
    ipp = ip_ports(ports, board)
    lanes = board.pcie.lanes
    n_led = board.led_count()
    L = [
        f"// Generated by `virtio-fpga bitstream --board {board.board_name}` (boards/quartus.py): do not edit.",
        f"// {board.title} ({board.part}): P-tile Avalon-ST Gen{board.pcie.gen} x{lanes}, {data_width}-bit, "
        "VirtIO option; endpoint ports from hdl.pcie.ptile.top.ptile_top_ports().",
        "`default_nettype none",
        f"module {TOP} (",
        "    input  wire pcie_refclk,",
        "    input  wire pcie_perst_n,",
        f"    input  wire [{lanes - 1}:0] pcie_rx_p,",
        f"    input  wire [{lanes - 1}:0] pcie_rx_n,",
        f"    output wire [{lanes - 1}:0] pcie_tx_p,",
        f"    output wire [{lanes - 1}:0] pcie_tx_n,",
        f"    output wire [{n_led - 1}:0] led",
        ");",
        "",
        "    // every endpoint port becomes a wire of the same name and width",
    ]
    for name, _d, w in ports:
        L.append(f"    wire {_rng(w)}{name};")
    L += [
        "    wire ninit_done, link_up, dl_up, ip_perst_n;",
        "    wire [5:0] ltssm_state;",
        "",
        f"    {RESET_IP_NAME} {RESET_IP_NAME}_inst (.ninit_done(ninit_done));",
        "",
    ]
    conns = [
        "        .refclk0(pcie_refclk)",
        "        .refclk1(pcie_refclk)",
        "        .pin_perst_n(pcie_perst_n)",
        "        .ninit_done(ninit_done)",
        "        .p0_pin_perst_n(ip_perst_n)",
        "        .p0_link_up_o(link_up)",
        "        .p0_dl_up_o(dl_up)",
        "        .p0_ltssm_state_o(ltssm_state)",
    ]
    for i in range(lanes):
        conns += [
            f"        .rx_p_in{i}(pcie_rx_p[{i}])",
            f"        .rx_n_in{i}(pcie_rx_n[{i}])",
            f"        .tx_p_out{i}(pcie_tx_p[{i}])",
            f"        .tx_n_out{i}(pcie_tx_n[{i}])",
        ]
    for name, direction, _w in ports:
        if name.startswith(ETH_PREFIXES) or name == "loopback_enable":
            continue
        conns.append(f"        .{ip_port_name(name, direction)}({name})")
    assert all(c.split("(")[0].strip()[1:] in ipp for c in conns)
    L.append(f"    {IP_NAME} {IP_NAME}_inst (")
    L.append(",\n".join(conns))
    L += ["    );", ""]
    for name, direction, w in ports:
        if direction == "in" and name == "loopback_enable":
            L.append(f"    assign {name} = 1'b1;  // no MAC on this board build: the endpoint loops TX to RX")
        elif direction == "in" and name.startswith(ETH_PREFIXES):
            val = 1 if name.endswith("_tready") else 0
            L.append(f"    assign {name} = {w}'d{val};  // MAC port idle (see boards/README.md)")
    L.append("")
    L.append(f"    {ENDPOINT} endpoint (")
    L.append(",\n".join(f"        .{name}({name})" for name, _d, _w in ports))
    L += [
        "    );",
        "",
        "    reg [26:0] heartbeat = 27'd0;",
        "    always @(posedge coreclkout_hip) heartbeat <= heartbeat + 27'd1;",
    ]
    bits = ["link_up", "~reset_status_n", "heartbeat[26]"]
    bits = [bits[i] if i < len(bits) else f"ltssm_state[{i - len(bits)}]" for i in range(n_led)]
    L.append(f"    assign led = {{{', '.join(reversed(bits))}}};")
    L += ["endmodule", "`default_nettype wire", ""]
    return "\n".join(L)


def _pins(io: Pins | DiffPairs) -> list[tuple[str, str]]:
    if isinstance(io, DiffPairs):
        return [("", p) for p in io.p.names] + [("(n)", n) for n in io.n.names]
    return [("", p) for p in io.names]


def _attrs(obj: object) -> dict[str, str]:
    attrs = getattr(obj, "attrs", None)
    return {k: str(v) for k, v in (attrs or {}).items()}


def qsf(board: PtileBoardPlatform) -> str:
    """Project settings: device, top, sources and the pins of the resources the wrapper uses."""
    L = [
        f"# Generated by `virtio-fpga bitstream --board {board.board_name}` (boards/quartus.py): do not edit.",
        f"# {board.title}; pins from: " + "; ".join(board.sources),
        'set_global_assignment -name FAMILY "Agilex 7"',
        f"set_global_assignment -name DEVICE {board.part}",
        f"set_global_assignment -name TOP_LEVEL_ENTITY {TOP}",
        "set_global_assignment -name PROJECT_OUTPUT_DIRECTORY output_files",
        f"set_global_assignment -name VERILOG_FILE {ENDPOINT}.v",
        f"set_global_assignment -name VERILOG_FILE {TOP}.v",
        f"set_global_assignment -name IP_FILE {IP_NAME}.ip",
        f"set_global_assignment -name IP_FILE {RESET_IP_NAME}.ip",
        f"set_global_assignment -name SDC_FILE {TOP}.sdc",
    ]
    pcie = {s.name: s for s in board.lookup("pcie", 0).ios}
    for sub, port in (("refclk", "pcie_refclk"), ("perst_n", "pcie_perst_n")):
        s = pcie[sub]
        for suffix, pin in _pins(s.ios[0]):
            L.append(f'set_location_assignment PIN_{pin} -to "{port}{suffix}"')
        for k, v in _attrs(s).items():
            L.append(f'set_instance_assignment -name {k} "{v}" -to {port}')
    for i in range(board.led_count()):
        r = board.lookup("led", i)
        L.append(f"set_location_assignment PIN_{r.ios[0].names[0]} -to led[{i}]")
        for k, v in _attrs(r).items():
            L.append(f'set_instance_assignment -name {k} "{v}" -to led[{i}]')
    L += list(board.board_qsf)
    L.append("")
    return "\n".join(L)


def sdc(board: PtileBoardPlatform) -> str:
    period = 1000.0 / board.pcie.refclk_mhz
    return "\n".join(
        [
            f"# Generated by `virtio-fpga bitstream --board {board.board_name}` (boards/quartus.py): do not edit.",
            "# The P-tile IP's own .sdc (generated with pcie_ptile.ip) constrains coreclkout_hip and its internal",
            "# clocks; this file adds the board clock and the asynchronous reset pin.",
            f"create_clock -name pcie_refclk -period {period:.3f} [get_ports pcie_refclk]",
            "derive_clock_uncertainty",
            "set_false_path -from [get_ports pcie_perst_n]",
            "set_false_path -to [get_ports {led[*]}]",
            "",
        ]
    )


RUN_SH = """#!/bin/sh
# Generated by `virtio-fpga bitstream`: builds output_files/{top}.sof with Quartus Prime Pro (needs quartus_sh,
# qsys-script and qsys-generate on PATH, with the {part} device installed).
set -e
cd "$(dirname "$0")"
qsys-script --script=pcie_ip.tcl --quartus-project={top}
qsys-generate {ip}.ip --synthesis=VERILOG --quartus-project={top}
qsys-generate {rst}.ip --synthesis=VERILOG --quartus-project={top}
exec quartus_sh --flow compile {top}
"""


@dataclass
class Tree:
    out: Path
    files: dict[str, Path]
    manifest: dict


def manifest(board: PtileBoardPlatform, data_width: int, ports: Sequence[Port]) -> dict:
    dm = device_map
    return {
        "board": board.board_name,
        "family": board.family,
        "title": board.title,
        "part": board.part,
        "pcie": {
            "ip": IP_COMPONENT,
            "module": IP_NAME,
            "topology": topology(board, data_width),
            "gen": board.pcie.gen,
            "lanes": board.pcie.lanes,
            "edge_lanes": board.pcie.edge_lanes,
            "refclk_mhz": board.pcie.refclk_mhz,
            "data_width": data_width,
            "user_clk_mhz": 250,
        },
        "ids": {
            "vendor": dm.VENDOR_ID,
            "device": dm.DEVICE_ID,
            "subsystem_vendor": dm.SUBSYSTEM_VENDOR_ID,
            "subsystem": dm.SUBSYSTEM_ID,
            "revision": dm.REVISION_ID,
            "class": dm.CLASS_CODE,
        },
        "bar": {"index": dm.BAR, "size": dm.BAR_SIZE, "64bit": True, "prefetchable": False},
        "msix": {
            "vectors": dm.NUM_MSIX_VECTORS,
            "table_bar": dm.BAR,
            "table_offset": dm.MSIX_TABLE_OFFSET,
            "pba_bar": dm.BAR,
            "pba_offset": dm.MSIX_PBA_OFFSET,
        },
        "virtio_caps": [
            {"cfg_type": int(c.cfg_type), "bar": c.bar, "offset": c.offset, "length": c.length, **c.extra}
            for c in dm.VIRTIO_CAPS
        ],
        "ip_parameters": ip_parameters(board, data_width),
        "endpoint_ports": [[n, d, w] for n, d, w in ports],
    }


def write_tree(
    board: PtileBoardPlatform, out: Path, verilog: str, ports: Sequence[Port], data_width: int = 256
) -> Tree:
    """Write the complete Quartus tree for ``board`` into ``out``."""
    topology(board, data_width)  # refuses unsupported widths
    out.mkdir(parents=True, exist_ok=True)
    files = {
        f"{ENDPOINT}.v": verilog,
        f"{TOP}.v": wrapper_verilog(board, ports, data_width),
        "pcie_ip.tcl": ip_tcl(board, data_width),
        f"{TOP}.qpf": f'PROJECT_REVISION = "{TOP}"\n',
        f"{TOP}.qsf": qsf(board),
        f"{TOP}.sdc": sdc(board),
        "run.sh": RUN_SH.format(top=TOP, part=board.part, ip=IP_NAME, rst=RESET_IP_NAME),
    }
    m = manifest(board, data_width, ports)
    files["manifest.json"] = json.dumps(m, indent=2) + "\n"
    paths = {}
    for name, text in files.items():
        p = out / name
        p.write_text(text)
        paths[name] = p
    paths["run.sh"].chmod(0o755)
    return Tree(out, paths, m)


def quartus_available() -> str | None:
    return shutil.which("quartus_sh")


def run_quartus(tree: Tree, timeout: float = 6 * 3600) -> subprocess.CompletedProcess:
    with open(tree.out / "build.log", "w") as log:
        return subprocess.run(
            [str(tree.out / "run.sh")], cwd=tree.out, stdout=log, stderr=subprocess.STDOUT, timeout=timeout
        )


def ip_blackbox_verilog(ports: Sequence[Port], board: PtileBoardPlatform) -> str:
    """An empty module with the hard IP's ports as the wrapper uses them (for Yosys' hierarchy check in tests)."""
    ipp = ip_ports(ports, board)
    body = ",\n".join(f"    {'input' if d == 'i' else 'output'} wire {_rng(w)}{n}" for n, (d, w) in ipp.items())
    reset = f"(* blackbox *)\nmodule {RESET_IP_NAME} (output wire ninit_done);\nendmodule\n"
    return f"(* blackbox *)\nmodule {IP_NAME} (\n{body}\n);\nendmodule\n{reset}"
