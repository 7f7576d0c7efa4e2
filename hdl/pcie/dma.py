"""Requester DMA engine: DmaReadPort / DmaWritePort onto the UltraScale+ RQ (out) and RC (in) interfaces.

Reads (PG213 "Requester Request Interface", "Requester Completion Interface"; PCIe Base 2.2.7, 2.3.1.1):

* a core request (address, length) is split into memory-read TLPs of at most Max_Read_Request_Size
  (``cfg_max_read_req``, capped at :attr:`DmaEngine.max_read_chunk`) that never cross a 4 KiB boundary
  (PCIe Base 2.2.7: "Requests must not specify an Address/Length combination which causes a Memory Space
  access to cross a 4-KB boundary");
* up to ``n_tags`` reads are outstanding at once (the user supplies tags: "client tag" mode);
* completions may be split (PCIe Base 2.3.1.1) and may arrive out of order between tags.  Every completion is
  written straight to its place in a *reorder ring*: the ring holds each core request's bytes at their offset
  from the request's start, so the byte rotation that turns dword-aligned completion payload into the packed
  convention happens on the way in, and the way out reads whole ring words in order.  The place of a
  completion follows from its descriptor alone: ``byte_count`` says how many bytes of the request remain
  (PCIe Base 2.2.9), so the first byte sits at ``len - byte_count`` in the sub-request;
* a sub-request's data is released to the core in issue order; a completion with an error (UR, CA, poisoned,
  or an error code from the hard IP) or no completion within ``timeout_cycles`` marks the sub-request failed,
  and its core request ends with ``error`` on the last beat - never a hang.

Writes (PCIe Base 2.2.7 Max_Payload_Size; PG213 "Requester Request Interface"): the core's packed data is
stored in a ring, then cut into memory-write TLPs of at most Max_Payload_Size (``cfg_max_payload``, capped at
:attr:`DmaEngine.max_write_chunk`), split at 4 KiB boundaries; each TLP is sent only when all its data is in
the ring, so a TLP never stalls half way.  ``done`` pulses after the last TLP of a request was accepted.

Both rings are two banks of words (even and odd), so one cycle can touch any two consecutive words: a
rotated completion beat lands in two words, an unaligned write TLP beat is read from two words.
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


def rotate_left(m: Module, value: Signal, amount: Signal, lanes: int, lane_bits: int, name: str) -> Signal:
    """``value`` (``lanes`` lanes of ``lane_bits``) rotated so that lane l moves to lane (l + amount) % lanes."""
    offset = Signal(range(lanes + 1), name=f"{name}_rot_offset")
    m.d.comb += offset.eq(lanes - amount)
    out = Signal(lanes * lane_bits, name=f"{name}_rot")
    m.d.comb += out.eq(Cat(value, value).bit_select(offset * lane_bits, lanes * lane_bits))
    return out


class DmaEngine(wiring.Component):
    """The requester side of the endpoint."""

    def __init__(
        self,
        data_width: int = 256,
        n_tags: int = 32,
        ring_bytes: int = 4096,
        max_read_chunk: int = 512,
        max_write_chunk: int = 512,
        timeout_cycles: int = 1 << 16,
    ) -> None:
        check_data_width(data_width)
        assert n_tags <= 32, "without extended tags PCIe allows 32 tags (PCIe Base 2.2.6.2)"
        assert ring_bytes >= 2 * max(max_read_chunk, max_write_chunk) + data_width // 8
        self.data_width = data_width
        self.n_tags = n_tags
        self.ring_bytes = ring_bytes
        self.max_read_chunk = max_read_chunk
        self.max_write_chunk = max_write_chunk
        self.timeout_cycles = timeout_cycles
        super().__init__(
            {
                "rd": In(DmaReadPort(data_width)),
                "wr": In(DmaWritePort(data_width)),
                "rq": Out(axis_signature(data_width, tuser_widths(data_width)["rq"])),
                "rc": In(axis_signature(data_width, tuser_widths(data_width)["rc"])),
                "max_payload": In(2),  # cfg_max_payload: 128 << n bytes
                "max_read_req": In(3),  # cfg_max_read_req: 128 << n bytes
                "requester_function": In(8),
                "busy": Out(1),
                "rd_outstanding": Out(range(n_tags + 1)),
                "rd_errors": Out(16),
                "rd_timeouts": Out(16),
            }
        )

    # ------------------------------------------------------------------------------------------------
    def elaborate(self, platform: object) -> Module:
        m = Module()
        w = self.data_width
        nb = w // 8  # bytes per beat
        dw_per_beat = w // 32
        ring_words = self.ring_bytes // nb
        bank_depth = ring_words // 2
        word_bits = (ring_words - 1).bit_length()
        nt = self.n_tags

        rq_rd = self._rq_source(m, "rd")
        rq_wr = self._rq_source(m, "wr")
        self._rq_arbiter(m, [rq_rd, rq_wr])

        rd_busy = self._read_side(m, rq_rd, nb, dw_per_beat, ring_words, bank_depth, word_bits, nt)
        wr_busy = self._write_side(m, rq_wr, nb, dw_per_beat, ring_words, bank_depth, word_bits)
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
        }

    def _rq_arbiter(self, m: Module, sources: list[dict]) -> None:
        """Round-robin between TLP sources; a grant holds from the first beat to ``tlast``."""
        locked = Signal()
        grant = Signal(range(len(sources)))
        last_grant = Signal(range(len(sources)))
        choice = Signal(range(len(sources)))
        # prefer the source that did not go last
        other = Signal(range(len(sources)))
        m.d.comb += other.eq(~last_grant if len(sources) == 2 else 0)
        with m.If(Array(s["tvalid"] for s in sources)[other]):
            m.d.comb += choice.eq(other)
        with m.Else():
            m.d.comb += choice.eq(last_grant)
        current = Signal(range(len(sources)))
        m.d.comb += current.eq(Mux(locked, grant, choice))
        for i, src in enumerate(sources):
            with m.If(current == i):
                for k in ("tdata", "tkeep", "tlast", "tuser", "tvalid"):
                    m.d.comb += getattr(self.rq, k).eq(src[k])
                m.d.comb += src["tready"].eq(self.rq.tready)
        # A grant holds while a beat waits for tready too: AXI-stream forbids withdrawing tvalid.
        with m.If(self.rq.tvalid):
            m.d.sync += grant.eq(current)
            with m.If(self.rq.tready):
                m.d.sync += [last_grant.eq(current), locked.eq(~self.rq.tlast)]
            with m.Else():
                m.d.sync += locked.eq(1)

    # ------------------------------------------------------------------------------------------------
    def _ring(self, m: Module, name: str, bank_depth: int) -> tuple[list, list]:
        w = self.data_width
        wports, rports = [], []
        for b in range(2):
            mem = Memory(shape=unsigned(w), depth=bank_depth, init=[])
            m.submodules[f"{name}_bank{b}"] = mem
            wports.append(mem.write_port(granularity=8))
            rports.append(mem.read_port(domain="comb"))
        return wports, rports

    def _rq_descriptor(self, m: Module, addr, nbytes, req_type, tag, name: str):
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

    # ------------------------------------------------------------------------------------------------
    def _read_side(self, m, rq, nb, dw_per_beat, ring_words, bank_depth, word_bits, nt):
        rd = self.rd
        wports, rports = self._ring(m, "rdring", bank_depth)

        # ---- core requests waiting to be drained, and per-request error results (in order)
        m.submodules.rd_drain_fifo = drain_fifo = fifo.SyncFIFO(width=PTR_WIDTH + DMA_LEN_WIDTH, depth=4)
        m.submodules.rd_err_fifo = err_fifo = fifo.SyncFIFO(width=1, depth=4)
        m.submodules.rd_order_fifo = order_fifo = fifo.SyncFIFO(width=5 + 1, depth=nt)

        alloc_ptr = Signal(PTR_WIDTH)  # next free ring byte (word aligned)
        drain_ptr = Signal(PTR_WIDTH)  # ring bytes below this are free
        avail_ptr = Signal(PTR_WIDTH)  # end of the completed, in-order prefix of sub-requests

        # ---- per-tag bookkeeping
        tag_free = Signal(nt, init=(1 << nt) - 1)
        tag_pos = Array(Signal(PTR_WIDTH, name=f"tag{i}_pos") for i in range(nt))
        tag_len = Array(Signal(13, name=f"tag{i}_len") for i in range(nt))
        tag_done = Signal(nt)
        tag_err = Signal(nt)
        tick_div = 64
        age_limit = max(2, self.timeout_cycles // tick_div)
        tag_age = [Signal(range(age_limit + 1), name=f"tag{i}_age") for i in range(nt)]
        tick_cnt = Signal(range(tick_div))
        tick = Signal()
        m.d.sync += tick_cnt.eq(tick_cnt + 1)
        m.d.comb += tick.eq(tick_cnt == tick_div - 1)

        set_done = Signal(nt)
        set_err = Signal(nt)
        clr_state = Signal(nt)  # tag (re)issued

        # ---- issuer
        active = Signal()
        cur_addr = Signal(64)
        cur_rem = Signal(DMA_LEN_WIDTH)
        cur_pos = Signal(PTR_WIDTH)
        mrrs = Signal(13)
        m.d.comb += mrrs.eq(
            Mux(
                (Const(128, 13) << self.max_read_req) > self.max_read_chunk,
                self.max_read_chunk,
                Const(128, 13) << self.max_read_req,
            )
        )
        to_4k = Signal(13)
        m.d.comb += to_4k.eq(0x1000 - cur_addr[:12])
        lim = Signal(13)
        m.d.comb += lim.eq(Mux(to_4k < mrrs, to_4k, mrrs))
        chunk = Signal(13)
        m.d.comb += chunk.eq(Mux(cur_rem < lim, cur_rem, lim))

        free_tag = Signal(5)
        have_tag = Signal()
        for i in reversed(range(nt)):
            with m.If(tag_free[i]):
                m.d.comb += [free_tag.eq(i), have_tag.eq(1)]
        space_ok = Signal()
        m.d.comb += space_ok.eq(((cur_pos + chunk - drain_ptr)[:PTR_WIDTH]) <= self.ring_bytes)

        req_len_rounded = Signal(PTR_WIDTH)
        m.d.comb += req_len_rounded.eq(((rd.req_len + nb - 1) // nb) * nb)
        m.d.comb += rd.req_ready.eq(~active & drain_fifo.w_rdy)
        with m.If(rd.req_valid & rd.req_ready):
            m.d.comb += [drain_fifo.w_en.eq(1), drain_fifo.w_data.eq(Cat(alloc_ptr, rd.req_len))]
            m.d.sync += [
                cur_addr.eq(rd.req_addr),
                cur_rem.eq(rd.req_len),
                cur_pos.eq(alloc_ptr),
                alloc_ptr.eq(alloc_ptr + req_len_rounded),
                active.eq(rd.req_len != 0),
            ]
            with m.If(rd.req_len == 0):
                # nothing to fetch: the request completes with an error (the interface requires len >= 1)
                m.d.comb += [err_fifo.w_en.eq(1), err_fifo.w_data.eq(1)]

        desc, (rd_fbe, rd_lbe), _ = self._rq_descriptor(m, cur_addr, chunk, ReqType.MEM_READ, free_tag, "rdreq")
        issue = Signal()
        m.d.comb += issue.eq(active & have_tag & space_ok & order_fifo.w_rdy)
        m.d.comb += [
            rq["tvalid"].eq(issue),
            rq["tdata"].eq(desc.as_value()),
            rq["tkeep"].eq((1 << 4) - 1),
            rq["tlast"].eq(1),
            rq["tuser"].eq(rq_tuser(self.data_width, rd_fbe, rd_lbe, Const(1, 1), Const(1, 1), Const(3, 4))),
        ]
        with m.If(issue & rq["tready"]):
            m.d.sync += [
                tag_pos[free_tag].eq(cur_pos),
                tag_len[free_tag].eq(chunk),
                cur_addr.eq(cur_addr + chunk),
                cur_rem.eq(cur_rem - chunk),
                cur_pos.eq(cur_pos + chunk),
            ]
            with m.If(cur_rem == chunk):
                m.d.sync += active.eq(0)
            m.d.comb += [order_fifo.w_en.eq(1), order_fifo.w_data.eq(Cat(free_tag, cur_rem == chunk))]
            for i in range(nt):
                with m.If(free_tag == i):
                    m.d.comb += clr_state[i].eq(1)

        # ---- completions: always accepted (ring space was reserved when the read was issued)
        rc = self.rc
        m.d.comb += rc.tready.eq(1)
        in_tlp = Signal()  # a multi-beat completion is being received
        cdesc = Signal(RC_DESCRIPTOR)
        m.d.comb += cdesc.eq(rc.tdata[:96])
        h_tag = Signal(5)
        h_base = Signal(PTR_WIDTH)  # ring position of stream byte 0 of beat 0
        h_lo = Signal(16)  # stream bytes [h_lo, h_hi) are payload to keep
        h_hi = Signal(16)
        h_ok = Signal()
        h_beat = Signal(range(1 << 12))

        la3 = cdesc.lower_addr[:2]
        n_payload = Signal(14)
        m.d.comb += n_payload.eq((cdesc.dword_count << 2) - la3)
        n_valid = Signal(14)
        m.d.comb += n_valid.eq(Mux(cdesc.byte_count < n_payload, cdesc.byte_count, n_payload))
        c_tag = Signal(5)
        m.d.comb += c_tag.eq(cdesc.tag[:5])
        c_err = Signal()
        m.d.comb += c_err.eq((cdesc.error_code != 0) | (cdesc.status != 0) | cdesc.poisoned | (cdesc.tag >= nt))
        c_last = Signal()
        m.d.comb += c_last.eq(cdesc.request_completed | (cdesc.byte_count <= n_payload))
        c_base = Signal(PTR_WIDTH)
        m.d.comb += c_base.eq(tag_pos[c_tag] + tag_len[c_tag] - cdesc.byte_count - la3 - 12)

        base = Signal(PTR_WIDTH)
        lo = Signal(16)
        hi = Signal(16)
        ok = Signal()
        beat_idx = Signal(range(1 << 12))
        tag_now = Signal(5)
        with m.If(~in_tlp):
            m.d.comb += [
                base.eq(c_base),
                lo.eq(12 + la3),
                hi.eq(12 + la3 + n_valid),
                ok.eq(~c_err & ~tag_free.bit_select(c_tag, 1)),
                beat_idx.eq(0),
                tag_now.eq(c_tag),
            ]
        with m.Else():
            m.d.comb += [base.eq(h_base), lo.eq(h_lo), hi.eq(h_hi), ok.eq(h_ok), beat_idx.eq(h_beat), tag_now.eq(h_tag)]

        with m.If(rc.tvalid):
            with m.If(~in_tlp):
                m.d.sync += [
                    h_base.eq(c_base),
                    h_lo.eq(12 + la3),
                    h_hi.eq(12 + la3 + n_valid),
                    h_tag.eq(c_tag),
                    h_ok.eq(ok),
                    h_beat.eq(1),
                ]
                with m.If(c_err & (cdesc.tag < nt)):
                    for i in range(nt):
                        with m.If(c_tag == i):
                            m.d.comb += [set_err[i].eq(1), set_done[i].eq(1)]
                    m.d.sync += self.rd_errors.eq(self.rd_errors + 1)
            with m.Else():
                m.d.sync += h_beat.eq(h_beat + 1)
            m.d.sync += in_tlp.eq(~rc.tlast)

        h_complete = Signal()
        with m.If(rc.tvalid & ~in_tlp):
            m.d.sync += h_complete.eq(c_last & ~c_err)
        with m.If(rc.tvalid & rc.tlast):
            with m.If(Mux(in_tlp, h_complete, c_last) & ok):
                for i in range(nt):
                    with m.If(tag_now == i):
                        m.d.comb += set_done[i].eq(1)

        # the ring write of this beat: stream bytes s = beat*nb + l go to ring byte base + s
        pos = Signal(PTR_WIDTH)
        m.d.comb += pos.eq(base + beat_idx * nb)
        rot = Signal(range(nb))
        m.d.comb += rot.eq(pos[: (nb - 1).bit_length()])
        word = Signal(word_bits)
        m.d.comb += word.eq(pos[(nb - 1).bit_length() :])
        en = Signal(nb)
        for lane in range(nb):
            s = Signal(16, name=f"rc_s{lane}")
            m.d.comb += s.eq(beat_idx * nb + lane)
            m.d.comb += en[lane].eq((s >= lo) & (s < hi) & ok & rc.tvalid)
        data_rot = rotate_left(m, rc.tdata, rot, nb, 8, "rc_data")
        en_rot = rotate_left(m, en, rot, nb, 1, "rc_en")
        hi_part = Signal(nb)  # rotated lanes >= rot belong to `word`, the others to `word + 1`
        for lane in range(nb):
            m.d.comb += hi_part[lane].eq(lane >= rot)
        word1 = Signal(word_bits)
        m.d.comb += word1.eq(word + 1)
        for b in range(2):
            wp = wports[b]
            with m.If(word[0] == b):
                m.d.comb += [wp.addr.eq(word[1:]), wp.data.eq(data_rot), wp.en.eq(en_rot & hi_part)]
            with m.Else():
                m.d.comb += [wp.addr.eq(word1[1:]), wp.data.eq(data_rot), wp.en.eq(en_rot & ~hi_part)]

        # ---- completion timeout (PCIe Base 2.8): a tag outstanding for too long fails
        for i in range(nt):
            outstanding = ~tag_free[i] & ~tag_done[i]
            with m.If(clr_state[i] | ~outstanding):
                m.d.sync += tag_age[i].eq(0)
            with m.Elif(tick):
                with m.If(tag_age[i] == age_limit):
                    m.d.comb += [set_err[i].eq(1), set_done[i].eq(1)]
                    m.d.sync += self.rd_timeouts.eq(self.rd_timeouts + 1)
                with m.Else():
                    m.d.sync += tag_age[i].eq(tag_age[i] + 1)

        # ---- retire sub-requests in issue order
        o_tag = Signal(5)
        o_last = Signal()
        m.d.comb += [o_tag.eq(order_fifo.r_data[:5]), o_last.eq(order_fifo.r_data[5])]
        err_acc = Signal()
        release = Signal(nt)
        with m.If(order_fifo.r_rdy & tag_done.bit_select(o_tag, 1) & (err_fifo.w_rdy | ~o_last)):
            m.d.comb += order_fifo.r_en.eq(1)
            m.d.sync += avail_ptr.eq(tag_pos[o_tag] + tag_len[o_tag])
            for i in range(nt):
                with m.If(o_tag == i):
                    m.d.comb += release[i].eq(1)
            with m.If(o_last):
                m.d.comb += [err_fifo.w_en.eq(1), err_fifo.w_data.eq(err_acc | tag_err.bit_select(o_tag, 1))]
                m.d.sync += err_acc.eq(0)
            with m.Else():
                m.d.sync += err_acc.eq(err_acc | tag_err.bit_select(o_tag, 1))

        m.d.sync += [
            tag_free.eq((tag_free & ~clr_state) | release),
            tag_done.eq((tag_done & ~clr_state) | set_done),
            tag_err.eq((tag_err & ~clr_state) | set_err),
        ]
        n_out = Signal(range(nt + 1))
        m.d.comb += n_out.eq(sum((~tag_free[i]).as_unsigned() for i in range(nt)))
        m.d.comb += self.rd_outstanding.eq(n_out)

        # ---- drain: ring words to the core, in order
        d_base = Signal(PTR_WIDTH)
        d_len = Signal(DMA_LEN_WIDTH)
        m.d.comb += [d_base.eq(drain_fifo.r_data[:PTR_WIDTH]), d_len.eq(drain_fifo.r_data[PTR_WIDTH:])]
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
        m.d.comb += d_word.eq(d_pos[(nb - 1).bit_length() :])
        for b in range(2):
            m.d.comb += rports[b].addr.eq(d_word[1:])
        # The beat's bytes are complete when the in-order prefix reaches its end (signed: the prefix may
        # still end in the padding before this request).
        margin = Signal(PTR_WIDTH)
        m.d.comb += margin.eq(avail_ptr - d_pos - nb)
        d_ready = Signal()
        m.d.comb += d_ready.eq(
            drain_fifo.r_rdy & Mux(d_last, err_fifo.r_rdy, err_fifo.r_rdy | (margin.as_signed() >= 0))
        )
        m.d.comb += [
            rd.data_valid.eq(d_ready),
            rd.data.eq(Mux(d_word[0], rports[1].data, rports[0].data)),
            rd.data_last.eq(d_last),
            rd.error.eq(d_last & err_fifo.r_data),
        ]
        for lane in range(nb):
            m.d.comb += rd.data_keep[lane].eq(d_rem > lane)
        with m.If(rd.data_valid & rd.data_ready):
            m.d.sync += drain_ptr.eq(d_pos + nb)
            with m.If(d_last):
                m.d.sync += d_beat.eq(0)
                m.d.comb += [drain_fifo.r_en.eq(1), err_fifo.r_en.eq(1)]
            with m.Else():
                m.d.sync += d_beat.eq(d_beat + 1)

        return active | drain_fifo.r_rdy | (n_out != 0)

    # ------------------------------------------------------------------------------------------------
    def _write_side(self, m, rq, nb, dw_per_beat, ring_words, bank_depth, word_bits):
        wr = self.wr
        wports, rports = self._ring(m, "wrring", bank_depth)
        m.submodules.wr_job_fifo = job_fifo = fifo.SyncFIFO(width=64 + DMA_LEN_WIDTH + PTR_WIDTH, depth=4)
        nbits = (nb - 1).bit_length()

        walloc = Signal(PTR_WIDTH)
        wfill = Signal(PTR_WIDTH)  # ring bytes below this hold data
        wfree = Signal(PTR_WIDTH)  # ring bytes below this may be overwritten
        in_data = Signal()
        beats_left = Signal(DMA_LEN_WIDTH)

        req_beats = Signal(DMA_LEN_WIDTH)
        m.d.comb += req_beats.eq((wr.req_len + nb - 1) >> nbits)
        m.d.comb += wr.req_ready.eq(~in_data & job_fifo.w_rdy & (wr.req_len != 0))
        with m.If(wr.req_valid & wr.req_ready):
            m.d.comb += [job_fifo.w_en.eq(1), job_fifo.w_data.eq(Cat(wr.req_addr, wr.req_len, walloc))]
            m.d.sync += [
                walloc.eq(walloc + (req_beats << nbits)),
                in_data.eq(1),
                beats_left.eq(req_beats),
                wfill.eq(walloc),
            ]
        space = Signal()
        m.d.comb += space.eq(((wfill + nb - wfree)[:PTR_WIDTH]) <= self.ring_bytes)
        m.d.comb += wr.data_ready.eq(in_data & space)
        fill_word = Signal(word_bits)
        m.d.comb += fill_word.eq(wfill[nbits:])
        for b in range(2):
            m.d.comb += [wports[b].addr.eq(fill_word[1:]), wports[b].data.eq(wr.data)]
        with m.If(wr.data_valid & wr.data_ready):
            for b in range(2):
                with m.If(fill_word[0] == b):
                    m.d.comb += wports[b].en.eq(wr.data_keep)
            m.d.sync += [wfill.eq(wfill + nb), beats_left.eq(beats_left - 1)]
            with m.If(beats_left == 1):
                m.d.sync += in_data.eq(0)

        # ---- TLP builder
        j_addr = Signal(64)
        j_len = Signal(DMA_LEN_WIDTH)
        j_base = Signal(PTR_WIDTH)
        m.d.comb += Cat(j_addr, j_len, j_base).eq(job_fifo.r_data)
        off = Signal(DMA_LEN_WIDTH)  # bytes of the job already sent
        t_addr = Signal(64)
        m.d.comb += t_addr.eq(j_addr + off)
        rem = Signal(DMA_LEN_WIDTH)
        m.d.comb += rem.eq(j_len - off)
        mps = Signal(13)
        m.d.comb += mps.eq(
            Mux(
                (Const(128, 13) << self.max_payload) > self.max_write_chunk,
                self.max_write_chunk,
                Const(128, 13) << self.max_payload,
            )
        )
        # Split at Max_Payload_Size-aligned boundaries (and so at 4 KiB ones): PCIe Base 2.2.7.
        to_bound = Signal(13)
        m.d.comb += to_bound.eq(mps - (t_addr[:12] & (mps - 1)))
        chunk = Signal(13)
        m.d.comb += chunk.eq(Mux(rem < to_bound, rem, to_bound))
        t_pos = Signal(PTR_WIDTH)
        m.d.comb += t_pos.eq(j_base + off)

        sending = Signal()
        s_beat = Signal(range(1 << 8))
        s_chunk = Signal(13)
        s_addr = Signal(64)
        s_pos = Signal(PTR_WIDTH)
        s_last_tlp = Signal()
        desc, (wr_fbe, wr_lbe), dwords = self._rq_descriptor(m, s_addr, s_chunk, ReqType.MEM_WRITE, 0, "wrreq")
        total_dw = Signal(12)
        m.d.comb += total_dw.eq(4 + dwords)

        data_present = Signal()
        m.d.comb += data_present.eq(((wfill - (t_pos + chunk))[:PTR_WIDTH]).as_signed() >= 0)
        with m.If(~sending & job_fifo.r_rdy & data_present):
            m.d.sync += [
                sending.eq(1),
                s_beat.eq(0),
                s_chunk.eq(chunk),
                s_addr.eq(t_addr),
                s_pos.eq(t_pos),
                s_last_tlp.eq(rem == chunk),
                off.eq(off + chunk),
            ]

        # beat j shows ring bytes starting at s_pos - a3 - 16 + j*nb
        start = Signal(PTR_WIDTH)
        m.d.comb += start.eq(s_pos - s_addr[:2] - 16 + s_beat * nb)
        k = Signal(word_bits)
        m.d.comb += k.eq(start[nbits:])
        k1 = Signal(word_bits)
        m.d.comb += k1.eq(k + 1)
        r = Signal(range(nb))
        m.d.comb += r.eq(start[:nbits])
        for b in range(2):
            m.d.comb += rports[b].addr.eq(Mux(k[0] == b, k[1:], k1[1:]))
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
        with m.If(s_beat == 0):
            m.d.comb += beat_data[:128].eq(desc.as_value())
        m.d.comb += [
            rq["tvalid"].eq(sending),
            rq["tdata"].eq(beat_data),
            rq["tlast"].eq(((s_beat + 1) * dw_per_beat) >= total_dw),
        ]
        eop_ptr = Signal(4)
        m.d.comb += eop_ptr.eq(total_dw - 1)  # index of the last dword within its beat (512 bits: 16 dwords)
        m.d.comb += rq["tuser"].eq(rq_tuser(self.data_width, wr_fbe, wr_lbe, s_beat == 0, rq["tlast"], eop_ptr))
        for d in range(dw_per_beat):
            m.d.comb += rq["tkeep"][d].eq(s_beat * dw_per_beat + d < total_dw)
        with m.If(sending & rq["tready"]):
            m.d.sync += s_beat.eq(s_beat + 1)
            with m.If(rq["tlast"]):
                m.d.sync += sending.eq(0)
                end = s_pos + s_chunk
                with m.If(s_last_tlp):
                    m.d.comb += job_fifo.r_en.eq(1)
                    m.d.comb += wr.done.eq(1)
                    m.d.sync += [off.eq(0), wfree.eq(j_base + ((j_len + nb - 1) >> nbits << nbits))]
                with m.Else():
                    m.d.sync += wfree.eq(Cat(Const(0, nbits), end[nbits:]))
        return in_data | job_fifo.r_rdy | sending
