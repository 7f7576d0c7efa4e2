"""A stand-in for the virtio core with the same signature, for testing the PCIe half on its own.

It gives the tests something real to reach through every PCIe path:

* ``0x000-0x0FF``: 32 scratch qwords, read/write at any natural size (completer byte-enable tests);
* ``0x100`` source address, ``0x108`` destination address, ``0x110`` length (le32);
* ``0x114`` control (le32): writing bit 0 starts a copy (a DMA read of ``length`` bytes from the source
  fed straight into a DMA write to the destination: it exercises splitting, realignment and ordering in both
  directions); bit 1 asks for MSI-X vector ``bits[15:8]`` when the copy is done;
* ``0x118`` status (le32): bit 0 busy, bit 1 the last copy saw a read error; bits[31:16] copies done;
* ``0x120`` (le32): writing ``v`` requests MSI-X vector ``v`` at once;
* ``0x128`` (le32, read-only): bit 0 ``dma_busy``, bit 1 ``msix_enabled``.

The Ethernet ports are idle (tx never valid, rx always ready).
"""

from __future__ import annotations

from amaranth import Cat, Module, Signal
from amaranth.lib import wiring

from hdl.regbus import byte_enables, merge_bytes
from hdl.signatures import VirtioCoreSignature

REG_SRC = 0x100
REG_DST = 0x108
REG_LEN = 0x110
REG_CTRL = 0x114
REG_STATUS = 0x118
REG_IRQ = 0x120
REG_INFO = 0x128
SCRATCH_QWORDS = 32


class DmaTestCore(wiring.Component):
    """Scratch registers, a DMA copy engine and an interrupt trigger behind ``VirtioCoreSignature``."""

    def __init__(self, data_width: int = 256) -> None:
        self.data_width = data_width
        super().__init__(VirtioCoreSignature(data_width))

    def elaborate(self, platform: object) -> Module:
        m = Module()
        regs = self.regs
        scratch = [Signal(64, name=f"scratch{i}") for i in range(SCRATCH_QWORDS)]
        src = Signal(64)
        dst = Signal(64)
        length = Signal(32)
        irq_vec = Signal(8)
        irq_on_done = Signal()
        busy = Signal()
        error = Signal()
        copies = Signal(16)

        lane = regs.addr[:3]
        bmask = Signal(8)
        m.d.comb += bmask.eq(byte_enables(lane, regs.size))
        wdata = Signal(64)
        m.d.comb += wdata.eq(regs.wdata << (lane * 8))
        qaddr = Signal(13)
        m.d.comb += qaddr.eq(regs.addr[3:])

        def merge(old: Signal) -> object:
            return merge_bytes(old, wdata, bmask, 0)

        qword = Signal(64)
        done = Signal()
        m.d.sync += done.eq(0)
        m.d.comb += regs.done.eq(done)
        start = Signal()
        fire = Signal()
        fire_vec = Signal(11)
        status = Signal(32)
        m.d.comb += status.eq(Cat(busy, error, Signal(14), copies))
        with m.If(regs.valid & ~done):
            m.d.sync += done.eq(1)
            for i in range(SCRATCH_QWORDS):
                with m.If(qaddr == i):
                    m.d.comb += qword.eq(scratch[i])
                    with m.If(regs.write):
                        m.d.sync += scratch[i].eq(merge(scratch[i]))
            with m.If(qaddr == REG_SRC // 8):
                m.d.comb += qword.eq(src)
                with m.If(regs.write):
                    m.d.sync += src.eq(merge(src))
            with m.If(qaddr == REG_DST // 8):
                m.d.comb += qword.eq(dst)
                with m.If(regs.write):
                    m.d.sync += dst.eq(merge(dst))
            with m.If(qaddr == REG_LEN // 8):
                m.d.comb += qword.eq(Cat(length, Signal(32)))
                with m.If(regs.write):
                    m.d.sync += length.eq(merge(length))
                    with m.If(bmask[4]):  # control register (0x114)
                        m.d.sync += [irq_on_done.eq(wdata[33]), irq_vec.eq(wdata[40:48])]
                        m.d.comb += start.eq(wdata[32])
            with m.If(qaddr == REG_STATUS // 8):
                m.d.comb += qword.eq(status)
            with m.If(qaddr == REG_IRQ // 8):
                with m.If(regs.write & bmask[0]):
                    m.d.comb += [fire.eq(1), fire_vec.eq(wdata[:11])]
            with m.If(qaddr == REG_INFO // 8):
                m.d.comb += qword.eq(Cat(self.dma_busy, self.msix_enabled))
            m.d.sync += regs.rdata.eq(qword >> (lane * 8))

        # ---- interrupt requests (queued one deep: the MSI-X block accepts at once)
        irq_pending = Signal()
        irq_vector = Signal(11)
        m.d.comb += [self.irq.valid.eq(irq_pending), self.irq.vector.eq(irq_vector)]
        with m.If(self.irq.valid & self.irq.ready):
            m.d.sync += irq_pending.eq(0)
        done_irq = Signal()
        with m.If(fire):
            m.d.sync += [irq_pending.eq(1), irq_vector.eq(fire_vec)]
        with m.Elif(done_irq):
            m.d.sync += [irq_pending.eq(1), irq_vector.eq(irq_vec)]

        # ---- copy engine: read request, write request, then data straight through
        rd, wr = self.dma_rd, self.dma_wr
        with m.FSM():
            with m.State("IDLE"):
                with m.If(start & (length != 0)):
                    m.d.sync += [busy.eq(1), error.eq(0)]
                    m.next = "REQ"
            with m.State("REQ"):
                m.d.comb += [rd.req_valid.eq(1), rd.req_addr.eq(src), rd.req_len.eq(length)]
                with m.If(rd.req_ready):
                    m.next = "WREQ"
            with m.State("WREQ"):
                m.d.comb += [wr.req_valid.eq(1), wr.req_addr.eq(dst), wr.req_len.eq(length)]
                with m.If(wr.req_ready):
                    m.next = "DATA"
            with m.State("DATA"):
                m.d.comb += [
                    wr.data_valid.eq(rd.data_valid),
                    wr.data.eq(rd.data),
                    wr.data_keep.eq(rd.data_keep),
                    wr.data_last.eq(rd.data_last),
                    rd.data_ready.eq(wr.data_ready),
                ]
                with m.If(rd.data_valid & rd.data_ready & rd.data_last):
                    m.d.sync += error.eq(rd.error)
                    m.next = "WAIT_DONE"
            with m.State("WAIT_DONE"):
                with m.If(wr.done):
                    m.d.sync += [busy.eq(0), copies.eq(copies + 1)]
                    m.d.comb += done_irq.eq(irq_on_done)
                    m.next = "IDLE"

        # ---- Ethernet: idle
        m.d.comb += self.eth_rx.ready.eq(1)
        return m
