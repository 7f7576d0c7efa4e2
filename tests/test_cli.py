"""The command line: JSON contract of the demo, one-line errors for bad arguments."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from virtio_fpga.cli import main


def test_demo_soft_json_contract(capsys) -> None:
    assert main(["demo", "--device", "soft", "--json", "--frames", "20"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1, "exactly one JSON object"
    result = json.loads(out[0])
    assert result["device"] == "soft"
    int(result["device_features"], 16) and int(result["driver_features"], 16)
    assert result["device_features"].startswith("0x") and result["driver_features"].startswith("0x")
    assert "RING_PACKED" in result["negotiated"] and "VERSION_1" in result["negotiated"]
    assert result["frames_sent"] == result["frames_received"] == 20
    assert result["bytes"] > 0 and result["errors"] == 0


def test_demo_exit_status_is_nonzero_when_frames_are_lost(capsys) -> None:
    # A driver that refuses RING_PACKED gets FEATURES_OK refused: no frame can come back.
    assert main(["demo", "--device", "soft", "--json", "--disable", "RING_PACKED"]) == 1
    result = json.loads(capsys.readouterr().out)
    assert result["errors"] >= 1 and result["frames_received"] == 0


def test_demo_report_has_lspci_view(capsys) -> None:
    assert main(["demo", "--frames", "4"]) == 0
    text = capsys.readouterr().out
    assert "[1af4:1041]" in text and "VirtIO: COMMON" in text and "MSI-X" in text
    assert "driver features" in text and "4 frames sent, 4 received, 4 intact" in text


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["demo", "--device", "bogus"], "unknown device 'bogus'"),
        (["demo", "--frames", "0"], "must be positive"),
        (["demo", "--disable", "WARP_DRIVE"], "unknown feature name"),
        (["demo", "--min-size", "100", "--max-size", "50"], "larger than --max-size"),
        (["no-such-command"], "invalid choice"),
    ],
)
def test_bad_arguments_get_one_line(argv, needle) -> None:
    proc = subprocess.run([sys.executable, "-m", "virtio_fpga.cli", *argv], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr
