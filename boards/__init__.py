"""FPGA boards the endpoint can be built for, and the build flows (Vivado tree, open-tool figures).

``BOARDS`` maps the ``--board`` name to an Amaranth platform class (``boards.platform.PcieBoardPlatform``).
"""

from __future__ import annotations

from boards.alveo_u50 import AlveoU50Platform
from boards.platform import EthernetPort, PcieBoardPlatform, PcieLink
from boards.vcu118 import VCU118Platform

BOARDS: dict[str, type[PcieBoardPlatform]] = {p.board_name: p for p in (AlveoU50Platform, VCU118Platform)}

__all__ = ["BOARDS", "AlveoU50Platform", "EthernetPort", "PcieBoardPlatform", "PcieLink", "VCU118Platform"]
