"""FPGA boards the endpoint can be built for, and the build flows (Vivado tree, open-tool figures).

``BOARDS`` maps the ``--board`` name of the AMD UltraScale+ boards to their Amaranth platform class
(``boards.platform.PcieBoardPlatform``, Vivado tree); ``PTILE_BOARDS`` those of the Intel P-tile boards
(``boards.intel.PtileBoardPlatform``, Quartus tree).  ``ALL_BOARDS`` is both, ``FAMILY`` names each board's
PCIe family ("usp" or "ptile", as ``virtio-fpga demo --family``).
"""

from __future__ import annotations

from boards.agilex7_fseries import Agilex7FSeriesDevKitPlatform
from boards.alveo_u50 import AlveoU50Platform
from boards.intel import PtileBoardPlatform, PtileLink
from boards.platform import EthernetPort, PcieBoardPlatform, PcieLink
from boards.vcu118 import VCU118Platform

BOARDS: dict[str, type[PcieBoardPlatform]] = {p.board_name: p for p in (AlveoU50Platform, VCU118Platform)}
PTILE_BOARDS: dict[str, type[PtileBoardPlatform]] = {p.board_name: p for p in (Agilex7FSeriesDevKitPlatform,)}
ALL_BOARDS: dict[str, type] = {**BOARDS, **PTILE_BOARDS}
FAMILY: dict[str, str] = {**{n: "usp" for n in BOARDS}, **{n: "ptile" for n in PTILE_BOARDS}}

__all__ = [
    "ALL_BOARDS",
    "BOARDS",
    "FAMILY",
    "PTILE_BOARDS",
    "Agilex7FSeriesDevKitPlatform",
    "AlveoU50Platform",
    "EthernetPort",
    "PcieBoardPlatform",
    "PcieLink",
    "PtileBoardPlatform",
    "PtileLink",
    "VCU118Platform",
]
