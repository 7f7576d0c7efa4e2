"""The DMA monitor against the RTL: gateware bugs planted on purpose are caught at the TLP that shows them.

Each planted bug (``hdl.virtio.core.PLANTED_BUGS``, a test-only build parameter that the CLI never passes) is
a build of its own.  The runs use ``dma_monitor="stop"``: the scenario ends at the first violation and the
result carries it, so the test can check the rule, the TLP and the time; with the default ``"fail"`` the same
run is a failed simulation.  That every clean run stays clean is what every other RTL test checks: the
monitor is on in all of them.
"""

from __future__ import annotations

import pytest

from hdl.virtio.core import PLANTED_BUGS, VirtioNetCore

pytestmark = pytest.mark.rtl


def test_planted_bugs_need_the_explicit_test_parameter() -> None:
    assert VirtioNetCore().planted_bug is None
    with pytest.raises(ValueError, match="planted_bug"):
        VirtioNetCore(planted_bug="no_such_bug")
    from hdl.top import CORES

    assert set(CORES) == {"virtio", "test"}  # no core name (hence no CLI option) builds a planted bug


def _first_violation(scenario: str, args: dict, bug: str, **kw) -> tuple[dict, dict]:
    from sim.runner import run_scenario

    assert bug in PLANTED_BUGS
    r = run_scenario(scenario, args, dma_monitor="stop", planted_bug=bug, **kw)
    assert r["dma_violations"], f"planted bug {bug} went unnoticed: {r['dma_monitor']}"
    assert r["stopped_by_dma_monitor"]
    return r, r["dma_violations"][0]


def test_used_element_one_slot_off_is_caught_at_the_first_used_write() -> None:
    r, v = _first_violation("host.demo:run_demo", {"frames": 4}, "used_slot_off")
    # the first used element the device writes (transmitq: its frame was read first) lands in slot 1, not 0
    assert (v["rule"], v["tlp"], v["length"], v["queue"]) == ("used-slot", "MemWr", 8, 1)
    assert "wrote slot 1 byte 8, the used position is slot 0" in v["detail"]
    assert r["dma_monitor"]["used_elements"] == 0 and r["dma_monitor"]["violations"] == 1
    assert v["cycle"] > 0 and v["time_ns"] > 0


def test_a_stray_dma_fails_the_run_by_default() -> None:
    from sim.runner import SimulationError, run_scenario

    with pytest.raises(SimulationError, match="used-slot"):
        run_scenario("host.demo:run_demo", {"frames": 2}, planted_bug="used_slot_off")


@pytest.mark.slow
def test_rx_write_past_a_buffers_end_is_caught_at_that_write() -> None:
    # chains of two descriptors: a 1000-byte frame fills the first one, and the bug writes 64 bytes beyond it
    # (into the second descriptor's memory: the guard bytes cannot see this, the monitor does)
    r, v = _first_violation(
        "host.demo:run_demo", {"frames": 2, "min_size": 1000, "max_size": 1000, "rx_chain": 2}, "rx_past_end"
    )
    assert (v["rule"], v["tlp"], v["queue"]) == ("beyond-buffer", "MemWr", 0)
    assert "ends at" in v["detail"]
    assert r["guard_bytes_ok"]


@pytest.mark.slow
def test_read_after_reset_is_caught_at_the_first_read_of_the_old_ring() -> None:
    from host.scenario import find

    r, v = _first_violation("host.scenario:run_scenario", {"scenario": find("reset").to_dict()}, "read_after_reset")
    assert (v["rule"], v["tlp"]) == ("after-reset", "MemRd")
    assert "ring of queue" in v["detail"] and "ended by the device reset" in v["detail"]
