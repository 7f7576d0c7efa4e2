"""Virtio vendor capabilities served from gateware through the configuration-extend interface (PG213).

The hard IP answers configuration requests itself, except in the windows where it forwards them to user
logic on ``cfg_ext_*`` (PG213 "Configuration Extend Interface"): a read is signalled by a one-cycle
``cfg_ext_read_received`` with ``cfg_ext_register_number`` (dword number) and ``cfg_ext_function_number``;
user logic answers with ``cfg_ext_read_data`` and a one-cycle ``cfg_ext_read_data_valid``.  A write is a
one-cycle ``cfg_ext_write_received`` with ``cfg_ext_write_data`` and ``cfg_ext_write_byte_enable``; it has no
answer.  The hard IP signals requests outside the windows too; this block answers only inside them.

Where the capabilities sit and why is in ``hdl/pcie/README.md``: the layout (:data:`VIRTIO_CAP_LAYOUT`)
chains from the hard IP's last capability (PCI Express capability at 0x70) to 0xB0 and onward.

The VIRTIO_PCI_CAP_PCI_CFG capability (virtio spec 4.1.4.9) is live: ``bar``, ``offset``, ``length`` and
``pci_cfg_data`` are read-write; a write to ``pci_cfg_data`` performs a BAR write of ``length`` bytes at
``offset``, a read performs a BAR read and returns its bytes in ``pci_cfg_data`` (4.1.4.9.1).  The access
goes through the same register bus as the BAR completer, so the driver sees the same registers.
"""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hdl.signatures import RegisterBus
from virtio_fpga import device_map
from virtio_fpga.device_map import VIRTIO_CAPS, VirtioCap
from virtio_fpga.spec import CfgType

#: Byte ranges [start, end) of legacy configuration space that user logic answers (see README.md).
USER_CONFIG_WINDOWS: tuple[tuple[int, int], ...] = ((0xB0, 0x100), (0x48, 0x60))

#: Where each virtio capability sits: the PCI-config-access capability (20 bytes) goes to the MSI slot
#: (0x48) because 0xB0-0xFF holds 80 bytes and the five capabilities need 88.
VIRTIO_CAP_LAYOUT: tuple[tuple[int, VirtioCap], ...] = (
    (0xB0, VIRTIO_CAPS[0]),  # common configuration, 16 bytes
    (0xC0, VIRTIO_CAPS[1]),  # notifications, 20 bytes
    (0xD4, VIRTIO_CAPS[2]),  # ISR, 16 bytes
    (0xE4, VIRTIO_CAPS[3]),  # device configuration, 16 bytes
    (0x48, VIRTIO_CAPS[4]),  # PCI configuration access, 20 bytes
)
#: Value for the hard IP's last capability's Next Pointer (PCIe capability at 0x70): the first virtio cap.
FIRST_CAP_OFFSET = VIRTIO_CAP_LAYOUT[0][0]


def capability_image(layout: tuple[tuple[int, VirtioCap], ...] = VIRTIO_CAP_LAYOUT) -> dict[int, int]:
    """{dword register number: value} of the capabilities, chained in layout order, last next = 0."""
    image: dict[int, int] = {}
    for i, (addr, cap) in enumerate(layout):
        nxt = layout[i + 1][0] if i + 1 < len(layout) else 0
        raw = cap.to_bytes(nxt)
        assert addr % 4 == 0 and len(raw) % 4 == 0
        for k in range(0, len(raw), 4):
            reg = (addr + k) // 4
            assert reg not in image, f"capabilities overlap at {addr + k:#x}"
            assert any(lo <= addr + k < hi for lo, hi in USER_CONFIG_WINDOWS), f"{addr + k:#x} outside window"
            image[reg] = int.from_bytes(raw[k : k + 4], "little")
    return image


def pci_cfg_cap_offset(layout: tuple[tuple[int, VirtioCap], ...] = VIRTIO_CAP_LAYOUT) -> int:
    for addr, cap in layout:
        if cap.cfg_type == CfgType.PCI:
            return addr
    raise ValueError("layout has no VIRTIO_PCI_CAP_PCI_CFG capability (required by virtio spec 4.1.4.9)")


class ConfigExtendResponder(wiring.Component):
    """Answers ``cfg_ext_*`` reads/writes in the user windows; ``regs`` is a master port for cfg_type 5."""

    def __init__(self, function: int = 0) -> None:
        self.function = function
        super().__init__(
            {
                "read_received": In(1),
                "write_received": In(1),
                "register_number": In(10),
                "function_number": In(8),
                "write_data": In(32),
                "write_byte_enable": In(4),
                "read_data": Out(32),
                "read_data_valid": Out(1),
                "regs": In(RegisterBus()),
                "bar_accesses": Out(16),
            }
        )

    def elaborate(self, platform: object) -> Module:
        m = Module()
        image = capability_image()
        cfg_reg = pci_cfg_cap_offset() // 4
        # RW fields of virtio_pci_cfg_cap (spec 4.1.4.9): bar (byte 4), offset (dword 2), length (dword 3),
        # pci_cfg_data (dword 4).
        cap_bar = Signal(8)
        cap_offset = Signal(32)
        cap_length = Signal(32)
        cfg_data = Signal(32)

        wdata = Signal(32)
        wbe = Signal(4)
        in_window = Signal()
        for lo, hi in USER_CONFIG_WINDOWS:
            with m.If((self.register_number >= lo // 4) & (self.register_number < hi // 4)):
                m.d.comb += in_window.eq(self.function_number == self.function)

        def merge(old, new, be):
            return Cat(*[Mux(be[b], new[8 * b : 8 * b + 8], old[8 * b : 8 * b + 8]) for b in range(len(old) // 8)])

        # The register's constant part and which RW field it is are looked up when the request is captured
        # (from the hard IP's register number), so the answer is only a small mux of registers.
        rom = Signal(32)
        with m.Switch(self.register_number):
            for r, value in image.items():
                with m.Case(r):
                    m.d.comb += rom.eq(value)
        rom_r = Signal(32)
        is_field = Signal(4)  # reg is cfg_reg + 1 (bar), + 2 (offset), + 3 (length), + 4 (pci_cfg_data)
        capture = Signal()  # IDLE takes a request in the window this cycle
        with m.If(capture):
            m.d.sync += rom_r.eq(rom)
            for k in range(4):
                m.d.sync += is_field[k].eq(self.register_number == cfg_reg + 1 + k)
        value = Signal(32)
        m.d.comb += value.eq(rom_r)
        with m.If(is_field[0]):
            m.d.comb += value.eq(rom_r | cap_bar)  # bar is byte 4 of the capability: byte 0 of dword 1
        with m.If(is_field[1]):
            m.d.comb += value.eq(cap_offset)
        with m.If(is_field[2]):
            m.d.comb += value.eq(cap_length)
        with m.If(is_field[3]):
            m.d.comb += value.eq(cfg_data)

        # The BAR access of the window: valid only for our BAR, length 1/2/4, offset aligned and inside it.
        # Kept in registers recomputed every cycle from the capability fields: those change only in the WRITE
        # state, and WRITE is never directly followed by a state that uses them with new values (a write to
        # bar/offset/length returns to IDLE; a write to pci_cfg_data changes none of them), so the registered
        # copies are always up to date where they are used and the BAR request is driven from flip-flops.
        access_ok = Signal()
        size = Signal(2)
        len_mask = Signal(32)
        m.d.sync += [
            size.eq(Mux(cap_length == 4, 2, Mux(cap_length == 2, 1, 0))),
            access_ok.eq(
                (cap_bar == device_map.BAR)
                & ((cap_length == 1) | (cap_length == 2) | (cap_length == 4))
                & ((cap_offset & (cap_length - 1)) == 0)
                & (cap_offset < device_map.BAR_SIZE)
            ),
            len_mask.eq(Mux(cap_length == 4, 0xFFFFFFFF, Mux(cap_length == 2, 0xFFFF, 0xFF))),
        ]
        answer = Signal(32)  # the read answer, registered one cycle before it is presented

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += capture.eq((self.read_received | self.write_received) & in_window)
                with m.If(self.read_received & in_window):
                    with m.If(self.register_number == cfg_reg + 4):
                        m.next = "BAR_READ"
                    with m.Else():
                        m.next = "LOOKUP"
                with m.Elif(self.write_received & in_window):
                    m.d.sync += [
                        wdata.eq(self.write_data),
                        wbe.eq(self.write_byte_enable),
                    ]
                    m.next = "WRITE"
            with m.State("BAR_READ"):
                with m.If(access_ok):
                    m.d.comb += [
                        self.regs.valid.eq(1),
                        self.regs.write.eq(0),
                        self.regs.addr.eq(cap_offset[:16]),
                        self.regs.size.eq(size),
                    ]
                    with m.If(self.regs.done):
                        m.d.sync += cfg_data.eq((cfg_data & ~len_mask) | (self.regs.rdata[:32] & len_mask))
                        m.d.sync += self.bar_accesses.eq(self.bar_accesses + 1)
                        m.next = "LOOKUP"
                with m.Else():
                    m.next = "LOOKUP"
            with m.State("LOOKUP"):
                m.d.sync += answer.eq(value)
                m.next = "ANSWER"
            with m.State("ANSWER"):
                m.d.comb += [self.read_data.eq(answer), self.read_data_valid.eq(1)]
                m.next = "IDLE"
            with m.State("WRITE"):
                with m.If(is_field[0]):
                    with m.If(wbe[0]):
                        m.d.sync += cap_bar.eq(wdata[0:8])
                with m.If(is_field[1]):
                    m.d.sync += cap_offset.eq(merge(cap_offset, wdata, wbe))
                with m.If(is_field[2]):
                    m.d.sync += cap_length.eq(merge(cap_length, wdata, wbe))
                with m.If(is_field[3]):
                    m.d.sync += cfg_data.eq(merge(cfg_data, wdata, wbe))
                    m.next = "BAR_WRITE"
                with m.Else():
                    m.next = "IDLE"
            with m.State("BAR_WRITE"):
                with m.If(access_ok):
                    m.d.comb += [
                        self.regs.valid.eq(1),
                        self.regs.write.eq(1),
                        self.regs.addr.eq(cap_offset[:16]),
                        self.regs.size.eq(size),
                        self.regs.wdata.eq(cfg_data & len_mask),
                    ]
                    with m.If(self.regs.done):
                        m.d.sync += self.bar_accesses.eq(self.bar_accesses + 1)
                        m.next = "IDLE"
                with m.Else():
                    m.next = "IDLE"
        return m
