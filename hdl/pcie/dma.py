"""Requester DMA engine: DmaReadPort / DmaWritePort onto the UltraScale+ RQ (out) and RC (in) interfaces.

Reads (PG213 "Requester Request Interface", "Requester Completion Interface"; PCIe Base 2.2.7, 2.3.1.1):

* core requests are queued (``max_read_requests`` accepted and not yet delivered) and each is split into
  memory-read TLPs of at most Max_Read_Request_Size (``cfg_max_read_req``, capped at
  :attr:`DmaEngine.max_read_chunk`) that never cross a 4 KiB boundary (PCIe Base 2.2.7).  The splitter takes the
  next queued request in the cycle it issues the last TLP of the current one, so back-to-back small requests
  issue one TLP per cycle;
* up to ``n_tags`` reads are outstanding at once (the user supplies tags: "client tag" mode).  Tags come from
  a free-tag FIFO (no priority encoder);
* completions may be split (PCIe Base 2.3.1.1) and may arrive out of order between tags.  Every completion is
  written straight to its place in a *reorder ring* of ``ring_bytes``: the ring holds each core request's bytes
  at their offset from the request's start, so the byte rotation that turns dword-aligned completion payload
  into the packed convention happens on the way in.  The place follows from the descriptor alone:
  ``byte_count`` says how many bytes of the request remain (PCIe Base 2.2.9);
* release is per completion, not per sub-request: the completions of one request come in address order
  (PCIe Base 2.4.1, table 2-40 D5), so a tag's state is just "bytes still missing at its end" (``byte_count``
  minus this completion's bytes).  The oldest outstanding sub-request's end minus that count is the end of the
  in-order prefix, and the core gets every ring word below it - the first beats of a 512-byte sub-request go
  out while its later completions are still on the link;
* a completion with an error (UR, CA, poisoned, or an error code from the hard IP) or no completion within
  ``timeout_cycles`` marks the sub-request failed, and its core request ends with ``error`` on the last beat -
  never a hang.  The last beat of a request waits until all of its sub-requests are finished;
* a failed tag is *quarantined*: it is not reused for ``quarantine_cycles`` after it retired, so the rest of a
  poisoned request's completions and a late completion for a timed-out read find it not outstanding.  A
  completion whose tag is not outstanding (never issued, retired, quarantined) or belongs to a failed
  sub-request is dropped as an Unexpected Completion (PCIe Base 2.3.2; counted in ``rd_unexpected``): it is
  never written into the ring, so it cannot become data of a later request;
* a request with ``req_after_writes`` set issues no TLP before every write request accepted on the write port
  before it (or in the same cycle) has had its ``done`` (last TLP accepted on RQ).  RQ is one stream into the hard
  IP, which keeps its order, and on the link a read never passes a posted write (PCIe Base table 2-40, B2a):
  the read therefore observes those writes.

Writes (PCIe Base 2.2.7 Max_Payload_Size; PG213 "Requester Request Interface"): requests are queued
(``max_write_requests``), the core's packed data is stored in a ring of ``write_ring_bytes``, then cut into
memory-write TLPs of at most Max_Payload_Size (``cfg_max_payload``, capped at :attr:`DmaEngine.max_write_chunk`)
that never cross 4 KiB, every TLP but a request's last ending on a 64-byte line: a buffer that starts off an MPS
boundary takes no extra TLP (1512 bytes at offset 64 are 5 x 256 + 232 bytes, 53 RQ beats at 256 bits, where
MPS-aligned cuts gave 192 + 5 x 256 + 40, 54 beats and one more header on the link), and host cache lines are
still written whole.  Each TLP is sent only when all its data is in the ring, so a TLP never stalls half way.
The next TLP is planned while the current one is sent and starts in the cycle after its last beat; the planner
also works out the TLP's beat count, last-beat dword enables and ring start, so the sender's per-beat
decisions are registers.  ``done`` pulses as the last beat of a request's last TLP is accepted by the PCIe core (RQ
``tready``).

Sequence numbers (PG213 "Transmit Transaction Ordering"): the MSI-X interface ``cfg_interrupt_msix_*`` is not
ordered with RQ traffic, so an interrupt that announces a write must wait until that write has left the hard
IP.  Every write TLP carries a sequence number in ``tuser`` with bit 5 set (reads carry 0, bit 5 clear, and
their reports are ignored); the hard IP reports it on ``pcie_rq_seq_num0/1`` with ``_vld`` once the TLP has
been transmitted.  Write TLPs leave in order, so the engine keeps a count of acknowledged write TLPs and
``visible`` pulses, once per write request and in request order, when the request's last TLP is acknowledged.
At most 31 write TLPs are unacknowledged at a time (5 bits of the number identify them).  A report that never
comes (the hard IP drops a TLP while Bus Master Enable is clear) is assumed after ``seq_timeout_cycles`` and
counted in ``wr_seq_timeouts``, so the engine never hangs.

The requester arbiter takes reads and writes round-robin, holds a grant from a TLP's first beat to its
``tlast``, and registers its output (full rate: a beat moves whenever the output register is empty or drains).
Each source enters it through a two-entry skid buffer whose ``tready`` is a register, so what a source decides
in a cycle (a read's tag bookkeeping, the next write TLP) never waits on the arbitration or on RQ ``tready``.

Logic depth (PCIe at 250 MHz: about 8 LUT levels per cycle): the decisions that fan out to per-tag state read
registers - the next read's tag is picked a cycle ahead, each tag keeps a ``tag_zero`` bit beside its missing
byte count (the retire decision reads one bit through the head-of-order mux, not a 13-bit compare), an error
completion fails its tag from a register one cycle after its descriptor arrived, and the write side's bound on
unacknowledged sequence numbers is a registered comparison (checked one lower in the cycle after a TLP started).

Both rings are two banks of words (even and odd), so one cycle can touch any two consecutive words: a
rotated completion beat lands in two words, an unaligned write TLP beat is read from two words.  The read
ring is read through a synchronous port (block RAM) behind a one-beat output stage.
"""

from __future__ import annotations

from amaranth import Array, Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import fifo, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hdl.pcie.completer import axis_signature
from hdl.pcie.tlp import (
    RC_DESCRIPTOR,
    RQ_DESCRIPTOR,
    ReqType,
    check_data_width,
    rq_tuser,
    tuser_widths,
)
from hdl.signatures import DMA_LEN_WIDTH, DmaReadPort, DmaWritePort

PTR_WIDTH = 24  # ring positions are kept as free-running byte counters, ring index = low bits
FENCE_WIDTH = 24  # write-request counters for the read-after-write fence (wide: no wrap while a read waits)
WSEQ_WIDTH = 8  # write-TLP counters (sent / acknowledged), 5 low bits go on the wire
MAX_UNACKED_WRITE_TLPS = 31


def rotate_left(m: Module, value: Signal, amount: Signal, lanes: int, lane_bits: int, name: str) -> Signal:
    """``value`` (``lanes`` lanes of ``lane_bits``) rotated so that lane l moves to lane (l + amount) % lanes."""
    offset = Signal(range(lanes + 1), name=f"{name}_rot_offset")
    m.d.comb += offset.eq(lanes - amount)
    out = Signal(lanes * lane_bits, name=f"{name}_rot")
    m.d.comb += out.eq(Cat(value, value).bit_select(offset * lane_bits, lanes * lane_bits))
    return out


class DmaEngine(wiring.Component):
    """The requester side of the endpoint.

    Parameters (defaults cover about 1 us of round trip at the link rate that matches the width: 256 bits is
    Gen3 x8, 7.88 GB/s, so 8 KiB in flight):

    * ``n_tags`` (32): read TLPs outstanding.  PCIe allows 32 without the Extended Tag Field (PCIe Base
      2.2.6.2); the US+ hard IP has no status port for that Device Control bit, so more are not used.
    * ``ring_bytes`` (``32 * data_width`` = 8 KiB at 256 bits): read reorder ring, the read bytes in flight.
    * ``max_read_requests`` (32): core read requests accepted and not yet delivered.
    * ``write_ring_bytes`` (4096), ``max_write_requests`` (16): write staging ring and queued write requests.
    * ``seq_num_tracking`` (True): ``visible`` waits for ``pcie_rq_seq_num``; False makes it equal ``done``.
    * ``quarantine_cycles`` (``4 * timeout_cycles``): how long a tag whose read failed (error completion, timeout)
      stays out of use after it retired.
    """

    def __init__(
        self,
        data_width: int = 256,
        n_tags: int = 32,
        ring_bytes: int | None = None,
        max_read_chunk: int = 512,
        max_write_chunk: int = 512,
        timeout_cycles: int = 1 << 16,
        *,
        max_read_requests: int = 32,
        write_ring_bytes: int = 4096,
        max_write_requests: int = 16,
        seq_num_tracking: bool = True,
        seq_timeout_cycles: int = 4096,
        quarantine_cycles: int | None = None,
    ) -> None:
        check_data_width(data_width)
        if ring_bytes is None:
            ring_bytes = 32 * data_width
        assert 2 <= n_tags <= 32, "without extended tags PCIe allows 32 tags (PCIe Base 2.2.6.2)"
        nb = data_width // 8
        for size in (ring_bytes, write_ring_bytes):
            assert size & (size - 1) == 0, "ring sizes are powers of two"
        assert ring_bytes >= 2 * max_read_chunk + nb
        assert write_ring_bytes >= 2 * max_write_chunk + nb
        self.data_width = data_width
        self.n_tags = n_tags
        self.ring_bytes = ring_bytes
        self.write_ring_bytes = write_ring_bytes
        self.max_read_chunk = max_read_chunk
        self.max_write_chunk = max_write_chunk
        self.max_read_requests = max_read_requests
        self.max_write_requests = max_write_requests
        self.timeout_cycles = timeout_cycles
        # Fault handling (issue 12): a failed tag waits this long before reuse (default: four timeout periods,
        # so that the hard IP's own completion timeout, Device Control 2, has let go of the tag too).
        self.quarantine_cycles = 4 * timeout_cycles if quarantine_cycles is None else quarantine_cycles
        self.seq_num_tracking = seq_num_tracking
        self.seq_timeout_cycles = seq_timeout_cycles
        super().__init__(
            {
                "rd": In(DmaReadPort(data_width)),
                "wr": In(DmaWritePort(data_width)),
                "rq": Out(axis_signature(data_width, tuser_widths(data_width)["rq"])),
                "rc": In(axis_signature(data_width, tuser_widths(data_width)["rc"])),
                "max_payload": In(2),  # cfg_max_payload: 128 << n bytes
                "max_read_req": In(3),  # cfg_max_read_req: 128 << n bytes
                "requester_function": In(8),
                # pcie_rq_seq_num0/1 and their valids from the hard IP (1 is used at 512 bits only)
                "rq_seq_num0": In(6),
                "rq_seq_num_vld0": In(1),
                "rq_seq_num1": In(6),
                "rq_seq_num_vld1": In(1),
                "busy": Out(1),
                "rd_outstanding": Out(range(n_tags + 1)),
                "rd_errors": Out(16),
                "rd_timeouts": Out(16),
                # completions dropped because their tag was not outstanding or had failed (Unexpected Completion)
                "rd_unexpected": Out(16),
                # tags held out of use after an error (one bit per tag), until ``quarantine_cycles`` passed
                "rd_quarantine": Out(n_tags),
                "wr_seq_timeouts": Out(16),
            }
        )

    # ------------------------------------------------------------------------------------------------
    def elaborate(self, platform: object) -> Module:
        m = Module()
        rq_rd = self._rq_source(m, "rd")
        rq_wr = self._rq_source(m, "wr")
        self._rq_arbiter(m, [rq_rd, rq_wr])

        # write-request counters for the read-after-write fence
        wr_accepted = Signal(FENCE_WIDTH)
        wr_handed = Signal(FENCE_WIDTH)
        wr_fire = Signal()
        m.d.comb += wr_fire.eq(self.wr.req_valid & self.wr.req_ready)
        with m.If(wr_fire):
            m.d.sync += wr_accepted.eq(wr_accepted + 1)
        with m.If(self.wr.done):
            m.d.sync += wr_handed.eq(wr_handed + 1)

        fence_now = Signal(FENCE_WIDTH)  # a read accepted now waits for this many writes to be done
        m.d.comb += fence_now.eq(wr_accepted + wr_fire)
        rd_busy = self._read_side(m, rq_rd, fence_now, wr_handed)
        wr_busy = self._write_side(m, rq_wr)
        m.d.comb += self.busy.eq(rd_busy | wr_busy)
        return m

    # ------------------------------------------------------------------------------------------------
    def _rq_source(self, m: Module, name: str) -> dict:
        w = self.data_width
        return {
            "tdata": Signal(w, name=f"rq_{name}_tdata"),
            "tkeep": Signal(w // 32, name=f"rq_{name}_tkeep"),
            "tlast": Signal(name=f"rq_{name}_tlast"),
            "tuser": Signal(tuser_widths(w)["rq"], name=f"rq_{name}_tuser"),
            "tvalid": Signal(name=f"rq_{name}_tvalid"),
            "tready": Signal(name=f"rq_{name}_tready"),
            "mark": Signal(name=f"rq_{name}_mark"),  # this beat ends a write request: pulse `done` as it leaves
        }

    def _rq_arbiter(self, m: Module, sources: list[dict]) -> None:
        """Round-robin between two registered TLP sources into a registered RQ output; a grant holds until
        ``tlast``."""
        assert len(sources) == 2
        rq = self.rq
        fields = ("tdata", "tkeep", "tlast", "tuser", "tvalid", "mark")
        # A two-entry skid buffer per source first: a source's tready is a register (the skid entry is empty), so
        # nothing a source decides in a cycle waits for the arbitration or RQ tready (that loop was the longest
        # path of the engine); a beat still moves every cycle.
        staged = []
        for i, src in enumerate(sources):
            main = {k: Signal.like(src[k], name=f"rq_src{i}_{k}") for k in fields}
            skid = {k: Signal.like(src[k], name=f"rq_skid{i}_{k}") for k in fields}
            main["tready"] = Signal(name=f"rq_src{i}_taken")
            m.d.comb += src["tready"].eq(~skid["tvalid"])
            take = src["tvalid"] & ~skid["tvalid"]
            data = [k for k in fields if k != "tvalid"]
            with m.If(main["tready"] | ~main["tvalid"]):  # the main entry empties (or was empty)
                with m.If(skid["tvalid"]):
                    m.d.sync += [main[k].eq(skid[k]) for k in data]
                    m.d.sync += [main["tvalid"].eq(1), skid["tvalid"].eq(0)]
                with m.Else():
                    m.d.sync += main["tvalid"].eq(take)
                    m.d.sync += [main[k].eq(src[k]) for k in data]
            with m.Elif(take):
                m.d.sync += [skid[k].eq(src[k]) for k in data]
                m.d.sync += skid["tvalid"].eq(1)
            staged.append(main)
        sources = staged
        locked = Signal()  # a TLP of `grant` is half way through
        grant = Signal()
        last = Signal()  # the source that ended the previous TLP: the other one goes first
        sel = Signal()
        load = Signal()
        m.d.comb += load.eq(~rq.tvalid | rq.tready)
        other_valid = Mux(last, sources[0]["tvalid"], sources[1]["tvalid"])
        m.d.comb += sel.eq(Mux(locked, grant, Mux(other_valid, ~last, last)))
        mark = Signal()  # the beat in the output register ends a write request
        chosen = {k: Mux(sel, sources[1][k], sources[0][k]) for k in fields}
        for i, src in enumerate(sources):
            m.d.comb += src["tready"].eq(load & (sel == i) & src["tvalid"])
        with m.If(load):
            m.d.sync += rq.tvalid.eq(chosen["tvalid"])
            with m.If(chosen["tvalid"]):
                m.d.sync += [getattr(rq, k).eq(chosen[k]) for k in ("tdata", "tkeep", "tlast", "tuser")]
                m.d.sync += mark.eq(chosen["mark"])
                m.d.sync += [grant.eq(sel), locked.eq(~chosen["tlast"])]
                with m.If(chosen["tlast"]):
                    m.d.sync += last.eq(sel)
        m.d.comb += self.wr.done.eq(rq.tvalid & rq.tready & mark)

    # ------------------------------------------------------------------------------------------------
    def _ring(self, m: Module, name: str, bank_depth: int, read_domain: str) -> tuple[list, list]:
        w = self.data_width
        wports, rports = [], []
        # Block RAM, also where a shallow ring would be mapped to LUT RAM by default: the banks are wide (a DMA
        # beat) and shallow (64-128 words), which LUT RAM stores at a LUT per 64 bits (1.2k LUTs for the write
        # ring at 256 bits); synchronous read ports make block RAM possible.
        attrs = {"ram_style": "block"} if read_domain == "sync" else None
        for b in range(2):
            mem = Memory(shape=unsigned(w), depth=bank_depth, init=[], attrs=attrs)
            m.submodules[f"{name}_bank{b}"] = mem
            wports.append(mem.write_port(granularity=8))
            rports.append(mem.read_port(domain=read_domain))
        return wports, rports

    def _rq_descriptor(self, m, addr, nbytes, req_type, tag, name: str):
        """RQ descriptor + byte enables for a memory request of ``nbytes`` (>= 1) at byte address ``addr``."""
        desc = Signal(RQ_DESCRIPTOR, name=f"{name}_desc")
        a3 = addr[:2]
        end = Signal(16, name=f"{name}_end")  # a3 + nbytes
        m.d.comb += end.eq(a3 + nbytes)
        dwords = Signal(11, name=f"{name}_dwords")
        m.d.comb += dwords.eq((end + 3) >> 2)
        first_be = Signal(4, name=f"{name}_first_be")
        last_be = Signal(4, name=f"{name}_last_be")
        lead = Signal(4, name=f"{name}_lead")
        m.d.comb += lead.eq(Const(0xF, 4) << a3)
        tail = Signal(4, name=f"{name}_tail")  # enables of the last dword: bytes below end[1:0] (0 = all)
        m.d.comb += tail.eq(Mux(end[:2] == 0, 0xF, ~(Const(0xF, 4) << end[:2])))
        with m.If(dwords == 1):
            m.d.comb += [first_be.eq(lead & tail), last_be.eq(0)]
        with m.Else():
            m.d.comb += [first_be.eq(lead), last_be.eq(tail)]
        m.d.comb += [
            desc.addr.eq(addr[2:]),
            desc.dword_count.eq(dwords),
            desc.req_type.eq(req_type),
            desc.tag.eq(tag),
            desc.requester_id.eq(self.requester_function),
        ]
        return desc, (first_be, last_be), dwords

    def _limit(self, m: Module, code: Signal, cap: int, name: str) -> Signal:
        """128 << code bytes (MPS / MRRS encoding), capped at ``cap`` (registered: it changes only by config)."""
        out = Signal(13, name=name, init=min(128, cap))
        m.d.sync += out.eq(Mux((Const(128, 13) << code) > cap, cap, Const(128, 13) << code))
        return out

    # ------------------------------------------------------------------------------------------------
    def _read_side(self, m, rq, fence_now, wr_handed):
        rd = self.rd
        nb = self.data_width // 8
        nbits = (nb - 1).bit_length()
        ring_words = self.ring_bytes // nb
        word_bits = (ring_words - 1).bit_length()
        nt = self.n_tags
        tbits = (nt - 1).bit_length()
        wports, rports = self._ring(m, "rdring", ring_words // 2, "sync")

        # ---- queues: requests to split, requests to deliver, their error results, sub-requests in issue order
        req_layout = [64, DMA_LEN_WIDTH, PTR_WIDTH, FENCE_WIDTH, 1]
        m.submodules.rd_req_fifo = req_fifo = fifo.SyncFIFO(width=sum(req_layout), depth=4)
        m.submodules.rd_drain_fifo = drain_fifo = fifo.SyncFIFO(
            width=PTR_WIDTH + DMA_LEN_WIDTH, depth=self.max_read_requests
        )
        m.submodules.rd_err_fifo = err_fifo = fifo.SyncFIFO(width=1, depth=self.max_read_requests)
        # never full: an entry holds a tag, or stands for a zero-length request still in the drain FIFO
        m.submodules.rd_order_fifo = order_fifo = fifo.SyncFIFO(width=tbits + 2, depth=nt + self.max_read_requests)
        m.submodules.rd_free_fifo = free_fifo = fifo.SyncFIFO(width=tbits, depth=nt)

        alloc_ptr = Signal(PTR_WIDTH)  # next free ring byte (word aligned)
        drain_ptr = Signal(PTR_WIDTH)  # ring bytes below this are free
        avail_ptr = Signal(PTR_WIDTH)  # end of the in-order prefix of received bytes

        # ---- per-tag state: ring position of the sub-request's end, bytes still missing at that end, error
        tag_end = Array(Signal(PTR_WIDTH, name=f"tag{i}_end") for i in range(nt))
        tag_rem = Array(Signal(13, name=f"tag{i}_rem") for i in range(nt))
        tag_err = Signal(nt)
        tag_zero = Signal(nt)  # tag_rem == 0, kept as its own register so the retire decision reads one bit
        tag_busy = Signal(nt)  # issued and not yet retired
        set_issue = Signal(nt)
        set_err = Signal(nt)
        set_cpl = Signal(nt)
        clr_busy = Signal(nt)
        issue_len = Signal(13)
        issue_end = Signal(PTR_WIDTH)
        cpl_rem = Signal(13)  # bytes missing after the completion that ends this cycle
        cpl_zero = Signal()  # cpl_rem == 0

        # ---- accept core requests
        req_len_rounded = Signal(PTR_WIDTH)
        m.d.comb += req_len_rounded.eq(((rd.req_len + nb - 1) >> nbits) << nbits)
        m.d.comb += rd.req_ready.eq(req_fifo.w_rdy & drain_fifo.w_rdy)
        with m.If(rd.req_valid & rd.req_ready):
            m.d.comb += [
                req_fifo.w_en.eq(1),
                req_fifo.w_data.eq(Cat(rd.req_addr, rd.req_len, alloc_ptr, fence_now, rd.req_after_writes)),
                drain_fifo.w_en.eq(1),
                drain_fifo.w_data.eq(Cat(alloc_ptr, rd.req_len)),
            ]
            m.d.sync += alloc_ptr.eq(alloc_ptr + req_len_rounded)

        # ---- splitter, stage 1 (plan): cut the current request into the next TLP's (address, length)
        active = Signal()
        cur_addr = Signal(64)
        cur_rem = Signal(DMA_LEN_WIDTH)
        cur_pos = Signal(PTR_WIDTH)
        cur_fence = Signal(FENCE_WIDTH)
        cur_after = Signal()
        mrrs = self._limit(m, self.max_read_req, self.max_read_chunk, "rd_mrrs")
        to_4k = Signal(13)
        m.d.comb += to_4k.eq(0x1000 - cur_addr[:12])
        lim = Signal(13)
        m.d.comb += lim.eq(Mux(to_4k < mrrs, to_4k, mrrs))
        chunk = Signal(13)
        m.d.comb += chunk.eq(Mux(cur_rem < lim, cur_rem, lim))
        last_chunk = Signal()  # also true for a zero-length request
        m.d.comb += last_chunk.eq(cur_rem <= lim)

        p_valid = Signal()
        p_addr = Signal(64)
        p_chunk = Signal(13)
        p_end = Signal(PTR_WIDTH)  # ring position of the TLP's end
        p_last = Signal()  # last TLP of its core request
        p_zero = Signal()  # a zero-length request: no TLP, just its error result
        p_fence = Signal(FENCE_WIDTH)
        p_after = Signal()
        p_take = Signal()
        plan = Signal()
        m.d.comb += plan.eq(active & (~p_valid | p_take))
        with m.If(plan):
            m.d.sync += [
                p_valid.eq(1),
                p_addr.eq(cur_addr),
                p_chunk.eq(chunk),
                p_end.eq(cur_pos + chunk),
                p_last.eq(last_chunk),
                p_zero.eq(cur_rem == 0),
                p_fence.eq(cur_fence),
                p_after.eq(cur_after),
            ]
        with m.Elif(p_take):
            m.d.sync += p_valid.eq(0)
        finishing = Signal()
        m.d.comb += finishing.eq(plan & last_chunk)
        q_addr, q_len, q_pos, q_fence, q_after = (Signal(n, name=f"rdq_{i}") for i, n in enumerate(req_layout))
        m.d.comb += Cat(q_addr, q_len, q_pos, q_fence, q_after).eq(req_fifo.r_data)
        with m.If(req_fifo.r_rdy & (~active | finishing)):
            m.d.comb += req_fifo.r_en.eq(1)
            m.d.sync += [
                active.eq(1),
                cur_addr.eq(q_addr),
                cur_rem.eq(q_len),
                cur_pos.eq(q_pos),
                cur_fence.eq(q_fence),
                cur_after.eq(q_after),
            ]
        with m.Elif(finishing):
            m.d.sync += active.eq(0)
        with m.Elif(plan):
            m.d.sync += [
                cur_addr.eq(cur_addr + chunk),
                cur_rem.eq(cur_rem - chunk),
                cur_pos.eq(cur_pos + chunk),
            ]

        # ---- splitter, stage 2 (issue): a tag, ring space, order-FIFO room and the write fence, then RQ
        # The next TLP's tag is chosen a cycle ahead into a register (refilled in the cycle it is used), so the
        # per-tag updates of an issue decode a register.
        fresh = Signal(range(nt + 1))  # tags never used since reset: fresh .. nt-1
        tag = Signal(tbits)
        have_tag = Signal()
        space_ok = Signal()
        m.d.comb += space_ok.eq(((p_end - drain_ptr)[:PTR_WIDTH]) <= self.ring_bytes)
        # 24-bit counters: a read would have to wait for 2^23 later writes before the comparison wrapped
        fence_ok = Signal()
        m.d.comb += fence_ok.eq(~p_after | ((wr_handed - p_fence)[:FENCE_WIDTH].as_signed() >= 0))

        desc, (rd_fbe, rd_lbe), _ = self._rq_descriptor(m, p_addr, p_chunk, ReqType.MEM_READ, tag, "rdreq")
        tlp_ok = Signal()
        m.d.comb += tlp_ok.eq(p_valid & ~p_zero & have_tag & space_ok & fence_ok)
        m.d.comb += [
            rq["tvalid"].eq(tlp_ok),
            rq["tdata"].eq(desc.as_value()),
            rq["tkeep"].eq((1 << 4) - 1),
            rq["tlast"].eq(1),
            rq["tuser"].eq(rq_tuser(self.data_width, rd_fbe, rd_lbe, Const(1, 1), Const(1, 1), Const(3, 4))),
        ]
        tlp_fire = Signal()
        zero_fire = Signal()
        m.d.comb += [
            tlp_fire.eq(tlp_ok & rq["tready"]),
            zero_fire.eq(p_valid & p_zero),
            p_take.eq(tlp_fire | zero_fire),
        ]
        with m.If(tlp_fire):
            m.d.comb += [issue_len.eq(p_chunk), issue_end.eq(p_end)]
            m.d.comb += [order_fifo.w_en.eq(1), order_fifo.w_data.eq(Cat(tag, p_last, Const(0, 1)))]
            for i in range(nt):
                with m.If(tag == i):
                    m.d.comb += set_issue[i].eq(1)
        with m.If(~have_tag | tlp_fire):
            with m.If(fresh != nt):
                m.d.sync += [tag.eq(fresh), have_tag.eq(1), fresh.eq(fresh + 1)]
            with m.Elif(free_fifo.r_rdy):
                m.d.sync += [tag.eq(free_fifo.r_data), have_tag.eq(1)]
                m.d.comb += free_fifo.r_en.eq(1)
            with m.Else():
                m.d.sync += have_tag.eq(0)
        with m.If(zero_fire):  # nothing to fetch: the request completes with an error (len >= 1 is required)
            m.d.comb += [order_fifo.w_en.eq(1), order_fifo.w_data.eq(Cat(Const(0, tbits), Const(1, 1), Const(1, 1)))]

        # ---- completions: always accepted (ring space was reserved when the read was issued); one input register
        m.d.comb += self.rc.tready.eq(1)
        rc_data = Signal(self.data_width)
        rc_last = Signal()
        rc_valid = Signal()
        m.d.sync += [rc_data.eq(self.rc.tdata), rc_last.eq(self.rc.tlast), rc_valid.eq(self.rc.tvalid)]
        in_tlp = Signal()  # a multi-beat completion is being received
        e_set = Signal()  # last cycle's completion had an error for a known tag (e_tag)
        e_count = Signal()  # last cycle's completion had an error
        e_tag = Signal(tbits)
        cdesc = Signal(RC_DESCRIPTOR)
        m.d.comb += cdesc.eq(rc_data[:96])
        h_tag = Signal(tbits)
        h_base = Signal(PTR_WIDTH)  # ring position of stream byte 0 of beat 0
        h_lo = Signal(16)  # stream bytes [h_lo, h_hi) are payload to keep
        h_hi = Signal(16)
        h_ok = Signal()
        h_rem = Signal(13)
        h_beat = Signal(range(1 << 12))

        la3 = cdesc.lower_addr[:2]
        n_payload = Signal(14)
        m.d.comb += n_payload.eq((cdesc.dword_count << 2) - la3)
        n_valid = Signal(14)
        m.d.comb += n_valid.eq(Mux(cdesc.byte_count < n_payload, cdesc.byte_count, n_payload))
        c_tag = Signal(tbits)
        m.d.comb += c_tag.eq(cdesc.tag[:tbits])
        # Fault handling: a completion counts only for a tag that is outstanding and has not failed; anything else
        # (a late completion after a timeout, the tail of a poisoned request) is dropped, never written to the ring.
        c_known = Signal()
        m.d.comb += c_known.eq((cdesc.tag < nt) & tag_busy.bit_select(c_tag, 1) & ~tag_err.bit_select(c_tag, 1))
        c_err = Signal()
        m.d.comb += c_err.eq((cdesc.error_code != 0) | (cdesc.status != 0) | cdesc.poisoned)
        c_rem = Signal(13)
        m.d.comb += c_rem.eq(Mux(cdesc.request_completed, 0, cdesc.byte_count - n_valid))
        c_base = Signal(PTR_WIDTH)
        m.d.comb += c_base.eq(tag_end[c_tag] - cdesc.byte_count - la3 - 12)

        base = Signal(PTR_WIDTH)
        lo = Signal(16)
        hi = Signal(16)
        ok = Signal()
        beat_idx = Signal(range(1 << 12))
        tag_now = Signal(tbits)
        rem_now = Signal(13)
        with m.If(~in_tlp):
            m.d.comb += [
                base.eq(c_base),
                lo.eq(12 + la3),
                hi.eq(12 + la3 + n_valid),
                ok.eq(~c_err & c_known),
                beat_idx.eq(0),
                tag_now.eq(c_tag),
                rem_now.eq(c_rem),
            ]
        with m.Else():
            m.d.comb += [
                base.eq(h_base),
                lo.eq(h_lo),
                hi.eq(h_hi),
                ok.eq(h_ok),
                beat_idx.eq(h_beat),
                tag_now.eq(h_tag),
                rem_now.eq(h_rem),
            ]

        m.d.sync += [e_set.eq(0), e_count.eq(0), e_tag.eq(c_tag)]
        with m.If(e_set):
            for i in range(nt):
                with m.If(e_tag == i):
                    m.d.comb += set_err[i].eq(1)
        with m.If(e_count):
            m.d.sync += self.rd_errors.eq(self.rd_errors + 1)
        with m.If(rc_valid):
            with m.If(~in_tlp):
                m.d.sync += [
                    h_base.eq(c_base),
                    h_lo.eq(12 + la3),
                    h_hi.eq(12 + la3 + n_valid),
                    h_tag.eq(c_tag),
                    h_ok.eq(ok),
                    h_rem.eq(c_rem),
                    h_beat.eq(1),
                ]
                # an error completion fails its tag one cycle later (decided here, applied from a register)
                m.d.sync += [e_set.eq(c_err & c_known), e_count.eq(c_err)]
                with m.If(~c_known):  # Fault handling: a tag not outstanding, or failed: Unexpected Completion
                    m.d.sync += self.rd_unexpected.eq(self.rd_unexpected + 1)
            with m.Else():
                m.d.sync += h_beat.eq(h_beat + 1)
            m.d.sync += in_tlp.eq(~rc_last)
        # Second stage (registered): the ring write of the beat and, on a completion's last beat, the tag's new
        # count of missing bytes - in the same cycle, so a retired sub-request's bytes are in the ring.
        # Stream bytes s = beat*nb + l go to ring byte base + s.
        w_valid = Signal()
        w_data = Signal(self.data_width)
        w_en = Signal(nb)
        w_rot = Signal(range(nb))
        w_word = Signal(word_bits)
        w_cpl = Signal()
        w_tag = Signal(tbits)
        w_rem = Signal(13)
        w_zero = Signal()
        pos = Signal(PTR_WIDTH)
        m.d.comb += pos.eq(base + beat_idx * nb)
        m.d.sync += [
            w_valid.eq(rc_valid & ok),
            w_data.eq(rc_data),
            w_rot.eq(pos[:nbits]),
            w_word.eq(pos[nbits:]),
            w_cpl.eq(rc_valid & rc_last & ok),
            w_tag.eq(tag_now),
            w_rem.eq(rem_now),
            w_zero.eq(rem_now == 0),
        ]
        for lane in range(nb):
            s = Signal(16, name=f"rc_s{lane}")
            m.d.comb += s.eq(beat_idx * nb + lane)
            m.d.sync += w_en[lane].eq((s >= lo) & (s < hi) & ok & rc_valid)
        with m.If(w_cpl & ~tag_err.bit_select(w_tag, 1)):
            m.d.comb += [cpl_rem.eq(w_rem), cpl_zero.eq(w_zero)]
            for i in range(nt):
                with m.If(w_tag == i):
                    m.d.comb += set_cpl[i].eq(1)
        data_rot = rotate_left(m, w_data, w_rot, nb, 8, "rc_data")
        en_rot = rotate_left(m, w_en, w_rot, nb, 1, "rc_en")
        hi_part = Signal(nb)  # rotated lanes >= rot belong to `word`, the others to `word + 1`
        for lane in range(nb):
            m.d.comb += hi_part[lane].eq(lane >= w_rot)
        word1 = Signal(word_bits)
        m.d.comb += word1.eq(w_word + 1)
        for b in range(2):
            wp = wports[b]
            with m.If(w_word[0] == b):
                m.d.comb += [wp.addr.eq(w_word[1:]), wp.data.eq(data_rot), wp.en.eq(en_rot & hi_part)]
            with m.Else():
                m.d.comb += [wp.addr.eq(word1[1:]), wp.data.eq(data_rot), wp.en.eq(en_rot & ~hi_part)]

        # ---- completion timeout (PCIe Base 2.8): a tag outstanding for too long fails
        tick_div = 64
        age_limit = max(2, self.timeout_cycles // tick_div)
        tick_cnt = Signal(range(tick_div))
        tick = Signal()
        m.d.sync += tick_cnt.eq(tick_cnt + 1)
        m.d.comb += tick.eq(tick_cnt == tick_div - 1)
        timed_out = Signal()
        # Fault handling: the same per-tag age counter times a failed tag's quarantine after it retired; the tag
        # is free again once ``quar_limit`` ticks passed (``quar_expired``), see "quarantine release" below.
        quar_limit = max(2, self.quarantine_cycles // tick_div)
        tag_quar = Signal(nt)
        quar_expired = Signal(nt)
        for i in range(nt):
            age = Signal(range(max(age_limit, quar_limit) + 1), name=f"tag{i}_age")
            waiting = tag_busy[i] & ~tag_zero[i]
            with m.If(set_issue[i] | ~(waiting | tag_quar[i])):
                m.d.sync += age.eq(0)
            with m.Elif(tick):
                with m.If(tag_quar[i]):
                    with m.If(age != quar_limit):
                        m.d.sync += age.eq(age + 1)
                with m.Elif(age == age_limit):
                    m.d.comb += [set_err[i].eq(1), timed_out.eq(1)]
                with m.Else():
                    m.d.sync += age.eq(age + 1)
            m.d.comb += quar_expired[i].eq(tag_quar[i] & (age == quar_limit))
        with m.If(timed_out):
            m.d.sync += self.rd_timeouts.eq(self.rd_timeouts + 1)

        for i in range(nt):
            with m.If(set_issue[i]):  # a TLP asks for at least one byte
                m.d.sync += [tag_end[i].eq(issue_end), tag_rem[i].eq(issue_len), tag_err[i].eq(0), tag_zero[i].eq(0)]
            with m.Elif(set_err[i]):
                m.d.sync += [tag_rem[i].eq(0), tag_err[i].eq(1), tag_zero[i].eq(1)]
            with m.Elif(set_cpl[i]):
                m.d.sync += [tag_rem[i].eq(cpl_rem), tag_zero[i].eq(cpl_zero)]
        m.d.sync += tag_busy.eq((tag_busy | set_issue) & ~clr_busy)

        # ---- retire sub-requests in issue order; the oldest one's received prefix is what may be delivered
        o_tag = Signal(tbits)
        o_last = Signal()
        o_zero = Signal()
        m.d.comb += Cat(o_tag, o_last, o_zero).eq(order_fifo.r_data)
        head_rem = Signal(13)
        head_end = Signal(PTR_WIDTH)
        head_err = Signal()
        head_zero = Signal()
        m.d.comb += [
            head_rem.eq(tag_rem[o_tag]),
            head_end.eq(tag_end[o_tag]),
            head_err.eq(tag_err.bit_select(o_tag, 1)),
            head_zero.eq(tag_zero.bit_select(o_tag, 1)),
        ]
        err_acc = Signal()
        n_out = Signal(range(nt + 1))
        retire = Signal()
        m.d.comb += retire.eq(order_fifo.r_rdy & (o_zero | head_zero) & (err_fifo.w_rdy | ~o_last))
        with m.If(order_fifo.r_rdy & ~o_zero):
            m.d.sync += avail_ptr.eq(head_end - head_rem)
        # Fault handling: a tag retired with an error goes into quarantine instead of back to the free FIFO.
        # Where a retired tag goes (free FIFO or quarantine) is applied from registers one cycle after the retire:
        # the retire decision already reads the order FIFO and two per-tag muxes, and the free FIFO's write port
        # is shared with the quarantine release.  The tag is no longer busy from the retire on (``clr_busy``), so
        # no completion is taken for it in between; it just becomes reusable a cycle later.
        set_quar = Signal(nt)
        clr_quar = Signal(nt)
        ret_valid = Signal()
        ret_tag = Signal(tbits)
        ret_err = Signal()
        m.d.sync += [ret_valid.eq(retire & ~o_zero), ret_tag.eq(o_tag), ret_err.eq(head_err)]
        retire_free = Signal()
        m.d.comb += retire_free.eq(ret_valid & ~ret_err)
        with m.If(retire_free):
            m.d.comb += [free_fifo.w_en.eq(1), free_fifo.w_data.eq(ret_tag)]
        with m.If(ret_valid & ret_err):
            for i in range(nt):
                with m.If(ret_tag == i):
                    m.d.comb += set_quar[i].eq(1)
        with m.If(retire):
            m.d.comb += order_fifo.r_en.eq(1)
            with m.If(~o_zero):
                for i in range(nt):
                    with m.If(o_tag == i):
                        m.d.comb += clr_busy[i].eq(1)
            with m.If(o_last):
                m.d.comb += [err_fifo.w_en.eq(1), err_fifo.w_data.eq(err_acc | head_err | o_zero)]
                m.d.sync += err_acc.eq(0)
            with m.Else():
                m.d.sync += err_acc.eq(err_acc | head_err)
        m.d.sync += n_out.eq(n_out + tlp_fire - (retire & ~o_zero))
        m.d.comb += self.rd_outstanding.eq(n_out)

        # ---- quarantine release (fault handling): a scan pointer visits one tag per cycle (registered), and an
        # expired tag goes back to the free FIFO in a cycle the retire path does not write it.  Quarantine only
        # follows errors, so the 1-in-nt visit rate costs nothing on the fast path.
        q_scan = Signal(tbits)
        q_hit = Signal()
        q_tag = Signal(tbits)
        m.d.sync += [
            q_scan.eq(Mux(q_scan == nt - 1, 0, q_scan + 1)),
            q_hit.eq(quar_expired.bit_select(q_scan, 1)),
            q_tag.eq(q_scan),
        ]
        with m.If(q_hit & ~retire_free):
            m.d.comb += [free_fifo.w_en.eq(1), free_fifo.w_data.eq(q_tag)]
            for i in range(nt):
                with m.If(q_tag == i):
                    m.d.comb += clr_quar[i].eq(1)
        m.d.sync += tag_quar.eq((tag_quar | set_quar) & ~clr_quar)
        m.d.comb += self.rd_quarantine.eq(tag_quar)

        # ---- deliver: ring words to the core, in order, through the synchronous read port and one output stage
        d_base = Signal(PTR_WIDTH)
        d_len = Signal(DMA_LEN_WIDTH)
        m.d.comb += Cat(d_base, d_len).eq(drain_fifo.r_data)
        d_beat = Signal(DMA_LEN_WIDTH)
        d_off = Signal(PTR_WIDTH)
        m.d.comb += d_off.eq(d_beat * nb)
        d_rem = Signal(DMA_LEN_WIDTH + 1)
        m.d.comb += d_rem.eq(d_len - d_off)
        d_last = Signal()
        m.d.comb += d_last.eq(d_rem <= nb)
        d_pos = Signal(PTR_WIDTH)
        m.d.comb += d_pos.eq(d_base + d_off)
        d_word = Signal(word_bits)
        m.d.comb += d_word.eq(d_pos[nbits:])
        # A beat's bytes are complete when the in-order prefix reaches its end (signed: the prefix may still end
        # in the padding before this request); the last beat also waits for the request's error result.
        margin = Signal(PTR_WIDTH)
        m.d.comb += margin.eq(avail_ptr - d_pos - nb)
        d_avail = Signal()
        m.d.comb += d_avail.eq(
            drain_fifo.r_rdy & Mux(d_last, err_fifo.r_rdy, err_fifo.r_rdy | (margin.as_signed() >= 0))
        )
        b_valid = Signal()
        b_last = Signal()
        b_err = Signal()
        b_bank = Signal()
        b_keep = Signal(nb)
        advance = Signal()
        m.d.comb += advance.eq(d_avail & (~b_valid | rd.data_ready))
        for b in range(2):
            m.d.comb += [rports[b].addr.eq(d_word[1:]), rports[b].en.eq(advance)]
        with m.If(advance):
            m.d.sync += [
                b_valid.eq(1),
                b_last.eq(d_last),
                b_err.eq(d_last & err_fifo.r_data),
                b_bank.eq(d_word[0]),
                b_keep.eq(Cat(d_rem > lane for lane in range(nb))),
                drain_ptr.eq(d_pos + nb),
            ]
            with m.If(d_last):
                m.d.sync += d_beat.eq(0)
                m.d.comb += [drain_fifo.r_en.eq(1), err_fifo.r_en.eq(1)]
            with m.Else():
                m.d.sync += d_beat.eq(d_beat + 1)
        with m.Elif(rd.data_ready):
            m.d.sync += b_valid.eq(0)
        m.d.comb += [
            rd.data_valid.eq(b_valid),
            rd.data.eq(Mux(b_bank, rports[1].data, rports[0].data)),
            rd.data_last.eq(b_last),
            rd.error.eq(b_err),
            rd.data_keep.eq(b_keep),
        ]
        return active | p_valid | req_fifo.r_rdy | drain_fifo.r_rdy | b_valid | (n_out != 0) | order_fifo.r_rdy

    # ------------------------------------------------------------------------------------------------
    def _write_side(self, m, rq):
        wr = self.wr
        nb = self.data_width // 8
        nbits = (nb - 1).bit_length()
        dw_per_beat = self.data_width // 32
        ring_words = self.write_ring_bytes // nb
        word_bits = (ring_words - 1).bit_length()
        wports, rports = self._ring(m, "wrring", ring_words // 2, "sync")
        m.submodules.wr_job_fifo = job_fifo = fifo.SyncFIFO(
            width=64 + DMA_LEN_WIDTH + PTR_WIDTH, depth=self.max_write_requests
        )

        walloc = Signal(PTR_WIDTH)
        wfill = Signal(PTR_WIDTH)  # ring bytes below this hold data
        wfree = Signal(PTR_WIDTH)  # ring bytes below this may be overwritten
        beats_pending = Signal(DMA_LEN_WIDTH + 6)  # data beats of accepted requests not yet received

        # ---- accept requests (queued) and data (for the oldest request still short of data)
        req_beats = Signal(DMA_LEN_WIDTH)
        m.d.comb += req_beats.eq((wr.req_len + nb - 1) >> nbits)
        m.d.comb += wr.req_ready.eq(job_fifo.w_rdy & (wr.req_len != 0))
        req_fire = Signal()
        m.d.comb += req_fire.eq(wr.req_valid & wr.req_ready)
        with m.If(req_fire):
            m.d.comb += [job_fifo.w_en.eq(1), job_fifo.w_data.eq(Cat(wr.req_addr, wr.req_len, walloc))]
            m.d.sync += walloc.eq(walloc + (req_beats << nbits))
        # Room for the beat offered now, as a register: last cycle's room for two more beats (``wfill`` grows by
        # at most a beat per cycle, ``wfree`` only grows), so ``data_ready`` is two LUT levels of registers and
        # the write mux needs no slice of its own in front of this port.  It costs one beat of the ring.
        space = Signal()
        m.d.sync += space.eq(((wfill + 2 * nb - wfree)[:PTR_WIDTH]) <= self.write_ring_bytes)
        m.d.comb += wr.data_ready.eq((beats_pending != 0) & space)
        beat_fire = Signal()
        m.d.comb += beat_fire.eq(wr.data_valid & wr.data_ready)
        m.d.sync += beats_pending.eq(beats_pending + Mux(req_fire, req_beats, 0) - beat_fire)
        fill_word = Signal(word_bits)
        m.d.comb += fill_word.eq(wfill[nbits:])
        for b in range(2):
            m.d.comb += [wports[b].addr.eq(fill_word[1:]), wports[b].data.eq(wr.data)]
        with m.If(beat_fire):
            for b in range(2):
                with m.If(fill_word[0] == b):
                    m.d.comb += wports[b].en.eq(wr.data_keep)
            m.d.sync += wfill.eq(wfill + nb)

        # ---- planner: the next TLP of the oldest job, computed while the current one is sent.  Everything the
        # sender needs per beat (beat count, last-beat keep, where the ring bytes of beat 0 start) is worked out
        # here and registered, so the sender's per-beat decisions are registers.
        j_addr = Signal(64)
        j_len = Signal(DMA_LEN_WIDTH)
        j_base = Signal(PTR_WIDTH)
        m.d.comb += Cat(j_addr, j_len, j_base).eq(job_fifo.r_data)
        off = Signal(DMA_LEN_WIDTH)  # bytes of the job already planned
        t_addr = Signal(64)
        m.d.comb += t_addr.eq(j_addr + off)
        rem = Signal(DMA_LEN_WIDTH)
        m.d.comb += rem.eq(j_len - off)
        mps = self._limit(m, self.max_payload, self.max_write_chunk, "wr_mps")
        # At most Max_Payload_Size, never across 4 KiB (PCIe Base 2.2.7), and every TLP but a request's last ends
        # on a 64-byte (cache-line) boundary: a buffer that starts off an MPS boundary takes no extra TLP.
        to_line = Signal(13)
        m.d.comb += to_line.eq(mps - t_addr[:6])
        to_4k = Signal(13)
        m.d.comb += to_4k.eq(0x1000 - t_addr[:12])
        to_bound = Signal(13)
        m.d.comb += to_bound.eq(Mux(to_4k < to_line, to_4k, to_line))
        t_last = Signal()
        m.d.comb += t_last.eq(rem <= to_bound)
        chunk = Signal(13)
        m.d.comb += chunk.eq(Mux(t_last, rem, to_bound))
        t_dw = Signal(12)  # descriptor + payload dwords
        m.d.comb += t_dw.eq(4 + ((t_addr[:2] + chunk + 3) >> 2))
        t_beats = Signal(range(1 << 8))
        m.d.comb += t_beats.eq((t_dw + dw_per_beat - 1) >> (dw_per_beat.bit_length() - 1))

        n_valid = Signal()
        n_addr = Signal(64)
        n_chunk = Signal(13)
        n_pos = Signal(PTR_WIDTH)
        n_start = Signal(PTR_WIDTH)  # ring byte shown in lane 0 of beat 0: n_pos - a3 - 16 (the descriptor)
        n_data_end = Signal(PTR_WIDTH)  # n_pos + n_chunk
        n_last = Signal()
        n_job_end = Signal(PTR_WIDTH)  # ring end of the job (whole words)
        n_beats = Signal(range(1 << 8))
        n_keep = Signal(dw_per_beat)  # dword enables of the last beat
        n_eop = Signal(4)  # index of the last dword within its beat (512 bits: 16 dwords)
        n_take = Signal()
        with m.If(job_fifo.r_rdy & (~n_valid | n_take)):
            m.d.sync += [
                n_valid.eq(1),
                n_addr.eq(t_addr),
                n_chunk.eq(chunk),
                n_pos.eq(j_base + off),
                n_start.eq(j_base + off - t_addr[:2] - 16),
                n_data_end.eq(j_base + off + chunk),
                n_last.eq(t_last),
                n_job_end.eq(j_base + (((j_len + nb - 1) >> nbits) << nbits)),
                n_beats.eq(t_beats),
                n_keep.eq(Cat((t_dw - 1)[: (dw_per_beat - 1).bit_length()] >= d for d in range(dw_per_beat))),
                n_eop.eq(t_dw - 1),
            ]
            with m.If(t_last):
                m.d.comb += job_fifo.r_en.eq(1)
                m.d.sync += off.eq(0)
            with m.Else():
                m.d.sync += off.eq(off + chunk)
        with m.Elif(n_take):
            m.d.sync += n_valid.eq(0)

        # ---- write-TLP sequence numbers (PG213 "Transmit Transaction Ordering")
        w_sent = Signal(WSEQ_WIDTH)  # write TLPs started
        w_acked = Signal(WSEQ_WIDTH)  # write TLPs the hard IP reported as transmitted
        m.submodules.wr_vis_fifo = vis_fifo = fifo.SyncFIFO(width=WSEQ_WIDTH, depth=32)
        seq_ok = Signal()
        if self.seq_num_tracking:
            # Registered: computed from last cycle's counters.  If a TLP started last cycle, one more is in
            # flight than they show, so the bound is checked one lower then; acknowledgements only help.
            below = Signal(init=1)  # unacked < MAX_UNACKED_WRITE_TLPS
            below1 = Signal(init=1)  # unacked < MAX_UNACKED_WRITE_TLPS - 1
            took = Signal()
            unacked_now = Signal(WSEQ_WIDTH)
            m.d.comb += unacked_now.eq(w_sent - w_acked)
            m.d.sync += [
                below.eq(unacked_now < MAX_UNACKED_WRITE_TLPS),
                below1.eq(unacked_now < MAX_UNACKED_WRITE_TLPS - 1),
                took.eq(n_take),
            ]
            m.d.comb += seq_ok.eq(Mux(took, below1, below))
            self._seq_tracker(m, w_sent, w_acked)
        else:
            m.d.comb += seq_ok.eq(1)

        # ---- sender
        sending = Signal()
        s_first = Signal()
        s_tlast = Signal()  # the beat on offer is the TLP's last
        s_left = Signal(range(1 << 8))  # beats left after the one on offer
        s_chunk = Signal(13)
        s_addr = Signal(64)
        s_start = Signal(PTR_WIDTH)  # ring byte shown in lane 0 of the beat on offer
        s_data_end = Signal(PTR_WIDTH)
        s_last_tlp = Signal()
        s_job_end = Signal(PTR_WIDTH)
        s_seq = Signal(WSEQ_WIDTH)
        s_keep = Signal(dw_per_beat)
        s_eop = Signal(4)
        desc, (wr_fbe, wr_lbe), _ = self._rq_descriptor(m, s_addr, s_chunk, ReqType.MEM_WRITE, 0, "wrreq")
        s_move = Signal()
        m.d.comb += s_move.eq(sending & rq["tready"])
        s_end = Signal()
        m.d.comb += s_end.eq(s_move & s_tlast)
        n_present = Signal()
        m.d.comb += n_present.eq(((wfill - n_data_end)[:PTR_WIDTH]).as_signed() >= 0)
        m.d.comb += n_take.eq(n_valid & n_present & seq_ok & (~n_last | vis_fifo.w_rdy) & (~sending | s_end))
        with m.If(n_take):
            m.d.sync += [
                sending.eq(1),
                s_first.eq(1),
                s_tlast.eq(n_beats == 1),
                s_left.eq(n_beats - 1),
                s_chunk.eq(n_chunk),
                s_addr.eq(n_addr),
                s_start.eq(n_start),
                s_data_end.eq(n_data_end),
                s_last_tlp.eq(n_last),
                s_job_end.eq(n_job_end),
                s_seq.eq(w_sent),
                s_keep.eq(n_keep),
                s_eop.eq(n_eop),
                w_sent.eq(w_sent + 1),
            ]
        with m.Elif(s_end):
            m.d.sync += sending.eq(0)
        with m.Elif(s_move):
            m.d.sync += [
                s_first.eq(0),
                s_tlast.eq(s_left == 1),
                s_left.eq(s_left - 1),
                s_start.eq(s_start + nb),
            ]
        with m.If(s_end):
            with m.If(s_last_tlp):
                m.d.sync += wfree.eq(s_job_end)
                m.d.comb += [vis_fifo.w_en.eq(1), vis_fifo.w_data.eq(s_seq)]
            with m.Else():
                m.d.sync += wfree.eq(Cat(Const(0, nbits), s_data_end[nbits:]))

        # beat j shows ring bytes starting at s_pos - a3 - 16 + j*nb (s_start).  The ring's read ports are
        # synchronous (block RAM): they are addressed with the value ``s_start`` takes in the next cycle, so
        # their data is that of the beat on offer.  (The bytes of a TLP are in the ring before it is taken:
        # ``n_present`` compares with ``wfill``, which moves a cycle after the write.)
        start_next = Signal(PTR_WIDTH)
        with m.If(n_take):
            m.d.comb += start_next.eq(n_start)
        with m.Elif(s_move & ~s_end):
            m.d.comb += start_next.eq(s_start + nb)
        with m.Else():
            m.d.comb += start_next.eq(s_start)
        k_next = Signal(word_bits)
        m.d.comb += k_next.eq(start_next[nbits:])
        k1_next = Signal(word_bits)
        m.d.comb += k1_next.eq(k_next + 1)
        for b in range(2):
            m.d.comb += rports[b].addr.eq(Mux(k_next[0] == b, k_next[1:], k1_next[1:]))
        k = Signal(word_bits)
        m.d.comb += k.eq(s_start[nbits:])
        r = Signal(range(nb))
        m.d.comb += r.eq(s_start[:nbits])
        lo_word = Signal(self.data_width)
        hi_word = Signal(self.data_width)
        m.d.comb += [
            lo_word.eq(Mux(k[0], rports[1].data, rports[0].data)),
            hi_word.eq(Mux(k[0], rports[0].data, rports[1].data)),
        ]
        payload = Signal(self.data_width)
        m.d.comb += payload.eq(Cat(lo_word, hi_word).bit_select(r * 8, self.data_width))
        beat_data = Signal(self.data_width)
        m.d.comb += beat_data.eq(payload)
        with m.If(s_first):
            m.d.comb += beat_data[:128].eq(desc.as_value())
        m.d.comb += [rq["tvalid"].eq(sending), rq["tdata"].eq(beat_data), rq["tlast"].eq(s_tlast)]
        m.d.comb += rq["mark"].eq(s_tlast & s_last_tlp)
        seq_wire = Cat(s_seq[:5], Const(1, 1)) if self.seq_num_tracking else Const(0, 6)
        m.d.comb += rq["tuser"].eq(rq_tuser(self.data_width, wr_fbe, wr_lbe, s_first, rq["tlast"], s_eop, seq_wire))
        m.d.comb += rq["tkeep"].eq(Mux(s_tlast, s_keep, (1 << dw_per_beat) - 1))

        # ---- visible: one pulse per request, in order, once its last TLP's sequence number came back
        v_idx = Signal(WSEQ_WIDTH)
        m.d.comb += v_idx.eq(vis_fifo.r_data)
        if self.seq_num_tracking:
            with m.If(vis_fifo.r_rdy & ((w_acked - v_idx - 1)[:WSEQ_WIDTH].as_signed() >= 0)):
                m.d.comb += [vis_fifo.r_en.eq(1), wr.visible.eq(1)]
            unacked = (w_sent != w_acked) | vis_fifo.r_rdy
        else:
            m.d.comb += [vis_fifo.w_en.eq(0), wr.visible.eq(wr.done)]
            unacked = Const(0, 1)
        return (beats_pending != 0) | job_fifo.r_rdy | n_valid | sending | unacked

    def _seq_tracker(self, m: Module, w_sent: Signal, w_acked: Signal) -> None:
        """Advance ``w_acked`` from the hard IP's sequence-number reports (registered first).

        Write TLPs carry ``{1, index[4:0]}``; a report of index i means every write TLP up to i has left (they
        leave in order).  A report is applied only if it names a TLP that was sent and not yet acknowledged.
        """
        s0 = Signal(6)
        v0 = Signal()
        s1 = Signal(6)
        v1 = Signal()
        m.d.sync += [s0.eq(self.rq_seq_num0), v0.eq(self.rq_seq_num_vld0 & self.rq_seq_num0[5])]
        if self.data_width == 512:
            m.d.sync += [s1.eq(self.rq_seq_num1), v1.eq(self.rq_seq_num_vld1 & self.rq_seq_num1[5])]
        latest = Signal(5)
        m.d.comb += latest.eq(Mux(v1, s1[:5], s0[:5]))
        step = Signal(5)
        m.d.comb += step.eq(latest - w_acked[:5] + 1)
        unacked = Signal(WSEQ_WIDTH)
        m.d.comb += unacked.eq(w_sent - w_acked)
        stall = Signal(range(self.seq_timeout_cycles + 1))
        with m.If((v0 | v1) & (step <= unacked)):
            m.d.sync += [w_acked.eq(w_acked + step), stall.eq(0)]
        with m.Elif(unacked == 0):
            m.d.sync += stall.eq(0)
        with m.Elif(stall == self.seq_timeout_cycles):
            # no report for a long time (a TLP the hard IP dropped): assume it left, never hang
            m.d.sync += [w_acked.eq(w_sent), stall.eq(0), self.wr_seq_timeouts.eq(self.wr_seq_timeouts + 1)]
        with m.Else():
            m.d.sync += stall.eq(stall + 1)
