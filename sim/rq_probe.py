"""Where the requester-request (RQ) stream's idle cycles go: a probe run around :func:`sim.throughput.steady_state`.

Run it as a scenario (``sim.runner.run_scenario("sim.rq_probe:probe", {...bench case arguments...})``, or
``python -m sim.rq_probe --frame-bytes 1500 --read-latency-ns 500``).  Every cycle of the bench's measurement
window it samples the RQ port and the DMA engine's own state (``hdl/pcie/dma.py``: the arbiter's source
registers, the write planner and sender, the read splitter's issue conditions) and puts the cycle in one class:

* ``beat``: a beat moved (tvalid and tready);
* ``stall``: the hard IP held tready low;
* ``idle_*``: no beat offered, with the first reason that applies: ``idle_pipe`` (a source register or the
  output register is full but the beat is still on its way: a registered stage refilling),
  ``idle_wr_data`` (the write planner holds a TLP whose data is not all in the staging ring),
  ``idle_wr_seq`` (a TLP held back by the unacknowledged-sequence-number bound), ``idle_wr_plan`` (a write job is
  queued but no TLP is planned yet), ``idle_rd_tag`` / ``idle_rd_space`` / ``idle_rd_fence`` (a planned read TLP
  waits for a free tag, reorder-ring space, or the read-after-write fence), ``idle_rd_plan`` (a read request
  is active but no TLP is planned yet), ``idle_empty`` (nothing queued in the engine at all).

The probe reads internal signals by their names in the generated Verilog (Amaranth keeps them), so it is a
development tool: it reports ``probe_error`` instead of failing when a name is missing.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import cocotb
from cocotb.triggers import FallingEdge

import sim.throughput as throughput

CLASSES = (
    "beat",
    "stall",
    "idle_pipe",
    "idle_wr_data",
    "idle_wr_seq",
    "idle_wr_plan",
    "idle_rd_tag",
    "idle_rd_space",
    "idle_rd_fence",
    "idle_rd_plan",
    "idle_empty",
)


def _find(scope, *names: str):
    """The first of ``names`` that exists in ``scope``; a name ending in ``$`` matches any ``name$N``."""
    for name in names:
        if name.endswith("$"):
            for h in scope:
                if h._name.startswith(name):
                    return h
        else:
            try:
                return scope._id(name, extended=False)
            except AttributeError:
                continue
    raise AttributeError(f"none of {names} in {scope._name}")


def _int(h) -> int:
    try:
        return int(h.value)
    except ValueError:
        return 0


async def probe(transport, **kwargs: Any) -> dict[str, Any]:
    """Run the bench's steady-state loop with the RQ classifier running beside it."""
    bench = transport.bench
    dut = bench.dut
    dma = dut.dma
    names = {
        "tvalid": ("rq__tvalid",),
        "tready": ("rq__tready",),
        "src0": ("rq_src0_tvalid",),
        "src1": ("rq_src1_tvalid",),
        "sending": ("sending",),
        "n_valid": ("n_valid$",),
        "n_present": ("n_present",),
        "seq_ok": ("seq_ok",),
        "p_valid": ("p_valid",),
        "have_tag": ("have_tag",),
        "space_ok": ("space_ok",),
        "fence_ok": ("fence_ok",),
        "active": ("active",),
    }
    sig = {}
    missing = []
    for key, cand in names.items():
        try:
            sig[key] = _find(dma, *cand)
        except AttributeError:
            missing.append(key)
    job_rdy = None
    try:
        job_rdy = dma.wr_job_fifo.r_rdy
    except AttributeError:
        missing.append("wr_job_fifo.r_rdy")
    log: list[tuple[int, str]] = []

    def classify(v: dict[str, int], job: int) -> str:
        if v["tvalid"]:
            return "beat" if v["tready"] else "stall"
        if v.get("src0") or v.get("src1") or v.get("sending"):
            return "idle_pipe"
        if v.get("n_valid"):
            return "idle_wr_data" if not v.get("n_present") else ("idle_wr_seq" if not v.get("seq_ok") else "idle_pipe")
        if job:
            return "idle_wr_plan"
        if v.get("p_valid"):
            if not v.get("have_tag"):
                return "idle_rd_tag"
            if not v.get("space_ok"):
                return "idle_rd_space"
            if not v.get("fence_ok"):
                return "idle_rd_fence"
            return "idle_pipe"
        if v.get("active"):
            return "idle_rd_plan"
        return "idle_empty"

    async def watch() -> None:
        while True:
            await FallingEdge(bench.clock)
            v = {k: _int(h) for k, h in sig.items()}
            log.append((bench.counters.cycles, classify(v, _int(job_rdy) if job_rdy is not None else 0)))

    snaps: list[int] = []
    orig = throughput._Window.snapshot

    def snapshot(self):
        s = orig(self)
        snaps.append(s["cycle"])
        return s

    throughput._Window.snapshot = snapshot
    task = cocotb.start_soon(watch())
    try:
        result = await throughput.steady_state(transport, **kwargs)
    finally:
        task.kill()
        throughput._Window.snapshot = orig
    w = result.get("window") or {}
    counts = dict.fromkeys(CLASSES, 0)
    if w.get("cycles") and snaps:
        end = snaps[-1]
        start = end - w["cycles"]
        for cyc, cls in log:
            if start <= cyc < end:
                counts[cls] += 1
        frames = w.get("frames") or 1
        reqs = [r for r in bench.counters.timed_requests if start <= r[0] < end]
        hist: dict[str, int] = {}
        for _, kind, addr, nbytes in reqs:
            beats = -(-(16 + (addr & 3) + (nbytes if kind == "W" else 0)) // (bench.data_width // 8))
            key = f"{kind} {nbytes}B @{addr % 256} {beats}beats"
            hist[key] = hist.get(key, 0) + 1
        result["rq_requests"] = dict(sorted(hist.items(), key=lambda kv: -kv[1]))
        result["rq_probe"] = {
            "cycles": w["cycles"],
            "frames": frames,
            "per_frame": {k: round(n / frames, 3) for k, n in counts.items()},
        }
    if missing:
        result["probe_error"] = f"signals not found: {', '.join(missing)}"
    return result


def main() -> None:
    from sim.benchmath import Case
    from sim.runner import run_scenario

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", default="loopback")
    ap.add_argument("--frame-bytes", type=int, default=1500)
    ap.add_argument("--read-latency-ns", type=float, default=500.0)
    ap.add_argument("--frames", type=int, default=None)
    a = ap.parse_args()
    case = Case(a.mode, a.frame_bytes, a.read_latency_ns)
    raw = run_scenario("sim.rq_probe:probe", case.scenario_args(a.frames), read_latency_ns=a.read_latency_ns)
    w = raw["window"]
    report = {
        "case": case.label,
        "cycles_per_frame": w["cycles"] / w["frames"],
        **raw.get("rq_probe", {}),
        "requests": raw.get("rq_requests"),
        "probe_error": raw.get("probe_error"),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
