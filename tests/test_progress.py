"""virtio_fpga.progress: what a long step prints on stderr when stderr is a log (no terminal)."""

from __future__ import annotations

import time

import pytest

from virtio_fpga import progress


def test_steps_in_a_log_start_heartbeat_and_end(capsys, monkeypatch) -> None:
    monkeypatch.setattr(progress, "HEARTBEAT", 0.05)
    steps = progress.Steps("synthesis", 2)
    with steps.step("first"):
        time.sleep(0.18)
    with pytest.raises(RuntimeError), steps.step("second"):
        raise RuntimeError("tool crashed")
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0] == "synthesis: step 1 of 2, first ..."
    assert any(line.startswith("synthesis: step 1 of 2, first: still running [0:00]") for line in lines)
    ends = [line for line in lines if ": done in " in line or ": failed in " in line]
    assert ends[0].startswith("synthesis: step 1 of 2, first: done in 0:00 (total 0:00)")
    assert ends[1].startswith("synthesis: step 2 of 2, second: failed in 0:00")
    assert steps.done == 2
