"""AMD/Xilinx VCU118 evaluation kit: xcvu9p-flga2104-2L-e, PCIe Gen3 x16 edge, two QSFP28 cages.

Pin sources (facts only, no text copied):

* The pcie4_uscale_plus example-design constraints Vivado generates for this board,
  xilinx_pcie4_uscale_plus_x1y2.xdc ("Xilinx Reference Board is VCU118", "PCIe Block - X1Y2"): for a x8
  link the reference clock on AC9/AC8 (MGTREFCLK0_227), for x16 on AL9/AL8 (MGTREFCLK0_225); PERST# on AM17,
  LVCMOS18 with pull-up; the GPIO LEDs starting at AT32.
* UG1224 (VCU118 Evaluation Board User Guide), GPIO_LED_0..7 = AT32 AV34 AY30 BB32 BF32 AU37 AV36 BA37
  (bank 40/43, 1.2 V), QSFP1 on GTY quad 231 with its 156.25 MHz MGTREFCLK0 on W9/W8.  Cross-checked against
  the public VCU118 constraint set of alexforencich/verilog-pcie (example/VCU118/fpga/fpga.xdc).

PCIe lane 0 sits in GTY quad 227 (MGTYRXP3_227, GTYE4_CHANNEL_X1Y35), next to the PCIE40E4_X1Y2 block.
"""

from __future__ import annotations

from amaranth.build import Attrs, DiffPairs, Pins, PinsN, Resource, Subsignal

from boards.platform import EthernetPort, PcieBoardPlatform, PcieLink

_LEDS = "AT32 AV34 AY30 BB32 BF32 AU37 AV36 BA37"  # UG1224 GPIO_LED_0..7


class VCU118Platform(PcieBoardPlatform):
    board_name = "vcu118"
    title = "AMD VCU118 (Virtex UltraScale+ VU9P)"
    device = "xcvu9p"
    package = "flga2104"
    speed = "2L-e"
    board_part = "xilinx.com:vcu118:part0:2.4"
    pcie = PcieLink(
        edge_lanes=16, max_gen=3, lanes=8, gen=3, ip="pcie4_uscale_plus", block="X1Y2", gt_quad="GTY_Quad_227"
    )
    ethernet = EthernetPort(
        cage="QSFP28 1 (QSFP1)",
        resource="qsfp28",
        gt_quad="GTY_Quad_231",
        refclk_mhz=156.25,
        note="4 x 25G lanes; a CMAC or 10/25G MAC+PCS on quad 231 would drive eth_rx/eth_tx",
    )
    resources = [
        Resource(
            "pcie", 0,
            Subsignal("refclk", DiffPairs("AC9", "AC8", dir="i")),  # MGTREFCLK0_227: the x8 reference clock
            Subsignal("refclk_x16", DiffPairs("AL9", "AL8", dir="i")),  # MGTREFCLK0_225: the x16 reference clock
            Subsignal("perst_n", PinsN("AM17", dir="i"), Attrs(IOSTANDARD="LVCMOS18", PULLUP="TRUE")),
        ),
        *[
            Resource("led", i, Pins(pin, dir="o"), Attrs(IOSTANDARD="LVCMOS12", SLEW="SLOW", DRIVE="8"))
            for i, pin in enumerate(_LEDS.split())
        ],
        Resource(
            "qsfp28", 0,
            Subsignal("refclk", DiffPairs("W9", "W8", dir="i")),  # MGTREFCLK0_231, 156.25 MHz
            Subsignal("tx", DiffPairs("V7 T7 P7 M7", "V6 T6 P6 M6", dir="o")),
            Subsignal("rx", DiffPairs("Y2 W4 V2 U4", "Y1 W3 V1 U3", dir="i")),
        ),
    ]  # fmt: skip
    connectors = []
    board_xdc = (
        "# VCU118: configuration bank at 1.8 V, bitstream compression (UG1224)",
        "set_property CONFIG_VOLTAGE 1.8 [current_design]",
        "set_property CFGBVS GND [current_design]",
        "set_property BITSTREAM.GENERAL.COMPRESS TRUE [current_design]",
    )
    sources = (
        "Vivado-generated xilinx_pcie4_uscale_plus_x1y2.xdc (Reference Board VCU118)",
        "UG1224 VCU118 Evaluation Board User Guide (GPIO LEDs, QSFP1)",
    )
