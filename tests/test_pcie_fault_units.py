"""The DMA engine alone against faulty completions (issue 12, PCIe faults): what the RTL fault tests cannot pin down
to the cycle.

A read whose completion never comes times out (PCIe Base 2.8, Completion Timeout) and its tag is *quarantined*:
it is not used again for ``quarantine_cycles``.  The completion that then arrives late, with the old request's
byte count, matches no outstanding request; the engine drops it as an Unexpected Completion (PCIe Base 2.3.2)
and counts it, and every later request gets exactly its own bytes.
"""

from __future__ import annotations

import heapq
import random

from hdl.pcie.dma import DmaEngine
from tests.test_pcie_units import _Host, _reader, run_sim


class _LateHost(_Host):
    """The first read's completions are held back ``late`` cycles (past the engine's timeout) and carry filler
    bytes, so a late completion that were taken as data would show up in the data of a later request."""

    def __init__(self, dut, *, late: int, **kw) -> None:
        super().__init__(dut, **kw)
        self.late = late
        self.withheld_tag: int | None = None
        self.late_delivered_at: int | None = None

    def _schedule_read(self, now: int, tag: int, addr: int, length: int) -> None:
        if self.withheld_tag is not None:
            super()._schedule_read(now, tag, addr, length)
            return
        self.withheld_tag = tag
        self.late_delivered_at = now + self.late
        stream = self.completion(tag, addr, length, length, payload=b"\xee" * (length + 8))
        heapq.heappush(self.pending, (self.late_delivered_at, self._order, tag, stream))
        self._order += 1


def test_late_completion_after_timeout_is_dropped_and_tag_quarantined() -> None:
    timeout = 512
    dut = DmaEngine(256, timeout_cycles=timeout, quarantine_cycles=timeout)
    host = _LateHost(dut, late=timeout + 300, latency=20, jitter=10, seed=3)
    rng = random.Random(9)
    # the first read is the one that times out; the rest keep every tag busy across the timeout and the
    # late completion's arrival, so the timed-out tag would be reused if nothing held it back
    reqs = [(0x1000, 96, 0)] + [(rng.randrange(0, 1 << 17), rng.randint(1, 400), 0) for _ in range(200)]
    out: dict = {}
    seen: dict = {}

    async def watch(ctx):
        while True:
            _, _, unexpected, quar = await ctx.tick().sample(dut.rd_unexpected, dut.rd_quarantine)
            seen["unexpected"] = unexpected
            seen["max_quarantined"] = max(seen.get("max_quarantined", 0), bin(quar).count("1"))

    watch.background = True
    run_sim(dut, *host.processes(), *_reader(dut, reqs, out), watch, deadline_cycles=12000)
    assert out.get("finished"), "not all requests completed"
    assert out["error"][0] is True  # the timed-out read
    for i, (addr, length, _) in enumerate(reqs[1:], 1):
        assert out["error"][i] is False, f"request {i}"
        assert out["data"][i] == host.initial[addr : addr + length], f"request {i}: late completion taken as data"
    reads = [t for t in host.tlps if t["kind"] == "R"]
    tag = host.withheld_tag
    uses = [t["cycle"] for t in reads if t["tag"] == tag]
    assert len(uses) >= 2, "the tag came back into use after its quarantine"
    # not reused before timeout + quarantine (the age counter ticks every 64 cycles: one tick of slack each)
    assert uses[1] - uses[0] >= 2 * timeout - 2 * 64, uses[:2]
    assert uses[1] > host.late_delivered_at  # the late completion arrived while the tag was held back
    assert seen["unexpected"] == 1  # ... and was dropped as an Unexpected Completion
    assert seen["max_quarantined"] == 1
    assert not out["busy_after"]
