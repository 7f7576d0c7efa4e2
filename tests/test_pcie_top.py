"""The generated top level: port names, directions and widths are the PG213 user interface's, exactly.

``top_ports()`` is what board scripts wire by; these tests check the Verilog module says the same, port by
port, and that the widths match what cocotbext-pcie's UltraScale+ model asserts for each interface.
"""

from __future__ import annotations

import json
import re

import pytest

from hdl.top import MODULE_NAME, generate_verilog, top_ports
from virtio_fpga import cli

_DECL = re.compile(r"^\s*(input|output)\s+(?:wire\s+|reg\s+)?(?:\[(\d+):0\]\s+)?(\w+)\s*;", re.MULTILINE)


def verilog_ports(text: str) -> dict[str, tuple[str, int]]:
    module = text[text.index(f"module {MODULE_NAME}(") :]
    module = module[: module.index("endmodule")]
    return {
        name: (direction[:-3] if direction == "output" else "in", int(msb) + 1 if msb else 1)
        for direction, msb, name in _DECL.findall(module)
    }


@pytest.fixture(scope="module", params=[128, 256, 512])
def generated(request) -> tuple[int, str]:
    return request.param, generate_verilog(request.param, core="test")


def test_ports_match_top_ports(generated) -> None:
    width, text = generated
    got = verilog_ports(text)
    want = {name: (direction, w) for name, direction, w in top_ports(width)}
    assert got == want


def test_port_directions_follow_the_hard_ip(generated) -> None:
    """m_axis_* come from the hard IP (inputs here), s_axis_* go to it; tready the other way round."""
    width, _ = generated
    ports = {name: (direction, w) for name, direction, w in top_ports(width)}
    for prefix, into_dut in (("m_axis_cq", True), ("m_axis_rc", True), ("s_axis_cc", False), ("s_axis_rq", False)):
        for sig in ("tdata", "tkeep", "tlast", "tuser", "tvalid"):
            assert ports[f"{prefix}_{sig}"][0] == ("in" if into_dut else "out")
        assert ports[f"{prefix}_tready"][0] == ("out" if into_dut else "in")
        assert ports[f"{prefix}_tdata"][1] == width
        assert ports[f"{prefix}_tkeep"][1] == width // 32
    # sideband widths the cocotbext-pcie model checks (interface.py: CQ 88/183, CC 33/81, RQ 62/137, RC 75/161)
    want = [183, 81, 137, 161] if width == 512 else [88, 33, 62, 75]
    assert [ports[f"{p}_tuser"][1] for p in ("m_axis_cq", "s_axis_cc", "s_axis_rq", "m_axis_rc")] == want
    assert ports["cfg_ext_read_data"] == ("out", 32) and ports["cfg_ext_read_data_valid"] == ("out", 1)
    assert ports["cfg_ext_register_number"] == ("in", 10) and ports["cfg_ext_function_number"] == ("in", 8)
    assert ports["cfg_interrupt_msix_int"] == ("out", 1) and ports["cfg_interrupt_msix_sent"] == ("in", 1)
    assert ports["cfg_interrupt_msix_address"] == ("out", 64) and ports["cfg_interrupt_msix_data"] == ("out", 32)
    assert ports["cfg_max_payload"] == ("in", 2) and ports["cfg_max_read_req"] == ("in", 3)
    assert ports["eth_tx_tdata"] == ("out", 64) and ports["eth_rx_tdata"] == ("in", 64)
    assert ports["eth_tx_tkeep"] == ("out", 8) and ports["eth_rx_tready"] == ("out", 1)
    assert ports["loopback_enable"] == ("in", 1)
    assert ports["user_clk"] == ("in", 1) and ports["user_reset"] == ("in", 1)


def test_unsupported_width_is_refused() -> None:
    with pytest.raises(ValueError):
        top_ports(64)


def test_verilog_command(tmp_path) -> None:
    rc = cli.main(["verilog", "-o", str(tmp_path), "--data-width", "128", "--core", "test"])
    assert rc == 0
    text = (tmp_path / f"{MODULE_NAME}.v").read_text()
    assert f"module {MODULE_NAME}(" in text
    ports = json.loads((tmp_path / f"{MODULE_NAME}.ports.json").read_text())
    assert [(p["name"], p["direction"], p["width"]) for p in ports] == top_ports(128)
    assert cli.main(["verilog", "-o", str(tmp_path), "--data-width", "64"]) == 2
