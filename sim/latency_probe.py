"""Does the injected host read latency do what it says?  Measured on the bus with the PCIe test core.

:func:`read_round_trips` runs DMA copies through the stand-in core (``core="test"``, :mod:`hdl.pcie.testcore`)
at several read latencies in one simulation (``bench.read_latency.latency_ns`` is changed between copies) and
reports, per latency and copy length, what the bus monitor saw: the round trip of each DMA read request in
cycles (RQ request to the RC completion that ends it), how many were in flight at once, and the span from the
first read request to the last completion.  A single read must grow by the latency; several reads of one copy
must overlap (the span grows by about one latency, not one per read).
"""

from __future__ import annotations

from sim.scenarios import _copy


async def read_round_trips(transport, latencies_ns: list[float], lengths: list[int]) -> dict:
    bench = transport.bench
    c = bench.counters
    out = []
    src = transport.alloc_dma(max(lengths), align=4096)
    dst = transport.alloc_dma(max(lengths), align=4096)
    src.write(0, bytes((i * 7 + 3) & 0xFF for i in range(src.size)))
    for latency in latencies_ns:
        bench.read_latency.latency_ns = latency
        for length in lengths:
            dst.write(0, bytes(dst.size))
            first = len(c.read_round_trips)
            c.reads_outstanding_max = 0
            await _copy(transport, src.iova, dst.iova, length)
            trips = c.read_round_trips[first:]
            out.append(
                {
                    "latency_ns": latency,
                    "length": length,
                    "ok": dst.read(0, length) == src.read(0, length),
                    "reads": len(trips),
                    "round_trips": [done - issued for issued, done in trips],
                    "span": (max(d for _, d in trips) - min(i for i, _ in trips)) if trips else 0,
                    "in_flight_max": c.reads_outstanding_max,
                }
            )
    return {"runs": out, "delayed_reads": bench.read_latency.delayed_reads}
