"""Descriptor layouts of the UltraScale+ PCIe integrated block's four AXI-stream user interfaces (PG213).

PG213 ("Designing with the Core", sections "Completer Interface" and "Requester Interface") defines the
descriptors in the dword-aligned mode that this design uses.  The layouts below are ``lib.data`` structs, bit 0
first, so that ``descriptor.field`` in the gateware is the PG213 field of the same name.

* CQ (completer request, 128 bits, PG213 "Completer Request Descriptor Format"): data follows at dword 4.
* CC (completer completion, 96 bits, PG213 "Completer Completion Descriptor Format"): data at dword 3.
* RQ (requester request, 128 bits, PG213 "Requester Request Descriptor Format"): data at dword 4.
* RC (requester completion, 96 bits, PG213 "Requester Completion Descriptor Format"): data at dword 3.

``tuser`` sideband widths (PG213 "Port Descriptions"): CQ 88, CC 33, RQ 62, RC 75 below 512 bits; CQ 183,
CC 81, RQ 137, RC 161 at 512 bits, where the sideband also carries is_sop/is_eop flags and pointers (straddling
is not used here, so only the first of each is set) and the second TLP's byte enables, which moves last_be.
64 bits (where a descriptor spans two beats) is not implemented: ``check_data_width`` refuses it.
"""

from __future__ import annotations

import enum

from amaranth import Cat, Const, Value
from amaranth.lib import data

#: Widths of the tuser sidebands below 512 bits (PG213 Tables "CQ/CC/RQ/RC interface port descriptions").
CQ_TUSER_WIDTH = 88
CC_TUSER_WIDTH = 33
RQ_TUSER_WIDTH = 62
RC_TUSER_WIDTH = 75

SUPPORTED_DATA_WIDTHS = (128, 256, 512)


def check_data_width(data_width: int) -> None:
    """Refuse widths whose sideband layout this design does not implement (512 uses the straddle layout)."""
    if data_width not in SUPPORTED_DATA_WIDTHS:
        raise ValueError(f"data_width must be one of {SUPPORTED_DATA_WIDTHS}, not {data_width}")


def tuser_widths(data_width: int) -> dict[str, int]:
    """tuser width of each interface at ``data_width`` (PG213 port tables)."""
    if data_width == 512:
        return {"cq": 183, "cc": 81, "rq": 137, "rc": 161}
    return {"cq": CQ_TUSER_WIDTH, "cc": CC_TUSER_WIDTH, "rq": RQ_TUSER_WIDTH, "rc": RC_TUSER_WIDTH}


def last_be_offset(data_width: int) -> int:
    """Bit of last_be[0] in the CQ and RQ sidebands: 4 below 512 bits, 8 at 512 (first_be is 8 bits wide there)."""
    return 8 if data_width == 512 else 4


def rq_tuser(data_width: int, first_be, last_be, sop, eop, eop_ptr, seq_num=None) -> Value:
    """RQ sideband: byte enables, the 6-bit sequence number, and at 512 bits is_sop0/is_eop0 with the last dword.

    ``seq_num`` is what the hard IP reports back on ``pcie_rq_seq_num0/1`` once the TLP has left its transmit
    path (PG213 "Requester Request Interface", seq_num[3:0] at bits 27:24 and seq_num[5:4] at 61:60 below 512
    bits; seq_num0[5:0] at bits 66:61 at 512 bits).
    """
    seq = Const(0, 6) if seq_num is None else seq_num
    if data_width == 512:
        # first_be[7:0] last_be[15:8] addr_offset[19:16] is_sop[21:20] is_sop0_ptr[23:22] is_sop1_ptr[25:24]
        # is_eop[27:26] is_eop0_ptr[31:28] is_eop1_ptr[35:32] discontinue[36] tph[60:37] seq_num0[66:61] ...
        return Cat(
            first_be,
            Const(0, 4),
            last_be,
            Const(0, 4),
            Const(0, 4),
            sop,
            Const(0, 1),
            Const(0, 4),
            eop,
            Const(0, 1),
            eop_ptr[:4],
            Const(0, 29),
            seq[:6],
        ).as_unsigned()
    # first_be[3:0] last_be[7:4] addr_offset[10:8] discontinue[11] tph[23:12] seq_num[27:24] parity[59:28]
    # seq_num[61:60]
    return Cat(first_be, last_be, Const(0, 16), seq[:4], Const(0, 32), seq[4:6]).as_unsigned()


def cc_tuser(data_width: int, sop, eop, eop_ptr) -> Value:
    """CC sideband: nothing below 512 bits; at 512 is_sop[1:0], is_sop_ptr, is_eop[7:6], is_eop0_ptr[11:8]."""
    if data_width == 512:
        return Cat(sop, Const(0, 1), Const(0, 4), eop, Const(0, 1), eop_ptr[:4]).as_unsigned()
    return Const(0, 1)


class ReqType(enum.IntEnum):
    """Request type encoding of the CQ and RQ descriptors (PG213 Table "Transaction Types")."""

    MEM_READ = 0b0000
    MEM_WRITE = 0b0001
    IO_READ = 0b0010
    IO_WRITE = 0b0011
    MEM_FETCH_ADD = 0b0100
    MEM_SWAP = 0b0101
    MEM_CAS = 0b0110
    MEM_READ_LOCKED = 0b0111
    CFG_READ_0 = 0b1000
    CFG_READ_1 = 0b1001
    CFG_WRITE_0 = 0b1010
    CFG_WRITE_1 = 0b1011
    MSG = 0b1100
    MSG_VENDOR = 0b1101
    MSG_ATS = 0b1110


class CplStatus(enum.IntEnum):
    """Completion status (PCIe Base 2.2.9): successful, unsupported request, completer abort."""

    SC = 0b000
    UR = 0b001
    CRS = 0b010
    CA = 0b100


CQ_DESCRIPTOR = data.StructLayout(
    {
        "addr_type": 2,
        "addr": 62,  # dword address (byte address >> 2)
        "dword_count": 11,
        "req_type": 4,
        "_rsvd0": 1,
        "requester_id": 16,
        "tag": 8,
        "target_function": 8,
        "bar_id": 3,
        "bar_aperture": 6,
        "tc": 3,
        "attr": 3,
        "_rsvd1": 1,
    }
)

CC_DESCRIPTOR = data.StructLayout(
    {
        "lower_addr": 7,
        "_rsvd0": 1,
        "addr_type": 2,
        "_rsvd1": 6,
        "byte_count": 13,
        "locked_read": 1,
        "_rsvd2": 2,
        "dword_count": 11,
        "status": 3,
        "poisoned": 1,
        "_rsvd3": 1,
        "requester_id": 16,
        "tag": 8,
        "completer_function": 8,
        "completer_bus": 8,
        "completer_id_enable": 1,
        "tc": 3,
        "attr": 3,
        "force_ecrc": 1,
    }
)

RQ_DESCRIPTOR = data.StructLayout(
    {
        "addr_type": 2,
        "addr": 62,
        "dword_count": 11,
        "req_type": 4,
        "poisoned": 1,
        "requester_id": 16,
        "tag": 8,
        "completer_id": 16,
        "requester_id_enable": 1,
        "tc": 3,
        "attr": 3,
        "force_ecrc": 1,
    }
)

RC_DESCRIPTOR = data.StructLayout(
    {
        "lower_addr": 12,
        "error_code": 4,
        "byte_count": 13,
        "locked_read": 1,
        "request_completed": 1,
        "_rsvd0": 1,
        "dword_count": 11,
        "status": 3,
        "poisoned": 1,
        "_rsvd1": 1,
        "requester_id": 16,
        "tag": 8,
        "completer_id": 16,
        "_rsvd2": 1,
        "tc": 3,
        "attr": 3,
        "_rsvd3": 1,
    }
)

#: RQ tuser fields used here (PG213 "Requester Request Interface" sideband, non-straddled, < 512 bits).
RQ_TUSER = data.StructLayout(
    {
        "first_be": 4,
        "last_be": 4,
        "addr_offset": 3,
        "discontinue": 1,
        "tph_present": 1,
        "tph_type": 2,
        "tph_indirect_tag_en": 1,
        "tph_st_tag": 8,
        "seq_num_lo": 4,
        "parity": 32,
        "seq_num_hi": 2,
    }
)

#: CQ tuser fields used here (PG213 "Completer Request Interface" sideband, < 512 bits).
CQ_TUSER = data.StructLayout(
    {
        "first_be": 4,
        "last_be": 4,
        "byte_en": 32,
        "sop": 1,
        "discontinue": 1,
        "tph_present": 1,
        "tph_type": 2,
        "tph_st_tag": 8,
        "parity": 32,
        "_rsvd": 3,
    }
)

#: RC tuser fields used here (PG213 "Requester Completion Interface" sideband, < 512 bits).
RC_TUSER = data.StructLayout(
    {
        "byte_en": 32,
        "is_sof": 2,
        "is_eof_0": 4,
        "is_eof_1": 4,
        "discontinue": 1,
        "parity": 32,
    }
)

#: Completion error codes the hard IP reports in the RC descriptor (PG213 "Requester Completion Descriptor").
RC_ERROR_NONE = 0

assert CQ_DESCRIPTOR.size == 128 and RQ_DESCRIPTOR.size == 128
assert CC_DESCRIPTOR.size == 96 and RC_DESCRIPTOR.size == 96
assert CQ_TUSER.size == CQ_TUSER_WIDTH and RQ_TUSER.size == RQ_TUSER_WIDTH and RC_TUSER.size == RC_TUSER_WIDTH


def max_size_bytes(code: int) -> int:
    """cfg_max_payload / cfg_max_read_req encoding (PCIe Device Control): 0 = 128 bytes ... 5 = 4096 bytes."""
    return 128 << code
