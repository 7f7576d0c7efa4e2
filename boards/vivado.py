"""The Vivado build tree for a board: endpoint Verilog, PCIe IP Tcl, wrapper, constraints and run script.

Everything is derived, nothing is copied by hand: the PCI identity, BAR and MSI-X layout come from
``virtio_fpga.device_map`` (the numbers the gateware and the host driver share), the configuration-extend
windows from ``hdl.pcie.cfgext`` (where the virtio capabilities live), the endpoint ports from
``hdl.top.top_ports()`` and the pins from the board's Amaranth platform.  So the tree cannot drift from the
design: ``tests/test_boards.py`` regenerates it and checks each of these links.

Tree (``write_tree``)::

    virtio_net_endpoint.v   the endpoint (Amaranth output)
    virtio_fpga_top.v       wrapper: refclk buffers, PCIe IP instance, endpoint instance, LEDs, board ties
    pcie_ip.tcl             create_ip + CONFIG.* of the pcie4(c)_uscale_plus integrated block
    virtio_fpga_top.xdc     pins and I/O standards of the board resources used, refclk clock, board options
    build.tcl               non-project flow: IP synthesis, synth/place/route, reports, bitstream
    run.sh                  vivado -mode batch -source build.tcl
    manifest.json           every number above, for tools and tests
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from amaranth.build import DiffPairs, Pins

from boards.platform import PcieBoardPlatform, PcieLink
from virtio_fpga import device_map

Port = tuple[str, str, int]

TOP = "virtio_fpga_top"
ENDPOINT = "virtio_net_endpoint"
IP_INSTANCE = "pcie_ip"


#: User-interface widths the wrapper implements; the link is sized to carry each at 250 MHz (Gen3: 32 bits per
#: lane per 250 MHz cycle), so 128 -> x4, 256 -> x8, 512 -> x16.
SUPPORTED_WIDTHS = (128, 256, 512)


def link_for(board: PcieBoardPlatform, data_width: int) -> PcieLink:
    """The board's link, with the lane count that matches ``data_width`` (capped by the edge connector)."""
    if data_width not in SUPPORTED_WIDTHS:
        raise ValueError(f"data width {data_width}: the wrapper implements {SUPPORTED_WIDTHS}")
    return replace(board.pcie, lanes=min(board.pcie.edge_lanes, data_width // 32))


def refclk_subsignal(board: PcieBoardPlatform, lanes: int) -> str:
    """Which reference clock the link uses: a board may route a different one to the middle of a x16 link."""
    names = {s.name for s in board.lookup("pcie", 0).ios}
    return "refclk_x16" if lanes == 16 and "refclk_x16" in names else "refclk"


def ip_module_name(board: PcieBoardPlatform) -> str:
    """Module name of the generated IP (``pcie4_uscale_plus_0`` or ``pcie4c_uscale_plus_0``)."""
    return f"{board.pcie.ip}_0"


# ---------------------------------------------------------------------------------------------------------
# The IP's user-interface ports (PG213 "Port Descriptions", non-straddled AXI-stream below 512 bits).
# Direction is from the IP's point of view.  The same names and widths are what cocotbext-pcie's
# UltraScalePlusPcieDevice model takes, which is what the endpoint is simulated against.
# ---------------------------------------------------------------------------------------------------------


def ip_ports(data_width: int) -> dict[str, tuple[str, int]]:
    """{port name: (direction seen from the IP, width)} of the pcie4(c)_uscale_plus user interface."""
    if data_width not in SUPPORTED_WIDTHS:
        raise ValueError(f"data width {data_width}: the wrapper implements {SUPPORTED_WIDTHS}")
    kw = data_width // 32
    # tuser widths: CQ/CC/RQ/RC below 512 bits, and at 512 bits where they carry is_sop/is_eop (PG213)
    tu = {"cq": 183, "cc": 81, "rq": 137, "rc": 161} if data_width == 512 else {"cq": 88, "cc": 33, "rq": 62, "rc": 75}
    p: dict[str, tuple[str, int]] = {
        "user_clk": ("o", 1), "user_reset": ("o", 1), "user_lnk_up": ("o", 1), "phy_rdy_out": ("o", 1),
        # completer request (IP -> user) and completion (user -> IP)
        "m_axis_cq_tdata": ("o", data_width), "m_axis_cq_tkeep": ("o", kw), "m_axis_cq_tlast": ("o", 1),
        "m_axis_cq_tuser": ("o", tu["cq"]), "m_axis_cq_tvalid": ("o", 1), "m_axis_cq_tready": ("i", 1),
        "s_axis_cc_tdata": ("i", data_width), "s_axis_cc_tkeep": ("i", kw), "s_axis_cc_tlast": ("i", 1),
        "s_axis_cc_tuser": ("i", tu["cc"]), "s_axis_cc_tvalid": ("i", 1), "s_axis_cc_tready": ("o", 4),
        # requester request (user -> IP) and completion (IP -> user)
        "s_axis_rq_tdata": ("i", data_width), "s_axis_rq_tkeep": ("i", kw), "s_axis_rq_tlast": ("i", 1),
        "s_axis_rq_tuser": ("i", tu["rq"]), "s_axis_rq_tvalid": ("i", 1), "s_axis_rq_tready": ("o", 4),
        "m_axis_rc_tdata": ("o", data_width), "m_axis_rc_tkeep": ("o", kw), "m_axis_rc_tlast": ("o", 1),
        "m_axis_rc_tuser": ("o", tu["rc"]), "m_axis_rc_tvalid": ("o", 1), "m_axis_rc_tready": ("i", 1),
        "pcie_rq_seq_num0": ("o", 6), "pcie_rq_seq_num_vld0": ("o", 1),
        "pcie_rq_seq_num1": ("o", 6), "pcie_rq_seq_num_vld1": ("o", 1),
        "pcie_rq_tag0": ("o", 8), "pcie_rq_tag1": ("o", 8), "pcie_rq_tag_vld0": ("o", 1), "pcie_rq_tag_vld1": ("o", 1),
        "pcie_rq_tag_av": ("o", 4), "pcie_tfc_nph_av": ("o", 4), "pcie_tfc_npd_av": ("o", 4),
        "pcie_cq_np_req": ("i", 2), "pcie_cq_np_req_count": ("o", 6),
        # configuration status
        "cfg_phy_link_down": ("o", 1), "cfg_phy_link_status": ("o", 2), "cfg_negotiated_width": ("o", 3),
        "cfg_current_speed": ("o", 2), "cfg_max_payload": ("o", 2), "cfg_max_read_req": ("o", 3),
        "cfg_function_status": ("o", 16), "cfg_function_power_state": ("o", 12), "cfg_link_power_state": ("o", 2),
        "cfg_err_cor_out": ("o", 1), "cfg_err_nonfatal_out": ("o", 1), "cfg_err_fatal_out": ("o", 1),
        "cfg_ltssm_state": ("o", 6), "cfg_rcb_status": ("o", 4), "cfg_bus_number": ("o", 8),
        "cfg_flr_in_process": ("o", 4), "cfg_hot_reset_out": ("o", 1), "cfg_power_state_change_interrupt": ("o", 1),
        # configuration control
        "cfg_config_space_enable": ("i", 1), "cfg_dsn": ("i", 64), "cfg_power_state_change_ack": ("i", 1),
        "cfg_err_cor_in": ("i", 1), "cfg_err_uncor_in": ("i", 1), "cfg_flr_done": ("i", 4),
        "cfg_link_training_enable": ("i", 1), "cfg_hot_reset_in": ("i", 1),
        "cfg_ds_port_number": ("i", 8), "cfg_ds_bus_number": ("i", 8), "cfg_ds_device_number": ("i", 5),
        # legacy interrupts (unused: INTx is disabled in the IP) and MSI-X in "external table" mode
        "cfg_interrupt_int": ("i", 4), "cfg_interrupt_pending": ("i", 4), "cfg_interrupt_sent": ("o", 1),
        "cfg_interrupt_msix_enable": ("o", 4), "cfg_interrupt_msix_mask": ("o", 4),
        "cfg_interrupt_msix_address": ("i", 64), "cfg_interrupt_msix_data": ("i", 32),
        "cfg_interrupt_msix_int": ("i", 1), "cfg_interrupt_msix_vec_pending": ("i", 2),
        "cfg_interrupt_msix_vec_pending_status": ("o", 1),
        "cfg_interrupt_msix_sent": ("o", 1), "cfg_interrupt_msix_fail": ("o", 1),
        "cfg_interrupt_msi_function_number": ("i", 8), "cfg_interrupt_msi_attr": ("i", 3),
        "cfg_interrupt_msi_tph_present": ("i", 1), "cfg_interrupt_msi_tph_type": ("i", 2),
        "cfg_interrupt_msi_tph_st_tag": ("i", 8),
        # configuration extend (PG213 "Configuration Extend Interface")
        "cfg_ext_read_received": ("o", 1), "cfg_ext_write_received": ("o", 1),
        "cfg_ext_register_number": ("o", 10), "cfg_ext_function_number": ("o", 8),
        "cfg_ext_write_data": ("o", 32), "cfg_ext_write_byte_enable": ("o", 4),
        "cfg_ext_read_data": ("i", 32), "cfg_ext_read_data_valid": ("i", 1),
    }  # fmt: skip
    return p


#: IP inputs the endpoint may leave to the wrapper, and the level the wrapper then drives (PG213 defaults for an
#: endpoint that accepts every request and power-state change and exposes no serial number).
IP_INPUT_DEFAULTS: dict[str, int] = {
    "m_axis_cq_tready": 1, "m_axis_rc_tready": 1,
    "s_axis_cc_tvalid": 0, "s_axis_cc_tdata": 0, "s_axis_cc_tkeep": 0, "s_axis_cc_tlast": 0, "s_axis_cc_tuser": 0,
    "s_axis_rq_tvalid": 0, "s_axis_rq_tdata": 0, "s_axis_rq_tkeep": 0, "s_axis_rq_tlast": 0, "s_axis_rq_tuser": 0,
    "pcie_cq_np_req": 0b11,  # always ready for non-posted requests (PG213: 2'b11 = no flow control)
    "cfg_config_space_enable": 1, "cfg_dsn": 0, "cfg_power_state_change_ack": 1,
    "cfg_err_cor_in": 0, "cfg_err_uncor_in": 0, "cfg_flr_done": 0, "cfg_link_training_enable": 1,
    "cfg_hot_reset_in": 0, "cfg_ds_port_number": 0, "cfg_ds_bus_number": 0, "cfg_ds_device_number": 0,
    "cfg_interrupt_int": 0, "cfg_interrupt_pending": 0,
    "cfg_interrupt_msix_address": 0, "cfg_interrupt_msix_data": 0, "cfg_interrupt_msix_int": 0,
    "cfg_interrupt_msix_vec_pending": 0, "cfg_interrupt_msi_function_number": 0, "cfg_interrupt_msi_attr": 0,
    "cfg_interrupt_msi_tph_present": 0, "cfg_interrupt_msi_tph_type": 0, "cfg_interrupt_msi_tph_st_tag": 0,
    "cfg_ext_read_data": 0, "cfg_ext_read_data_valid": 0,
}  # fmt: skip

#: Endpoint ports that do not go to the IP, and what the wrapper does with them when no MAC is attached.
#: eth_* is the MAC port: the wrapper turns the endpoint's own loopback on and idles the external side.
BOARD_SIDE_INPUTS: dict[str, int] = {"loopback_enable": 1}
ETH_PREFIXES = ("eth_tx_", "eth_rx_")


def _norm(direction: str) -> str:
    d = direction.lower()
    return "i" if d in ("i", "in", "input") else "o" if d in ("o", "out", "output") else d


@dataclass
class PortCheck:
    """The result of matching the endpoint's ports against the IP's (empty lists = consistent)."""

    to_ip: list[str]
    eth: list[str]
    board: list[str]
    unknown: list[str]
    direction_mismatch: list[str]
    width_mismatch: list[str]

    @property
    def ok(self) -> bool:
        return not (self.unknown or self.direction_mismatch or self.width_mismatch)


def check_ports(ports: Sequence[Port], data_width: int) -> PortCheck:
    """Classify endpoint ports: an endpoint output must be an IP input of the same width and vice versa."""
    ipp = ip_ports(data_width)
    c = PortCheck([], [], [], [], [], [])
    for name, d, w in ports:
        d = _norm(d)
        if name in ipp:
            ipd, ipw = ipp[name]
            c.to_ip.append(name)
            if ipd == d:  # both drive, or both listen: the endpoint must be the IP's opposite
                c.direction_mismatch.append(f"{name}: endpoint {d}, IP {ipd}")
            # tready of RQ/CC is 4 bits on the IP (one copy per 64-bit lane group); any 1..4 bit slice is fine.
            if ipw != w and not (name in ("s_axis_rq_tready", "s_axis_cc_tready") and 1 <= w <= ipw):
                c.width_mismatch.append(f"{name}: endpoint {w}, IP {ipw}")
        elif name.startswith(ETH_PREFIXES):
            c.eth.append(name)
        elif name in BOARD_SIDE_INPUTS and d == "i":
            c.board.append(name)
        else:
            c.unknown.append(name)
    return c


# ---------------------------------------------------------------------------------------------------------
# PCIe IP configuration
# ---------------------------------------------------------------------------------------------------------


def _bar_size_prop(size: int) -> tuple[str, int]:
    for scale, unit in (("Gigabytes", 1 << 30), ("Megabytes", 1 << 20), ("Kilobytes", 1 << 10)):
        if size >= unit and size % unit == 0:
            return scale, size // unit
    raise ValueError(f"BAR size {size:#x} is not a whole number of KiB")


def cfg_ext_windows() -> tuple[tuple[int, int], ...]:
    """The configuration-space windows the virtio capabilities are served from (``hdl.pcie.cfgext``)."""
    from hdl.pcie import cfgext

    return tuple(cfgext.USER_CONFIG_WINDOWS)


#: The MSI capability's slot in the hard block's legacy list (PM 0x40, MSI 0x48, MSI-X 0x60, PCIe 0x70).
MSI_SLOT = (0x48, 0x60)


def hard_ip_windows(board: PcieBoardPlatform) -> tuple[tuple[int, int], ...]:
    """Configuration-space byte ranges the integrated block forwards to user logic over cfg_ext_*.

    From hdl/pcie/README.md (PG213 "Configuration Extend Interface", with PG302/PG344 for the legacy range):
    legacy 0xB0-0xBF on both blocks; extended 0x480-0x4FF on PCIE4, 0xE80-0xFFF on the HBM parts' PCIE4C.
    """
    ext = (0xE80, 0x1000) if board.pcie.ip == "pcie4c_uscale_plus" else (0x480, 0x500)
    return ((0xB0, 0xC0), ext)


def unforwarded(board: PcieBoardPlatform, windows: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Parts of the design's windows the hard IP does not forward: reads there return the block's own value."""
    out: list[tuple[int, int]] = []
    hw = hard_ip_windows(board)
    for lo, hi in windows:
        start = None
        for a in range(lo, hi, 4):
            covered = any(wlo <= a < whi for wlo, whi in hw)
            if not covered and start is None:
                start = a
            if covered and start is not None:
                out.append((start, a))
                start = None
        if start is not None:
            out.append((start, hi))
    return out


def ip_config(board: PcieBoardPlatform, data_width: int, windows: Iterable[tuple[int, int]]) -> dict[str, str]:
    """CONFIG.* values of the PCIe IP, each derived from device_map, the board and the cfg-ext windows."""
    dm = device_map
    windows = tuple(windows)
    link = link_for(board, data_width)
    scale, size = _bar_size_prop(dm.BAR_SIZE)
    bir = f"BAR_{dm.BAR + 1}:{dm.BAR}"  # a 64-bit BAR 0 occupies BAR 0 and 1: the IP names it "BAR_1:0"
    legacy = any(lo < 0x100 for lo, _ in windows)
    ext = any(lo >= 0x100 for lo, _ in windows)
    uses_msi_slot = any(lo < MSI_SLOT[1] and hi > MSI_SLOT[0] for lo, hi in windows)
    cfg = {
        "mode_selection": "Advanced",
        "pcie_blk_locn": link.block,
        "en_gt_selection": "true",
        "select_quad": link.gt_quad,
        "PL_LINK_CAP_MAX_LINK_SPEED": {1: "2.5_GT/s", 2: "5.0_GT/s", 3: "8.0_GT/s", 4: "16.0_GT/s"}[link.gen],
        "PL_LINK_CAP_MAX_LINK_WIDTH": f"X{link.lanes}",
        "REF_CLK_FREQ": f"{link.refclk_mhz}_MHz",
        "axisten_if_width": f"{data_width}_bit",
        "axisten_freq": "250",
        "AXISTEN_IF_CQ_ALIGNMENT_MODE": "DWORD_Aligned",
        "AXISTEN_IF_RQ_ALIGNMENT_MODE": "DWORD_Aligned",
        "AXISTEN_IF_RC_STRADDLE": "false",
        **(
            {"AXISTEN_IF_EXT_512_RQ_STRADDLE": "false", "AXISTEN_IF_EXT_512_RC_4TLP_STRADDLE": "false"}
            if data_width == 512
            else {}
        ),
        "axisten_if_enable_client_tag": "true",  # the DMA engine puts its own tags in the RQ descriptor
        "extended_tag_field": "true",
        "pf0_dev_cap_max_payload": "512_bytes",  # MPS capability; MPS/MRRS in use come from cfg_max_payload/read_req
        "vendor_id": f"{dm.VENDOR_ID:04X}",
        "PF0_DEVICE_ID": f"{dm.DEVICE_ID:04X}",
        "PF0_SUBSYSTEM_VENDOR_ID": f"{dm.SUBSYSTEM_VENDOR_ID:04X}",
        "PF0_SUBSYSTEM_ID": f"{dm.SUBSYSTEM_ID:04X}",
        "PF0_REVISION_ID": f"{dm.REVISION_ID:02X}",
        "PF0_Use_Class_Code_Lookup_Assistant": "false",
        "PF0_CLASS_CODE": f"{dm.CLASS_CODE:06X}",
        "PF0_INTERRUPT_PIN": "NONE",
        f"pf0_bar{dm.BAR}_enabled": "true",
        f"pf0_bar{dm.BAR}_type": "Memory",
        f"pf0_bar{dm.BAR}_64bit": "true",
        f"pf0_bar{dm.BAR}_prefetchable": "false",
        f"pf0_bar{dm.BAR}_scale": scale,
        f"pf0_bar{dm.BAR}_size": str(size),
        "pf0_bar2_enabled": "false",
        "pf0_bar4_enabled": "false",
        "pf0_expansion_rom_enabled": "false",
        "pf0_msi_enabled": "false" if uses_msi_slot else "true",
        "pf0_msix_enabled": "true",
        "MSI_X_OPTIONS": "MSI-X_External",  # table and PBA live in BAR 0, implemented by the endpoint
        "PF0_MSIX_CAP_TABLE_SIZE": f"{dm.NUM_MSIX_VECTORS - 1:03X}",
        "PF0_MSIX_CAP_TABLE_BIR": bir,
        "PF0_MSIX_CAP_TABLE_OFFSET": f"{dm.MSIX_TABLE_OFFSET:08X}",
        "PF0_MSIX_CAP_PBA_BIR": bir,
        "PF0_MSIX_CAP_PBA_OFFSET": f"{dm.MSIX_PBA_OFFSET:08X}",
        "cfg_ext_if": "true",
        "legacy_ext_pcie_cfg_space_enabled": "true" if legacy else "false",
        "ext_pcie_cfg_space_enabled": "true" if ext else "false",
        "pf0_ari_enabled": "false",
        "SRIOV_CAP_ENABLE": "false",
    }
    return cfg


def cfg_ext_warning(board: PcieBoardPlatform, windows: Sequence[tuple[int, int]]) -> list[str]:
    """Why a board build may not present every virtio capability (empty when the hard IP forwards them all)."""
    missing = unforwarded(board, windows)
    if not missing:
        return []
    rng = ", ".join(f"{lo:#x}-{hi - 1:#x}" for lo, hi in missing)
    hw = ", ".join(f"{lo:#x}-{hi - 1:#x}" for lo, hi in hard_ip_windows(board))
    return [
        f"{board.pcie.ip} forwards only {hw} to user logic; config space {rng} is answered by the hard block,",
        "so on silicon only the virtio capabilities inside the forwarded range are visible and a virtio driver",
        "will not bind (see hdl/pcie/README.md, 'What that means on silicon', for the ways out).",
    ]


def ip_tcl(board: PcieBoardPlatform, data_width: int, windows: Sequence[tuple[int, int]]) -> str:
    cfg = ip_config(board, data_width, windows)
    link = link_for(board, data_width)
    win = ", ".join(f"{lo:#x}-{hi - 1:#x}" for lo, hi in windows)
    lines = [
        "# Generated by `virtio-fpga bitstream` (boards/vivado.py) from virtio_fpga/device_map.py: do not edit.",
        f"# {board.title}: {board.part}, PCIe Gen{link.gen} x{link.lanes} on block {link.block},"
        f" lane 0 in {board.pcie.gt_quad}",
        f"# virtio capabilities answered by the endpoint over cfg_ext_* in config space {win}",
        "#   (legacy_ext_pcie_cfg_space_enabled: the hard block chains its PCIe capability to 0xB0; the MSI",
        "#   capability is disabled when its slot 0x48 is one of the windows, MSI-X remains)",
        *[f"# WARNING: {line}" for line in cfg_ext_warning(board, windows)],
        f"create_ip -name {board.pcie.ip} -vendor xilinx.com -library ip -module_name {ip_module_name(board)} -dir ip",
        "set_property -dict [list \\",
    ]
    lines += [f"    CONFIG.{k} {{{v}}} \\" for k, v in cfg.items()]
    lines += [f"] [get_ips {ip_module_name(board)}]", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# Wrapper
# ---------------------------------------------------------------------------------------------------------


def _rng(w: int) -> str:
    return f"[{w - 1}:0] " if w > 1 else ""


def _const(w: int, v: int) -> str:
    return f"{w}'d{v}" if v < (1 << 31) else f"{w}'h{v:x}"


def wrapper_verilog(board: PcieBoardPlatform, ports: Sequence[Port], data_width: int) -> str:
    """The board top: buffers for the GT reference clock, the PCIe IP, the endpoint, LEDs and board ties."""
    check = check_ports(ports, data_width)
    missing = [n for n in ("user_clk", "user_reset") if n not in {p[0] for p in ports}]
    if missing:
        raise ValueError(f"endpoint lacks {missing}")
    if not check.ok:
        raise ValueError(f"endpoint ports do not match the PCIe IP: {check}")
    ipp = ip_ports(data_width)
    ep = {n: (_norm(d), w) for n, d, w in ports}
    lanes = link_for(board, data_width).lanes
    n_led = board.led_count()
    ties = [r for r, _ in board.tie_outputs]
    L: list[str] = [
        f"// Generated by `virtio-fpga bitstream --board {board.board_name}` (boards/vivado.py): do not edit.",
        f"// {board.title} ({board.part}): {board.pcie.ip} Gen{board.pcie.gen} x{lanes}, {data_width}-bit user "
        "interface at 250 MHz, joined to virtio_net_endpoint port by port (names from hdl.top.top_ports()).",
        "`default_nettype none",
        f"module {TOP} (",
        "    input  wire pcie_refclk_p,",
        "    input  wire pcie_refclk_n,",
        "    input  wire pcie_perst_n,",
        f"    input  wire [{lanes - 1}:0] pci_exp_rxp,",
        f"    input  wire [{lanes - 1}:0] pci_exp_rxn,",
        f"    output wire [{lanes - 1}:0] pci_exp_txp,",
        f"    output wire [{lanes - 1}:0] pci_exp_txn,",
    ]
    L += [f"    output wire {t}," for t in ties]
    L += [f"    output wire [{n_led - 1}:0] led", ");", ""]
    L += [
        "    // GT reference clock: O feeds the transceivers, ODIV2 (100 MHz / 1) the IP's sys_clk through BUFG_GT",
        "    wire sys_clk_gt, sys_clk_div2, sys_clk;",
        "    IBUFDS_GTE4 #(.REFCLK_HROW_CK_SEL(2'b00)) refclk_ibuf (",
        "        .I(pcie_refclk_p), .IB(pcie_refclk_n), .CEB(1'b0), .O(sys_clk_gt), .ODIV2(sys_clk_div2));",
        "    BUFG_GT refclk_bufg (.I(sys_clk_div2), .O(sys_clk), .CE(1'b1), .CEMASK(1'b0), .CLR(1'b0),",
        "        .CLRMASK(1'b0), .DIV(3'd0));",
        "",
        "    // every endpoint port becomes a wire of the same name and width",
    ]
    for name, (_d, w) in ep.items():
        L.append(f"    wire {_rng(w)}{name};")
    extra_ip = [n for n in ("user_lnk_up", "cfg_ltssm_state") if n not in ep]
    for n in extra_ip:
        L.append(f"    wire {_rng(ipp[n][1])}{n};")
    L.append("")
    # IP instance
    conns = [
        "        .sys_clk(sys_clk)", "        .sys_clk_gt(sys_clk_gt)", "        .sys_reset(pcie_perst_n)",
        "        .pci_exp_rxp(pci_exp_rxp)", "        .pci_exp_rxn(pci_exp_rxn)",
        "        .pci_exp_txp(pci_exp_txp)", "        .pci_exp_txn(pci_exp_txn)",
    ]  # fmt: skip
    for name, (ipd, ipw) in ipp.items():
        if name in ep:
            w = ep[name][1]
            if ipd == "o" and w < ipw:  # endpoint reads a slice of a replicated IP output (RQ/CC tready)
                conns.append(f"        .{name}()  /* {name} taken from the IP's bit 0 below */")
                continue
            conns.append(f"        .{name}({name})")
        elif name in extra_ip:
            conns.append(f"        .{name}({name})")
        elif ipd == "i" and name in IP_INPUT_DEFAULTS:
            conns.append(f"        .{name}({_const(ipw, IP_INPUT_DEFAULTS[name])})")
        # IP outputs nobody reads are left out: some exist only in some IP configurations (PG213), and a
        # named connection to a port the generated IP lacks is an error in Vivado.
    # sliced tready: connect a full-width wire and hand the endpoint its low bits
    for name, (ipd, ipw) in ipp.items():
        if name in ep and ipd == "o" and ep[name][1] < ipw:
            L.append(f"    wire [{ipw - 1}:0] {name}_ip;")
            L.append(f"    assign {name} = {name}_ip[{ep[name][1] - 1}:0];")
            conns = [c if not c.startswith(f"        .{name}()") else f"        .{name}({name}_ip)" for c in conns]
    L.append(f"    {ip_module_name(board)} {IP_INSTANCE} (")
    L.append(",\n".join(conns))
    L += ["    );", ""]
    # board-side inputs of the endpoint
    for name, (d, w) in ep.items():
        if d == "i" and name in BOARD_SIDE_INPUTS:
            L.append(f"    assign {name} = {_const(w, BOARD_SIDE_INPUTS[name])};  // no MAC: endpoint loops TX to RX")
        elif d == "i" and name.startswith(ETH_PREFIXES):
            val = 1 if name.endswith("_ready") else 0  # external side idle: never sends, always accepts
            L.append(f"    assign {name} = {_const(w, val)};  // MAC port idle (see boards/README.md)")
    L.append("")
    L.append(f"    {ENDPOINT} endpoint (")
    L.append(",\n".join(f"        .{name}({name})" for name in ep))
    L += ["    );", ""]
    for t, v in board.tie_outputs:
        L.append(f"    assign {t} = 1'b{v};  // board requirement (see boards/{board.board_name.replace('-', '_')}.py)")
    # LEDs: link up, link-training heartbeat, MSI-X enabled, then the negotiated width bits
    led_src = ["user_lnk_up", "heartbeat[26]", "cfg_interrupt_msix_enable[0]" if "cfg_interrupt_msix_enable" in ep
               else "1'b0"]  # fmt: skip
    L += [
        "    reg [26:0] heartbeat = 27'd0;",
        "    always @(posedge user_clk) heartbeat <= heartbeat + 27'd1;",
    ]
    bits = [led_src[i] if i < len(led_src) else f"cfg_ltssm_state[{(i - len(led_src)) % 6}]" for i in range(n_led)]
    L.append(f"    assign led = {{{', '.join(reversed(bits))}}};")
    L += ["endmodule", "`default_nettype wire", ""]
    return "\n".join(L)


# ---------------------------------------------------------------------------------------------------------
# Constraints
# ---------------------------------------------------------------------------------------------------------


def _pins(io: Pins | DiffPairs) -> list[tuple[str, str]]:
    """[(suffix, pin)] of a pin group: ("", pin) for plain pins, ("_p"/"_n", pin) for differential pairs."""
    if isinstance(io, DiffPairs):
        return [("_p", p) for p in io.p.names] + [("_n", n) for n in io.n.names]
    return [("", p) for p in io.names]


def xdc(board: PcieBoardPlatform, data_width: int = 256) -> str:
    """Pin locations and I/O standards of the resources the wrapper uses, straight from the board file."""
    L = [
        f"# Generated by `virtio-fpga bitstream --board {board.board_name}` from boards/"
        f"{board.board_name.replace('-', '_')}.py: do not edit.",
        *[f"# pins from: {s}" for s in board.sources],
        "# PCIe lanes: placed by the IP's own constraints (pcie_blk_locn / select_quad in pcie_ip.tcl)",
        "",
    ]

    pcie = board.lookup("pcie", 0)
    subs = {s.name: s for s in pcie.ios}
    for suffix, pin in _pins(subs[refclk_subsignal(board, link_for(board, data_width).lanes)].ios[0]):
        L.append(f"set_property PACKAGE_PIN {pin} [get_ports pcie_refclk{suffix}]")
    L.append(f"create_clock -name pcie_refclk -period {1000 / board.pcie.refclk_mhz:.3f} [get_ports pcie_refclk_p]")
    perst = subs["perst_n"]
    L.append(f"set_property PACKAGE_PIN {perst.ios[0].names[0]} [get_ports pcie_perst_n]")
    for k, v in res_attrs(perst).items():
        L.append(f"set_property {k} {v} [get_ports pcie_perst_n]")
    L.append("set_false_path -from [get_ports pcie_perst_n]")
    L.append("")
    for i in range(board.led_count()):
        led = board.lookup("led", i)
        L.append(f"set_property PACKAGE_PIN {led.ios[0].names[0]} [get_ports {{led[{i}]}}]")
        for k, v in led.attrs.items():
            L.append(f"set_property {k} {v} [get_ports {{led[{i}]}}]")
    L.append("set_false_path -to [get_ports {led[*]}]")
    for t, _ in board.tie_outputs:
        r = board.lookup(t, 0)
        L.append(f"set_property PACKAGE_PIN {r.ios[0].names[0]} [get_ports {t}]")
        for k, v in r.attrs.items():
            L.append(f"set_property {k} {v} [get_ports {t}]")
        L.append(f"set_false_path -to [get_ports {t}]")
    L.append("")
    L += list(board.board_xdc)
    L.append("")
    return "\n".join(L)


def res_attrs(obj: object) -> dict[str, str]:
    attrs = getattr(obj, "attrs", None)
    return dict(attrs.items()) if attrs is not None else {}


# ---------------------------------------------------------------------------------------------------------
# Build script and the tree
# ---------------------------------------------------------------------------------------------------------


def build_tcl(board: PcieBoardPlatform) -> str:
    ip = ip_module_name(board)
    return "\n".join(
        [
            "# Generated by `virtio-fpga bitstream` (boards/vivado.py): non-project Vivado flow. Run via run.sh.",
            "set here [file dirname [file normalize [info script]]]",
            "cd $here",
            "file mkdir reports ip",
            f"create_project -in_memory -part {board.part}",
            "set_property target_language Verilog [current_project]",
            "source pcie_ip.tcl",
            f"generate_target {{synthesis implementation}} [get_ips {ip}]",
            f"synth_ip [get_ips {ip}]",
            f"read_verilog {ENDPOINT}.v {TOP}.v",
            f"read_xdc {TOP}.xdc",
            f"synth_design -top {TOP} -part {board.part}",
            "report_utilization -hierarchical -file reports/utilization_hier_synth.rpt",
            "opt_design",
            "place_design",
            "phys_opt_design",
            "route_design",
            "report_utilization -file reports/utilization.rpt",
            "report_utilization -hierarchical -file reports/utilization_hier.rpt",
            "report_timing_summary -max_paths 10 -file reports/timing_summary.rpt",
            "report_drc -file reports/drc.rpt",
            f"write_checkpoint -force {TOP}_routed.dcp",
            f"write_bitstream -force {TOP}.bit",
            "",
        ]
    )


RUN_SH = """#!/bin/sh
# Generated by `virtio-fpga bitstream`: builds {top}.bit with Vivado (batch, non-project). Needs Vivado on PATH
# (source <Vivado>/settings64.sh first) with the {part} device installed.
set -e
cd "$(dirname "$0")"
exec vivado -mode batch -nojournal -log build.log -source build.tcl
"""


@dataclass
class Tree:
    """What ``write_tree`` produced."""

    out: Path
    files: dict[str, Path]
    manifest: dict


def manifest(board: PcieBoardPlatform, data_width: int, windows: Sequence[tuple[int, int]], ports: Sequence[Port]):
    dm = device_map
    return {
        "board": board.board_name,
        "title": board.title,
        "part": board.part,
        "board_part": board.board_part,
        "pcie": {
            "ip": board.pcie.ip,
            "module": ip_module_name(board),
            "block": board.pcie.block,
            "gt_quad": board.pcie.gt_quad,
            "gen": board.pcie.gen,
            "lanes": link_for(board, data_width).lanes,
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
        "cfg_ext_windows": [[lo, hi] for lo, hi in windows],
        "cfg_ext_hard_ip_windows": [list(w) for w in hard_ip_windows(board)],
        "cfg_ext_unforwarded": [list(w) for w in unforwarded(board, windows)],
        "ethernet": None
        if board.ethernet is None
        else {"cage": board.ethernet.cage, "gt_quad": board.ethernet.gt_quad, "note": board.ethernet.note},
        "endpoint_ports": [[n, _norm(d), w] for n, d, w in ports],
    }


def write_tree(
    board: PcieBoardPlatform,
    out: Path,
    verilog: str,
    ports: Sequence[Port],
    data_width: int = 256,
    windows: Sequence[tuple[int, int]] | None = None,
) -> Tree:
    """Write the complete Vivado build tree for ``board`` into ``out``."""
    windows = tuple(windows) if windows is not None else cfg_ext_windows()
    out.mkdir(parents=True, exist_ok=True)
    files = {
        f"{ENDPOINT}.v": verilog,
        f"{TOP}.v": wrapper_verilog(board, ports, data_width),
        "pcie_ip.tcl": ip_tcl(board, data_width, windows),
        f"{TOP}.xdc": xdc(board, data_width),
        "build.tcl": build_tcl(board),
        "run.sh": RUN_SH.format(top=TOP, part=board.part),
    }
    m = manifest(board, data_width, windows, ports)
    files["manifest.json"] = json.dumps(m, indent=2) + "\n"
    paths = {}
    for name, text in files.items():
        p = out / name
        p.write_text(text)
        paths[name] = p
    paths["run.sh"].chmod(0o755)
    return Tree(out, paths, m)


# ---------------------------------------------------------------------------------------------------------
# Running Vivado and reading its reports
# ---------------------------------------------------------------------------------------------------------


def vivado_available() -> str | None:
    return shutil.which("vivado")


def run_vivado(tree: Tree, timeout: float = 6 * 3600) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", str(tree.files["run.sh"])], cwd=tree.out, timeout=timeout, capture_output=True,
                          text=True)  # fmt: skip


def parse_utilization(text: str) -> dict[str, float]:
    """Used counts of the main rows of ``report_utilization`` (UltraScale+ row names)."""
    rows = {"CLB LUTs": "luts", "CLB Registers": "ffs", "Block RAM Tile": "brams", "URAM": "urams", "DSPs": "dsps"}
    out: dict[str, float] = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) > 3 and cells[1].rstrip("*").strip() in rows:
            key = rows[cells[1].rstrip("*").strip()]
            if key not in out:
                out[key] = float(cells[2])
    return out


def parse_timing(text: str) -> dict[str, float | bool]:
    """WNS/TNS/WHS from ``report_timing_summary`` ("Design Timing Summary" table)."""
    m = re.search(r"WNS\(ns\)\s+TNS\(ns\).*?\n[\s-]+\n\s*(-?[\d.]+)\s+(-?[\d.]+)\s+\d+\s+\d+\s+(-?[\d.]+)", text, re.S)
    if not m:
        return {}
    wns, tns, whs = (float(g) for g in m.groups())
    return {"wns_ns": wns, "tns_ns": tns, "whs_ns": whs, "met": wns >= 0 and whs >= 0}


def ip_blackbox_verilog(board: PcieBoardPlatform, data_width: int) -> str:
    """An empty module with the IP's ports (PG213 names), so open tools can elaborate the wrapper.

    Yosys ``hierarchy -check`` against this and the real endpoint proves every connection in the wrapper
    names an existing port on both sides, without Vivado.
    """
    lanes = link_for(board, data_width).lanes
    ports = [
        ("sys_clk", "input", 1), ("sys_clk_gt", "input", 1), ("sys_reset", "input", 1),
        ("pci_exp_rxp", "input", lanes), ("pci_exp_rxn", "input", lanes),
        ("pci_exp_txp", "output", lanes), ("pci_exp_txn", "output", lanes),
    ]  # fmt: skip
    ports += [(n, "output" if d == "o" else "input", w) for n, (d, w) in ip_ports(data_width).items()]
    body = ",\n".join(f"    {d} wire {_rng(w)}{n}" for n, d, w in ports)
    return f"(* blackbox *)\nmodule {ip_module_name(board)} (\n{body}\n);\nendmodule\n"
