"""The fuzzer against the RTL: a persistent simulator process that executes driver programs, and campaigns.

Hypothesis runs in an ordinary Python process (:class:`host.fuzz_machine.Job`); the RTL runs under cocotb in a
simulator process.  :class:`RtlWorker` starts one simulation (``sim.runner.run_cocotb`` of this module's
``fuzz_worker`` test, in a thread of the caller) and talks to it over two named pipes: one JSON line per
program in, one JSON line per result out.  The simulation builds the bench once, enumerates once, and then runs
program after program on the same endpoint, each starting with a device reset (which is itself under test: a
reset that does not clear everything fails the next program).  While it waits for the next program the
simulator does not advance, so waiting costs no simulated time.  Every wait inside a program is bounded in
simulated time (``POLL_NS`` x ``poll_limit``); a hang fails the program and the worker is restarted.

Stray DMA: every memory request the endpoint puts on the requester bus (``BusCounters.timed_requests``, decoded
from RQ by :class:`sim.testbench.EndpointBench`) is checked against the regions the driver published
(:class:`host.fuzz.DmaRules`) after each step.  When the bench has the TLP-level monitor of issue 12 part 1
(``bench.dma_monitor``), its violations count as well.

Campaigns (:func:`run_campaign`) run ``jobs`` independent processes, each with its own hypothesis seed and (for
the RTL) its own simulator.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import select
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from host.fuzz import DmaRules, Failure, FuzzDriver, Stats

POLL_NS = 250  # one poll of the rings: 62 cycles at 250 MHz
POLL_LIMIT = 400  # -> every wait is bounded by 100 us of simulated time
RESET_POLLS = 200
WORKER_TIMEOUT_S = 900.0  # wall clock for one program: only a simulator that died or looped outside simulated time


# ============================================ the simulator side (cocotb) ====================================
try:
    import cocotb
except ImportError:  # the campaign side imports this module without a simulator
    cocotb = None

if cocotb is not None and os.environ.get("VIRTIO_FPGA_FUZZ_REQ"):

    @cocotb.test()
    async def fuzz_worker(dut) -> None:
        """Run programs from the request pipe until told to stop (or until a hang poisons the device)."""
        from sim.testbench import EndpointBench
        from sim.transport import CocotbPcieTransport

        bench = await EndpointBench.create(dut, seed=int(os.environ.get("VIRTIO_FPGA_SEED", "1")))
        await bench.init()
        transport = CocotbPcieTransport(bench)
        req = open(os.environ["VIRTIO_FPGA_FUZZ_REQ"])  # noqa: SIM115 - one pipe for the whole simulation
        resp = open(os.environ["VIRTIO_FPGA_FUZZ_RESP"], "w")  # noqa: SIM115
        while True:
            line = req.readline()
            if not line:
                break
            msg = json.loads(line)
            if msg.get("quit"):
                break
            out = await _execute(bench, transport, msg["program"], msg.get("seed", 0))
            resp.write(json.dumps(out) + "\n")
            resp.flush()
            if out.get("restart"):
                break
        resp.close()
        req.close()


async def _execute(bench, transport, program: list, seed: int) -> dict:
    """One program on the endpoint; the result as a JSON-able dict."""
    rules = DmaRules()
    counters = bench.counters
    counters.timed_requests.clear()
    counters.requests.clear()
    monitor = getattr(bench, "dma_monitor", None)
    seen_monitor = len(getattr(monitor, "violations", []) or []) if monitor is not None else 0

    async def drain() -> None:
        nonlocal seen_monitor
        log = counters.timed_requests
        for cycle, kind, addr, nbytes in log:
            rules.check(kind, addr, nbytes, f" (cycle {cycle})")
        log.clear()
        counters.requests.clear()
        if monitor is not None:
            found = list(getattr(monitor, "violations", []) or [])
            for v in found[seen_monitor:]:
                rules.violations.append(f"DMA monitor: {v}")
            seen_monitor = len(found)

    async def poll() -> None:
        await transport.sleep(POLL_NS * 1e-9)

    driver = FuzzDriver("rtl", seed)
    started = transport.now()
    try:
        stats = await driver.run(
            transport,
            program,
            dma_rules=rules,
            drain=drain,
            poll=poll,
            poll_limit=POLL_LIMIT,
            reset_polls=RESET_POLLS,
        )
    except Failure as exc:
        return {
            "ok": False,
            "kind": exc.kind,
            "detail": f"step {driver._step}: {exc.detail}",
            "stats": driver.stats.as_dict(),
            "restart": exc.kind == "hang",
            "sim_us": (transport.now() - started) * 1e6,
        }
    except Exception as exc:  # a transport error (e.g. a completion timeout outside the checks) is a failure too
        return {
            "ok": False,
            "kind": "exception",
            "detail": f"step {getattr(driver, '_step', '?')}: {type(exc).__name__}: {exc}",
            "stats": driver.stats.as_dict(),
            "restart": True,
            "sim_us": (transport.now() - started) * 1e6,
        }
    return {"ok": True, "stats": stats.as_dict(), "sim_us": (transport.now() - started) * 1e6}


# ============================================ the campaign side ==============================================
class RtlWorker:
    """A simulator process running :func:`fuzz_worker`; :meth:`run` executes one program in it."""

    def __init__(self, seed: int = 1, planted_bug: str | None = None) -> None:
        self.seed = seed
        #: TEST ONLY: a build of the core with a deliberate bug (``hdl.virtio.core.PLANTED_BUGS``)
        self.planted_bug = planted_bug
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.sim_us = 0.0
        self.starts = 0

    def start(self) -> None:
        from sim.runner import run_cocotb

        self._dir = Path(tempfile.mkdtemp(prefix="virtio_fpga_fuzz_"))
        self._req_path = self._dir / "req"
        self._resp_path = self._dir / "resp"
        os.mkfifo(self._req_path)
        os.mkfifo(self._resp_path)
        env = {
            "VIRTIO_FPGA_FUZZ_REQ": str(self._req_path),
            "VIRTIO_FPGA_FUZZ_RESP": str(self._resp_path),
            "VIRTIO_FPGA_SEED": str(self.seed),
        }
        self._error = None

        def target() -> None:
            try:
                run_cocotb("sim.fuzz", testcase="fuzz_worker", extra_env=env, planted_bug=self.planted_bug)
            except BaseException as exc:  # reported by run(): the simulation ended early
                self._error = exc

        self._thread = threading.Thread(target=target, daemon=True)
        self._thread.start()
        self.starts += 1
        deadline = time.monotonic() + 600
        while True:  # the writer's open fails (ENXIO) until the simulation opened the pipe for reading
            try:
                fd = os.open(self._req_path, os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError:
                if not self._thread.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"the fuzz simulation did not start: {self._error}") from None
                time.sleep(0.05)
        os.set_blocking(fd, True)
        self._req = os.fdopen(fd, "w")
        self._resp_fd = os.open(self._resp_path, os.O_RDONLY | os.O_NONBLOCK)
        self._buf = b""

    def _readline(self, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self._resp_fd], [], [], min(left, 1.0))
            if ready:
                chunk = os.read(self._resp_fd, 65536)
                if not chunk and not self._thread.is_alive():
                    return None
                self._buf += chunk
            elif not self._thread.is_alive():
                return None
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode()

    def run(self, program: list, seed: int = 0) -> Stats:
        if self._thread is None or not self._thread.is_alive():
            self.start()
        self._req.write(json.dumps({"program": program, "seed": seed}) + "\n")
        self._req.flush()
        line = self._readline(WORKER_TIMEOUT_S)
        if line is None:
            self.close()
            raise Failure("hang", f"the simulator stopped answering ({self._error})")
        out = json.loads(line)
        self.sim_us += out.get("sim_us", 0.0)
        stats = Stats(**out["stats"])
        if out.get("restart"):
            self.close()
        if not out["ok"]:
            exc = Failure(out["kind"], out["detail"])
            exc.stats = stats  # type: ignore[attr-defined]
            raise exc
        return stats

    def close(self) -> None:
        if self._thread is None:
            return
        try:
            self._req.write(json.dumps({"quit": True}) + "\n")
            self._req.flush()
            self._req.close()
        except OSError:
            pass
        self._thread.join(timeout=120)
        os.close(self._resp_fd)
        for p in (self._req_path, self._resp_path):
            p.unlink(missing_ok=True)
        self._dir.rmdir()
        self._thread = None


def soft_executor(seed: int, faults: frozenset = frozenset()) -> Callable[[list], Stats]:
    from host.fuzz_machine import run_soft

    return lambda program: run_soft(program, seed=seed, faults=faults)


def run_job(
    device: str,
    seed: int,
    count: int,
    *,
    faults: tuple[str, ...] = (),
    steps: int = 30,
    progress=None,
    shrink: bool = True,
    planted_bug: str | None = None,
    shrink_budget: int | None = None,
) -> dict:
    """One job: ``count`` sequences on ``device`` from hypothesis seed ``seed``; returns stats and any failure."""
    from devices.softnet import Fault
    from host.fuzz_machine import Job

    started = time.monotonic()
    cpu_started = _cpu_seconds()
    worker = None
    if device == "soft":
        execute = soft_executor(seed, frozenset(Fault(f) for f in faults))
    else:
        if faults:
            raise ValueError("planted faults are a switch of the software device (planted_bug= for the RTL)")
        worker = RtlWorker(seed, planted_bug)
        execute = lambda program: worker.run(program, seed)  # noqa: E731
    budget = shrink_budget if shrink_budget is not None else (300 if device == "soft" else 40)
    job = Job(
        device, execute, seed=seed, count=count, steps=steps, on_sequence=progress, shrink=shrink, shrink_budget=budget
    )
    try:
        stats = job.run()
    finally:
        if worker is not None:
            worker.close()
    return {
        "stats": stats.as_dict(),
        "failure": job.failure,
        "shrink_runs": job.shrink_runs,
        "seconds": time.monotonic() - started,
        "cpu_seconds": _cpu_seconds() - cpu_started,
        "sim_us": worker.sim_us if worker else 0.0,
        "seed": seed,
    }


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the simulators): a rate per CPU second does not
    depend on how many other programs share the machine."""
    import resource

    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def _job_process(args: tuple, queue) -> None:
    device, seed, count, faults, steps = args

    def progress(stats: Stats) -> None:
        queue.put(("progress", seed, stats.as_dict()))

    try:
        result = run_job(device, seed, count, faults=faults, steps=steps, progress=progress)
        queue.put(("done", seed, result))
    except BaseException as exc:
        queue.put(("error", seed, f"{type(exc).__name__}: {exc}"))


def run_campaign(
    device: str,
    count: int,
    *,
    seed: int = 0,
    jobs: int | None = None,
    faults: tuple[str, ...] = (),
    steps: int = 30,
    on_progress: Callable[[Stats], None] | None = None,
) -> dict:
    """``count`` sequences over ``jobs`` independent processes (default: every core); the merged result."""
    jobs = max(1, min(jobs or os.cpu_count() or 1, count))
    shares = [count // jobs + (1 if i < count % jobs else 0) for i in range(jobs)]
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = []
    for i, share in enumerate(shares):
        p = ctx.Process(target=_job_process, args=((device, seed * 1000 + i, share, faults, steps), queue))
        p.start()
        procs.append(p)
    per_job: dict[int, dict] = {}
    results: list[dict] = []
    errors: list[str] = []
    started = time.monotonic()
    interrupted = False
    while len(results) + len(errors) < len(procs):
        try:
            kind, job_seed, payload = queue.get(timeout=1.0)
        except KeyboardInterrupt:  # Ctrl-C: stop the jobs, report what they had done
            interrupted = True
            for p in procs:
                p.terminate()
            break
        except Exception:
            if not any(p.is_alive() for p in procs) and queue.empty():
                errors.append("a job process died without a result")
                break
            continue
        if kind == "progress":
            per_job[job_seed] = payload
        elif kind == "done":
            per_job[job_seed] = payload["stats"]
            results.append(payload)
        else:
            errors.append(payload)
        if on_progress is not None:
            total = Stats()
            for s in per_job.values():
                total.add(Stats(**s))
            on_progress(total)
    for p in procs:
        p.join(timeout=30)
    total = Stats()
    for r in results:
        total.add(Stats(**r["stats"]))
    if interrupted:  # the jobs without a result count with their last progress report
        done = {r["seed"] for r in results}
        for job_seed, stats in per_job.items():
            if job_seed not in done:
                total.add(Stats(**stats))
    failures = [r["failure"] | {"seed": r["seed"]} for r in results if r["failure"]]
    seconds = time.monotonic() - started
    return {
        "device": device,
        **total.as_dict(),
        "failures": total.failures + len(errors),
        "jobs": jobs,
        "seed": seed,
        "faults_planted": list(faults),
        "seconds": round(seconds, 2),
        "sequences_per_second": round(total.sequences / seconds, 2) if seconds else 0.0,
        "cpu_seconds": round(sum(r["cpu_seconds"] for r in results), 1),
        "sequences_per_cpu_second": round(total.sequences / max(1e-9, sum(r["cpu_seconds"] for r in results)), 3)
        if results
        else 0.0,
        "sim_us": round(sum(r["sim_us"] for r in results), 1),
        "shrink_runs": sum(r["shrink_runs"] for r in results),
        "found": failures,
        "errors": errors,
        "interrupted": interrupted,
    }


__all__ = ["RtlWorker", "run_campaign", "run_job"]
