"""Both devices on one simulated PCIe bus: the RTL endpoint and the software device as its peer.

:func:`run_on_bus` starts one simulation (:func:`sim.runner.run_scenario` with the software device attached
as a second function on the same RootComplex) and runs every scenario first on the RTL, then on the software
device, through the identical :class:`sim.transport.CocotbPcieTransport`.  Traces come back per device.
"""

from __future__ import annotations

from typing import Any

from devices.softnet import Fault
from host.scenario import run_scenario

#: Checkpoint patience and interrupt-wait slice, in simulated seconds (250 MHz: 50k and 500 cycles).
SETTLE = 200e-6
POLL = 2e-6


def _peer_function(peer_transport):
    """The SoftVirtioPcieFunction behind a transport (the bench keeps the functions it added)."""
    from sim.soft_peer import SoftVirtioPcieFunction

    for function in peer_transport.bench.extra_functions:
        if isinstance(function, SoftVirtioPcieFunction):
            return function
    raise RuntimeError("no software device on the bus")


async def run_both(
    transport,
    *,
    scenarios: list[dict],
    devices: list[str],
    faults: list[str] | None = None,
    peer_transport=None,
    settle: float = SETTLE,
    poll: float = POLL,
) -> dict[str, Any]:
    """Run the scenarios on each requested device of the bus (called inside the simulation by sim.bench)."""
    out: dict[str, Any] = {}
    if "soft-pcie" in devices:
        if peer_transport is None:
            raise RuntimeError("the software device was not attached (peer='soft')")
        _peer_function(peer_transport).device.faults = frozenset(Fault(f) for f in faults or ())
        peer_transport.name = "soft-pcie"
    transport.name = "rtl"
    counters = transport.bench.counters
    # The RTL's DMA as seen on its RQ bus; the software device counts its own TLPs.
    transport.dma_stats = lambda: {
        "read_requests": counters.dma_read_requests,
        "write_requests": counters.dma_write_requests,
        "read_bytes": counters.dma_read_bytes,
        "write_bytes": counters.dma_write_bytes,
        "cycles": counters.cycles,
    }
    if peer_transport is not None:
        peer_transport.dma_stats = _peer_function(peer_transport).dma_stats
    for device in devices:
        t = transport if device == "rtl" else peer_transport
        traces = []
        for sc in scenarios:
            traces.append(await run_scenario(t, sc, settle=settle, poll=poll))
        out[device] = traces
    return out


def run_on_bus(
    devices: list[str],
    scenarios: list[dict],
    *,
    faults: list[str] | None = None,
    core: str = "virtio",
    read_latency_ns: float | None = None,
    family: str = "usp",
) -> dict[str, Any]:
    """One simulation, both devices: returns ``{device: [trace, ...]}`` for the requested devices.

    ``core`` picks the RTL's core; ``"test"`` (the PCIe test core) serves runs that only use the software
    device on the bus.  ``read_latency_ns``: the host's read latency, the same for both devices (they share the
    root complex; None: ``VIRTIO_FPGA_READ_LATENCY_NS`` or 0).  ``family`` is the hard IP the RTL is built for
    and simulated behind.
    """
    from sim.runner import run_scenario as run_in_sim

    result = run_in_sim(
        "sim.compare_bus:run_both",
        {"scenarios": scenarios, "devices": devices, "faults": list(faults or [])},
        peer="soft" if "soft-pcie" in devices else None,
        core=core,
        read_latency_ns=read_latency_ns,
        family=family,
    )
    return {device: result[device] for device in devices}
