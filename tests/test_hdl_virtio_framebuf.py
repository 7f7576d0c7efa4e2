"""The RX frame buffer alone: byte realignment at any offset and RX header insertion (the TX frame ring and its
header stripping are tested with the TX stages, tests/test_hdl_virtio_stages_tx.py)."""

from __future__ import annotations

import random

import pytest
from amaranth.sim import Simulator

from hdl.virtio.framebuf import HDR_BYTES, RxFrameBuffer
from virtio_fpga import device_map, spec


def split(data: bytes, rng: random.Random, max_piece: int) -> list[bytes]:
    pieces = []
    i = 0
    while i < len(data):
        n = rng.randint(1, max_piece)
        pieces.append(data[i : i + n])
        i += n
    return pieces


@pytest.mark.parametrize("row_width", [128, 256])
def test_rx_buffer_header_and_segments(row_width: int) -> None:
    """A received frame reads back behind a fresh virtio_net_hdr, from any byte offset and in any pieces."""
    rng = random.Random(row_width + 1)
    dut = RxFrameBuffer(row_width)
    row_bytes = row_width // 8
    header = spec.NET_HDR.pack(num_buffers=1)

    async def send_frame(ctx, frame: bytes, user: int = 0) -> None:
        for i in range(0, len(frame), 8):
            chunk = frame[i : i + 8]
            ctx.set(dut.rx_valid, 1)
            ctx.set(dut.rx_data, int.from_bytes(chunk.ljust(8, b"\0"), "little"))
            ctx.set(dut.rx_keep, (1 << len(chunk)) - 1)
            ctx.set(dut.rx_last, i + 8 >= len(frame))
            ctx.set(dut.rx_user, user and i + 8 >= len(frame))
            await ctx.tick().until(dut.rx_ready)
        ctx.set(dut.rx_valid, 0)

    async def read(ctx, pos: int, length: int) -> bytes:
        ext = dut.extractor
        ctx.set(ext.start, 1)
        ctx.set(ext.pos, pos)
        ctx.set(ext.length, length)
        await ctx.tick()
        ctx.set(ext.start, 0)
        out = b""
        while True:
            ready = rng.random() < 0.6
            ctx.set(ext.ready, ready)
            _, _, valid, data, keep, last = await ctx.tick().sample(ext.valid, ext.data, ext.keep, ext.last)
            if valid and ready:
                n = bin(keep).count("1")
                out += data.to_bytes(row_bytes, "little")[:n]
                if last:
                    return out

    async def tb(ctx):
        ctx.set(dut.accept, 1)
        for n in (1, 14, 64, 100, 1500):
            frame = bytes(rng.randrange(256) for _ in range(n))
            await send_frame(ctx, frame)
            await ctx.tick().until(dut.full)
            assert ctx.get(dut.frame_len) == n
            stream = header + frame
            assert await read(ctx, 0, len(stream)) == stream
            # The engine writes it in descriptor-sized pieces starting anywhere.
            pos = 0
            for piece in split(stream, rng, 2 * row_bytes + 5):
                assert await read(ctx, pos, len(piece)) == piece
                pos += len(piece)
            ctx.set(dut.consume, 1)
            await ctx.tick()
            ctx.set(dut.consume, 0)
        # Two frames wait at once (one per bank); the third is held back until a bank is consumed (its one beat
        # waits in the input register, and nothing more is taken).
        first, second, third = bytes(range(40)), bytes(range(100, 190)), bytes(range(7))
        await send_frame(ctx, first)
        await send_frame(ctx, second)
        await send_frame(ctx, third)
        for _ in range(5):
            await ctx.tick()
            assert not ctx.get(dut.rx_ready)
        for frame in (first, second, third):
            await ctx.tick().until(dut.full)
            assert ctx.get(dut.frame_len) == len(frame)
            assert ctx.get(dut.frame_bytes) == HDR_BYTES + len(frame)
            assert await read(ctx, 0, HDR_BYTES + len(frame)) == header + frame
            ctx.set(dut.consume, 1)
            await ctx.tick()
            ctx.set(dut.consume, 0)
        # Bad, oversized and unaccepted frames are dropped; the next good one still arrives intact.
        dropped = ctx.get(dut.dropped)
        await send_frame(ctx, bytes(60), user=1)
        await send_frame(ctx, bytes(device_map.MAX_FRAME_LEN + 1))
        ctx.set(dut.accept, 0)
        await send_frame(ctx, bytes(60))
        ctx.set(dut.accept, 1)
        for _ in range(3):
            await ctx.tick()
        assert not ctx.get(dut.full)
        assert ctx.get(dut.dropped) == dropped + 3
        frame = bytes(range(77))
        await send_frame(ctx, frame)
        await ctx.tick().until(dut.full)
        assert await read(ctx, 0, HDR_BYTES + 77) == header + frame

    sim = Simulator(dut)
    sim.add_clock(4e-9)
    sim.add_testbench(tb)
    sim.run()
