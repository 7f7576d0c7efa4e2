"""MSI-X table, pending-bit array and signalling through the hard IP's ``cfg_interrupt_msix_*`` ports.

The table and PBA live in BAR 0 at ``MSIX_TABLE_OFFSET`` / ``MSIX_PBA_OFFSET`` (PCIe Base 7.7.2 "MSI-X
Capability and Table Structure"); the hard IP's MSI-X capability points at them (the simulation configures
the model's ``pf0_msix_table_offset``/``pba_offset`` to the same numbers).  With the core in "MSI-X external"
mode (PG213 "Configuration Interrupt Controller Interface", MSI-X), user logic presents the message address
and data of a vector on ``cfg_interrupt_msix_address/data`` and pulses ``cfg_interrupt_msix_int`` for one
cycle; the core answers with ``cfg_interrupt_msix_sent`` (message sent) or ``cfg_interrupt_msix_fail``.  One
interrupt is in flight at a time.

Masking (PCIe Base 7.7.2.2 and 6.1.4.5): a request for a vector whose Mask bit is set, or while the
function's Function Mask is set, or while MSI-X is disabled, sets the vector's pending bit and is sent when
the condition clears.  Vector Control's Mask bit resets to 1, as the spec requires.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hdl.regbus import byte_enables, merge_bytes, size_mask
from hdl.signatures import InterruptPort, RegisterBus


class MsixBlock(wiring.Component):
    """MSI-X table + PBA as a RegisterBus slave and the interrupt sender."""

    def __init__(self, n_vectors: int, table_offset: int, pba_offset: int) -> None:
        assert 1 <= n_vectors <= 64, "one PBA qword is implemented"
        self.n_vectors = n_vectors
        self.table_offset = table_offset
        self.pba_offset = pba_offset
        super().__init__(
            {
                "regs": Out(RegisterBus()),
                "irq": In(InterruptPort()),
                "msix_enable": In(1),  # cfg_interrupt_msix_enable[0] (PF0)
                "msix_mask": In(1),  # cfg_interrupt_msix_mask[0] (PF0 Function Mask)
                "msix_address": Out(64),
                "msix_data": Out(32),
                "msix_int": Out(1),
                "msix_sent": In(1),
                "msix_fail": In(1),
                "pending": Out(n_vectors),
                "sent_count": Out(32),
                "fail_count": Out(32),
            }
        )

    def elaborate(self, platform: object) -> Module:
        m = Module()
        n = self.n_vectors
        addrs = [Signal(64, name=f"vec{i}_addr") for i in range(n)]
        datas = [Signal(32, name=f"vec{i}_data") for i in range(n)]
        masks = [Signal(1, init=1, name=f"vec{i}_mask") for i in range(n)]

        # ---- register access: the table is qword-addressed: q0 = message address, q1 = data | control << 32
        # Pipelined like the core's registers, so every stage is a few LUTs deep: S0 captures the request with
        # one flag per addressed qword and the write data on its byte lanes; S1 writes and selects the read
        # qword; S2 moves it to the low bytes and masks it to the access size; S3 raises ``done``.
        regs = self.regs
        p1, p2, p3 = Signal(), Signal(), Signal()
        start = Signal()
        m.d.comb += [start.eq(regs.valid & ~(p1 | p2 | p3)), regs.done.eq(p3)]
        m.d.sync += [p1.eq(start), p2.eq(p1), p3.eq(p2)]
        lane = regs.addr[:3]
        qaddr = regs.addr >> 3
        r_write = Signal()
        r_lane = Signal(3)
        r_size = Signal(2)
        bmask = Signal(8)
        wdata = Signal(64)
        hit_addr = Signal(n)
        hit_data = Signal(n)
        hit_pba = Signal()
        with m.If(start):
            m.d.sync += [
                r_write.eq(regs.write),
                r_lane.eq(lane),
                r_size.eq(regs.size),
                bmask.eq(byte_enables(lane, regs.size)),
                wdata.eq(regs.wdata << (lane * 8)),
                hit_pba.eq(qaddr == (self.pba_offset >> 3)),
            ]
            for i in range(n):
                base = self.table_offset + 16 * i
                m.d.sync += [hit_addr[i].eq(qaddr == (base >> 3)), hit_data[i].eq(qaddr == ((base + 8) >> 3))]
        qword = Signal(64)
        rq = Signal(64)
        for i in range(n):
            with m.If(hit_addr[i]):
                m.d.comb += qword.eq(addrs[i])
                with m.If(p1 & r_write):
                    m.d.sync += addrs[i].eq(merge_bytes(addrs[i], wdata, bmask, 0))
            with m.If(hit_data[i]):
                m.d.comb += qword.eq(Cat(datas[i], masks[i], Const(0, 31)))
                with m.If(p1 & r_write):
                    m.d.sync += datas[i].eq(merge_bytes(datas[i], wdata, bmask, 0))
                    with m.If(bmask[4]):
                        m.d.sync += masks[i].eq(wdata[32])
        with m.If(hit_pba):
            m.d.comb += qword.eq(self.pending)  # PBA is read-only (PCIe Base 7.7.2.4)
        with m.If(p1):
            m.d.sync += rq.eq(qword)  # unused high bytes read as 0
        with m.If(p2):
            m.d.sync += regs.rdata.eq((rq >> (r_lane * 8)) & size_mask(r_size))

        # ---- requests from the core: accepted at once, recorded as pending
        set_pending = Signal(n)
        clr_pending = Signal(n)
        m.d.comb += self.irq.ready.eq(1)
        with m.If(self.irq.valid):
            for i in range(n):
                with m.If(self.irq.vector == i):
                    m.d.comb += set_pending[i].eq(1)
        m.d.sync += self.pending.eq((self.pending & ~clr_pending) | set_pending)

        # ---- sender: lowest deliverable pending vector first
        deliverable = Signal(n)
        for i in range(n):
            m.d.comb += deliverable[i].eq(self.pending[i] & ~masks[i])
        can_send = Signal()
        m.d.comb += can_send.eq(self.msix_enable & ~self.msix_mask & (deliverable != 0))
        sel = Signal(range(n))
        for i in reversed(range(n)):
            with m.If(deliverable[i]):
                m.d.comb += sel.eq(i)
        cur = Signal(range(n))
        retry = Signal(8)

        with m.FSM():
            with m.State("IDLE"):
                with m.If(can_send & (retry == 0)):
                    m.d.sync += cur.eq(sel)
                    for i in range(n):
                        with m.If(sel == i):
                            m.d.sync += [self.msix_address.eq(addrs[i]), self.msix_data.eq(datas[i])]
                    m.next = "FIRE"
                with m.If(retry != 0):
                    m.d.sync += retry.eq(retry - 1)
            with m.State("FIRE"):
                # Clear the pending bit as the message goes out: a request that arrives while it is in flight
                # sets it again and is sent afterwards (no interrupt is lost).
                m.d.comb += self.msix_int.eq(1)
                for i in range(n):
                    with m.If(cur == i):
                        m.d.comb += clr_pending[i].eq(1)
                m.next = "WAIT"
            with m.State("WAIT"):
                with m.If(self.msix_sent):
                    m.d.sync += self.sent_count.eq(self.sent_count + 1)
                    m.next = "IDLE"
                with m.Elif(self.msix_fail):
                    # PG213: fail means the message was not sent; keep it pending and retry after a pause.
                    m.d.sync += self.fail_count.eq(self.fail_count + 1)
                    for i in range(n):
                        with m.If(cur == i):
                            m.d.comb += set_pending[i].eq(1)
                    m.d.sync += retry.eq(255)
                    m.next = "IDLE"
        return m
