"""AMD/Xilinx Alveo U50 (A-U50-P00G): xcu50-fsvh2104-2-e, PCIe Gen3 x16 edge, one QSFP28 cage, 8 GB HBM.

Pin sources (facts only, no text copied):

* Xilinx "U50QSFP - Master XDC", alveo-u50-xdc.xdc rev 1.00.04 (alveo-u50-xdc_20210505.zip, the XDC AMD
  publishes with UG1370/UG1371): PCIE_REFCLK0 on MGTREFCLK0_227 AB9/AB8 ("Gen3 x16"), PERST# on AW27
  (IO_T3U_N12_PERSTN0_65, 1.8 V), PEX_PWRBRKN on BD28, the three QSFP28 bracket LEDs E18/E16/F17 (bank 68,
  1.8 V), HBM_CATTRIP on J18 ("added constraint to pulldown CATTRIP in case user design does not use the
  signal"), SYNCE_CLK (161.1328125 MHz) on MGTREFCLK0_131 N36/N37, the power budget of 63 W.
* The pcie4c_uscale_plus constraints Vivado generates for this part, ip_pcie4c_uscale_plus_x1y0.xdc ("Xilinx
  Reference Board is AU50", "PCIe Block - X1Y0", master_gt_container 27 i.e. lane 0 in GTY quad 227).
* QSFP28 lane pins (quad 131, GTYE4_CHANNEL_X0Y28..31) as listed in the same master XDC.

The xcu50 is an HBM part: its PCIe sites are PCIE4CE4, so the IP is ``pcie4c_uscale_plus`` (same user
interface as pcie4_uscale_plus, CCIX disabled).
"""

from __future__ import annotations

from amaranth.build import Attrs, DiffPairs, Pins, PinsN, Resource, Subsignal

from boards.platform import EthernetPort, PcieBoardPlatform, PcieLink


class AlveoU50Platform(PcieBoardPlatform):
    board_name = "alveo-u50"
    title = "AMD Alveo U50"
    device = "xcu50"
    package = "fsvh2104"
    speed = "2-e"
    board_part = "xilinx.com:au50:part0:1.3"
    pcie = PcieLink(
        edge_lanes=16, max_gen=3, lanes=8, gen=3, ip="pcie4c_uscale_plus", block="X1Y0", gt_quad="GTY_Quad_227"
    )
    ethernet = EthernetPort(
        cage="QSFP28 (the only cage)",
        resource="qsfp28",
        gt_quad="GTY_Quad_131",
        refclk_mhz=161.1328125,
        note="4 x 25G lanes; a CMAC (100G) or 10/25G MAC+PCS on quad 131 would drive eth_rx/eth_tx",
    )
    resources = [
        Resource(
            "pcie", 0,
            # MGTREFCLK0_227: driven from the edge clock through the on-card SI53102 buffer (master XDC).
            Subsignal("refclk", DiffPairs("AB9", "AB8", dir="i")),
            Subsignal("perst_n", PinsN("AW27", dir="i"), Attrs(IOSTANDARD="LVCMOS18", PULLUP="TRUE")),
        ),
        # QSFP28 bracket LEDs (master XDC): activity (green), status green, status yellow.
        Resource("led", 0, Pins("E18", dir="o"), Attrs(IOSTANDARD="LVCMOS18", SLEW="SLOW", DRIVE="8")),
        Resource("led", 1, Pins("E16", dir="o"), Attrs(IOSTANDARD="LVCMOS18", SLEW="SLOW", DRIVE="8")),
        Resource("led", 2, Pins("F17", dir="o"), Attrs(IOSTANDARD="LVCMOS18", SLEW="SLOW", DRIVE="8")),
        # HBM catastrophic-temperature output to the satellite controller: must stay low or the card powers off.
        Resource("hbm_cattrip", 0, Pins("J18", dir="o"), Attrs(IOSTANDARD="LVCMOS18", PULLDOWN="TRUE")),
        Resource(
            "qsfp28", 0,
            Subsignal("refclk", DiffPairs("N36", "N37", dir="i")),  # MGTREFCLK0_131, SYNCE_CLK 161.13 MHz
            Subsignal("tx", DiffPairs("D42 C40 B42 A40", "D43 C41 B43 A41", dir="o")),
            Subsignal("rx", DiffPairs("J45 G45 F43 E45", "J46 G46 F44 E46", dir="i")),
        ),
    ]  # fmt: skip
    connectors = []
    tie_outputs = (("hbm_cattrip", 0),)
    board_xdc = (
        "# Alveo U50 master XDC: SPIx4 configuration at 1.8 V, card power budget 63 W",
        "set_property CONFIG_VOLTAGE 1.8 [current_design]",
        "set_property CONFIG_MODE SPIx4 [current_design]",
        "set_property BITSTREAM.CONFIG.SPI_BUSWIDTH 4 [current_design]",
        "set_property BITSTREAM.CONFIG.CONFIGRATE 63.8 [current_design]",
        "set_property BITSTREAM.CONFIG.SPI_32BIT_ADDR YES [current_design]",
        "set_property BITSTREAM.GENERAL.COMPRESS TRUE [current_design]",
        "set_operating_conditions -design_power_budget 63",
    )
    sources = (
        "Xilinx alveo-u50-xdc.xdc (U50QSFP Master XDC rev 1.00.04, alveo-u50-xdc_20210505.zip)",
        "Vivado-generated ip_pcie4c_uscale_plus_x1y0.xdc for xcu50-fsvh2104-2 (Reference Board AU50)",
    )
