"""Store-and-forward frame buffers between the packed-ring engine and the Ethernet streams.

Why store and forward: a virtio buffer chain may scatter one frame over any number of descriptors of any
length (Linux puts the 12-byte virtio_net_hdr in its own descriptor or in front of the frame, and page
fragments after it), so the byte offset of each descriptor's data inside the frame is arbitrary.  Each buffer
is a memory of ``row_width``-bit rows holding the byte stream "virtio_net_hdr + frame"; a
:class:`ByteAppender` writes a packed stream at any byte position, a :class:`ByteExtractor` reads a packed
stream back from any byte position.  Those two shifters are the only realignment the core needs; DMA data on
the ports is always packed (``hdl/signatures.py``).

The transmit side keeps its frames in a ring instead (``hdl/virtio/txpath.py``, many chains in flight); the
receive side stores a frame here until the RX data mover has a chain for it, so looping ``eth_tx`` to ``eth_rx``
never makes one queue wait for the other.
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Elaboratable, Module, Mux, Signal, unsigned
from amaranth.lib import memory

from virtio_fpga import device_map, spec

#: Bytes a frame buffer holds: virtio_net_hdr (5.1.6) + the largest frame.
HDR_BYTES = spec.NET_HDR.size
BUFFER_BYTES = HDR_BYTES + device_map.MAX_FRAME_LEN


def buffer_rows(row_bytes: int) -> int:
    """Rows of one bank: the data, plus one row the extractor reads ahead and one the appender flushes."""
    return (BUFFER_BYTES + row_bytes - 1) // row_bytes + 2


#: Banks per direction: while the engine moves one frame by DMA, the other one is on the wire.
BANKS = 2


def low_bytes_mask(nbytes, width_bytes: int):
    """A ``width_bytes``-bit keep mask with the low ``nbytes`` bits set (``nbytes`` may equal the width)."""
    return Cat(*(nbytes > i for i in range(width_bytes)))


def packed_keep_bytes(keep):
    """Bytes in a packed beat, whose ``keep`` has its low n bits set (``hdl/signatures.py``).

    Why not a popcount: an adder tree over 32 or 64 bits is several LUT levels deep, while a packed ``keep``
    has one 1 -> 0 edge, whose position is the count; each bit of the count is one wide OR of edges.
    """
    w = len(keep)
    # exactly[n - 1]: the beat has exactly n bytes
    exactly = [keep[n - 1] & ~keep[n] for n in range(1, w)] + [keep[w - 1]]
    return Cat(*(Cat(*(exactly[n - 1] for n in range(1, w + 1) if n >> b & 1)).any() for b in range(w.bit_length())))


def _rotate(value, amount, unit: int, towards_high: bool):
    """``value`` rotated by ``amount`` units of ``unit`` bits (a variable), one 2:1 stage per bit of ``amount``."""
    width = len(value)
    out = value
    for k in range(len(amount)):
        step = (unit << k) % width
        if step == 0:
            continue
        cut = width - step if towards_high else step
        out = Mux(amount[k], Cat(out[cut:], out[:cut]), out)
    return out


def rotate_left_bytes(value, amount, unit: int = 8):
    """``value`` rotated towards its high end by ``amount`` bytes (a variable; ``unit`` bits each).

    Why a rotation and not ``Cat(value, 0) << amount``: a shift into a field twice as wide has twice as many
    outputs, each a multiplexer over up to a row's bytes; the rotation has one output per bit of the row, and
    which of its bytes belong to this row and which wrapped into the next one is a per-lane comparison with
    ``amount`` (:func:`lanes_from`).
    """
    return _rotate(value, amount, unit, towards_high=True)


def rotate_right_bytes(value, amount, unit: int = 8):
    """``value`` rotated towards its low end by ``amount`` bytes (a variable); see :func:`rotate_left_bytes`."""
    return _rotate(value, amount, unit, towards_high=False)


def lanes_from(amount, nbytes: int):
    """A mask of ``nbytes`` byte lanes with lane ``i`` set for ``i >= amount``."""
    return Cat(*(amount <= i for i in range(nbytes)))


def expand_lanes(mask):
    """A byte-lane mask widened to one bit per data bit."""
    return Cat(*(bit.replicate(8) for bit in mask))


class ByteAppender(Elaboratable):
    """Appends packed chunks of ``in_width`` bits to a byte stream in a row memory, at any byte position.

    ``restart`` sets the write position to ``init_pos`` with the partial row ``restart_acc`` (RX uses it to
    pre-load the virtio_net_hdr), ``valid`` appends the low ``nbytes`` bytes of ``data``, ``flush`` writes the
    partial last row.  One command per cycle, no back-pressure.  Each chunk is rotated to the write position;
    the part that wraps into the next row is kept in ``acc`` until that row is written.

    Why three stages: a rotation by up to a row is three to five LUT levels by itself (a 32- or 64-way byte mux),
    masking the chunk to ``nbytes`` one more, and merging into the partial row two more; the command inputs
    are computed by their drivers in the same cycle from streams and counters.  So the command is registered
    (with its byte mask), then rotated, data and mask, into a register, then merged and written.  A command given
    in cycle T is written in cycle ``T + LATENCY``: a reader may rely on the row from cycle ``T + LATENCY + 1``
    on, so whoever tells a reader that a stream is complete delays that news by ``LATENCY`` cycles.
    """

    #: Cycles from a command to its write on the memory port (0 would be the same cycle).
    LATENCY = 2

    def __init__(
        self,
        write_port,
        row_width: int,
        in_width: int,
        reset_pos: int = 0,
        restart_acc: int = 0,
        *,
        keep_mask: bool = False,
    ) -> None:
        assert row_width >= in_width and row_width % 8 == 0 and in_width % 8 == 0
        self.wp = write_port
        self.row_width = row_width
        self.in_width = in_width
        row_bytes = row_width // 8
        self.restart = Signal()
        self.init_pos = Signal(range(row_bytes * 2 ** len(write_port.addr)))
        self.valid = Signal()
        self.data = Signal(in_width)
        self.nbytes = Signal(range(in_width // 8 + 1))
        #: With ``keep_mask``: the chunk's packed byte mask (the low ``nbytes`` bits set), which the driver
        #: has anyway (``EthernetStream.keep``) and which saves decoding ``nbytes`` into it.
        self.keep = Signal(in_width // 8)
        self.keep_mask = keep_mask
        self.flush = Signal()
        #: Row offset of the bank being written (double buffering); added to every write address.
        self.base_row = Signal(len(write_port.addr))
        #: Write position after the commands in stage 1 (one cycle behind the inputs).
        self.pos = Signal(len(self.init_pos), init=reset_pos)
        self.restart_acc = restart_acc

    def elaborate(self, platform) -> Module:
        m = Module()
        row_bytes = self.row_width // 8
        in_bytes = self.in_width // 8
        shift_bits = (row_bytes - 1).bit_length()

        # Stage 0: the command as given, registered (no enables: nothing of it is held), the byte count also
        # as a mask.
        valid0 = Signal()
        flush0 = Signal()
        restart0 = Signal()
        data0 = Signal(self.in_width)
        nbytes0 = Signal.like(self.nbytes)
        mask0 = Signal(in_bytes)
        init_pos0 = Signal.like(self.init_pos)
        base_row0 = Signal.like(self.base_row)
        m.d.sync += [
            valid0.eq(self.valid),
            flush0.eq(self.flush),
            restart0.eq(self.restart),
            data0.eq(self.data),
            nbytes0.eq(self.nbytes),
            mask0.eq(self.keep if self.keep_mask else low_bytes_mask(self.nbytes, in_bytes)),
            init_pos0.eq(self.init_pos),
            base_row0.eq(self.base_row),
        ]

        # Stage 1: mask and rotate to the write position; the position moves on.
        valid1 = Signal()
        flush1 = Signal()
        restart1 = Signal()
        # The chunk rotated by the write position: lanes at or above the position belong to this row, lanes
        # below it wrapped around and belong to the next one (a chunk is at most a row, so nothing overlaps).
        # The chunk's byte mask is rotated with it (a row's lanes, not its bits), so the data itself is never
        # masked: the lanes of the chunk in this row and in the next are each one AND of two masks.
        rotated1 = Signal(self.row_width)
        this_row1 = Signal(row_bytes)  # lanes of ``rotated1`` that are chunk bytes in the row being written
        next_row1 = Signal(row_bytes)  # lanes of ``rotated1`` that are chunk bytes of the next row
        spills1 = Signal()  # the chunk reaches the end of its row: the row is complete after it
        addr1 = Signal.like(self.wp.addr)
        s = self.pos[0:shift_bits]
        lanes = rotate_left_bytes(Cat(mask0, Const(0, row_bytes - in_bytes)), s, unit=1)
        upper = lanes_from(s, row_bytes)
        m.d.sync += [
            valid1.eq(valid0),
            flush1.eq(flush0),
            restart1.eq(restart0),
            rotated1.eq(rotate_left_bytes(Cat(data0, Const(0, self.row_width - self.in_width)), s)),
            this_row1.eq(lanes & upper),
            next_row1.eq(lanes & ~upper),
            spills1.eq(s + nbytes0 >= row_bytes),
            addr1.eq(base_row0 + self.pos[shift_bits:]),
        ]
        with m.If(restart0):
            m.d.sync += self.pos.eq(init_pos0)
        with m.Elif(valid0):
            m.d.sync += self.pos.eq(self.pos + nbytes0)

        # Stage 2: merge into the partial row and write it.
        acc = Signal(self.row_width, init=self.restart_acc)
        low = acc | (rotated1 & expand_lanes(this_row1))
        high = rotated1 & expand_lanes(next_row1)
        m.d.comb += self.wp.addr.eq(addr1)
        with m.If(valid1):
            m.d.comb += [self.wp.data.eq(low), self.wp.en.eq(1)]
        with m.Elif(flush1):
            m.d.comb += [self.wp.data.eq(acc), self.wp.en.eq(1)]
        # A restart may coincide with the flush of the previous stream (it only moves the position).
        with m.If(restart1):
            m.d.sync += acc.eq(self.restart_acc)
        with m.Elif(valid1):
            m.d.sync += acc.eq(Mux(spills1, high, low))
        return m


class ByteExtractor(Elaboratable):
    """Reads ``length`` bytes from byte position ``pos`` of a row memory as a packed valid/ready stream.

    Two consecutive rows are shifted down by ``pos % row_bytes``; the memory has a synchronous read port whose
    ``en`` holds its output while the consumer stalls, so it maps to block RAM.  ``start`` is accepted only
    while ``busy`` is low; ``abort`` drops the stream (device reset).
    """

    def __init__(self, read_port, row_width: int) -> None:
        self.rp = read_port
        self.row_width = row_width
        row_bytes = row_width // 8
        self.start = Signal()
        self.abort = Signal()
        self.pos = Signal(range(BUFFER_BYTES + row_bytes + 1))
        self.length = Signal(range(BUFFER_BYTES + row_bytes + 1))
        #: Row offset of the bank to read (double buffering), sampled with ``start``.
        self.base_row = Signal(len(read_port.addr))
        self.busy = Signal()
        self.valid = Signal()
        self.ready = Signal()
        self.data = Signal(row_width)
        self.keep = Signal(row_bytes)
        self.last = Signal()

    def elaborate(self, platform) -> Module:
        m = Module()
        row_bytes = self.row_width // 8
        shift_bits = (row_bytes - 1).bit_length()
        cur = Signal(self.row_width)
        shift = Signal(shift_bits)
        next_row = Signal(len(self.rp.addr) + 1)
        left = Signal(len(self.length))
        # The output's lane i is byte i + shift of the row pair (cur, next): lanes at or above ``shift`` of
        # ``cur`` and lanes below it of ``next``, merged lane by lane, then rotated down by ``shift`` (one
        # row-wide rotation instead of a shift of both rows).
        merged = Signal(self.row_width)
        # lanes_from(shift) as a register, set in PRIME from the registered ``shift`` (the output is used from RUN
        # on), so the merge is one LUT level and the comparison is on no path from the extractor's drivers
        cur_lanes = Signal(row_bytes, init=(1 << row_bytes) - 1)
        from_cur = expand_lanes(cur_lanes)
        m.d.comb += [
            merged.eq((cur & from_cur) | (self.rp.data & ~from_cur)),
            self.data.eq(rotate_right_bytes(merged, shift)),
            self.last.eq(left <= row_bytes),
            self.keep.eq(low_bytes_mask(left, row_bytes)),
            self.rp.addr.eq(next_row),
            self.rp.en.eq(0),  # a read port's en resets to 1: hold the output unless a row is consumed
        ]
        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start & ~self.abort):
                    first = self.base_row + self.pos[shift_bits:]
                    m.d.comb += [self.rp.addr.eq(first), self.rp.en.eq(1)]
                    m.d.sync += [
                        next_row.eq(first + 1),
                        shift.eq(self.pos[0:shift_bits]),
                        left.eq(self.length),
                    ]
                    m.next = "PRIME"
            with m.State("PRIME"):
                m.d.comb += [self.busy.eq(1), self.rp.en.eq(1)]
                m.d.sync += [
                    cur.eq(self.rp.data),
                    next_row.eq(next_row + 1),
                    cur_lanes.eq(lanes_from(shift, row_bytes)),
                ]
                m.next = "RUN"
                with m.If(self.abort):
                    m.next = "IDLE"
            with m.State("RUN"):
                m.d.comb += [self.busy.eq(1), self.valid.eq(1)]
                with m.If(self.abort):
                    m.next = "IDLE"
                with m.Elif(self.ready):
                    m.d.comb += self.rp.en.eq(1)
                    m.d.sync += [cur.eq(self.rp.data), next_row.eq(next_row + 1), left.eq(left - row_bytes)]
                    with m.If(self.last):
                        m.next = "IDLE"
        return m


class RxFrameBuffer(Elaboratable):
    """RX: ``eth_rx`` frames are stored behind a fresh virtio_net_hdr (5.1.6.4: num_buffers = 1, no offloads),
    then the engine reads the header + frame back at DMA width with the extractor.  Two banks: a frame can
    arrive while the engine writes the previous one to the ring.

    A frame is dropped (never reaches the ring) if ``accept`` is low when it starts (queue not running),
    if it is marked bad (``user`` on its last beat), empty, or longer than ``MAX_FRAME_LEN``.  While both
    banks hold frames for the engine the next one is back-pressured.  ``full``/``frame_len``/``frame_bytes``
    describe the oldest stored frame; ``consume`` frees its bank.

    Each beat is registered as it arrives (``rx_ready`` comes from registers only) together with its byte
    count, so the frame-length arithmetic and the drop decisions of the next cycle start from flip-flops.
    """

    def __init__(self, row_width: int, in_width: int = 64) -> None:
        self.row_width = row_width
        self.in_width = in_width
        self.rows = buffer_rows(row_width // 8)
        self.mem = memory.Memory(shape=unsigned(row_width), depth=BANKS * self.rows, init=[])
        self.header = spec.NET_HDR.to_int(num_buffers=1, gso_type=spec.NET_HDR_GSO_NONE)
        self.appender = ByteAppender(self.mem.write_port(), row_width, in_width, HDR_BYTES, self.header, keep_mask=True)
        self.extractor = ByteExtractor(self.mem.read_port(), row_width)
        self.accept = Signal()
        self.full = Signal()
        self.frame_len = Signal(range(device_map.MAX_FRAME_LEN + 1))
        #: ``frame_len`` + the virtio_net_hdr: the bytes the engine writes into the ring for this frame.
        self.frame_bytes = Signal(range(BUFFER_BYTES + 1))
        self.consume = Signal()
        self.abort = Signal()
        self.dropped = Signal(16)  # frames dropped, for statistics and tests
        self.rx_valid = Signal()
        self.rx_ready = Signal()
        self.rx_data = Signal(in_width)
        self.rx_keep = Signal(in_width // 8)
        self.rx_last = Signal()
        self.rx_user = Signal()

    def elaborate(self, platform) -> Module:
        m = Module()
        m.submodules.mem = self.mem
        m.submodules.appender = self.appender
        m.submodules.extractor = self.extractor
        app = self.appender
        full = Signal(BANKS)
        lengths = [Signal(len(self.frame_len), name=f"len{i}") for i in range(BANKS)]
        totals = [Signal(len(self.frame_bytes), name=f"total{i}") for i in range(BANKS)]
        wbank = Signal(range(BANKS))
        rbank = Signal(range(BANKS))
        in_frame = Signal()
        dropping = Signal()
        stored = Signal()  # frame complete; its last partial row is flushed in the next cycle
        in_bytes = self.in_width // 8
        length = Signal(range(device_map.MAX_FRAME_LEN + in_bytes + 1))
        # The input register: one beat and its byte count.
        in_valid = Signal()
        in_data = Signal(self.in_width)
        in_keep = Signal(in_bytes)
        in_last = Signal()
        in_user = Signal()
        nbytes = Signal(range(in_bytes + 1))
        beat = Signal()  # the registered beat is taken this cycle
        m.d.comb += [
            beat.eq(in_valid & ~stored & ~full.bit_select(wbank, 1)),
            self.rx_ready.eq(~in_valid | (~stored & ~full.bit_select(wbank, 1))),
        ]
        with m.If(self.rx_ready):
            # ``in_valid`` is set under a condition, not copied: an undriven port (X in an RTL simulation) then
            # leaves it clear instead of locking ``rx_ready`` at X.
            m.d.sync += in_valid.eq(0)
            with m.If(self.rx_valid):
                m.d.sync += in_valid.eq(1)
            m.d.sync += [
                in_data.eq(self.rx_data),
                in_keep.eq(self.rx_keep),
                in_last.eq(self.rx_last),
                in_user.eq(self.rx_user),
                nbytes.eq(packed_keep_bytes(self.rx_keep)),
            ]
        m.d.comb += [
            app.init_pos.eq(HDR_BYTES),
            app.data.eq(in_data),
            app.nbytes.eq(nbytes),
            app.keep.eq(in_keep),
            app.base_row.eq(wbank * self.rows),
            self.extractor.base_row.eq(rbank * self.rows),
            self.full.eq(full.bit_select(rbank, 1)),
            self.frame_len.eq(Array(lengths)[rbank]),
            self.frame_bytes.eq(Array(totals)[rbank]),
        ]
        drop = Mux(in_frame, dropping, ~self.accept)
        new_len = length + nbytes
        too_big = new_len > device_map.MAX_FRAME_LEN
        set_full = Signal(BANKS)
        clear_full = Signal(BANKS)
        with m.If(beat):
            m.d.comb += app.valid.eq(~drop & ~too_big)
            with m.If(in_last):
                m.d.sync += [in_frame.eq(0), dropping.eq(0), length.eq(0)]
                with m.If(drop | too_big | in_user | (new_len == 0)):
                    m.d.comb += app.restart.eq(1)
                    m.d.sync += self.dropped.eq(self.dropped + 1)
                with m.Else():
                    m.d.sync += [
                        stored.eq(1),
                        Array(lengths)[wbank].eq(new_len),
                        Array(totals)[wbank].eq(new_len + HDR_BYTES),
                    ]
            with m.Else():
                m.d.sync += [in_frame.eq(1), dropping.eq(drop | too_big), length.eq(new_len)]
        # The bank is handed to the reader once its last row is in the memory (the appender writes late).
        published = [Signal(name=f"published{i}") for i in range(ByteAppender.LATENCY)]
        pub_bank = [Signal(range(BANKS), name=f"pub_bank{i}") for i in range(ByteAppender.LATENCY)]
        m.d.sync += [published[0].eq(stored), pub_bank[0].eq(wbank)]
        for i in range(1, ByteAppender.LATENCY):
            m.d.sync += [published[i].eq(published[i - 1]), pub_bank[i].eq(pub_bank[i - 1])]
        with m.If(published[-1]):
            m.d.comb += set_full.eq(1 << pub_bank[-1])
        with m.If(stored):
            # Flush the last partial row into this bank, then the next frame goes to the other bank.
            m.d.comb += [app.flush.eq(1), app.restart.eq(1)]
            m.d.sync += [stored.eq(0), wbank.eq(wbank + 1)]
        with m.If(self.consume):
            m.d.comb += clear_full.eq(1 << rbank)
            m.d.sync += rbank.eq(rbank + 1)
        m.d.sync += full.eq((full & ~clear_full) | set_full)
        with m.If(self.abort):
            # A frame arriving during reset is dropped up to its last beat.
            m.d.comb += app.restart.eq(1)
            m.d.sync += [
                full.eq(0),
                stored.eq(0),
                *(p.eq(0) for p in published),
                wbank.eq(0),
                rbank.eq(0),
                dropping.eq(in_frame | (beat & ~in_last)),
            ]
        return m
