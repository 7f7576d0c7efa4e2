"""The stateful fuzzer (issue 12 part 2): campaigns on both devices, and proof that its checks can fail.

Default suite: a few hundred software-device sequences, planted bugs found, a few RTL sequences.  ``slow``: the
campaigns of the issue (software device >= 10,000 sequences, RTL >= 1,000), over every core.
"""

from __future__ import annotations

import json

import pytest

from devices.softnet import Fault, SoftVirtioNet
from host.fuzz import DmaRules, Failure
from host.fuzz_machine import Job, run_soft
from sim.fuzz import run_campaign, run_job
from virtio_fpga.cli import main

BASIC = [["reset", {"features": ["IN_ORDER", "NOTIFICATION_DATA"], "sizes": [4, 4]}]]


def _traffic(frame_len: int = 60) -> list:
    return [["rx", {"kind": "ok", "ndesc": 1}], ["tx", {"kind": "ok", "frame_len": frame_len, "ndesc": 1}]]


def _assert_clean(result: dict, sequences: int) -> None:
    assert result["failures"] == 0, result["found"] or result["errors"]
    assert result["sequences"] >= sequences
    assert result["hangs"] == 0 and result["stray_dma"] == 0
    assert result["faults"] > 0 and result["resets"] > 0 and result["frames"] > 0
    assert result["needs_reset_expected"] > 0
    assert result["needs_reset_seen"] >= result["needs_reset_expected"]


def test_dma_rules_direction_length_and_reset() -> None:
    rules = DmaRules(msi_window=(0xFEE0_0000, 0xFEF0_0000))
    rules.publish(("buf", 1, 1, 0), 0x1000, 100, "r")
    rules.publish(("buf", 0, 2, 0), 0x2000, 100, "w")
    rules.check("R", 0x1000, 100)
    rules.check("W", 0x2000 + 50, 50)
    rules.check("W", 0xFEE0_0004, 4)
    assert not rules.violations
    rules.check("W", 0x1000, 4)  # a device-readable buffer written
    rules.check("W", 0x2000 + 99, 2)  # one byte past the end
    rules.clear()
    rules.check("R", 0x1000, 1)  # after a reset read back 0 nothing is published
    assert len(rules.violations) == 3


def test_soft_program_passes_and_recovers() -> None:
    program = BASIC + _traffic(14) + _traffic(1514) + [["sync", {}]]
    stats = run_soft(program)
    assert stats.frames == 2 + 2  # two in the program, two in the recovery tail
    assert stats.needs_reset_seen == 0


def test_malformed_descriptor_expects_needs_reset() -> None:
    program = BASIC + [["tx", {"kind": "zero_len", "frame_len": 60, "ndesc": 2}], ["sync", {}]]
    stats = run_soft(program)
    assert stats.needs_reset_expected == stats.needs_reset_seen == 1


def test_missing_needs_reset_is_a_failure(monkeypatch) -> None:
    """A device that accepts zero-length descriptors is caught: the model predicts NEEDS_RESET (2.8.4)."""
    original = SoftVirtioNet._validate_desc

    def lenient(self, q, desc, position):
        if desc["len"] == 0:
            return
        original(self, q, desc, position)

    monkeypatch.setattr(SoftVirtioNet, "_validate_desc", lenient)
    program = BASIC + _traffic() + [["tx", {"kind": "zero_len", "frame_len": 60, "ndesc": 2}], ["sync", {}]]
    with pytest.raises(Failure) as info:
        run_soft(program)
    assert info.value.kind == "needs_reset_missing"


def test_write_past_a_buffer_is_stray_dma(monkeypatch) -> None:
    """A receive path that writes one byte past a buffer's end is caught at that access (host memory allows it:
    the buffer's slab is larger than the length the driver published)."""
    original = SoftVirtioNet._scatter_rx

    async def overrun(self, q, chain, frame, token):
        written = await original(self, q, chain, frame, token)
        last = chain.descriptors[-1]
        await self._dma_write(last["addr"] + last["len"], b"\x00")
        return written

    monkeypatch.setattr(SoftVirtioNet, "_scatter_rx", overrun)
    with pytest.raises(Failure) as info:
        run_soft(BASIC + _traffic() + [["sync", {}]])
    assert info.value.kind == "stray_dma"
    assert "write of 1 bytes" in info.value.detail


def test_used_element_for_unavailable_descriptor_is_caught(monkeypatch) -> None:
    """A device that ignores the wrap counter (takes any AVAIL bit as available) consumes the lying head."""
    monkeypatch.setattr(SoftVirtioNet, "_is_available", lambda self, q, flags: bool(flags & 0x8080))
    program = BASIC + [["rx", {"kind": "ok", "ndesc": 1}], ["lie", {"queue": 1}], ["sync", {}]]
    with pytest.raises(Failure) as info:
        run_soft(program)
    assert info.value.kind == "used_mismatch"


def test_soft_campaign() -> None:
    """A few hundred sequences over two processes: no failure, every kind of check exercised."""
    result = run_campaign("soft", 300, seed=12, jobs=2)
    _assert_clean(result, 300)


@pytest.mark.parametrize(
    ("fault", "kind", "longest"),
    [
        (Fault.USED_LEN_OFF_BY_ONE, "used_mismatch", 20),
        (Fault.FLIP_RX_BYTE, "payload", 20),
        (Fault.IGNORE_EVENT_SUPPRESSION, "interrupt", None),  # needs a DISABLE and two syncs: shrinks less far
    ],
)
def test_planted_bug_is_found_and_shrunk(fault: Fault, kind: str, longest: int | None) -> None:
    result = run_job("soft", 7, 300, faults=(fault.value,), shrink_budget=60)
    found = result["failure"]
    assert found is not None, f"{fault.value} not found"
    assert found["kind"] == kind
    assert result["shrink_runs"] > 0
    if longest is not None:
        assert len(found["program"]) <= longest
    with pytest.raises(Failure):  # the shrunk program replays
        run_soft(found["program"], seed=7, faults=frozenset([fault]))


def test_cli_json_contract(capsys) -> None:
    assert main(["fuzz", "--device", "soft", "--count", "20", "--jobs", "1", "--seed", "3", "--json"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    # stderr is no terminal here: progress comes as plain lines, the last one with the totals
    assert f"fuzz soft: {out['sequences']} of 20 sequences (done), 0 failures" in captured.err, captured.err
    for key in ("device", "sequences", "steps", "failures", "hangs", "stray_dma"):
        assert key in out
    assert out["device"] == "soft" and out["failures"] == 0 and out["sequences"] >= 20
    assert "needs_reset_expected" in out and "needs_reset_seen" in out


def test_cli_saves_and_replays_a_failure(tmp_path, capsys) -> None:
    argv = ["fuzz", "--count", "40", "--jobs", "1", "--fault", "flip-rx-byte", "--json", "--save-dir", str(tmp_path)]
    assert main(argv) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["failures"] >= 1 and out["replay"]
    with open(out["replay"][0]) as f:
        scenario = json.load(f)
    assert scenario["device"] == "soft" and scenario["faults"] == ["flip-rx-byte"]
    assert main(["fuzz", "--replay", out["replay"][0], "--json"]) == 1
    replay = json.loads(capsys.readouterr().out)
    assert replay["ok"] is False and replay["kind"] == "payload"


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["fuzz", "--count", "0"], "at least 1"),
        (["fuzz", "--jobs", "x"], "whole number"),
        (["fuzz", "--device", "fpga"], "invalid choice"),
        (["fuzz", "--fault", "nope"], "not one of"),
        (["fuzz", "--device", "rtl", "--fault", "flip-rx-byte"], "software device"),
        (["fuzz", "--replay", "/nonexistent/x.json"], "cannot read"),
    ],
)
def test_bad_arguments_get_one_line(argv, needle, capsys) -> None:
    try:
        status = main(argv)
    except SystemExit as exc:
        status = exc.code
    assert status == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_job_counts_sequences() -> None:
    job = Job("soft", lambda p: run_soft(p, seed=1), seed=1, count=10, steps=10)
    stats = job.run()
    assert stats.sequences >= 10 and stats.steps > 0 and job.failure is None


@pytest.mark.rtl
def test_rtl_campaign() -> None:
    """A few RTL sequences, one simulator per core; every used element, NEEDS_RESET and DMA checked."""
    result = run_campaign("rtl", 8, seed=3, jobs=2, steps=12)
    assert result["failures"] == 0, result["found"] or result["errors"]
    assert result["sequences"] >= 8 and result["stray_dma"] == 0 and result["hangs"] == 0


@pytest.mark.slow
def test_soft_campaign_10000() -> None:
    result = run_campaign("soft", 10_000, seed=1000)
    _assert_clean(result, 10_000)


@pytest.mark.slow
@pytest.mark.rtl
def test_rtl_campaign_1000() -> None:
    result = run_campaign("rtl", 1_000, seed=2000, steps=20)
    assert result["failures"] == 0, result["found"] or result["errors"]
    assert result["sequences"] >= 1_000


PLANTED_KIND = {
    # the used element one slot off: the driver never sees it where it must be, the monitor sees the write
    "used_slot_off": ("stray_dma", "hang", "used_mismatch"),
    # RX buffers taken as 64 bytes longer: the frame of a too-small chain is written past its end
    "rx_past_end": ("stray_dma", "needs_reset_missing"),
    # queue registers survive a device reset: the next bring-up's queues keep the old positions (the fuzzer
    # reuses its ring memory, so the reads land in the new ring): the queues stop working after the reset
    "read_after_reset": ("stray_dma", "hang", "needs_reset_unexpected", "used_mismatch"),
}


@pytest.mark.rtl
@pytest.mark.parametrize(
    "bug",
    [
        "used_slot_off",
        pytest.param("rx_past_end", marks=pytest.mark.slow),  # each planted build costs a simulator run or two
        pytest.param("read_after_reset", marks=pytest.mark.slow),
    ],
)
def test_planted_gateware_bug_is_found(bug: str) -> None:
    """The DMA monitor's planted gateware bugs (test-only builds) are found by the fuzzer, without shrinking."""
    result = run_job("rtl", 5, 20, steps=20, shrink=False, planted_bug=bug)
    found = result["failure"]
    assert found is not None, f"planted bug {bug} not found"
    assert found["kind"] in PLANTED_KIND[bug], found
