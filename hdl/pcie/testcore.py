"""A stand-in for the virtio core with the same signature, for testing the PCIe half on its own.

It gives the tests something real to reach through every PCIe path:

* ``0x000-0x0FF``: 32 scratch qwords, read/write at any natural size (completer byte-enable tests);
* ``0x100`` source address, ``0x108`` destination address, ``0x110`` length (le32);
* ``0x114`` control (le32): writing bit 0 starts a copy (a DMA read of ``length`` bytes from the source
  fed straight into a DMA write to the destination: it exercises splitting, realignment and ordering in both
  directions); bit 1 asks for MSI-X vector ``bits[15:8]`` when the copy is done; bit 2 makes it a *batch*
  of ``count`` copies, copy i from ``source + i * stride`` to ``destination + i * stride``, with every read
  and write request issued as soon as the DMA engine takes it (many reads in flight); bit 3 sets
  ``req_after_writes`` on every read and alternates the requests (read i, write i, read i+1, ...), so copy i
  may read what copy i-1 wrote (a chain);
* a copy (or batch) is done when the DMA engine reports the last write ``visible`` (its last TLP's sequence
  number came back from the hard IP), so the MSI-X it asks for is ordered after the data (PG213 "Transmit
  Transaction Ordering");
* ``0x118`` status (le32): bit 0 busy, bit 1 the last copy saw a read error; bits[31:16] copies done;
* ``0x120`` (le32): writing ``v`` requests MSI-X vector ``v`` at once;
* ``0x128`` (le32, read-only): bit 0 ``dma_busy``, bit 1 ``msix_enabled``;
* ``0x130`` batch ``count`` (le32, 1..65535), ``0x134`` batch ``stride`` (le32, bytes);
* ``0x138`` (le32, read-only): cycles from the start of the last copy or batch to its last ``visible``;
* ``0x13C`` (le32, read-only): the most read requests the copy engine had outstanding at once.

The Ethernet ports are idle (tx never valid, rx always ready).
"""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal
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
REG_COUNT = 0x130
REG_STRIDE = 0x134
REG_CYCLES = 0x138
REG_MAX_READS = 0x13C
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
        count = Signal(32)
        stride = Signal(32)
        fence = Signal()
        cycles = Signal(32)
        max_reads = Signal(32)

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
        start_batch = Signal()
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
                        m.d.sync += fence.eq(wdata[35])
                        m.d.comb += [start.eq(wdata[32]), start_batch.eq(wdata[34])]
            with m.If(qaddr == REG_STATUS // 8):
                m.d.comb += qword.eq(status)
            with m.If(qaddr == REG_IRQ // 8):
                with m.If(regs.write & bmask[0]):
                    m.d.comb += [fire.eq(1), fire_vec.eq(wdata[:11])]
            with m.If(qaddr == REG_INFO // 8):
                m.d.comb += qword.eq(Cat(self.dma_busy, self.msix_enabled))
            with m.If(qaddr == REG_COUNT // 8):
                m.d.comb += qword.eq(Cat(count, stride))
                with m.If(regs.write):
                    m.d.sync += Cat(count, stride).eq(merge(Cat(count, stride)))
            with m.If(qaddr == REG_CYCLES // 8):
                m.d.comb += qword.eq(Cat(cycles, max_reads))
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

        # ---- copy engine: read requests and write requests issued ahead, data straight through
        rd, wr = self.dma_rd, self.dma_wr
        n = Signal(16)  # copies in this operation
        rd_left = Signal(16)  # read requests still to issue
        wr_left = Signal(16)  # write requests still to issue
        vis_left = Signal(16)  # writes not yet visible
        rd_addr = Signal(64)
        wr_addr = Signal(64)
        reads_out = Signal(16)  # read requests accepted whose last beat has not come
        with m.If(start & (length != 0) & ~busy):
            m.d.comb += n.eq(Mux(start_batch, Mux(count[:16] == 0, 1, count[:16]), 1))
            m.d.sync += [
                busy.eq(1),
                error.eq(0),
                rd_left.eq(n),
                wr_left.eq(n),
                vis_left.eq(n),
                rd_addr.eq(src),
                wr_addr.eq(dst),
                cycles.eq(0),
                max_reads.eq(0),
            ]
        with m.If(busy):
            m.d.sync += cycles.eq(cycles + 1)
        m.d.comb += [
            # with the fence, read i waits until write i-1 is requested: it may read what that write puts there
            rd.req_valid.eq(busy & (rd_left != 0) & (~fence | (wr_left <= rd_left))),
            rd.req_addr.eq(rd_addr),
            rd.req_len.eq(length),
            rd.req_after_writes.eq(fence),
            # ... and write i waits for read i (a write requested first would be in read i's fence: deadlock)
            wr.req_valid.eq(busy & (wr_left != 0) & (~fence | (wr_left > rd_left))),
            wr.req_addr.eq(wr_addr),
            wr.req_len.eq(length),
        ]
        rd_fire = Signal()
        rd_end = Signal()
        m.d.comb += [
            rd_fire.eq(rd.req_valid & rd.req_ready),
            rd_end.eq(rd.data_valid & rd.data_ready & rd.data_last),
        ]
        with m.If(rd_fire):
            m.d.sync += [rd_left.eq(rd_left - 1), rd_addr.eq(rd_addr + stride)]
        with m.If(wr.req_valid & wr.req_ready):
            m.d.sync += [wr_left.eq(wr_left - 1), wr_addr.eq(wr_addr + stride)]
        m.d.sync += reads_out.eq(reads_out + rd_fire - rd_end)
        with m.If(reads_out > max_reads):
            m.d.sync += max_reads.eq(reads_out)
        m.d.comb += [
            wr.data_valid.eq(rd.data_valid),
            wr.data.eq(rd.data),
            wr.data_keep.eq(rd.data_keep),
            wr.data_last.eq(rd.data_last),
            rd.data_ready.eq(wr.data_ready),
        ]
        with m.If(rd_end & rd.error):
            m.d.sync += error.eq(1)
        with m.If(busy & wr.visible):
            m.d.sync += vis_left.eq(vis_left - 1)
            with m.If(vis_left == 1):
                m.d.sync += [busy.eq(0), copies.eq(copies + 1)]
                m.d.comb += done_irq.eq(irq_on_done)

        # ---- Ethernet: idle
        m.d.comb += self.eth_rx.ready.eq(1)
        # FLR: the test core has no reset-sensitive state of its own; it answers once its copy and the DMA
        # engine are idle (a copy started before the FLR finishes first).
        m.d.comb += self.flr_done.eq(self.flr & ~busy & ~self.dma_busy)
        return m
