"""Payloads and port signatures shared by the stages of the pipelined ring engine.

Every stage of ``hdl/virtio/engine.py`` is a ``wiring.Component`` whose ports are ``amaranth.lib.stream``
valid/ready streams carrying the ``lib.data`` layouts below (stream rules: once ``valid`` rises the payload
holds until ``ready``; ``valid`` never depends on ``ready``).  DMA access goes through *client* ports, one per
stage that needs it, which :mod:`hdl.virtio.dmamux` merges onto the core's single ``DmaReadPort`` and
``DmaWritePort``.
"""

from __future__ import annotations

from amaranth.hdl import Mux, Shape
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hdl import layouts
from hdl.signatures import DMA_LEN_WIDTH

#: A DMA read or write request of a client: bus address and byte length (1 .. 2**16-1).
DMA_REQ = data.StructLayout({"addr": 64, "len": DMA_LEN_WIDTH})


def read_beat(data_width: int) -> data.StructLayout:
    """One beat of read data returned to a client (packed, see ``hdl/signatures.py``)."""
    return data.StructLayout({"data": data_width, "keep": data_width // 8, "last": 1, "error": 1})


def write_beat(data_width: int) -> data.StructLayout:
    """One beat of write data from a client (packed)."""
    return data.StructLayout({"data": data_width, "keep": data_width // 8, "last": 1})


class ReadClient(wiring.Signature):
    """A stage's DMA read port: ``req`` out, ``resp`` (the request's bytes, in request order) in.

    Requests of one client complete in the order they were issued.  A client must size its requests so that it
    can always take the data when it arrives (reserve the space at issue time): a client that stalled its
    ``resp`` would hold up the other clients' data behind it.
    """

    def __init__(self, data_width: int) -> None:
        super().__init__({"req": Out(stream.Signature(DMA_REQ)), "resp": In(stream.Signature(read_beat(data_width)))})


class WriteClient(wiring.Signature):
    """A stage's DMA write port: ``req``, then the request's beats on ``data``; ``done`` pulses per request
    (in request order) once its last TLP has been handed to the PCIe core, so a later read cannot pass it."""

    def __init__(self, data_width: int) -> None:
        super().__init__(
            {
                "req": Out(stream.Signature(DMA_REQ)),
                "data": Out(stream.Signature(write_beat(data_width))),
                "done": In(1),
            }
        )


#: A descriptor handed from the fetcher to the chain parser.  ``error``: the read that fetched it failed (the
#: descriptor itself is meaningless); the parser turns that into DEVICE_NEEDS_RESET.
DESC_ENTRY = data.StructLayout({"desc": layouts.PACKED_DESC, "error": 1})

#: One buffer of a chain, from the chain parser to a data mover.  ``pos`` is the byte offset of the buffer's
#: data in the chain's byte stream (virtio_net_hdr + frame); ``last`` ends the chain, whose buffer id is the
#: last descriptor's (2.8.6) and which used ``count`` ring slots.  ``error``: the chain is malformed here;
#: nothing of it may be moved and the engine stops once everything before it is complete.
SEGMENT = data.StructLayout(
    {
        "addr": 64,
        "len": 32,
        "pos": 16,
        "last": 1,
        "id": 16,
        "count": 16,
        "error": 1,
    }
)

#: A completed chain, from a data mover to the used-element writer: buffer id, bytes written (2.8.4: 0 for
#: device-readable chains), ring slots it used.  ``error`` stops the queue here instead (DEVICE_NEEDS_RESET).
USED = data.StructLayout({"id": 16, "len": 32, "count": 16, "error": 1})

#: A ring position: index and wrap counter (2.8.1).
RING_POS = data.StructLayout({"idx": 16, "wrap": 1})


def advance(idx, wrap, count, size) -> tuple:
    """(idx, wrap) moved forward by ``count`` positions of a ring of ``size`` (any size 1..2**15, 2.8.10.1)."""
    total = idx + count
    over = total >= size
    return Mux(over, total - size, total)[0:16], Mux(over, ~wrap, wrap)


def ring_distance(from_idx, from_wrap, to_idx, to_wrap, size):
    """Positions from (from_idx, from_wrap) forward to (to_idx, to_wrap), modulo twice the ring size."""
    lin_from = from_idx + Mux(from_wrap, 0, size)
    lin_to = to_idx + Mux(to_wrap, 0, size)
    diff = (lin_to - lin_from).as_signed()
    return Mux(diff < 0, diff + (size << 1), diff)


assert Shape.cast(DESC_ENTRY).width == 129
