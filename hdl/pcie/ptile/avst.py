"""Intel P-tile Avalon-ST user interface blocks (Intel document 683059, "P-Tile Avalon Streaming IP for PCI
Express User Guide", chapter 4 "Interfaces").

The P-tile presents whole TLPs on two Avalon-ST streams with the header split from the payload (683059
4.3 "Avalon-ST Interface"): ``rx_st_hdr``/``tx_st_hdr`` carry the 128-bit TLP header (header dword 0 in bits
[127:96], each dword in PCIe Base byte order, so ``hdr[96+29:96+32]`` is Fmt), ``rx_st_data``/``tx_st_data``
carry the payload from dword 0 of the beat, not aligned to the address.  At 256 bits there is one segment
(one ``sop``/``eop``/``valid`` bit); ``rx_st_empty`` gives the empty dwords of the last beat.

The endpoint's blocks were written for the UltraScale+ descriptor streams (``hdl/pcie/tlp.py``).  Rather than
duplicate the completer and the DMA engine, this module converts between the two TLP formats, so both
families share one completer, one DMA engine and one MSI-X table:

* :class:`RxSplitter` - the RX stream (requests to BAR 0 and completions for DMA reads, mixed) is buffered
  (the RX ``ready`` latency is 27 cycles in cocotbext-pcie's model, following 683059 4.3.1: the IP may send
  up to that many beats after ``rx_st_ready`` falls) and split into a CQ stream (128-bit descriptor + payload
  at dword 4) and an RC stream (96-bit descriptor + payload at dword 3);
* :class:`TxFromDescriptor` - an RQ or CC stream (descriptor, then payload) becomes a P-tile TLP: header
  built from the descriptor, payload moved down to dword 0;
* :class:`TxArbiter` - completions, MSI-X writes and DMA requests onto ``tx_st_*`` at packet boundaries,
  each TLP only when the link partner's flow-control credits (``tx_cdts_limit``, 683059 4.3.3 "TX Flow
  Control Interface") cover it, ``valid`` only where ``tx_st_ready`` was high 3 cycles before (683059
  4.3.2: TX ready latency);
* :class:`ConfigOutput` - the time-multiplexed configuration output bus (``tl_cfg_*``, 683059 4.9): bus and
  device number, Max_Payload_Size, Max_Read_Request_Size, MSI-X enable and function mask;
* :class:`VirtioPciCfgResponder` - the hard IP's VirtIO PCI configuration access interface
  (``virtio_pcicfg_*``, 683059 3.2.2.4): accesses the driver makes through ``pci_cfg_data`` become BAR 0
  register accesses.

Only 256 bits (one segment) are implemented: 512 bits has two segments per beat (two TLPs may start in one
beat), which these converters do not handle.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal
from amaranth.lib import fifo, wiring
from amaranth.lib.wiring import In, Out

from hdl.pcie.completer import axis_signature
from hdl.pcie.tlp import CC_DESCRIPTOR, CQ_DESCRIPTOR, RC_DESCRIPTOR, RQ_DESCRIPTOR, ReqType, tuser_widths
from hdl.signatures import RegisterBus

SUPPORTED_DATA_WIDTHS = (256,)
#: cocotbext-pcie's P-tile model (and 683059 4.3.1) may deliver RX beats this many cycles after ready falls.
RX_READY_LATENCY = 27
#: TX: valid may be asserted only in cycles for which ready was high this many cycles earlier (683059 4.3.2).
TX_READY_LATENCY = 3
RX_FIFO_DEPTH = 64

# TLP Fmt/Type (PCIe Base 2.2.1)
FMT_3DW_NODATA, FMT_4DW_NODATA, FMT_3DW_DATA, FMT_4DW_DATA = 0b000, 0b001, 0b010, 0b011
TYPE_MEM = 0b00000
TYPE_MEM_LOCKED = 0b00001
TYPE_IO = 0b00010
TYPE_CPL = 0b01010
TYPE_FETCH_ADD, TYPE_SWAP, TYPE_CAS = 0b01100, 0b01101, 0b01110

# tx_cdts_limit_tdm_idx values (683059 4.3.3; the cocotbext model cycles through them)
TDM_PH, TDM_NPH, TDM_CPLH, TDM_PD, TDM_NPD, TDM_CPLD = 0, 1, 2, 4, 5, 6


def check_data_width(data_width: int) -> None:
    if data_width not in SUPPORTED_DATA_WIDTHS:
        raise ValueError(f"the P-tile build supports data_width {SUPPORTED_DATA_WIDTHS}, not {data_width}")


def ptile_stream_signature(data_width: int) -> wiring.Signature:
    """A P-tile TLP stream (one segment) from the source's view: header on the first beat."""
    return wiring.Signature(
        {
            "valid": Out(1),
            "ready": In(1),
            "sop": Out(1),
            "eop": Out(1),
            "hdr": Out(128),
            "data": Out(data_width),
        }
    )


def hdr_dw(hdr, k: int):
    """Header dword k (0..3) of a 128-bit P-tile header (dword 0 in the top bits)."""
    return hdr[(3 - k) * 32 : (4 - k) * 32]


def make_hdr(dw0, dw1, dw2, dw3):
    """The 128-bit header from its four dwords."""
    return Cat(dw3, dw2, dw1, dw0)


class RxSplitter(wiring.Component):
    """P-tile RX -> CQ (requests) and RC (completions) in the UltraScale+ dword-aligned descriptor format."""

    def __init__(self, data_width: int = 256) -> None:
        check_data_width(data_width)
        self.data_width = data_width
        tu = tuser_widths(data_width)
        super().__init__(
            {
                "rx_data": In(data_width),
                "rx_empty": In(3),
                "rx_sop": In(1),
                "rx_eop": In(1),
                "rx_valid": In(1),
                "rx_ready": Out(1),
                "rx_hdr": In(128),
                "rx_bar_range": In(3),
                "rx_func_num": In(3),
                "cq": Out(axis_signature(data_width, tu["cq"])),
                "rc": Out(axis_signature(data_width, tu["rc"])),
                "dropped": Out(16),  # beats outside a TLP (never expected)
            }
        )

    def elaborate(self, platform: object) -> Module:
        m = Module()
        w = self.data_width
        nd = w // 32
        entry_w = w + 128 + 3 + 3 + 3 + 2
        m.submodules.fifo = q = fifo.SyncFIFOBuffered(width=entry_w, depth=RX_FIFO_DEPTH)
        # back-pressure early enough for the beats still coming after ready falls (ready is registered: +1)
        m.d.sync += self.rx_ready.eq(q.level < RX_FIFO_DEPTH - RX_READY_LATENCY - 4)
        m.d.comb += [
            q.w_data.eq(
                Cat(
                    self.rx_data,
                    self.rx_hdr,
                    self.rx_empty,
                    self.rx_bar_range,
                    self.rx_func_num,
                    self.rx_sop,
                    self.rx_eop,
                )
            ),
            q.w_en.eq(self.rx_valid),
        ]
        h_data = q.r_data[0:w]
        h_hdr = q.r_data[w : w + 128]
        h_empty = q.r_data[w + 128 : w + 131]
        h_bar = q.r_data[w + 131 : w + 134]
        h_func = q.r_data[w + 134 : w + 137]
        h_sop = q.r_data[w + 137]
        h_eop = q.r_data[w + 138]

        dw0, dw1, dw2, dw3 = (hdr_dw(h_hdr, k) for k in range(4))
        fmt = dw0[29:32]
        typ = dw0[24:29]
        length = dw0[0:10]
        has_data = fmt[1]
        four_dw = fmt[0]
        is_cpl = typ == TYPE_CPL
        tc = dw0[20:23]
        attr = Cat(dw0[12:14], dw0[18])
        n_dw = Signal(11)
        m.d.comb += n_dw.eq(Mux(length == 0, 1024, length))

        # ---- CQ descriptor (PG213 layout) from a request header
        cq_desc = Signal(CQ_DESCRIPTOR)
        req_type = Signal(4)
        with m.Switch(Cat(typ, fmt[1])):
            with m.Case(TYPE_MEM | 0 << 5):
                m.d.comb += req_type.eq(ReqType.MEM_READ)
            with m.Case(TYPE_MEM | 1 << 5):
                m.d.comb += req_type.eq(ReqType.MEM_WRITE)
            with m.Case(TYPE_MEM_LOCKED | 0 << 5):
                m.d.comb += req_type.eq(ReqType.MEM_READ_LOCKED)
            with m.Case(TYPE_IO | 0 << 5):
                m.d.comb += req_type.eq(ReqType.IO_READ)
            with m.Case(TYPE_IO | 1 << 5):
                m.d.comb += req_type.eq(ReqType.IO_WRITE)
            with m.Case(TYPE_FETCH_ADD | 1 << 5):
                m.d.comb += req_type.eq(ReqType.MEM_FETCH_ADD)
            with m.Case(TYPE_SWAP | 1 << 5):
                m.d.comb += req_type.eq(ReqType.MEM_SWAP)
            with m.Case(TYPE_CAS | 1 << 5):
                m.d.comb += req_type.eq(ReqType.MEM_CAS)
            with m.Default():
                m.d.comb += req_type.eq(ReqType.MSG)  # messages (posted): the completer drops them
        addr = Signal(64)
        m.d.comb += addr.eq(Mux(four_dw, Cat(dw3, dw2), dw2))
        m.d.comb += [
            cq_desc.addr_type.eq(dw0[10:12]),
            cq_desc.addr.eq(addr[2:]),
            cq_desc.dword_count.eq(n_dw),
            cq_desc.req_type.eq(req_type),
            cq_desc.requester_id.eq(dw1[16:32]),
            cq_desc.tag.eq(dw1[8:16]),
            cq_desc.target_function.eq(h_func),
            cq_desc.bar_id.eq(h_bar),
            cq_desc.bar_aperture.eq(16),
            cq_desc.tc.eq(tc),
            cq_desc.attr.eq(attr),
        ]
        first_be = dw1[0:4]
        last_be = dw1[4:8]

        # ---- RC descriptor (PG213 layout) from a completion header
        rc_desc = Signal(RC_DESCRIPTOR)
        bc = dw1[0:12]
        m.d.comb += [
            rc_desc.lower_addr.eq(dw2[0:7]),
            rc_desc.error_code.eq(0),
            rc_desc.byte_count.eq(Mux(bc == 0, 4096, bc)),
            rc_desc.locked_read.eq(typ[0]),
            rc_desc.request_completed.eq(0),
            rc_desc.dword_count.eq(Mux(has_data, n_dw, 0)),
            rc_desc.status.eq(dw1[13:16]),
            rc_desc.poisoned.eq(dw0[14]),
            rc_desc.requester_id.eq(dw2[16:32]),
            rc_desc.tag.eq(dw2[8:16]),
            rc_desc.completer_id.eq(dw1[16:32]),
            rc_desc.tc.eq(tc),
            rc_desc.attr.eq(attr),
        ]

        # ---- realignment: descriptor (n dwords) + payload from dword 0 -> payload from dword n
        carry = Signal(4 * 32)  # the last n payload dwords of the previous beat (n = 4 for CQ, 3 for RC)
        to_rc = Signal()  # the packet in progress goes to RC
        sel_rc = Signal()
        valid_dw = Signal(range(nd + 1))  # payload dwords in the head beat
        m.d.comb += valid_dw.eq(Mux(h_eop, nd - h_empty, nd))

        out_valid = Signal()
        out_last = Signal()
        out_data = Signal(w)
        out_ready = Signal()
        pop = Signal()
        m.d.comb += q.r_en.eq(pop)

        def first_beat(n: int, desc):
            return Cat(desc.as_value()[: n * 32], h_data[: (nd - n) * 32])

        def body_beat(n: int):
            return Cat(carry[: n * 32], h_data[: (nd - n) * 32])

        def flush_beat(n: int):
            return Cat(carry[: n * 32], Const(0, (nd - n) * 32))

        def tail(n: int):
            return h_data[(nd - n) * 32 :]

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += sel_rc.eq(is_cpl)
                with m.If(q.r_rdy & ~h_sop):
                    m.d.comb += pop.eq(1)
                    m.d.sync += self.dropped.eq(self.dropped + 1)
                with m.Elif(q.r_rdy):
                    n_fit = Mux(is_cpl, nd - 3, nd - 4)
                    single = ~has_data | (h_eop & (valid_dw <= n_fit))
                    m.d.comb += [
                        out_valid.eq(1),
                        out_last.eq(single),
                        out_data.eq(Mux(is_cpl, first_beat(3, rc_desc), first_beat(4, cq_desc))),
                    ]
                    with m.If(out_ready):
                        m.d.comb += pop.eq(1)
                        m.d.sync += [to_rc.eq(is_cpl), carry.eq(Mux(is_cpl, tail(3), tail(4)))]
                        with m.If(~single):
                            m.next = "BODY"
                            with m.If(h_eop):
                                m.next = "FLUSH"
            with m.State("BODY"):
                m.d.comb += sel_rc.eq(to_rc)
                n_fit = Mux(to_rc, nd - 3, nd - 4)
                with m.If(q.r_rdy):
                    m.d.comb += [
                        out_valid.eq(1),
                        out_last.eq(h_eop & (valid_dw <= n_fit)),
                        out_data.eq(Mux(to_rc, body_beat(3), body_beat(4))),
                    ]
                    with m.If(out_ready):
                        m.d.comb += pop.eq(1)
                        m.d.sync += carry.eq(Mux(to_rc, tail(3), tail(4)))
                        with m.If(h_eop):
                            m.next = "IDLE"
                            with m.If(valid_dw > n_fit):
                                m.next = "FLUSH"
            with m.State("FLUSH"):
                m.d.comb += [
                    sel_rc.eq(to_rc),
                    out_valid.eq(1),
                    out_last.eq(1),
                    out_data.eq(Mux(to_rc, flush_beat(3), flush_beat(4))),
                ]
                with m.If(out_ready):
                    m.next = "IDLE"

        # sideband of the CQ's first beat: first/last byte enables (PG213 CQ tuser bits [3:0], [7:4]; sop bit 40)
        in_pkt = Signal()
        with m.If(out_valid & out_ready):
            m.d.sync += in_pkt.eq(~out_last)
        m.d.comb += [
            self.cq.tdata.eq(out_data),
            self.rc.tdata.eq(out_data),
            self.cq.tkeep.eq(-1),
            self.rc.tkeep.eq(-1),
            self.cq.tlast.eq(out_last),
            self.rc.tlast.eq(out_last),
            self.cq.tuser.eq(Cat(first_be, last_be, Const(0, 32), ~in_pkt)),
            self.rc.tuser.eq(0),
            self.cq.tvalid.eq(out_valid & ~sel_rc),
            self.rc.tvalid.eq(out_valid & sel_rc),
            out_ready.eq(Mux(sel_rc, self.rc.tready, self.cq.tready)),
        ]
        return m


class TxFromDescriptor(wiring.Component):
    """An RQ (``kind="rq"``) or CC (``kind="cc"``) descriptor stream -> a P-tile TLP stream.

    The header is built from the descriptor and the hard IP's identity (``bus``/``device``, from the
    configuration output bus: P-tile TLPs carry the requester/completer ID the application writes).  Memory
    requests below 4 GiB use the 3-dword header, as PCIe Base 2.2.4.1 requires.
    """

    def __init__(self, data_width: int = 256, kind: str = "rq") -> None:
        check_data_width(data_width)
        assert kind in ("rq", "cc")
        self.data_width = data_width
        self.kind = kind
        tu = tuser_widths(data_width)[kind]
        super().__init__(
            {
                "s": In(axis_signature(data_width, tu)),
                "out": Out(ptile_stream_signature(data_width)),
                "bus": In(8),
                "device": In(5),
                "idle": Out(1),  # nothing captured: every accepted TLP has left
            }
        )

    def elaborate(self, platform: object) -> Module:
        m = Module()
        w = self.data_width
        nd = w // 32
        n = 4 if self.kind == "rq" else 3
        s = self.s

        hdr = Signal(128)
        n_payload = Signal(11)
        if self.kind == "rq":
            d = Signal(RQ_DESCRIPTOR)
            m.d.comb += d.eq(s.tdata[:128])
            first_be = s.tuser[0:4]
            last_be = s.tuser[4:8]
            byte_addr = Cat(Const(0, 2), d.addr)
            four_dw = byte_addr[32:] != 0
            is_write = d.req_type == ReqType.MEM_WRITE
            fmt = Cat(four_dw, is_write, Const(0, 1))
            length = d.dword_count[:10]
            dw0 = Cat(
                length,
                d.addr_type,
                d.attr[:2],
                Const(0, 2),
                Const(0, 2),
                d.attr[2],
                Const(0, 1),
                d.tc,
                Const(0, 1),
                Const(TYPE_MEM, 5),
                fmt,
            )
            dw1 = Cat(first_be, last_be, d.tag, Const(0, 3), self.device, self.bus)
            dw2 = Mux(four_dw, byte_addr[32:64], Cat(Const(0, 2), byte_addr[2:32]))
            dw3 = Mux(four_dw, Cat(Const(0, 2), byte_addr[2:32]), 0)
            m.d.comb += [hdr.eq(make_hdr(dw0, dw1, dw2, dw3)), n_payload.eq(Mux(is_write, d.dword_count, 0))]
        else:
            d = Signal(CC_DESCRIPTOR)
            m.d.comb += d.eq(s.tdata[:96])
            with_data = d.dword_count != 0
            fmt = Cat(Const(0, 1), with_data, Const(0, 1))
            dw0 = Cat(
                d.dword_count[:10],
                Const(0, 2),
                d.attr[:2],
                Const(0, 2),
                Const(0, 2),
                d.attr[2],
                Const(0, 1),
                d.tc,
                Const(0, 1),
                Const(TYPE_CPL, 5),
                fmt,
            )
            dw1 = Cat(d.byte_count[:12], Const(0, 1), d.status, d.completer_function[:3], self.device, self.bus)
            dw2 = Cat(d.lower_addr, Const(0, 1), d.tag, d.requester_id)
            m.d.comb += [hdr.eq(make_hdr(dw0, dw1, dw2, Const(0, 32))), n_payload.eq(d.dword_count)]

        hdr_r = Signal(128)
        hold = Signal((nd - n) * 32)
        rem = Signal(12)  # payload dwords not yet output
        first = Signal()
        m.d.comb += [self.out.hdr.eq(hdr_r), self.out.sop.eq(first)]
        with m.FSM():
            with m.State("FIRST"):
                m.d.comb += [s.tready.eq(1), self.idle.eq(~s.tvalid)]
                with m.If(s.tvalid):
                    m.d.sync += [hdr_r.eq(hdr), hold.eq(s.tdata[n * 32 :]), rem.eq(n_payload), first.eq(1)]
                    m.next = "MID"
            with m.State("MID"):
                with m.If(rem <= nd - n):
                    m.d.comb += [self.out.valid.eq(1), self.out.eop.eq(1), self.out.data.eq(hold)]
                    with m.If(self.out.ready):
                        m.next = "FIRST"
                with m.Else():
                    m.d.comb += [
                        self.out.valid.eq(s.tvalid),
                        self.out.eop.eq(rem <= nd),
                        self.out.data.eq(Cat(hold, s.tdata[: n * 32])),
                        s.tready.eq(self.out.ready),
                    ]
                    with m.If(s.tvalid & self.out.ready):
                        m.d.sync += [hold.eq(s.tdata[n * 32 :]), rem.eq(rem - nd), first.eq(0)]
                        with m.If(rem <= nd):
                            m.next = "FIRST"
        return m


def _credits_ok(avail_bits: int, limit, consumed, need, infinite):
    """PCIe Base 2.6.1.2 gating: a TLP may go when (limit - (consumed + need)) mod 2^n <= 2^n / 2."""
    mask = (1 << avail_bits) - 1
    return infinite | (((limit - consumed - need) & mask) <= (1 << (avail_bits - 1)))


class TxArbiter(wiring.Component):
    """Completions (port ``cc``), MSI-X writes (``msi_*``) and DMA requests (``rq``) onto ``tx_st_*``.

    * packet-level: once a TLP's first beat has gone, its source keeps the bus until ``eop``;
    * order: completions first (they unblock the host), then an MSI-X write - but only while ``rq_idle`` says
      every DMA write the core was told is done has left (an interrupt must not overtake the data it
      announces: PCIe posted requests stay in order), then DMA requests;
    * credits: header and data credits per type from ``tx_cdts_limit``/``tx_cdts_limit_tdm_idx`` (683059
      4.3.3); a type whose first advertised limit is 0 has infinite credits (PCIe Base 3.4.2: an initial
      advertisement of 0 means infinite).  Nothing is sent before every limit has been seen once;
    * ``tx_st_valid`` only in cycles for which ``tx_st_ready`` was high 3 cycles before (683059 4.3.2);
    * Bus Master Enable (``bus_master``, from the configuration output bus): while it is 0 the function must
      not issue requests (PCIe Base 7.5.1.1.3), and the hard IP does not filter them for the application, so
      DMA requests are consumed and dropped (``dropped_requests``): a read then times out in the DMA engine
      with ``error``, as it would on a link that dropped it.  MSI-X writes are held back by the MSI-X block
      (the top treats BME = 0 like a function mask).
    """

    def __init__(self, data_width: int = 256) -> None:
        check_data_width(data_width)
        self.data_width = data_width
        super().__init__(
            {
                "cc": In(ptile_stream_signature(data_width)),
                "rq": In(ptile_stream_signature(data_width)),
                "rq_idle": In(1),
                "msi_valid": In(1),
                "msi_addr": In(64),
                "msi_data": In(32),
                "msi_ready": Out(1),  # pulses when the MSI-X write has been handed to the hard IP
                "bus": In(8),
                "device": In(5),
                "tx_data": Out(data_width),
                "tx_hdr": Out(128),
                "tx_sop": Out(1),
                "tx_eop": Out(1),
                "tx_valid": Out(1),
                "tx_ready": In(1),
                "cdts_limit": In(16),
                "cdts_idx": In(3),
                "credit_stalls": Out(32),  # cycles a TLP waited for credits
                "bus_master": In(1),
                "dropped_requests": Out(16),
            }
        )

    def elaborate(self, platform: object) -> Module:
        m = Module()

        # ---- ready latency: a 3-deep history of tx_st_ready
        hist = Signal(TX_READY_LATENCY)
        m.d.sync += hist.eq(Cat(self.tx_ready, hist[:-1]))
        tx_ok = hist[-1]

        # ---- credit limits (time-multiplexed) and consumption
        kinds = {"ph": (TDM_PH, 12), "nph": (TDM_NPH, 12), "cplh": (TDM_CPLH, 12),
                 "pd": (TDM_PD, 16), "npd": (TDM_NPD, 16), "cpld": (TDM_CPLD, 16)}  # fmt: skip
        limit, used, seen, inf = {}, {}, {}, {}
        for k, (idx, bits) in kinds.items():
            limit[k] = Signal(bits, name=f"limit_{k}")
            used[k] = Signal(bits, name=f"used_{k}")
            seen[k] = Signal(name=f"seen_{k}")
            inf[k] = Signal(name=f"infinite_{k}")
            with m.If(self.cdts_idx == idx):
                m.d.sync += [limit[k].eq(self.cdts_limit[:bits]), seen[k].eq(1)]
                with m.If(~seen[k]):
                    m.d.sync += inf[k].eq(self.cdts_limit[:bits] == 0)
        all_seen = Signal()
        m.d.comb += all_seen.eq(Cat(*seen.values()).all())

        # ---- the MSI-X write TLP (683059 4.6.3: a memory write with the table entry's address and data)
        four_dw = self.msi_addr[32:] != 0
        msi_dw0 = Cat(Const(1, 10), Const(0, 14), Const(TYPE_MEM, 5), Cat(four_dw, Const(1, 1), Const(0, 1)))
        msi_dw1 = Cat(Const(0xF, 4), Const(0, 4), Const(0, 8), Const(0, 3), self.device, self.bus)
        msi_dw2 = Mux(four_dw, self.msi_addr[32:], Cat(Const(0, 2), self.msi_addr[2:32]))
        msi_dw3 = Mux(four_dw, Cat(Const(0, 2), self.msi_addr[2:32]), 0)
        msi_hdr = make_hdr(msi_dw0, msi_dw1, msi_dw2, msi_dw3)

        def needs(hdr):
            """(posted, non-posted, completion, data credits) of a TLP from its header."""
            dw0 = hdr_dw(hdr, 0)
            fmt, typ, length = dw0[29:32], dw0[24:29], dw0[0:10]
            n_dw = Mux(length == 0, 1024, length)
            data_cr = Mux(fmt[1], (n_dw + 3) >> 2, 0)
            is_cpl = typ == TYPE_CPL
            posted = ~is_cpl & fmt[1] & (typ == TYPE_MEM)
            return posted, ~is_cpl & ~posted, is_cpl, data_cr

        def ok_for(hdr):
            posted, nonposted, cpl, dcr = needs(hdr)
            ok_p = _credits_ok(12, limit["ph"], used["ph"], 1, inf["ph"]) & _credits_ok(
                16, limit["pd"], used["pd"], dcr, inf["pd"]
            )
            ok_np = _credits_ok(12, limit["nph"], used["nph"], 1, inf["nph"]) & _credits_ok(
                16, limit["npd"], used["npd"], dcr, inf["npd"]
            )
            ok_c = _credits_ok(12, limit["cplh"], used["cplh"], 1, inf["cplh"]) & _credits_ok(
                16, limit["cpld"], used["cpld"], dcr, inf["cpld"]
            )
            return all_seen & Mux(posted, ok_p, Mux(nonposted, ok_np, ok_c))

        def consume(hdr):
            posted, nonposted, cpl, dcr = needs(hdr)
            with m.If(posted):
                m.d.sync += [used["ph"].eq(used["ph"] + 1), used["pd"].eq(used["pd"] + dcr)]
            with m.Elif(nonposted):
                m.d.sync += [used["nph"].eq(used["nph"] + 1), used["npd"].eq(used["npd"] + dcr)]
            with m.Else():
                m.d.sync += [used["cplh"].eq(used["cplh"] + 1), used["cpld"].eq(used["cpld"] + dcr)]

        sel = Signal(2)  # 0 cc, 1 rq, 2 msi
        with m.FSM():
            with m.State("IDLE"):
                waiting = Signal()
                with m.If(self.cc.valid & ok_for(self.cc.hdr)):
                    m.d.sync += sel.eq(0)
                    consume(self.cc.hdr)
                    m.next = "SEND"
                with m.Elif(self.msi_valid & self.rq_idle & ok_for(msi_hdr)):
                    m.d.sync += sel.eq(2)
                    consume(msi_hdr)
                    m.next = "SEND"
                with m.Elif(self.rq.valid & ~self.bus_master):
                    m.d.sync += self.dropped_requests.eq(self.dropped_requests + 1)
                    m.next = "DROP"
                with m.Elif(self.rq.valid & ok_for(self.rq.hdr)):
                    m.d.sync += sel.eq(1)
                    consume(self.rq.hdr)
                    m.next = "SEND"
                with m.Elif(self.cc.valid | self.rq.valid | self.msi_valid):
                    m.d.comb += waiting.eq(1)
                with m.If(waiting & all_seen):
                    m.d.sync += self.credit_stalls.eq(self.credit_stalls + 1)
            with m.State("SEND"):
                with m.Switch(sel):
                    with m.Case(0):
                        m.d.comb += [
                            self.tx_valid.eq(self.cc.valid & tx_ok),
                            self.tx_data.eq(self.cc.data),
                            self.tx_hdr.eq(self.cc.hdr),
                            self.tx_sop.eq(self.cc.sop),
                            self.tx_eop.eq(self.cc.eop),
                            self.cc.ready.eq(tx_ok),
                        ]
                        with m.If(self.cc.valid & tx_ok & self.cc.eop):
                            m.next = "IDLE"
                    with m.Case(1):
                        m.d.comb += [
                            self.tx_valid.eq(self.rq.valid & tx_ok),
                            self.tx_data.eq(self.rq.data),
                            self.tx_hdr.eq(self.rq.hdr),
                            self.tx_sop.eq(self.rq.sop),
                            self.tx_eop.eq(self.rq.eop),
                            self.rq.ready.eq(tx_ok),
                        ]
                        with m.If(self.rq.valid & tx_ok & self.rq.eop):
                            m.next = "IDLE"
                    with m.Default():
                        m.d.comb += [
                            self.tx_valid.eq(tx_ok),
                            self.tx_data.eq(self.msi_data),
                            self.tx_hdr.eq(msi_hdr),
                            self.tx_sop.eq(1),
                            self.tx_eop.eq(1),
                            self.msi_ready.eq(tx_ok),
                        ]
                        with m.If(tx_ok):
                            m.next = "IDLE"
            with m.State("DROP"):
                m.d.comb += self.rq.ready.eq(1)
                with m.If(self.rq.valid & self.rq.eop):
                    m.next = "IDLE"
        return m


class ConfigOutput(wiring.Component):
    """Decode PF0's fields from the configuration output bus ``tl_cfg_func/add/ctl`` (683059 4.9, Table
    "Configuration Output Interface"; bit positions as cocotbext-pcie 0.2.16's model drives them).

    Register 0x00: [2:0] Max_Payload_Size, [5:3] Max_Read_Request_Size, [7] Bus Master Enable, [15] Memory
    Space Enable.  0x01: [7:0] bus number, [12:8] device number.  0x0C: [5] MSI-X Enable, [6] MSI-X Function
    Mask.
    """

    def __init__(self) -> None:
        super().__init__(
            {
                "func": In(3),
                "add": In(5),
                "ctl": In(16),
                "max_payload": Out(2),
                "max_read_req": Out(3),
                "bus_master": Out(1),
                "bus": Out(8),
                "device": Out(5),
                "msix_enable": Out(1),
                "msix_mask": Out(1),
            }
        )

    def elaborate(self, platform: object) -> Module:
        m = Module()
        with m.If(self.func == 0):
            with m.Switch(self.add):
                with m.Case(0x00):
                    mps = self.ctl[0:3]
                    m.d.sync += [
                        self.max_payload.eq(Mux(mps > 3, 3, mps)),  # the DMA engine's encoding stops at 1 KiB
                        self.max_read_req.eq(self.ctl[3:6]),
                        self.bus_master.eq(self.ctl[7]),
                    ]
                with m.Case(0x01):
                    m.d.sync += [self.bus.eq(self.ctl[0:8]), self.device.eq(self.ctl[8:13])]
                with m.Case(0x0C):
                    m.d.sync += [self.msix_enable.eq(self.ctl[5]), self.msix_mask.eq(self.ctl[6])]
        return m


class VirtioPciCfgResponder(wiring.Component):
    """The VirtIO PCI configuration access interface (683059 3.2.2.4, Table "VirtIO PCI Configuration Access
    Interface") onto the BAR 0 register bus.

    The hard IP keeps the capability's ``bar``/``offset``/``length`` fields itself; when the driver writes
    ``pci_cfg_data`` it pulses ``virtio_pcicfg_cfgwr`` with ``bar``, ``length``, ``baroffset`` and
    ``cfgdata``, and user logic "must execute a write access at cap.offset at the BAR selected by cap.bar
    using the first cap.length bytes"; when the driver reads ``pci_cfg_data`` it pulses ``cfgrd`` and user
    logic performs the read and returns the bytes with ``rdack`` (one cycle), ``rdbe`` and ``data``, naming
    the function in ``apppfnum``/``appvfnum``.  Accesses this device cannot carry out (another BAR, a length
    other than 1, 2 or 4, a misaligned offset, outside BAR 0) perform nothing; a read then returns 0 with
    ``rdbe`` = 0, so the hard IP keeps the old ``pci_cfg_data`` bytes (virtio spec 4.1.4.9 leaves them
    undefined).
    """

    def __init__(self, bar: int = 0, bar_size: int = 1 << 16) -> None:
        self.bar = bar
        self.bar_size = bar_size
        super().__init__(
            {
                "pfnum": In(3),
                "bar_num": In(8),
                "length": In(32),
                "baroffset": In(32),
                "cfgdata": In(32),
                "cfgwr": In(1),
                "cfgrd": In(1),
                "apppfnum": Out(3),
                "appvfnum": Out(11),
                "rdack": Out(1),
                "rdbe": Out(4),
                "data": Out(32),
                "regs": In(RegisterBus()),  # master port (RegisterBus is written from the slave's view)
                "accesses": Out(16),
            }
        )

    def elaborate(self, platform: object) -> Module:
        m = Module()
        is_read = Signal()
        size = Signal(2)
        addr = Signal(16)
        wdata = Signal(32)
        pf = Signal(3)
        ok = Signal()
        length = self.length
        aligned = Mux(length == 4, self.baroffset[:2] == 0, Mux(length == 2, self.baroffset[0] == 0, 1))
        m.d.comb += ok.eq(
            (self.bar_num == self.bar)
            & ((length == 1) | (length == 2) | (length == 4))
            & aligned
            & (self.baroffset < self.bar_size)
        )
        be = Signal(4)
        m.d.comb += [
            self.regs.addr.eq(addr),
            self.regs.size.eq(size),
            self.regs.write.eq(~is_read),
            self.regs.wdata.eq(wdata),
            self.apppfnum.eq(pf),
            self.appvfnum.eq(0),
        ]
        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.cfgwr | self.cfgrd):
                    m.d.sync += [
                        is_read.eq(self.cfgrd),
                        size.eq(Mux(length == 4, 2, Mux(length == 2, 1, 0))),
                        be.eq(Mux(length == 4, 0xF, Mux(length == 2, 0x3, 0x1))),
                        addr.eq(self.baroffset[:16]),
                        wdata.eq(self.cfgdata),
                        pf.eq(self.pfnum),
                    ]
                    with m.If(ok):
                        m.d.sync += self.accesses.eq(self.accesses + 1)
                        m.next = "ACCESS"
                    with m.Elif(self.cfgrd):
                        m.next = "REFUSE"
            with m.State("ACCESS"):
                m.d.comb += self.regs.valid.eq(1)
                with m.If(self.regs.done):
                    with m.If(is_read):
                        m.d.comb += [self.rdack.eq(1), self.rdbe.eq(be), self.data.eq(self.regs.rdata[:32])]
                    m.next = "IDLE"
            with m.State("REFUSE"):
                m.d.comb += [self.rdack.eq(1), self.rdbe.eq(0), self.data.eq(0)]
                m.next = "IDLE"
        return m
