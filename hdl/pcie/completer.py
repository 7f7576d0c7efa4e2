"""BAR completer: memory requests from the CQ interface become RegisterBus accesses, answered on CC.

What it accepts (everything else is answered per PCIe Base 2.3.1 "Request Handling Rules": Unsupported
Request completion for non-posted requests, silently dropped for posted ones - never a hang):

* memory reads and writes to BAR 0 of 1..8 bytes (at most 3 dwords, any first/last byte enables, including
  non-contiguous ones); a zero-length read (first_be = 0, PCIe Base 2.2.5) completes with one dword.

Each request is split into *natural* RegisterBus accesses (size 1, 2, 4 or 8, aligned to its size), the
largest that fit the enabled bytes, lowest address first: an aligned 4-byte read is one 4-byte access, as
virtio requires for its registers (spec 4.1.3.1), and a request with holes in its byte enables never
touches a disabled byte.

The CQ descriptor and up to 3 dwords of write data are gathered from the first ``256 / data_width`` beats
(PG213 "Completer Request Interface", dword-aligned mode: descriptor in dwords 0-3, data from dword 4); the
rest of a longer TLP is drained and the request refused.  Completions use the CC descriptor with data from
dword 3 (PG213 "Completer Completion Interface").
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hdl.pcie.tlp import (
    CC_DESCRIPTOR,
    CQ_DESCRIPTOR,
    CplStatus,
    ReqType,
    cc_tuser,
    check_data_width,
    last_be_offset,
    tuser_widths,
)
from hdl.signatures import RegisterBus

#: Request types that need a completion (PCIe Base 2.1.2, non-posted): everything but writes and messages.
POSTED_TYPES = (ReqType.MEM_WRITE, ReqType.MSG, ReqType.MSG_VENDOR, ReqType.MSG_ATS)


def axis_signature(data_width: int, tuser_width: int) -> wiring.Signature:
    """A PG213 AXI-stream from the source's view (tkeep has one bit per dword in dword-aligned mode)."""
    return wiring.Signature(
        {
            "tdata": Out(data_width),
            "tkeep": Out(data_width // 32),
            "tlast": Out(1),
            "tuser": Out(tuser_width),
            "tvalid": Out(1),
            "tready": In(1),
        }
    )


class BarCompleter(wiring.Component):
    """CQ in, CC out, register accesses through ``regs`` (a master port)."""

    def __init__(self, data_width: int = 256, bar: int = 0) -> None:
        check_data_width(data_width)
        self.data_width = data_width
        self.bar = bar
        super().__init__(
            {
                "cq": In(axis_signature(data_width, tuser_widths(data_width)["cq"])),
                "cc": Out(axis_signature(data_width, tuser_widths(data_width)["cc"])),
                "regs": In(RegisterBus()),
                # counters for tests and statistics
                "ur_count": Out(16),
                "dropped_count": Out(16),
            }
        )

    def elaborate(self, platform: object) -> Module:
        m = Module()
        w = self.data_width
        n_capture = max(1, 256 // w)
        cw = min(w, 256)  # bits captured per beat
        lbo = last_be_offset(w)

        buf = Signal(256)
        beat = Signal(range(n_capture + 1))
        first_be = Signal(4)
        last_be = Signal(4)
        desc = Signal(CQ_DESCRIPTOR)
        m.d.comb += desc.eq(buf[:128])
        payload = Signal(96)
        m.d.comb += payload.eq(buf[128:224])

        mask = Signal(12)
        result = Signal(96)
        status = Signal(3)
        with_data = Signal()  # completion carries data (successful read)
        cc_packet = Signal(max(256, w))
        cc_dwords = Signal(range(8))
        cc_beat = Signal(range(n_capture + 1))

        # ---- byte-count and lower address of a read completion (PCIe Base 2.3.1.1, Table "Calculating Byte
        # Count from Length and Byte Enables")
        def first_set(v: Signal, n: int):
            res = Const(0, range(n))
            for i in reversed(range(n)):
                res = Mux(v[i], i, res)
            return res

        def last_set(v: Signal, n: int):
            res = Const(0, range(n))
            for i in range(n):
                res = Mux(v[i], i, res)
            return res

        dw_count = desc.dword_count
        lead = Signal(2)
        m.d.comb += lead.eq(Mux(first_be == 0, 0, first_set(first_be, 4)))
        byte_count = Signal(13)
        with m.If(dw_count == 1):
            with m.If(first_be == 0):
                m.d.comb += byte_count.eq(1)
            with m.Else():
                m.d.comb += byte_count.eq(last_set(first_be, 4) - first_set(first_be, 4) + 1)
        with m.Else():
            m.d.comb += byte_count.eq((dw_count << 2) - lead - (3 - last_set(last_be, 4)))

        # ---- the current natural access: lowest enabled byte, largest aligned size that is fully enabled
        # Found in two cycles (FIND, then PREP) so that neither is deeper than a priority encoder and a shift:
        # FIND registers the lowest enabled byte and the mask moved down to it, PREP the access they make.
        idx = Signal(range(12))
        m.d.sync += idx.eq(first_set(mask, 12))
        abs_off = Signal(3)  # byte address bits [2:0] of that byte
        m.d.comb += abs_off.eq(Cat(Const(0, 2), desc.addr[0]) + idx)
        size = Signal(2)
        nbytes = Signal(4)
        shifted = Signal(12)
        m.d.sync += shifted.eq(mask >> first_set(mask, 12))
        with m.If((abs_off == 0) & (shifted[:8] == 0xFF)):
            m.d.comb += [size.eq(3), nbytes.eq(8)]
        with m.Elif((abs_off[:2] == 0) & (shifted[:4] == 0xF)):
            m.d.comb += [size.eq(2), nbytes.eq(4)]
        with m.Elif((abs_off[0] == 0) & (shifted[:2] == 0x3)):
            m.d.comb += [size.eq(1), nbytes.eq(2)]
        with m.Else():
            m.d.comb += [size.eq(0), nbytes.eq(1)]
        access_mask = Signal(12)
        m.d.comb += access_mask.eq((((1 << nbytes) - 1) << idx)[:12])

        acc_addr = Signal(16)
        acc_size = Signal(2)
        acc_idx = Signal(range(12))
        acc_mask = Signal(12)
        acc_rmask = Signal(64)
        acc_wdata = Signal(64)

        byte_addr = Signal(16)
        m.d.comb += byte_addr.eq(Cat(Const(0, 2), desc.addr[:14]) + idx)

        req_type = desc.req_type
        is_read = req_type == ReqType.MEM_READ
        is_write = req_type == ReqType.MEM_WRITE
        is_posted = Signal()
        m.d.comb += is_posted.eq(0)
        for t in POSTED_TYPES:
            with m.If(req_type == t):
                m.d.comb += is_posted.eq(1)

        full_mask = Signal(12)
        with m.Switch(dw_count):
            with m.Case(1):
                m.d.comb += full_mask.eq(first_be)
            with m.Case(2):
                m.d.comb += full_mask.eq(Cat(first_be, last_be))
            with m.Case(3):
                m.d.comb += full_mask.eq(Cat(first_be, Const(0xF, 4), last_be))

        def spans_over_8(v: Signal):
            """Enabled bytes further than 8 apart (last - first >= 8) as a two-level AND-OR, not a subtraction."""
            return Cat(*(v[i] & v[i + 8 :].any() for i in range(len(v) - 8))).any()

        span_ok = Signal()
        m.d.comb += span_ok.eq(
            (dw_count >= 1)
            & (dw_count <= 3)
            & ((dw_count == 1) | ((first_be != 0) & (last_be != 0)))
            & ~spans_over_8(full_mask)
        )
        supported = Signal()  # registered in CHECK, used in DECODE
        m.d.sync += supported.eq((is_read | is_write) & (desc.bar_id == self.bar) & span_ok)
        posted = Signal()
        m.d.sync += posted.eq(is_posted)
        first_mask = Signal(12)
        m.d.sync += first_mask.eq(full_mask)

        cc_desc = Signal(CC_DESCRIPTOR)
        m.d.comb += [
            cc_desc.lower_addr.eq(Cat(lead, desc.addr[:5])),
            cc_desc.addr_type.eq(desc.addr_type),
            cc_desc.byte_count.eq(byte_count),
            cc_desc.dword_count.eq(Mux(with_data, dw_count, 0)),
            cc_desc.status.eq(status),
            cc_desc.requester_id.eq(desc.requester_id),
            cc_desc.tag.eq(desc.tag),
            cc_desc.completer_function.eq(desc.target_function),
            cc_desc.tc.eq(desc.tc),
            cc_desc.attr.eq(desc.attr),
        ]

        with m.FSM():
            with m.State("CAPTURE"):
                m.d.comb += self.cq.tready.eq(1)
                with m.If(self.cq.tvalid):
                    with m.If(beat < n_capture):
                        for k in range(n_capture):
                            with m.If(beat == k):
                                m.d.sync += buf[k * cw : (k + 1) * cw].eq(self.cq.tdata[:cw])
                        m.d.sync += beat.eq(beat + 1)
                    with m.If(beat == 0):
                        m.d.sync += [first_be.eq(self.cq.tuser[0:4]), last_be.eq(self.cq.tuser[lbo : lbo + 4])]
                    with m.If(self.cq.tlast):
                        m.d.sync += beat.eq(0)
                        m.next = "CHECK"
            with m.State("CHECK"):
                # The request's checks (type, BAR, byte-enable span) are registered here, decided on next.
                m.next = "DECODE"
            with m.State("DECODE"):
                m.d.sync += [result.eq(0), mask.eq(first_mask)]
                with m.If(supported):
                    m.d.sync += [status.eq(CplStatus.SC), with_data.eq(is_read)]
                    m.next = "FIND"
                with m.Elif(posted):
                    m.d.sync += self.dropped_count.eq(self.dropped_count + 1)
                    m.next = "CAPTURE"
                with m.Else():
                    m.d.sync += [status.eq(CplStatus.UR), with_data.eq(0), self.ur_count.eq(self.ur_count + 1)]
                    m.next = "BUILD"
            with m.State("FIND"):
                # The next access is worked out from the remaining byte mask into registers (FIND, PREP), so
                # the bus is driven from flip-flops.  RegisterBus ``valid`` is low: the gap it needs after ``done``.
                with m.If(mask == 0):
                    with m.If(is_read):
                        m.next = "BUILD"
                    with m.Else():
                        m.next = "CAPTURE"
                with m.Else():
                    m.next = "PREP"
            with m.State("PREP"):
                m.d.sync += [
                    acc_addr.eq(byte_addr),
                    acc_size.eq(size),
                    acc_idx.eq(idx),
                    acc_mask.eq(access_mask),
                    acc_rmask.eq(Mux(nbytes == 8, (1 << 64) - 1, (Const(1, 65) << (nbytes * 8)) - 1)),
                    acc_wdata.eq(payload >> (idx * 8)),
                ]
                m.next = "ACCESS"
            with m.State("ACCESS"):
                m.d.comb += [
                    self.regs.valid.eq(1),
                    self.regs.write.eq(is_write),
                    self.regs.addr.eq(acc_addr),
                    self.regs.size.eq(acc_size),
                    self.regs.wdata.eq(acc_wdata),
                ]
                with m.If(self.regs.done):
                    m.d.sync += [
                        result.eq(result | ((self.regs.rdata & acc_rmask) << (acc_idx * 8))),
                        mask.eq(mask & ~acc_mask),
                    ]
                    m.next = "FIND"
            with m.State("BUILD"):
                m.d.sync += [
                    cc_packet.eq(Cat(cc_desc.as_value(), result)),
                    cc_dwords.eq(3 + Mux(with_data, dw_count, 0)),
                    cc_beat.eq(0),
                ]
                m.next = "SEND"
            with m.State("SEND"):
                dw_per_beat = w // 32
                m.d.comb += self.cc.tvalid.eq(1)
                for k in range(n_capture):
                    with m.If(cc_beat == k):
                        m.d.comb += self.cc.tdata.eq(cc_packet[k * w : (k + 1) * w])
                        for j in range(dw_per_beat):
                            m.d.comb += self.cc.tkeep[j].eq(k * dw_per_beat + j < cc_dwords)
                        m.d.comb += self.cc.tlast.eq((k + 1) * dw_per_beat >= cc_dwords)
                        eop_ptr = cc_dwords - 1 - k * dw_per_beat
                        m.d.comb += self.cc.tuser.eq(cc_tuser(w, Const(int(k == 0), 1), self.cc.tlast, eop_ptr))
                with m.If(self.cc.tready):
                    m.d.sync += cc_beat.eq(cc_beat + 1)
                    with m.If(self.cc.tlast):
                        m.next = "CAPTURE"
        return m
