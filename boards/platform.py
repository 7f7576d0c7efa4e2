"""The common base of the PCIe boards: an Amaranth ``XilinxPlatform`` plus what the PCIe IP needs to know.

A board file declares, in amaranth-boards style, the pins the design touches (PCIe reference clock and
PERST#, user LEDs, the QSFP/SFP cage an Ethernet MAC would use, board-specific must-drive pins).  The PCIe
lanes themselves are not listed as resources: the integrated block's transceivers are placed by the PCIe
IP's own constraints once the Tcl script names the block site and the GT quad of lane 0, so a second LOC
on them could only disagree.  Those two facts, the link the board supports and the IP variant its silicon
has, are class attributes here.
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth.build import Resource
from amaranth.vendor import XilinxPlatform


@dataclass(frozen=True)
class PcieLink:
    """The PCIe link a board offers and the one this design builds for it by default.

    ``edge_lanes``/``max_gen`` describe the connector; ``lanes``/``gen`` what the IP is configured for with
    the default 256-bit interface.  That interface at 250 MHz carries Gen3 x8 (8 GT/s x 8 lanes = 63 Gb/s
    after 128b/130b) at full rate, which is why the boards use x8 even on x16 edges: a x8 link trains in any
    x16 slot.  ``boards.vivado.link_for`` sizes the link for other widths (512 bits -> x16).
    """

    edge_lanes: int
    max_gen: int
    lanes: int
    gen: int
    ip: str  #: "pcie4_uscale_plus" (PCIE40E4 sites) or "pcie4c_uscale_plus" (PCIE4CE4 sites, HBM parts)
    block: str  #: integrated block site, as the IP's pcie_blk_locn wants it ("X1Y2")
    gt_quad: str  #: quad holding lane 0, as the IP's select_quad wants it ("GTY_Quad_227")
    refclk_mhz: int = 100


@dataclass(frozen=True)
class EthernetPort:
    """Where a MAC for the endpoint's eth_tx/eth_rx port would connect (not instantiated by this design)."""

    cage: str  #: "QSFP28 0"
    resource: str  #: the resource name in the board file
    gt_quad: str
    refclk_mhz: float
    note: str


class PcieBoardPlatform(XilinxPlatform):
    """Base of the boards ``virtio-fpga bitstream`` knows.

    Subclasses set the Amaranth platform attributes (``device``, ``package``, ``speed``, ``resources``,
    ``connectors``) and the PCIe facts below.  ``toolchain`` defaults to Vivado: the UltraScale+ PCIe block
    has no open-source place-and-route.
    """

    #: Short name used on the command line (``--board``).
    board_name: str = ""
    #: Human-readable board name.
    title: str = ""
    #: Vivado board part, if Vivado ships one (informational: the flow does not depend on board files).
    board_part: str | None = None
    pcie: PcieLink
    ethernet: EthernetPort | None = None
    #: Extra board-level XDC lines (bitstream options, power budget...), each with its source in a comment.
    board_xdc: tuple[str, ...] = ()
    #: Output resources the wrapper must drive to a fixed level for the board to stay up: (resource, value).
    tie_outputs: tuple[tuple[str, int], ...] = ()
    #: Where every pin number in the board file came from.
    sources: tuple[str, ...] = ()

    resources: list[Resource] = []
    connectors: list = []

    def __init__(self) -> None:
        super().__init__(toolchain="Vivado")

    @property
    def part(self) -> str:
        """The Vivado part string (``xcu50-fsvh2104-2-e``)."""
        return self._part

    def led_count(self) -> int:
        """Number of user LEDs (after construction ``resources`` is Amaranth's dict keyed by (name, number))."""
        return sum(1 for name, _ in self.resources if name == "led")
