"""Intel Agilex 7 FPGA F-Series Development Kit (DK-DEV-AGF014EA): AGFB014R24B2E2V, P-tile PCIe Gen4 x16 edge.

Pin sources (facts only, no text copied): the OFS FIM board directory for this kit,
github.com/OFS/ofs-agx7-pcie-attach ``syn/board/fseries-dk/setup/top_loc.tcl``:

* ``PCIE_REFCLK0`` on PIN_BR7 / PIN_BU7 (n), HCSL, the 100 MHz PCIe edge reference clock to the P-tile;
* ``PCIE_RESET_N`` (PERST#) on PIN_CG13, 1.8 V;
* the QSFP-DD A cage's activity/speed LEDs on PIN_A47 (green), PIN_B48 (red), PIN_G35 (speed green), 1.2 V;
* the 16 PCIe lanes (PCIE_RX_P[0] on PIN_AF4 ...), placed by the P-tile itself and not constrained here.

The same file gives the device (``set_global_assignment -name DEVICE AGFB014R24B2E2V`` in the FIM's .qsf).
"""

from __future__ import annotations

from amaranth.build import Attrs, DiffPairs, Pins, PinsN, Resource, Subsignal

from boards.intel import PtileBoardPlatform, PtileLink


class Agilex7FSeriesDevKitPlatform(PtileBoardPlatform):
    board_name = "agilex7-fseries-dk"
    title = "Intel Agilex 7 FPGA F-Series Development Kit (P-tile)"
    device = "AGFB014R24B2E2V"
    pcie = PtileLink(edge_lanes=16, max_gen=4, lanes=8, gen=4)
    resources = [
        Resource(
            "pcie", 0,
            Subsignal("refclk", DiffPairs("BR7", "BU7", dir="i"), Attrs(IO_STANDARD="HCSL")),
            Subsignal("perst_n", PinsN("CG13", dir="i"), Attrs(IO_STANDARD="1.8V")),  # as the OFS file writes it
        ),
        Resource("led", 0, Pins("A47", dir="o"), Attrs(IO_STANDARD="1.2 V")),  # qsfpa_act_g: link up
        Resource("led", 1, Pins("B48", dir="o"), Attrs(IO_STANDARD="1.2 V")),  # qsfpa_act_r: in reset
        Resource("led", 2, Pins("G35", dir="o"), Attrs(IO_STANDARD="1.2 V")),  # qsfpa_speed_g: heartbeat
    ]  # fmt: skip
    connectors = []
    sources = ("OFS ofs-agx7-pcie-attach syn/board/fseries-dk/setup/top_loc.tcl (pins, I/O standards)",)
