"""Formal checks of the ring engine's stages (hdl/formal): the quick ones here, all of them under -m slow.

The default suite checks the properties marked ``ci`` (each proven by k-induction or bounded in seconds) and shows that
every planted bug (a stage instance the harness miswires: a used write one slot off, an RX write past a
buffer's end, a ring read after reset, a TX read off its buffer) makes its property fail with a trace.  The
bounded ones, which take longer, run in ``make test-slow`` and ``make formal``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from hdl.formal import harnesses
from hdl.formal.properties import PROPERTIES, select
from hdl.formal.runner import run_property

JOBS = min(2, os.cpu_count() or 1)


def _run_all(props, workdir: Path, mutation_of=lambda p: None):
    with ThreadPoolExecutor(JOBS) as pool:
        return list(pool.map(lambda p: run_property(p, workdir, mutation=mutation_of(p), timeout=1800), props))


def test_ci_properties_hold(tmp_path: Path) -> None:
    results = _run_all(select(ci_only=True), tmp_path)
    assert results
    for r in results:
        assert r.status in ("proven", "bounded"), f"{r.name}: {r.summary()} {r.message or ''}"
        assert r.reached is not None, f"{r.name}: the checked event never happens (vacuous)"


PLANTED = [p for p in PROPERTIES if p.planted]


@pytest.mark.parametrize("prop", PLANTED, ids=[f"{p.name}+{p.planted}" for p in PLANTED])
def test_planted_bug_fails_with_a_trace(tmp_path: Path, prop) -> None:
    r = run_property(prop, tmp_path, mutation=prop.planted, timeout=900)
    assert r.status == "failed", r.summary()
    assert r.trace and Path(r.trace).is_file() and Path(r.trace).stat().st_size > 0
    assert r.failed_at and "hdl/formal/harnesses.py" in r.failed_at  # names the property's own assertion
    assert r.depth is not None and r.depth <= prop.depth


def test_every_planted_bug_belongs_to_its_harness() -> None:
    for p in PROPERTIES:
        harness = p.make(None)
        assert p.planted is None or p.planted in type(harness).mutations
    with pytest.raises(ValueError, match="no check"):
        harnesses.UsedHarness("no_such_check")


def test_cli_lists_and_refuses_unknown_names() -> None:
    cli = [sys.executable, "-m", "virtio_fpga.cli", "formal"]
    listed = subprocess.run([*cli, "--list"], capture_output=True, text=True, check=True).stdout
    assert all(p.name in listed for p in PROPERTIES)
    bad = subprocess.run([*cli, "no.such"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown property no.such" in bad.stderr and len(bad.stderr.splitlines()) == 1


@pytest.mark.slow
def test_all_properties_hold(tmp_path: Path) -> None:
    results = _run_all(PROPERTIES, tmp_path)
    bad = [f"{r.name}: {r.summary()} {r.message or ''}" for r in results if r.status not in ("proven", "bounded")]
    assert not bad, bad
    assert all(r.reached is not None for r in results)
