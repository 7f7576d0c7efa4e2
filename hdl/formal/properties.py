"""The list of properties ``virtio-fpga formal`` proves: which harness, which check, how deep, which suite.

``k`` is the induction depth tried first (``mode prove``); when induction does not close at ``k`` the property
is checked by bounded model checking to ``depth`` cycles from reset instead, and reported as bounded.  ``ci``
marks the ones that fit the default test suite (seconds each); the others run under ``make test-slow`` and
``make formal``.  ``planted`` is a mutation of the harness's stage instance that must make the property fail.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from amaranth.hdl import Elaboratable

from hdl.formal import harnesses as h


@dataclass(frozen=True)
class Property:
    name: str
    stage: str
    rule: str  # what it says, in words
    make: Callable[[str | None], Elaboratable] = field(repr=False)
    k: int = 6
    depth: int = 12
    ci: bool = False
    planted: str | None = None  # mutation that must fail it (see hdl.formal.harnesses)


def _p(name: str, stage: str, rule: str, cls, check: str, **kw) -> Property:
    opts = kw.pop("opts", {})
    return Property(name, stage, rule, lambda mutation: cls(check, mutation, **opts), **kw)


PROPERTIES: list[Property] = [
    # ---- DescFetcher: ring reads stay inside the ring; nothing after reset until notified
    _p(
        "fetch.ring_bounds",
        "DescFetcher",
        "every ring read lies inside [desc, desc + 16 * size), whole descriptors, at most one burst",
        h.FetcherHarness,
        "ring_bounds",
    ),
    _p(
        "fetch.run_gate",
        "DescFetcher",
        "no ring read while the queue is not running",
        h.FetcherHarness,
        "run_gate",
        ci=True,
    ),
    _p(
        "fetch.quiet_after_clear",
        "DescFetcher",
        "after a reset (clear) no ring read until the driver notifies again",
        h.FetcherHarness,
        "quiet_after_clear",
        planted="clear_lost",
    ),
    _p(
        "fetch.idle_means_quiesced",
        "DescFetcher",
        "idle (what reset waits for) only when no ring read is in flight",
        h.FetcherHarness,
        "idle_means_quiesced",
    ),
    _p(
        "fetch.descs_stream",
        "DescFetcher",
        "the descriptor stream keeps valid and payload until taken",
        h.FetcherHarness,
        "descs_stream",
        depth=10,
    ),
    # ---- ChainParser: what reaches the data movers obeys the descriptor rules
    _p(
        "chain.tx_segment_rules",
        "ChainParser(tx)",
        "a transmit segment without error has a length and stays within header + MAX_FRAME_LEN",
        h.ChainHarness,
        "segment_rules",
        ci=True,
    ),
    _p(
        "chain.rx_segment_rules",
        "ChainParser(rx)",
        "a receive segment without error has a length",
        h.ChainHarness,
        "segment_rules",
        opts={"device_writes": True},
        ci=True,
    ),
    _p(
        "chain.count_bound",
        "ChainParser(tx)",
        "a chain's descriptor count is 1 .. queue size (2.8.6: no chain longer than the queue)",
        h.ChainHarness,
        "count_bound",
    ),
    _p(
        "chain.dead_after_error",
        "ChainParser(tx)",
        "after an error segment nothing more until clear",
        h.ChainHarness,
        "dead_after_error",
    ),
    _p(
        "chain.segs_stream",
        "ChainParser(tx)",
        "the segment stream obeys the stream rules",
        h.ChainHarness,
        "segs_stream",
        ci=True,
    ),
    # ---- TxDataMover: reads only the buffers it was given, used only after their data
    _p(
        "tx.read_in_segment",
        "TxDataMover",
        "every buffer read is exactly a non-error segment the mover was given",
        h.TxMoverHarness,
        "read_in_segment",
        planted="read_addr_off",
        ci=False,  # with the mover's register slices induction no longer closes: bounded, ~6 min
    ),
    _p(
        "tx.run_gate",
        "TxDataMover",
        "no buffer read starts while the queue is not running (one issued before may wait in the output slice)",
        h.TxMoverHarness,
        "run_gate",
        ci=True,
    ),
    _p(
        "tx.used_after_data",
        "TxDataMover",
        "a used element only after every read of its chain completed",
        h.TxMoverHarness,
        "used_after_data",
        depth=9,
    ),
    # ---- RxDataMover: writes only inside the buffers it was given
    _p(
        "rx.write_in_buffer",
        "RxDataMover",
        "every receive write lies inside [addr, addr + len) of a buffer the mover was given",
        h.RxMoverHarness,
        "write_in_buffer",
        depth=10,
        planted="write_past_end",
    ),
    _p(
        "rx.quiet_after_clear",
        "RxDataMover",
        "after a reset no receive write until the queue runs again",
        h.RxMoverHarness,
        "quiet_after_clear",
        ci=True,
    ),
    _p(
        "rx.used_len_bound",
        "RxDataMover",
        "a used length never exceeds the chain's buffer bytes; id and count are the chain's",
        h.RxMoverHarness,
        "used_len_bound",
        depth=8,
    ),
    _p(
        "rx.used_after_data",
        "RxDataMover",
        "a used element only after all its data beats went to the write port",
        h.RxMoverHarness,
        "used_after_data",
    ),
    # ---- UsedWriter: writes only to used slots of the ring (or the device event structure)
    _p(
        "used.ring_slots",
        "UsedWriter",
        "every write is an 8-byte used element at desc + 16 * i + 8 with i < size, or the device event structure",
        h.UsedHarness,
        "ring_slots",
        planted="one_slot_off",
    ),
    _p(
        "used.published_in_ring",
        "UsedWriter",
        "the published used index is below the size",
        h.UsedHarness,
        "published_in_ring",
    ),  # fmt: skip
    _p(
        "used.quiet_after_clear",
        "UsedWriter",
        "after a reset no used write until the queue runs again",
        h.UsedHarness,
        "quiet_after_clear",
        ci=True,
    ),
    _p(
        "used.quiet_after_error",
        "UsedWriter",
        "after an error element (DEVICE_NEEDS_RESET) no used write until clear",
        h.UsedHarness,
        "quiet_after_error",
    ),
    # ---- DMA muxes: nothing altered or misrouted on the way to the one DMA port
    _p(
        "rdmux.req_integrity",
        "ReadMux",
        "each DMA read request is a client's oldest request not yet issued, unchanged",
        h.ReadMuxHarness,
        "req_integrity",
    ),
    _p(
        "rdmux.resp_routing",
        "ReadMux",
        "read data goes, unchanged and in order, to the client whose request is the oldest outstanding",
        h.ReadMuxHarness,
        "resp_routing",
        depth=9,
    ),
    _p(
        "wrmux.req_integrity",
        "WriteMux",
        "each DMA write request is a client's oldest request not yet issued, unchanged",
        h.WriteMuxHarness,
        "req_integrity",
    ),
    _p(
        "wrmux.beats_follow_request",
        "WriteMux",
        "the beats on the DMA port are the next beats of the oldest write, from its client, unchanged",
        h.WriteMuxHarness,
        "beats_follow_request",
        depth=10,
    ),
    _p(
        "wrmux.done_routing",
        "WriteMux",
        "a client gets a done pulse only for a write of its own that the DMA port reported done",
        h.WriteMuxHarness,
        "done_routing",
        depth=10,
    ),
]

BY_NAME = {p.name: p for p in PROPERTIES}


def select(names: list[str] | None = None, *, ci_only: bool = False) -> list[Property]:
    """Properties by name or name prefix (``tx`` selects every ``tx.*``); all when ``names`` is empty."""
    chosen = PROPERTIES
    if names:
        unknown = [n for n in names if not any(p.name == n or p.name.startswith(n + ".") for p in PROPERTIES)]
        if unknown:
            raise KeyError(f"unknown property {', '.join(unknown)} (known: {', '.join(BY_NAME)})")
        chosen = [p for p in PROPERTIES if any(p.name == n or p.name.startswith(n + ".") for n in names)]
    if ci_only:
        chosen = [p for p in chosen if p.ci]
    return chosen
