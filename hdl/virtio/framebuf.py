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


class ByteAppender(Elaboratable):
    """Appends packed chunks of ``in_width`` bits to a byte stream in a row memory, at any byte position.

    ``restart`` sets the write position to ``init_pos`` with the partial row ``init_acc`` (used by RX to
    pre-load the virtio_net_hdr), ``valid`` appends the low ``nbytes`` bytes of ``data``, ``flush`` writes the
    partial last row.  One chunk per cycle, no back-pressure.  Each chunk is rotated to the write position;
    the part that spills into the next row is kept in ``acc`` until that row is written.
    """

    def __init__(self, write_port, row_width: int, in_width: int, reset_pos: int = 0, reset_acc: int = 0) -> None:
        assert row_width >= in_width and row_width % 8 == 0 and in_width % 8 == 0
        self.wp = write_port
        self.row_width = row_width
        self.in_width = in_width
        row_bytes = row_width // 8
        self.restart = Signal()
        self.init_pos = Signal(range(row_bytes * 2 ** len(write_port.addr)))
        self.init_acc = Signal(row_width)
        self.valid = Signal()
        self.data = Signal(in_width)
        self.nbytes = Signal(range(in_width // 8 + 1))
        self.flush = Signal()
        #: Row offset of the bank being written (double buffering); added to every write address.
        self.base_row = Signal(len(write_port.addr))
        self.pos = Signal(len(self.init_pos), init=reset_pos)
        self.reset_acc = reset_acc

    def elaborate(self, platform) -> Module:
        m = Module()
        row_bytes = self.row_width // 8
        shift_bits = (row_bytes - 1).bit_length()
        acc = Signal(self.row_width, init=self.reset_acc)
        s = self.pos[0:shift_bits]
        row = self.pos[shift_bits:]
        masked = Cat(*(Mux(i < self.nbytes, self.data.word_select(i, 8), 0) for i in range(self.in_width // 8)))
        rotated = Signal(2 * self.row_width)
        m.d.comb += rotated.eq(Cat(masked, Const(0, 2 * self.row_width - self.in_width)) << Cat(Const(0, 3), s))
        low = acc | rotated[0 : self.row_width]
        high = rotated[self.row_width :]
        m.d.comb += self.wp.addr.eq(self.base_row + row)
        with m.If(self.valid):
            m.d.comb += [self.wp.data.eq(low), self.wp.en.eq(1)]
        with m.Elif(self.flush):
            m.d.comb += [self.wp.data.eq(acc), self.wp.en.eq(1)]
        # A restart may coincide with the flush of the previous stream (it only moves the position).
        with m.If(self.restart):
            m.d.sync += [self.pos.eq(self.init_pos), acc.eq(self.init_acc)]
        with m.Elif(self.valid):
            m.d.sync += [
                self.pos.eq(self.pos + self.nbytes),
                acc.eq(Mux(s + self.nbytes >= row_bytes, high, low)),
            ]
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
        both = Signal(2 * self.row_width)
        m.d.comb += [
            both.eq(Cat(cur, self.rp.data) >> Cat(Const(0, 3), shift)),
            self.data.eq(both[0 : self.row_width]),
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
                    m.d.sync += [next_row.eq(first + 1), shift.eq(self.pos[0:shift_bits]), left.eq(self.length)]
                    m.next = "PRIME"
            with m.State("PRIME"):
                m.d.comb += [self.busy.eq(1), self.rp.en.eq(1)]
                m.d.sync += [cur.eq(self.rp.data), next_row.eq(next_row + 1)]
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
    banks hold frames for the engine the next one is back-pressured.  ``full``/``frame_len`` describe the
    oldest stored frame; ``consume`` frees its bank.
    """

    def __init__(self, row_width: int, in_width: int = 64) -> None:
        self.row_width = row_width
        self.in_width = in_width
        self.rows = buffer_rows(row_width // 8)
        self.mem = memory.Memory(shape=unsigned(row_width), depth=BANKS * self.rows, init=[])
        self.header = spec.NET_HDR.to_int(num_buffers=1, gso_type=spec.NET_HDR_GSO_NONE)
        self.appender = ByteAppender(self.mem.write_port(), row_width, in_width, HDR_BYTES, self.header)
        self.extractor = ByteExtractor(self.mem.read_port(), row_width)
        self.accept = Signal()
        self.full = Signal()
        self.frame_len = Signal(range(device_map.MAX_FRAME_LEN + 1))
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
        wbank = Signal(range(BANKS))
        rbank = Signal(range(BANKS))
        in_frame = Signal()
        dropping = Signal()
        stored = Signal()  # frame complete; its last partial row is flushed in the next cycle
        in_bytes = self.in_width // 8
        length = Signal(range(device_map.MAX_FRAME_LEN + in_bytes + 1))
        nbytes = Signal(range(in_bytes + 1))
        m.d.comb += [
            nbytes.eq(sum(self.rx_keep[i] for i in range(in_bytes))),
            app.init_pos.eq(HDR_BYTES),
            app.init_acc.eq(self.header),
            app.data.eq(self.rx_data),
            app.nbytes.eq(nbytes),
            app.base_row.eq(wbank * self.rows),
            self.extractor.base_row.eq(rbank * self.rows),
            self.rx_ready.eq(~stored & ~full.bit_select(wbank, 1)),
            self.full.eq(full.bit_select(rbank, 1)),
            self.frame_len.eq(Array(lengths)[rbank]),
        ]
        beat = self.rx_valid & self.rx_ready
        drop = Mux(in_frame, dropping, ~self.accept)
        new_len = length + nbytes
        too_big = new_len > device_map.MAX_FRAME_LEN
        set_full = Signal(BANKS)
        clear_full = Signal(BANKS)
        with m.If(beat):
            m.d.comb += app.valid.eq(~drop & ~too_big)
            with m.If(self.rx_last):
                m.d.sync += [in_frame.eq(0), dropping.eq(0), length.eq(0)]
                with m.If(drop | too_big | self.rx_user | (new_len == 0)):
                    m.d.comb += app.restart.eq(1)
                    m.d.sync += self.dropped.eq(self.dropped + 1)
                with m.Else():
                    m.d.sync += [stored.eq(1), Array(lengths)[wbank].eq(new_len)]
            with m.Else():
                m.d.sync += [in_frame.eq(1), dropping.eq(drop | too_big), length.eq(new_len)]
        with m.If(stored):
            # Flush the last partial row into this bank, then the next frame goes to the other bank.
            m.d.comb += [app.flush.eq(1), app.restart.eq(1), set_full.eq(1 << wbank)]
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
                wbank.eq(0),
                rbank.eq(0),
                dropping.eq(in_frame | (beat & ~self.rx_last)),
            ]
        return m
