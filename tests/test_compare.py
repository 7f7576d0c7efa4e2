"""The comparison harness: identical devices match; a planted bug is reported at the first differing event."""

from __future__ import annotations

import asyncio
import json

import pytest

from devices.softnet import Fault, SoftVirtioNet
from host.compare import compare_runs, first_difference, render_html, render_markdown
from host.inproc import InProcessTransport
from host.scenario import Scenario, find, library, random_scenario, run_scenario
from virtio_fpga.cli import main as cli_main


def traces(scenarios, faults=frozenset()):
    async def go():
        out = []
        for sc in scenarios:
            out.append(await run_scenario(InProcessTransport(SoftVirtioNet(faults=faults)), sc))
        return out

    return asyncio.run(go())


def test_first_difference() -> None:
    assert first_difference([[1], [2]], [[1], [2]]) is None
    assert first_difference([[1], [2]], [[1], [3]]) == 1
    assert first_difference([[1]], [[1], [2]]) == 1


def test_library_matches_itself_and_is_deterministic() -> None:
    scenarios = library()
    report = compare_runs(traces(scenarios), traces(scenarios))
    assert report["scenarios"] == len(scenarios) and report["mismatched"] == 0
    # every scenario produced observable events, and traffic scenarios saw used buffers and frames
    for trace in traces([find("basic")]):
        kinds = {e[0] for e in trace["events"]}
        assert {"negotiated", "used", "rx", "checkpoint"} <= kinds


def test_error_scenarios_record_needs_reset() -> None:
    for name in ("malformed-zero_len", "malformed-chain_loop", "malformed-bad_addr"):
        (trace,) = traces([find(name)])
        checkpoints = [e for e in trace["events"] if e[0] == "checkpoint"]
        assert any("DEVICE_NEEDS_RESET" in e[1] and 0 in e[2] for e in checkpoints), name
        assert "DEVICE_NEEDS_RESET" not in checkpoints[-1][1], "the reset must recover the device"


def expected_first_event(trace: dict, predicate) -> int:
    return next(i for i, e in enumerate(trace["events"]) if predicate(e))


def test_planted_used_length_bug_is_found_at_the_first_rx_completion() -> None:
    sc = [find("basic")]
    good, bad = traces(sc), traces(sc, frozenset({Fault.USED_LEN_OFF_BY_ONE}))
    report = compare_runs(good, bad)
    assert report["mismatched"] == 1
    diff = report["results"][0]["first_difference"]
    assert diff["index"] == expected_first_event(good[0], lambda e: e[0] == "used" and e[1] == 0)
    assert diff["soft"][3] + 1 == diff["soft'"][3]


def test_planted_interrupt_bug_is_found_at_the_first_suppressed_checkpoint() -> None:
    sc = [find("suppression")]
    good, bad = traces(sc), traces(sc, frozenset({Fault.IGNORE_EVENT_SUPPRESSION}))
    report = compare_runs(good, bad)
    diff = report["results"][0]["first_difference"]
    assert diff["index"] == expected_first_event(good[0], lambda e: e[0] == "checkpoint")
    assert diff["soft"][2] == [] and diff["soft'"][2] == [1, 2]  # the buggy device interrupted anyway


def test_planted_data_corruption_is_found_at_the_first_frame() -> None:
    sc = [find("basic")]
    report = compare_runs(traces(sc), traces(sc, frozenset({Fault.FLIP_RX_BYTE})))
    diff = report["results"][0]["first_difference"]
    assert diff["soft"][0] == "rx"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_scenarios_run_clean(seed: int) -> None:
    sc = random_scenario(seed)
    (trace,) = traces([sc])
    assert not [e for e in trace["events"] if e[0] == "error"], trace["events"]
    assert Scenario.from_dict(json.loads(json.dumps(sc.to_dict()))) == sc


def test_reports_render(tmp_path) -> None:
    sc = [find("basic"), find("suppression")]
    report = compare_runs(traces(sc), traces(sc, frozenset({Fault.IGNORE_EVENT_SUPPRESSION})))
    page = render_html(report)
    assert "<svg" in page and "differs at event" in page
    assert "| suppression | **differs" in render_markdown(report)


def test_cli_compare_json_and_exit_status(capsys, tmp_path) -> None:
    report_file = tmp_path / "r.html"
    rc = cli_main(["compare", "--devices", "soft,soft", "--scenario", "basic", "--json", "--report", str(report_file)])
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert rc == 0 and out["matched"] == 1 and out["mismatched"] == 0 and out["scenarios"] == 1
    # progress on stderr (a log here: a line when the step starts and one when it ends), never on stdout
    lines = captured.err.strip().splitlines()
    assert lines[0] == "compare: step 1 of 1, 1 scenarios on the in-process software device ...", lines
    assert lines[-1].startswith("compare: step 1 of 1, 1 scenarios on the in-process software device: done in 0:")
    assert report_file.read_text().startswith("<!doctype html>")
    rc = cli_main(["compare", "--devices", "soft,soft", "--scenario", "basic", "--plant", "flip-rx-byte", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 1 and out["mismatched"] == 1


def test_cli_compare_bad_arguments(capsys) -> None:
    assert cli_main(["compare", "--devices", "soft,soft", "--scenario", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no scenario named 'nope'" in err[0]
    assert cli_main(["compare", "--devices", "soft,soft", "--plant", "bogus"]) == 2
    assert "unknown fault" in capsys.readouterr().err
