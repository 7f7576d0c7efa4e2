"""PCIe faults from the simulated root complex against the RTL endpoint (issue 12, part 3; UltraScale+ model).

The faults come from :mod:`sim.pcie_faults` (fabric side), the driver's view from :mod:`sim.fault_scenarios`;
the DMA monitor judges every request of every run.  A broken completion (UR, CA, poisoned, none, late) must end
in DEVICE_NEEDS_RESET with the configuration interrupt (virtio 2.1.2), no DMA after it, and a clean recovery by
device reset; legal fabric behaviour (split and reordered completions, credit starvation both ways) must just
work, every byte right.  All runs are bounded in simulated time.
"""

from __future__ import annotations

import pytest

from virtio_fpga.spec import Status

pytestmark = pytest.mark.rtl

#: One run of every kind that breaks a request.  ``drop``/``late`` here are ended by the hard IP's own completion
#: timeout (error code 1001 after 8 us), so they need no long wait for the engine's (262 us by default); the
#: engine's own timeout is exercised by the ``slow`` test below on a build with a short one.
BROKEN = [
    {"kind": "ur", "target": "tx_ring"},
    {"kind": "ca", "target": "tx_data"},
    {"kind": "poison", "target": "tx_data"},
    {"kind": "drop", "target": "tx_ring", "hardip_timeout_ns": 8000.0},
    {"kind": "late", "target": "tx_ring", "hardip_timeout_ns": 8000.0, "release_late_in_recovery": True},
]


def _series(faults: list[dict], **kw) -> list[dict]:
    from sim.runner import run_scenario

    r = run_scenario(
        "sim.fault_scenarios:completion_fault_series",
        {"faults": faults, "frames": 2},
        sim_timeout_ms=kw.pop("sim_timeout_ms", 3.0),
        **kw,
    )
    assert r["guard_bytes_ok"], r["guard_violations"]
    assert r["dma_violations"] == []
    return r["runs"]


def _delta(run: dict, name: str) -> int:
    """How much one of the DMA engine's counters moved during the run."""
    return run["engine_end"][name] - run["engine_before"][name]


def _check_broken(runs: list[dict], faults: list[dict], *, needs_reset_bound_us: float) -> None:
    for run, fault in zip(runs, faults, strict=True):
        kind = fault["kind"]
        assert run["baseline_ok"], kind
        assert len(run["faults"]["injections"]) == 1, (kind, run["faults"])
        assert not run["faulty_traffic"]["ok"], kind  # the frame behind the broken read never arrives
        assert run["needs_reset_us"] is not None, f"{kind}: no DEVICE_NEEDS_RESET"
        assert run["needs_reset_us"] < needs_reset_bound_us, (kind, run["needs_reset_us"])
        assert run["config_irq"], kind
        assert run["dma_after_needs_reset"] == [], (kind, run["dma_after_needs_reset"])
        assert run["recovered"]["ok"], (kind, run["recovered"])
        status = run["status_after"]
        assert status & Status.DRIVER_OK and not status & Status.DEVICE_NEEDS_RESET, (kind, status)
        if kind in ("ur", "ca", "poison"):
            assert _delta(run, "rd_errors") == 1, (kind, run["engine_end"])
        inj = run["faults"]["injections"][0]
        if kind == "poison" and inj["addr"] % 64 + inj["nbytes"] > 64:
            # split at the 64-byte RCB: the rest of the poisoned read's completions are dropped, not data
            assert _delta(run, "rd_unexpected") >= 1, run["engine_end"]
        if kind == "late":
            assert run["during_late_ok"], "frames moved while the late completion came in"
            assert run["faults"]["injections"][0]["delivered_ns"] is not None
            assert _delta(run, "rd_unexpected") >= 1, run["engine_end"]  # dropped as unexpected


def test_broken_completions_need_reset_and_recover() -> None:
    """UR, CA (after a first good completion), poisoned data, no completion, a late completion: each ends in
    DEVICE_NEEDS_RESET within microseconds, no DMA follows, and a device reset brings traffic back."""
    _check_broken(_series(BROKEN), BROKEN, needs_reset_bound_us=40.0)


def test_split_reordered_completions_and_credit_starvation_just_work() -> None:
    """Completions split at every 64-byte RCB with reads passing each other (PCIe Base 2.3.1.1, table 2-40 D5),
    then RQ/CC blocked for long stretches, completion credits cut to 640 bytes and completions paused and
    delayed: every frame byte for byte, no DEVICE_NEEDS_RESET, bounded time."""
    from sim.runner import run_scenario

    r = run_scenario(
        "sim.fault_scenarios:legal_series", {"modes": ["reorder", "starve"], "frames": 16}, sim_timeout_ms=4.0
    )
    assert r["guard_bytes_ok"] and r["dma_violations"] == []
    for run in r["runs"]:
        assert run["ok"], (run["mode"], run["batches"])
        assert not run["status"] & Status.DEVICE_NEEDS_RESET, run["mode"]
        assert run["after_ok"], run["mode"]
        assert run["elapsed_us"] < 1500, run
    reorder, starve = r["runs"]
    assert reorder["link_to_device_completions"] > 2 * reorder["reads_seen"]  # really split
    assert reorder["engine"]["rd_errors"] == 0 and reorder["engine"]["rd_unexpected"] == 0
    assert starve["elapsed_us"] > reorder["elapsed_us"]  # the starvation really slowed it down


# ---- slow: the engine's own completion timeout (a build with a short one), and repetitions ---------------------

ENGINE_TIMEOUT = [
    # the hard IP's timeout (50 us) is longer than the engine's (4096 cycles, 16 us): the engine ends the read
    {"kind": "drop", "target": "tx_ring", "hardip_timeout_ns": 50_000.0},
    # the hard IP never gives up, so the late completion arrives with error code 0 for the old request
    {"kind": "late", "target": "tx_ring", "hardip_timeout_ns": None, "release_late_in_recovery": True},
    {"kind": "late", "target": "tx_data", "hardip_timeout_ns": None, "release_late_in_recovery": True},
]


@pytest.mark.slow
def test_engine_completion_timeout_and_late_completion() -> None:
    runs = _series(ENGINE_TIMEOUT, dma_timeout_cycles=4096)
    _check_broken(runs, ENGINE_TIMEOUT, needs_reset_bound_us=40.0)
    for run in runs:
        assert run["engine_after_fault"]["rd_timeouts"] >= 1


@pytest.mark.slow
@pytest.mark.parametrize("seed", [2])
def test_broken_completions_repeated(seed: int) -> None:
    faults = [{**f, "target": t, "seed": seed} for f in BROKEN for t in ("any", "tx_ring", "tx_data", "rx_ring")]
    runs = _series(faults, sim_timeout_ms=20.0)
    # "any"/"rx_ring": a fault on a descriptor read that the fetcher discards anyway (it ran past the first
    # descriptor not yet available) is not an error of the device: it reads them again; only check no harm
    for run, fault in zip(runs, faults, strict=True):
        assert run["recovered"]["ok"], fault
        assert run["dma_after_needs_reset"] == [] or run["needs_reset_us"] is None, fault
    _check_broken(
        [r for r, f in zip(runs, faults, strict=True) if f["target"] in ("tx_ring", "tx_data")],
        [f for f in faults if f["target"] in ("tx_ring", "tx_data")],
        needs_reset_bound_us=40.0,
    )


#: The P-tile build behind cocotbext-pcie's P-tile model, which passes completions to the user side as they come
#: (no Split Completion Table, no completion timeout of its own): the engine's timeout ends a lost read.
PTILE = [
    {"kind": "ur", "target": "tx_ring", "hardip_timeout_ns": None},
    {"kind": "ca", "target": "tx_data", "hardip_timeout_ns": None},
    {"kind": "poison", "target": "tx_data", "hardip_timeout_ns": None},
    {"kind": "drop", "target": "tx_ring", "hardip_timeout_ns": None},
    {"kind": "late", "target": "tx_data", "hardip_timeout_ns": None, "release_late_in_recovery": True},
]


@pytest.mark.slow
def test_ptile_broken_completions_need_reset_and_recover() -> None:
    runs = _series(PTILE, family="ptile", dma_timeout_cycles=4096)
    _check_broken(runs, PTILE, needs_reset_bound_us=40.0)


def test_ptile_credit_starvation_and_reordered_completions_just_work() -> None:
    """The P-tile build: completions split and reordered, then tx_st_ready and rx_st held off for long stretches,
    transmit credits shown a few at a time and frozen for stretches (``sim.ptile.TxCreditThrottle``) and
    completions delayed: every frame byte for byte, and no TLP beyond the credits the device was shown."""
    from sim.runner import run_scenario

    r = run_scenario(
        "sim.fault_scenarios:legal_series",
        {"modes": ["reorder", "starve"], "frames": 16},
        sim_timeout_ms=4.0,
        family="ptile",
    )
    assert r["guard_bytes_ok"] and r["dma_violations"] == []
    for run in r["runs"]:
        assert run["ok"], (run["mode"], run["batches"])
        assert not run["status"] & Status.DEVICE_NEEDS_RESET, run["mode"]
        assert run["after_ok"], run["mode"]
    reorder, starve = r["runs"]
    assert reorder["link_to_device_completions"] > 2 * reorder["reads_seen"]
    credits = starve["tx_credits"]
    assert credits["violations"] == [], credits
    assert reorder["tx_credits"]["held_back"] == 0  # the throttle is a pass-through until started
    assert credits["held_back"] > 1000 and credits["frozen_cycles"] > 1000, credits
    if credits["credit_stalls"] is not None:  # the design's own count of cycles a TLP waited for credits
        assert credits["credit_stalls"] > reorder["tx_credits"]["credit_stalls"], (credits, reorder["tx_credits"])
    assert starve["elapsed_us"] > reorder["elapsed_us"]
