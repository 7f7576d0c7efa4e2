"""The bench's accounting (sim.benchmath, sim.throughput.classify_requests), its report, and one real short case.

The arithmetic tests are fast and need no simulator; ``test_bench_cli_one_case`` runs one short loopback case
through ``virtio-fpga bench`` in Icarus and checks the document it writes, that ``--json`` keeps stdout one
JSON document and that progress goes to stderr.  The sweep itself is a benchmark (``make bench``), not a test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from sim import benchmath as bm

ROOT = Path(__file__).resolve().parent.parent


def test_link_limits_match_the_issue_figures() -> None:
    """Gen3 x8: 7.88 GB/s raw; 256-byte payloads: 7.15 GB/s of writes, 7.25 GB/s of completions."""
    lim = bm.link_limits(256)
    assert lim["raw"] == pytest.approx(7.877e9, rel=1e-3)
    assert lim["write"] == pytest.approx(7.15e9, rel=2e-3)
    assert lim["completion"] == pytest.approx(7.25e9, rel=2e-3)
    assert bm.link_limits(512)["raw"] == pytest.approx(2 * lim["raw"])
    assert bm.link_limits(128)["completion"] == pytest.approx(lim["completion"] / 2)


def _raw(cycles: int, frames: int, *, to_dev_payload: int, to_host_payload: int, **extra) -> dict:
    link = {
        "to_host": dict(tlps=10, tlp_wire_bytes=to_host_payload + 240, write_payload_bytes=to_host_payload,
                        completion_payload_bytes=0, writes=10, completions=0, read_requests=0, dllps=1, dllp_bytes=8),
        "to_device": dict(tlps=10, tlp_wire_bytes=to_dev_payload + 200, write_payload_bytes=0,
                          completion_payload_bytes=to_dev_payload, writes=0, completions=10, read_requests=0,
                          dllps=1, dllp_bytes=8),
    }  # fmt: skip
    requests = dict(desc_reads=4, event_reads=2, used_writes=frames, data_reads=frames, data_writes=frames)
    window = dict(cycles=cycles, frames=frames, descriptors=2 * frames, irqs=3, reads_in_flight_max=5,
                  reads_in_flight_mean=2.5, read_round_trip_mean=40.0, requests=requests, link=link)  # fmt: skip
    return {"ok": True, "errors": [], "bringup_cycles": 1500, "warmup": 16, "window": window,
            "notification_data": True, "event_idx": True, "guard_bytes_ok": True, **extra}  # fmt: skip


def test_case_figures_arithmetic() -> None:
    case = bm.Case("loopback", 1500, 500)
    cycles, frames = 10_000, 100  # 100 cycles/frame at 250 MHz: 2.5 Mpps, 40 us
    seconds = cycles / 250e6
    lim = bm.link_limits(256)
    to_dev = int(lim["completion"] * seconds / 2)  # half the completion limit
    to_host = int(lim["write"] * seconds / 4)
    row = bm.case_figures(case, _raw(cycles, frames, to_dev_payload=to_dev, to_host_payload=to_host))
    assert row["ok"] and row["frames"] == frames
    assert row["cycles_per_frame"] == 100
    assert row["mpps"] == pytest.approx(2.5)
    assert row["gbps"] == pytest.approx(1500 * 8 * 2.5e6 / 1e9)
    assert row["link_fraction_to_device"] == pytest.approx(0.5, abs=1e-3)
    assert row["link_fraction_to_host"] == pytest.approx(0.25, abs=1e-3)
    raw_dev = (to_dev + 200 + 8) / seconds / lim["raw"]
    assert row["link_raw_fraction_to_device"] == pytest.approx(raw_dev, abs=1e-3)
    assert row["desc_reads_per_desc"] == pytest.approx(4 / 200)
    assert row["irqs_per_frame"] == pytest.approx(0.03)
    assert row["used_writes_per_frame"] == 1
    assert row["reads_in_flight_max"] == 5 and row["reads_in_flight_mean"] == 2.5
    assert row["bringup_cycles"] == 1500
    assert row["label"] == "loopback-1500B-500ns"


def test_case_figures_of_a_failed_run() -> None:
    row = bm.case_figures(bm.Case("rx", 64, 0, False, False), {"ok": False, "errors": ["no progress"]})
    assert not row["ok"] and row["cycles_per_frame"] is None and row["frames"] == 0
    assert row["label"] == "rx-64B-0ns-nd-ei"
    guard = bm.case_figures(bm.Case("tx", 64, 0), _raw(100, 1, to_dev_payload=1, to_host_payload=1,
                                                       guard_bytes_ok=False))  # fmt: skip
    assert not guard["ok"] and "DMA outside a buffer" in guard["errors"]


def test_classify_requests_by_ring_address() -> None:
    from sim.throughput import classify_requests

    def vq(base: int) -> SimpleNamespace:
        return SimpleNamespace(
            ring=SimpleNamespace(iova=base, size=64 * 16),
            driver_area=SimpleNamespace(iova=base + 0x1000, size=4),
            device_area=SimpleNamespace(iova=base + 0x1040, size=4),
        )

    rx, tx = vq(0x10000), vq(0x20000)
    log = [
        (1, "R", 0x10000, 256),  # rx descriptors
        (2, "R", 0x20000 + 16 * 63, 16),  # tx descriptor, last slot
        (3, "R", 0x21000, 4),  # tx driver event suppression
        (4, "R", 0x50000, 76),  # a TX buffer
        (5, "W", 0x10010, 16),  # rx used element
        (6, "W", 0x60000, 512),  # an RX buffer
        (7, "W", 0x11040, 4),  # device area: not a used element
        (8, "R", 0x20000 + 16 * 64, 16),  # just past the tx ring: data
    ]
    out = classify_requests(log, {"rx": rx, "tx": tx})
    assert out["desc_reads"] == 2 and out["rx_desc_reads"] == 1 and out["tx_desc_reads"] == 1
    assert out["event_reads"] == 1
    assert out["data_reads"] == 2
    assert out["used_writes"] == 1 and out["rx_used_writes"] == 1
    assert out["data_writes"] == 1 and out["other_writes"] == 1


def test_matrices_cover_every_axis() -> None:
    full = bm.full_matrix()
    assert len(full) == 3 * 7 * 4 * 2 * 2 == len({c.label for c in full})
    default = bm.default_matrix()
    assert len({c.label for c in default}) == len(default) < len(full) / 4
    assert {c.mode for c in default} == set(bm.MODES)
    assert {c.frame_bytes for c in default} == set(bm.SIZES)
    assert {c.read_latency_ns for c in default} == set(bm.LATENCIES_NS)
    assert {c.notification_data for c in default} == {c.event_idx for c in default} == {True, False}
    loop_on = {(c.frame_bytes, c.read_latency_ns) for c in default if c.mode == "loopback" and c.disable() == []}
    assert loop_on == {(s, lat) for s in bm.SIZES for lat in bm.LATENCIES_NS}
    assert bm.Case("loopback", 64, 0, False, True).scenario_args()["disable"] == ["NOTIFICATION_DATA"]


def _doc(rows: list[dict]) -> dict:
    return {"clock_mhz": 250, "data_width": 256, "eth_width": 64, "cases": rows, "command": "test"}


def test_schema_validation() -> None:
    lim = bm.link_limits(256)
    good = bm.case_figures(bm.Case("loopback", 64, 0), _raw(5000, 100, to_dev_payload=int(lim["completion"] * 2e-5),
                                                            to_host_payload=1000))  # fmt: skip
    failed = bm.case_figures(bm.Case("tx", 64, 250), {"ok": False, "errors": ["x"]})
    assert bm.validate(_doc([good, failed])) == []
    assert any("data_width" in p for p in bm.validate({"clock_mhz": 250, "cases": []}))
    assert any("mode" in p for p in bm.validate(_doc([{**good, "mode": "sideways"}])))
    assert any("outside 0..1" in p for p in bm.validate(_doc([{**good, "link_fraction_to_host": 1.5}])))
    assert any("event_idx" in p for p in bm.validate(_doc([{**good, "event_idx": 1}])))
    missing = dict(good)
    del missing["desc_reads_per_desc"]
    assert any("desc_reads_per_desc" in p for p in bm.validate(_doc([missing])))
    json.dumps(_doc([good, failed]))  # JSON-able


def test_report_png_and_html(tmp_path: Path) -> None:
    from virtio_fpga.bench_report import write_reports

    rows = []
    for lat in (0, 500):
        for size in (64, 1500):
            cpf = 50 + size / 8 + lat / 4
            r = _raw(int(cpf * 100), 100, to_dev_payload=1000, to_host_payload=1000)
            rows.append(bm.case_figures(bm.Case("loopback", size, lat), r))
    rows.append(bm.case_figures(bm.Case("rx", 64, 0), {"ok": False, "errors": ["stalled <here>"]}))
    path = tmp_path / "bench.json"
    png, page = write_reports(_doc(rows), path)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = page.read_text()
    assert "data:image/png;base64," in text and text.count("<tr") == len(rows) + 1
    assert "stalled &lt;here&gt;" in text  # errors escaped


def test_bench_cli_bad_arguments() -> None:
    from virtio_fpga.cli import main

    assert main(["bench", "--sizes", "65", "--list"]) == 2  # no case selected
    assert main(["bench", "--case", "nonsense", "--list"]) == 2
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--jobs", "0"])
    assert exc.value.code == 2


def test_bench_cli_latency_outside_the_sweep(capsys) -> None:
    from virtio_fpga.cli import main

    assert main(["bench", "--list", "--read-latency-ns", "700", "--mode", "tx"]) == 0
    labels = capsys.readouterr().out.split()
    assert labels and all(lab.startswith("tx-") and lab.endswith("-700ns") for lab in labels)


@pytest.mark.rtl
def test_bench_cli_one_case(tmp_path: Path) -> None:
    """One short real case end to end: the document, its schema, the files, stdout JSON, progress on stderr."""
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "virtio_fpga.cli", "bench", "--case", "loopback-64B-0ns", "--frames", "16",
         "--jobs", "1", "--json", "--output", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    assert doc == json.loads(out.read_text())
    assert bm.validate(doc) == []
    assert "case 1 of 1" in proc.stderr
    (case,) = doc["cases"]
    assert case["ok"], case["errors"]
    assert case["frames"] == 16 and case["mode"] == "loopback" and case["frame_bytes"] == 64
    assert case["notification_data"] and case["event_idx"]
    assert 1 < case["cycles_per_frame"] < 10_000
    assert case["mpps"] == pytest.approx(250 / case["cycles_per_frame"], rel=1e-3)
    assert 0 < case["link_fraction_to_device"] < 1 and 0 < case["link_fraction_to_host"] < 1
    assert case["reads_in_flight_max"] >= 1
    assert 0 < case["desc_reads_per_desc"] <= 1  # every descriptor was read, none twice on average
    assert case["used_writes_per_frame"] > 0
    assert case["bringup_cycles"] > 100 and doc["bringup_cycles"] == case["bringup_cycles"]
    assert out.with_suffix(".png").exists() and out.with_suffix(".html").exists()


def test_from_json_renders_markdown_without_running(tmp_path: Path, capsys) -> None:
    from virtio_fpga.cli import main

    row = bm.case_figures(bm.Case("loopback", 64, 500), _raw(23_700, 100, to_dev_payload=1000, to_host_payload=800))
    saved = tmp_path / "bench.json"
    saved.write_text(json.dumps({**_doc([row]), "bringup_cycles": 1503}))
    assert main(["bench", "--from-json", str(saved), "--markdown", "--no-plot"]) == 0
    out = capsys.readouterr().out
    assert "Driver bring-up: 1503 cycles" in out
    assert "| loopback-64B-500ns | 237.0 | 1.05 |" in out
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"cases": []}))
    assert main(["bench", "--from-json", str(bad)]) == 2


def test_link_limits_follow_the_link_the_model_trains_to() -> None:
    """The P-tile bench is Gen4 x8: twice the Gen3 x8 rate; the result's link_generation/link_lanes select it."""
    gen3, gen4 = bm.link_limits(256), bm.link_limits(256, generation=4, lanes=8)
    assert gen4["raw"] == pytest.approx(2 * gen3["raw"]) and gen4["write"] == pytest.approx(2 * gen3["write"])
    raw = _raw(10_000, 100, to_dev_payload=100_000, to_host_payload=100_000)
    g3 = bm.case_figures(bm.Case("loopback", 64, 0), raw)
    g4 = bm.case_figures(bm.Case("loopback", 64, 0), {**raw, "link_generation": 4, "link_lanes": 8})
    assert g4["link_fraction_to_device"] == pytest.approx(g3["link_fraction_to_device"] / 2, abs=1e-4)
    with pytest.raises(ValueError):
        bm.link_limits(256, generation=2)
