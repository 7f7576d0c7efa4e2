"""The internal interfaces of the endpoint, as Amaranth ``wiring`` signatures.

The endpoint has two halves that meet only here:

* the PCIe half (``hdl/pcie/``): Xilinx UltraScale+ CQ/CC/RQ/RC streams, the BAR completer, the DMA engine,
  MSI-X table/PBA and the configuration-extend responder for the virtio capabilities;
* the virtio half (``hdl/virtio/``): common configuration, notify, ISR, device config, the packed-ring engine
  and the virtio-net data path.

All signatures are written from the point of view of the *virtio core* (the consumer of the PCIe half's
services); the PCIe half uses ``.flip()``.

Conventions
-----------
* Every stream is valid/ready: a transfer happens on a cycle where both are high; valid, once raised, stays
  high with stable payload until ready.
* DMA data is *packed*: byte 0 of the requested region is at byte lane 0 of the first beat; every beat but the
  last is full; ``keep`` has one bit per byte.  The DMA engine does all realignment to and from the address.
* Lengths are in bytes, addresses are 64-bit bus addresses (IOVAs).
"""

from __future__ import annotations

from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

#: Byte address width inside BAR 0 (64 KiB, see virtio_fpga.device_map.BAR_SIZE).
REG_ADDR_WIDTH = 16
#: Largest single DMA request the core may issue, in bytes (the DMA engine splits it at MRRS/MPS/4 KiB).
DMA_LEN_WIDTH = 16


class RegisterBus(wiring.Signature):
    """BAR register access from the completer to a register block (core's view: ``In`` = from the host).

    One access at a time.  The completer raises ``valid`` with ``addr`` (byte address of the access, within
    BAR 0), ``write``, ``size`` (log2 of bytes: 0..3 for 1, 2, 4, 8), and for writes ``wdata`` holding the
    value in its low bytes.  The block answers by raising ``done`` for exactly one cycle, at the earliest in
    the cycle after ``valid`` rose, with ``rdata`` (value in the low bytes) for reads.  ``valid`` stays high
    until ``done``.  Accesses to unimplemented addresses complete with ``rdata`` = 0 (writes ignored).
    """

    def __init__(self) -> None:
        super().__init__(
            {
                "valid": In(1),
                "write": In(1),
                "addr": In(REG_ADDR_WIDTH),
                "size": In(2),
                "wdata": In(64),
                "rdata": Out(64),
                "done": Out(1),
            }
        )


class DmaReadPort(wiring.Signature):
    """Core-issued DMA reads.

    ``req``: address + byte length (1..2^16-1), accepted by ``req_ready``.  Many requests may be outstanding
    (the DMA engine queues up to ``max_read_requests`` and keeps up to ``n_tags`` read TLPs on the link); they
    complete in order.  A new request may be accepted in every cycle.
    ``req_after_writes`` (optional, default 0): when set with a request, none of its read TLPs goes to the PCIe
    core before every write request accepted on the write port before this read, or in the same cycle, has
    handed its last TLP to the PCIe core (its ``done`` pulsed).  The link then keeps the read behind those writes
    (PCIe Base table 2-40, B2a: a read never passes a posted write), so the read observes them.  Without it,
    reads and writes are interleaved as they come.
    ``data``: the bytes of each request, packed (see module docstring), ``last`` on its final beat.  Beats are
    released as the completions arrive, in order: a beat may come before later parts of its request are read.
    ``error`` is valid with ``data_valid`` on the last beat of a request whose completion was UR/CA/poisoned/
    timed out; the data of such a request must be discarded.  The last beat comes only after every byte of
    the request has arrived (or failed).
    """

    def __init__(self, data_width: int) -> None:
        super().__init__(
            {
                "req_valid": Out(1),
                "req_ready": In(1),
                "req_addr": Out(64),
                "req_len": Out(DMA_LEN_WIDTH),
                "req_after_writes": Out(1),
                "data_valid": In(1),
                "data_ready": Out(1),
                "data": In(data_width),
                "data_keep": In(data_width // 8),
                "data_last": In(1),
                "error": In(1),
            }
        )


class DmaWritePort(wiring.Signature):
    """Core-issued DMA writes.

    ``req``: address + byte length, then exactly ``ceil(len / (data_width/8))`` beats of packed ``data`` with
    ``data_last`` on the final one.  Requests are queued (``max_write_requests``); the next request may be
    offered while the data of earlier ones is still flowing, and its data follows theirs.
    ``done`` pulses once per request, in request order, after the last TLP of it has been handed to the PCIe
    core's requester stream (posted writes: PCIe ordering then keeps a later read - and any later write - behind
    it; a read that must see the write uses ``DmaReadPort.req_after_writes`` or waits for ``done``).
    ``visible`` pulses once per request, in request order, at most one per cycle and never before its ``done``,
    when the PCIe core has reported the sequence number of the request's last TLP (``pcie_rq_seq_num``): the
    write has left the hard IP.  Only then may an MSI-X that announces the write be signalled through
    ``cfg_interrupt_msix_*``, which the hard IP does not order with requester traffic (PG213 "Transmit
    Transaction Ordering").  With sequence-number tracking off, ``visible`` equals ``done``.
    """

    def __init__(self, data_width: int) -> None:
        super().__init__(
            {
                "req_valid": Out(1),
                "req_ready": In(1),
                "req_addr": Out(64),
                "req_len": Out(DMA_LEN_WIDTH),
                "data_valid": Out(1),
                "data_ready": In(1),
                "data": Out(data_width),
                "data_keep": Out(data_width // 8),
                "data_last": Out(1),
                "done": In(1),
                "visible": In(1),
            }
        )


class InterruptPort(wiring.Signature):
    """The core asks for MSI-X ``vector`` to be signalled; the MSI-X block accepts with ``ready``.

    The MSI-X block handles the table, masking and the PBA: a masked vector's request is accepted and left
    pending.  The core never sends VIRTIO_MSI_NO_VECTOR (0xFFFF); it only sets the ISR for those.
    """

    def __init__(self) -> None:
        super().__init__({"valid": Out(1), "ready": In(1), "vector": Out(11)})


class EthernetStream(wiring.Signature):
    """An Ethernet frame stream (AXI-stream style, no FCS, packed: every beat but the last is full): ``last``
    ends a frame.  The core's ports run at the DMA width; the top level converts to the MAC's width.

    ``user`` on the last beat marks the frame bad (receive error); the consumer drops it.
    """

    def __init__(self, data_width: int = 64) -> None:
        super().__init__(
            {
                "valid": Out(1),
                "ready": In(1),
                "data": Out(data_width),
                "keep": Out(data_width // 8),
                "last": Out(1),
                "user": Out(1),
            }
        )


class VirtioCoreSignature(wiring.Signature):
    """Everything the virtio core exposes: registers in, DMA and interrupts out, the Ethernet port pair.

    ``dma_busy`` (in) tells the core the DMA engine still has requests in flight, so a device reset
    (device_status = 0) can wait for it before reading back 0 (spec 2.4.1: the device must finish
    outstanding DMA before reporting reset done).  ``msix_enabled`` (in) mirrors the function's MSI-X
    Enable bit.  ``eth_tx`` leaves the device, ``eth_rx`` enters it; the top level loops them back when no
    MAC is attached.

    ``flr`` (in) is held by the top level while the hard IP reports a Function Level Reset in progress (PCIe
    Base 6.6.2; PG213 ``cfg_flr_in_process``) and the core has not answered yet: the core stops starting DMA,
    waits until nothing of it is in flight (``dma_busy`` included) and returns to its reset state, then pulses
    ``flr_done`` (out) for one cycle; only then may the top level tell the hard IP the FLR is complete.
    """

    def __init__(self, data_width: int) -> None:
        super().__init__(
            {
                "regs": Out(RegisterBus()),  # RegisterBus is written from the register block's side
                "dma_rd": Out(DmaReadPort(data_width)),
                "dma_wr": Out(DmaWritePort(data_width)),
                "irq": Out(InterruptPort()),
                "dma_busy": In(1),
                "msix_enabled": In(1),
                "flr": In(1),
                "flr_done": Out(1),
                "eth_tx": Out(EthernetStream(data_width)),
                "eth_rx": In(EthernetStream(data_width)),
            }
        )
