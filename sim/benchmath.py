"""The bench's accounting: which cases, and how raw window counts become the figures in ``results/bench.json``.

No simulator here (plain Python, unit-tested on its own); :mod:`sim.throughput` produces the raw counts inside
the simulation.  Conventions:

* a *frame* is an Ethernet frame of ``frame_bytes`` (what leaves ``eth_tx``; no preamble, no inter-frame gap);
  ``gbps`` counts frame bytes only, ``mpps`` frames per microsecond at the simulated clock;
* ``cycles_per_frame`` is the measurement window (completion of frame W to completion of frame W+N, see
  :mod:`sim.throughput`) divided by N;
* **link limits** per direction, at the link the bench's model trains to: Gen3 (8 GT/s, 128b/130b) at x4/x8/x16
  for the UltraScale+ 128/256/512-bit interfaces unless the result says otherwise (``link_generation`` and
  ``link_lanes`` from :func:`sim.throughput.steady_state`; the P-tile bench is Gen4 x8, 16 GT/s): ``raw`` is
  the symbol rate (7.88 GB/s at Gen3 x8); the 256-byte-payload
  limits divide by the bytes one 256-byte TLP costs: payload + header (16 for a 64-bit-address write, 12 for a
  completion) + 8 (framing and LCRC, as cocotbext-pcie's ``Tlp.get_wire_size``) + 2 (ACK and flow-control DLLPs,
  amortised), which gives 7.15 GB/s for writes and 7.25 GB/s for completions at x8;
* ``link_fraction_to_host`` is the payload the DUT sent (memory writes, completions of BAR reads) per second
  over the write limit; ``link_fraction_to_device`` the payload it received (completions of its reads, BAR
  writes) over the completion limit: the fraction of what the link can carry usefully.  ``link_raw_fraction_*``
  puts everything the model serialised (TLP headers, payload, framing, DLLPs) against the raw rate.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from typing import Any

CLOCK_MHZ = 250
GEN3_BYTES_PER_LANE = 8e9 * 128 / 130 / 8  # 8 GT/s, 128b/130b, 8 bits a byte
LANES = {128: 4, 256: 8, 512: 16}
TLP_OVERHEAD = 8  # framing + LCRC per TLP (cocotbext-pcie Tlp.get_wire_size)
DLLP_SHARE = 2  # ACK / UpdateFC DLLPs per TLP, amortised
WRITE_HEADER = 16  # 4-DW header: memory write with a 64-bit address
COMPLETION_HEADER = 12  # 3-DW header: completion with data
PAYLOAD = 256  # Max_Payload_Size of the bench (and of most hosts)

SIZES = (64, 128, 256, 512, 1500, 4096, 9000)
LATENCIES_NS = (0, 250, 500, 1000)
MODES = ("loopback", "tx", "rx")


def link_limits(data_width: int = 256, *, generation: int = 3, lanes: int | None = None) -> dict[str, float]:
    """Bytes per second per direction: ``raw``, ``write`` (256-byte writes), ``completion`` (256-byte).

    ``generation`` 3 or later (128b/130b coding; each generation doubles the rate), ``lanes`` by default the
    lane count the UltraScale+ bench uses for ``data_width``.
    """
    if generation < 3:
        raise ValueError(f"link generation {generation}: only Gen3 and later (128b/130b) are modelled here")
    raw = GEN3_BYTES_PER_LANE * (2 ** (generation - 3)) * (lanes or LANES[data_width])
    return {
        "raw": raw,
        "write": raw * PAYLOAD / (PAYLOAD + WRITE_HEADER + TLP_OVERHEAD + DLLP_SHARE),
        "completion": raw * PAYLOAD / (PAYLOAD + COMPLETION_HEADER + TLP_OVERHEAD + DLLP_SHARE),
    }


@dataclass(frozen=True)
class Case:
    """One point of the sweep."""

    mode: str
    frame_bytes: int
    read_latency_ns: float
    notification_data: bool = True
    event_idx: bool = True

    @property
    def label(self) -> str:
        feats = ("" if self.notification_data else "-nd") + ("" if self.event_idx else "-ei")
        return f"{self.mode}-{self.frame_bytes}B-{self.read_latency_ns:g}ns{feats}"

    def disable(self) -> list[str]:
        return [n for n, on in (("NOTIFICATION_DATA", self.notification_data), ("EVENT_IDX", self.event_idx)) if not on]

    def scenario_args(self, frames: int | None = None) -> dict[str, Any]:
        """Arguments for :func:`sim.throughput.steady_state`: fewer (but still full-ring) frames when they are big."""
        if self.frame_bytes <= 512:
            warmup, n = 16, 64
        elif self.frame_bytes <= 1500:
            warmup, n = 16, 48
        else:
            warmup, n = 8, 16
        return {
            "mode": self.mode,
            "frame_bytes": self.frame_bytes,
            "frames": frames or n,
            "warmup": warmup,
            "queue_size": 64,
            "batch": 16,
            "poll_ns": 32.0,
            "disable": self.disable(),
        }

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def full_matrix() -> list[Case]:
    """Every size x latency x mode x NOTIFICATION_DATA x EVENT_IDX (336 cases)."""
    return [
        Case(mode, size, lat, nd, ei)
        for mode, size, lat, nd, ei in itertools.product(MODES, SIZES, LATENCIES_NS, (True, False), (True, False))
    ]


def default_matrix() -> list[Case]:
    """A subset that still touches every axis: all sizes x latencies for loopback with both features on, the
    other modes and the feature toggles at 64 and 1500 bytes, at the model's latency and at 500 ns."""
    cases = [Case("loopback", size, lat) for size in SIZES for lat in LATENCIES_NS]
    for mode in ("tx", "rx"):
        cases += [Case(mode, size, lat) for size in (64, 1500) for lat in (0, 500)]
    for nd, ei in ((False, True), (True, False), (False, False)):
        cases += [Case("loopback", size, 500, nd, ei) for size in (64, 1500)]
    return cases


def _ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


def case_figures(case: Case, raw: dict[str, Any], *, data_width: int = 256, clock_mhz: float = CLOCK_MHZ) -> dict:
    """The bench.json row of one case from :func:`sim.throughput.steady_state`'s result (plus sim statistics)."""
    row: dict[str, Any] = {
        "label": case.label,
        "mode": case.mode,
        "frame_bytes": case.frame_bytes,
        "read_latency_ns": case.read_latency_ns,
        "notification_data": bool(raw.get("notification_data", case.notification_data)),
        "event_idx": bool(raw.get("event_idx", case.event_idx)),
        "ok": bool(raw.get("ok")),
        "errors": list(raw.get("errors", [])),
        "bringup_cycles": raw.get("bringup_cycles"),
        "warmup_frames": raw.get("warmup"),
    }
    if raw.get("guard_bytes_ok") is False:
        row["ok"] = False
        row["errors"].append("DMA outside a buffer")
    w = raw.get("window")
    if not w or not w.get("cycles") or not w.get("frames"):
        row.update(frames=0, cycles_per_frame=None, mpps=None, gbps=None)
        row["ok"] = False
        return row
    frames, cycles = w["frames"], w["cycles"]
    seconds = cycles / (clock_mhz * 1e6)
    cpf = cycles / frames
    mpps = clock_mhz / cpf
    limits = link_limits(data_width, generation=raw.get("link_generation") or 3, lanes=raw.get("link_lanes"))
    up, down = w["link"]["to_host"], w["link"]["to_device"]
    up_payload = up["write_payload_bytes"] + up["completion_payload_bytes"]
    down_payload = down["write_payload_bytes"] + down["completion_payload_bytes"]
    req = w["requests"]
    row.update(
        frames=frames,
        window_cycles=cycles,
        cycles_per_frame=round(cpf, 3),
        mpps=round(mpps, 4),
        gbps=round(case.frame_bytes * 8 * mpps / 1000, 4),
        link_fraction_to_host=round(_ratio(up_payload / seconds, limits["write"]), 4),
        link_fraction_to_device=round(_ratio(down_payload / seconds, limits["completion"]), 4),
        link_raw_fraction_to_host=round(_ratio((up["tlp_wire_bytes"] + up["dllp_bytes"]) / seconds, limits["raw"]), 4),
        link_raw_fraction_to_device=round(
            _ratio((down["tlp_wire_bytes"] + down["dllp_bytes"]) / seconds, limits["raw"]), 4
        ),
        link_bytes_to_host=up["tlp_wire_bytes"] + up["dllp_bytes"],
        link_bytes_to_device=down["tlp_wire_bytes"] + down["dllp_bytes"],
        payload_bytes_to_host=up_payload,
        payload_bytes_to_device=down_payload,
        reads_in_flight_max=w["reads_in_flight_max"],
        reads_in_flight_mean=round(w["reads_in_flight_mean"], 3),
        read_round_trip_cycles=round(w.get("read_round_trip_mean", 0), 1),
        descriptors=w["descriptors"],
        desc_reads=req["desc_reads"],
        desc_reads_per_desc=round(_ratio(req["desc_reads"], w["descriptors"]), 4),
        event_reads_per_frame=round(req["event_reads"] / frames, 4),
        data_reads_per_frame=round(req["data_reads"] / frames, 4),
        used_writes_per_frame=round(req["used_writes"] / frames, 4),
        irqs=w["irqs"],
        irqs_per_frame=round(w["irqs"] / frames, 4),
        sim_cycles=raw.get("sim_cycles"),
    )
    return row


#: Keys every case must carry, with their types (the issue's schema of results/bench.json).
REQUIRED_CASE_KEYS: dict[str, type | tuple[type, ...]] = {
    "mode": str,
    "frame_bytes": int,
    "read_latency_ns": (int, float),
    "notification_data": bool,
    "event_idx": bool,
    "frames": int,
    "cycles_per_frame": (int, float),
    "mpps": (int, float),
    "gbps": (int, float),
    "link_fraction_to_host": (int, float),
    "link_fraction_to_device": (int, float),
    "reads_in_flight_max": int,
    "desc_reads_per_desc": (int, float),
    "irqs_per_frame": (int, float),
}


def validate(doc: dict[str, Any]) -> list[str]:
    """Problems with a bench.json document (empty: it has the shape the issue asks for).

    Failed cases are allowed (``ok`` false, figures ``None``) but must still say what they were.
    """
    problems = []
    for key, kind in (("clock_mhz", (int, float)), ("data_width", int), ("cases", list)):
        if not isinstance(doc.get(key), kind) or isinstance(doc.get(key), bool):
            problems.append(f"top level: {key} missing or not {kind}")
    for i, case in enumerate(doc.get("cases") or []):
        where = f"case {i} ({case.get('label', '?')})"
        if case.get("mode") not in MODES:
            problems.append(f"{where}: mode {case.get('mode')!r}")
        for key, kind in REQUIRED_CASE_KEYS.items():
            value = case.get(key)
            if value is None and not case.get("ok", True) and key not in ("mode", "frame_bytes"):
                continue
            if key in ("notification_data", "event_idx"):
                if not isinstance(value, bool):
                    problems.append(f"{where}: {key} is not a boolean")
            elif not isinstance(value, kind) or isinstance(value, bool):
                problems.append(f"{where}: {key}={value!r} is not {kind}")
        for key in ("link_fraction_to_host", "link_fraction_to_device"):
            value = case.get(key)
            if isinstance(value, (int, float)) and not 0 <= value <= 1:
                problems.append(f"{where}: {key}={value} outside 0..1")
    return problems
