"""The common base of the Intel (Altera) boards with a P-tile: an Amaranth ``AlteraPlatform`` plus the PCIe facts.

As in ``boards/platform.py`` for the AMD boards, a board file lists the pins the design touches (the PCIe
reference clock and PERST#, a few LEDs) in amaranth-boards style; the PCIe lanes are placed by the hard IP
itself (a P-tile has fixed transceiver pins), so they are named in the wrapper only.  The build is a Quartus
Prime Pro tree (``boards/quartus.py``); the hard IP is the "P-Tile Avalon Streaming Intel FPGA IP for PCI
Express" (``intel_pcie_ptile_ast``, Intel document 683059) with its VirtIO option.
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth.build import Resource
from amaranth.vendor import AlteraPlatform


@dataclass(frozen=True)
class PtileLink:
    """The PCIe link a P-tile board offers and the one this design builds for it.

    ``edge_lanes``/``max_gen`` describe the connector.  ``lanes``/``gen`` are what the IP is configured for
    with the 256-bit Avalon-ST interface this design implements: Gen4 x8 at 250 MHz (683059 "Supported
    configurations": x16 needs the 512-bit, two-segment interface).  A x8 link trains in the x16 slot.
    """

    edge_lanes: int
    max_gen: int
    lanes: int
    gen: int
    refclk_mhz: int = 100
    port: int = 0  #: P-tile port (0 carries x16 or x8; VirtIO is supported on ports 0 and 1)


class PtileBoardPlatform(AlteraPlatform):
    """Base of the P-tile boards ``virtio-fpga bitstream`` knows (family ``ptile``)."""

    family = "ptile"
    board_name: str = ""
    title: str = ""
    #: The full Quartus device name (``AGFB014R24B2E2V``); Amaranth's device/package/speed concatenate to it.
    device: str = ""
    package: str = ""
    speed: str = ""
    pcie: PtileLink
    #: Where every pin in the board file came from.
    sources: tuple[str, ...] = ()
    #: Extra .qsf lines (board-level settings), each with its source in a comment.
    board_qsf: tuple[str, ...] = ()

    resources: list[Resource] = []
    connectors: list = []

    def __init__(self) -> None:
        super().__init__(toolchain="Quartus")

    @property
    def part(self) -> str:
        return f"{self.device}{self.package}{self.speed}"

    def led_count(self) -> int:
        return sum(1 for name, _ in self.resources if name == "led")
