"""The generic bridge: a cocotb test that runs any host-side scenario against the RTL.

Environment (set by :func:`sim.runner.run_scenario`):

* ``VIRTIO_FPGA_SCENARIO`` - ``"package.module:function"``, an ``async def fn(transport, **args) -> dict``;
* ``VIRTIO_FPGA_ARGS`` - JSON object of keyword arguments;
* ``VIRTIO_FPGA_RESULT`` - where to write the JSON result;
* ``VIRTIO_FPGA_BACKPRESSURE`` - "1" for idle/back-pressure insertion on the AXI streams; ``VIRTIO_FPGA_SEED``;
* ``VIRTIO_FPGA_READ_LATENCY_NS`` - host memory read latency added by the root complex (default 0: the model's
  own, about 10 cycles); see :class:`sim.testbench.ReadLatency`;
* ``VIRTIO_FPGA_TARGET`` - "rtl" (default) or "soft": run the scenario on the software reference device
  (:mod:`sim.soft_peer`), attached as a second device on the same RootComplex as the RTL;
* ``VIRTIO_FPGA_FAMILY`` - "usp" (default: :class:`sim.testbench.EndpointBench`) or "ptile"
  (:class:`sim.ptile.PtileEndpointBench`), the hard IP the design was built for;
* ``VIRTIO_FPGA_PEER`` - "soft": attach the software device too and pass its transport to the scenario as
  ``peer_transport`` (for side-by-side comparisons in one simulation);
* ``VIRTIO_FPGA_DMA_MONITOR`` - "fail" (default): the DMA monitor (:mod:`sim.dma_monitor`) stops the scenario
  at the first stray DMA request and the test fails; "stop": stops there too, but the result (with the
  violation) is written and the test passes (for tests that expect one, the planted-bug tests); "record": the
  scenario runs on, the violations go into the result and the test does not fail on them (fuzzing).  There is
  no "off": on the virtio core the monitor always runs.

The result is the function's dict plus ``sim_cycles``, ``dma_read_requests``, ``dma_write_requests``,
``dma_read_bytes``, ``dma_write_bytes`` (counted on the RQ bus from the end of enumeration to the end of the
scenario), ``read_latency_ns``, ``guard_bytes_ok``, ``guard_violations``, ``dma_violations`` (the monitor's,
as dicts: rule, tlp, addr, length, time_ns, cycle, queue, detail, text) and ``dma_monitor`` (its counters).
The test fails if the scenario raises, a guard byte was overwritten or (in "fail" mode) the monitor saw a
stray DMA request.
"""

from __future__ import annotations

import importlib
import json
import os

import cocotb
from cocotb.triggers import Event, First

from sim.testbench import EndpointBench
from sim.transport import CocotbPcieTransport


def load_scenario(spec: str):
    module_name, _, func_name = spec.partition(":")
    if not module_name or not func_name:
        raise ValueError(f"scenario must be 'module:function', not {spec!r}")
    return getattr(importlib.import_module(module_name), func_name)


#: Simulated-time limit of one scenario: a hang fails the test instead of running forever.
SIM_TIMEOUT_MS = float(os.environ.get("VIRTIO_FPGA_SIM_TIMEOUT_MS", "20"))


@cocotb.test(timeout_time=SIM_TIMEOUT_MS, timeout_unit="ms")
async def run_scenario(dut) -> None:
    """Build the bench, enumerate, run the scenario, add statistics, write the JSON result."""
    fn = load_scenario(os.environ["VIRTIO_FPGA_SCENARIO"])
    args = json.loads(os.environ.get("VIRTIO_FPGA_ARGS", "{}") or "{}")
    options = {}
    latency = float(os.environ.get("VIRTIO_FPGA_READ_LATENCY_NS", "0") or 0)
    if latency:  # only then: a bench class without the option still runs at the model's latency
        options["read_latency_ns"] = latency
    bench_cls = EndpointBench
    if os.environ.get("VIRTIO_FPGA_FAMILY", "usp") == "ptile":
        from sim.ptile import PtileEndpointBench as bench_cls
    bench = await bench_cls.create(
        dut,
        backpressure=os.environ.get("VIRTIO_FPGA_BACKPRESSURE") == "1",
        seed=int(os.environ.get("VIRTIO_FPGA_SEED", "1")),
        **options,
    )
    target = os.environ.get("VIRTIO_FPGA_TARGET", "rtl")
    peer = None
    if target == "soft" or os.environ.get("VIRTIO_FPGA_PEER") == "soft":
        from sim.soft_peer import SoftVirtioPcieFunction

        peer = bench.add_function(SoftVirtioPcieFunction())
    await bench.init()
    rtl = CocotbPcieTransport(bench)
    peer_transport = None
    if peer is not None:
        peer_transport = CocotbPcieTransport(bench, ep=await bench.find(peer))
        peer_transport.name = "soft"
    if target == "soft":
        transport = peer_transport
    else:
        transport = rtl
        if peer_transport is not None:
            args = {**args, "peer_transport": peer_transport}
    monitor = bench.dma_monitor
    mode = os.environ.get("VIRTIO_FPGA_DMA_MONITOR", "fail") or "fail"
    if mode not in ("fail", "stop", "record"):
        raise ValueError(f"VIRTIO_FPGA_DMA_MONITOR must be 'fail', 'stop' or 'record', not {mode!r}")
    tripped = Event()
    if monitor is not None:
        monitor.on_violation.append(lambda _v: tripped.set())
    before = bench.counters.as_dict()
    task = cocotb.start_soon(fn(transport, **args))
    if monitor is not None and mode in ("fail", "stop"):
        await First(task.complete, tripped.wait())  # stop at the first stray request, not at the end
    else:
        await task.complete
    # A scenario the monitor stopped is not cancelled (its own error handling would see the cancellation): the
    # test simply ends here, and the simulation with it.
    result = task.result() if task.done() else {"stopped_by_dma_monitor": True}
    after = bench.counters.as_dict()
    out = dict(result or {})
    for key, value in after.items():
        out[key] = value - before[key]
    violations = rtl.guard_violations() + (peer_transport.guard_violations() if peer_transport else [])
    if target == "soft" and peer is not None:  # the RQ monitor sees only the RTL: report the soft device's own DMA
        stats = peer.dma_stats()
        out.update(
            dma_read_requests=stats["read_requests"],
            dma_write_requests=stats["write_requests"],
            dma_read_bytes=stats["read_bytes"],
            dma_write_bytes=stats["write_bytes"],
        )
    read_latency = getattr(bench, "read_latency", None)
    out["read_latency_ns"] = read_latency.latency_ns if read_latency is not None else 0.0
    out["guard_bytes_ok"] = not violations
    out["guard_violations"] = violations
    out["cfg_ext_timeouts"] = bench.dev.cfg_ext_timeouts
    out["dma_violations"] = [v.as_dict() for v in monitor.violations] if monitor is not None else []
    out["dma_monitor"] = monitor.stats() if monitor is not None else None
    path = os.environ.get("VIRTIO_FPGA_RESULT")
    if path:
        with open(path, "w") as f:
            json.dump(out, f, indent=2, default=str)
    assert not violations, f"DMA wrote outside its buffers: {violations}"
    if monitor is not None and mode == "fail":
        monitor.check()  # raises StrayDma naming the first violation
