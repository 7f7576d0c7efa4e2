"""The hypothesis side of the fuzzer: a ``RuleBasedStateMachine`` that writes driver programs, and one campaign job.

The state machine's rules draw a step (shared strategies: the same for the software device and the RTL), ask
the model (:class:`host.fuzz.FuzzDriver.plan`, no device) whether it is possible now, and append it to the
program.  At teardown the whole program goes to an *executor*: a callable that runs it against a device and
raises :class:`host.fuzz.Failure` when a check fails.  Hypothesis then shrinks the program (fewer and simpler
steps) by running shrunk programs through the same executor, so a failure is reported as a short program.

Why programs rather than rules that touch the device directly: the RTL runs in a simulator process under
cocotb (async, simulated time), hypothesis runs synchronously here; a program is data that crosses the process
boundary (:mod:`sim.fuzz`), and replays exactly from a file.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule, run_state_machine_as_test

from host.fuzz import (
    HDR,
    KICK_MODES,
    OPTIONAL_FEATURES,
    RESET_VARIANTS,
    RX,
    RX_CAPACITY,
    RX_KINDS,
    SAFE_READS,
    SAFE_WRITES,
    TX,
    TX_KINDS,
    UNMAPPED,
    CheckedDma,
    DmaRules,
    Failure,
    FuzzDriver,
    Stats,
)


def _weighted(values: tuple[str, ...], ok_weight: int) -> st.SearchStrategy[str]:
    """Well-formed traffic ``ok_weight`` times as often as each malformed kind."""
    return st.sampled_from((values[0],) * ok_weight + values[1:])


SIZES = st.one_of(st.integers(1, 8), st.sampled_from([3, 5, 16, 64, 255, 256]))
FEATURES = st.sets(st.sampled_from(OPTIONAL_FEATURES)).map(sorted)
FRAME_LEN = st.one_of(st.integers(14, 1514), st.sampled_from([14, 15, 60, 61, 1500, 1514]))
TX_KIND = _weighted(TX_KINDS, 3)  # the traffic rules add well-formed frames besides
RX_KIND = _weighted(RX_KINDS, 3)
KICK_MODE = _weighted(KICK_MODES, 3)
RESET_VARIANT = _weighted(RESET_VARIANTS, 12)
BAD_SIZE = st.one_of(st.just(0), st.integers(257, 0xFFFF))
ACCESS = st.one_of(
    st.sampled_from(SAFE_READS).map(lambda a: ["r", a[0], a[1], 0]),
    st.tuples(st.sampled_from(SAFE_WRITES), st.integers(0, (1 << 64) - 1)).map(lambda a: ["w", *a[0], a[1]]),
)


class ProgramMachine(RuleBasedStateMachine):
    """Writes one program per example; ``profile`` picks the device's documented rules for the model."""

    profile = "soft"
    seed = 0
    executor: Callable[[list], None] | None = None

    def __init__(self) -> None:
        super().__init__()
        self.model = FuzzDriver(self.profile, self.seed)
        self.program: list[list] = []

    def _add(self, step: list) -> None:
        self.model.plan(step)
        self.program.append(step)

    @initialize(features=FEATURES, sizes=st.tuples(SIZES, SIZES))
    def bring_up(self, features, sizes) -> None:
        self._add(["reset", {"features": features, "sizes": list(sizes)}])

    @precondition(lambda self: self.model.can_post(RX))
    @rule(kind=RX_KIND, ndesc=st.integers(1, 3), capacity=st.one_of(st.just(RX_CAPACITY), st.integers(26, RX_CAPACITY)))
    def post_rx(self, kind, ndesc, capacity) -> None:
        q = self.model.queues[RX]
        if kind == "too_long" and q.free() != q.size:
            kind = "ok"
        if kind == "overlap" and not any(c.descs and c.descs[0][1] == "slab" for c in q.outstanding):
            kind = "ok"
        args = {"kind": kind, "ndesc": min(ndesc, q.free())}
        if kind == "ok" and capacity != RX_CAPACITY:
            args["capacity"] = capacity
        self._add(["rx", args])

    @precondition(lambda self: self.model.can_send())
    @rule(kind=TX_KIND, frame_len=FRAME_LEN, ndesc=st.integers(1, 4), near=st.one_of(st.none(), st.integers(-4, 64)))
    def send_tx(self, kind, frame_len, ndesc, near) -> None:
        """``near``: size the frame to the capacity of the receive chain it will land in, ``near`` bytes over it
        (> 0: the chain is too small, 5.1.6.3.1; <= 0: it fits, exactly at 0): the boundary where a device's
        length arithmetic goes wrong."""
        q = self.model.queues[TX]
        ready = self.model.rx_ready_chains()
        if near is not None and ready and not self.model.loose:
            frame_len = max(14, min(1514, ready[0].frame_len - HDR + near))
        if kind == "too_long" and q.free() != q.size:
            kind = "ok"
        if kind == "overlap" and not any(c.descs and c.descs[0][1] == "slab" for c in q.outstanding):
            kind = "ok"
        self._add(["tx", {"kind": kind, "frame_len": frame_len, "ndesc": min(ndesc, q.free())}])

    def _exchange(self, count, rx_desc, tx_desc, lengths) -> None:
        """Well-formed traffic: ``count`` receive chains, then as many frames as can find one."""
        m = self.model
        for _ in range(count):
            if not m.can_post(RX, rx_desc):
                break
            self._add(["rx", {"kind": "ok", "ndesc": rx_desc}])
        for length in lengths[:count]:
            if not m.can_send(tx_desc):
                break
            self._add(["tx", {"kind": "ok", "frame_len": length, "ndesc": tx_desc}])

    @precondition(lambda self: self.model.can_post(RX) and self.model.can_post(TX))
    @rule(
        count=st.integers(1, 4),
        rx_desc=st.integers(1, 3),
        tx_desc=st.integers(1, 4),
        lengths=st.lists(FRAME_LEN, min_size=4, max_size=4),
    )
    def traffic(self, count, rx_desc, tx_desc, lengths) -> None:
        self._exchange(count, rx_desc, tx_desc, lengths)

    @precondition(lambda self: self.model.can_post(RX) and self.model.can_post(TX))
    @rule(count=st.integers(1, 8), lengths=st.lists(FRAME_LEN, min_size=8, max_size=8))
    def traffic_burst(self, count, lengths) -> None:
        self._exchange(count, 1, 1, lengths)
        self._add(["sync", {}])

    @precondition(lambda self: not self.model.unchecked() and self.model.running)
    @rule(queue=st.sampled_from([RX, TX]))
    def lie_about_wrap(self, queue) -> None:
        m = self.model
        if m.queues[queue].stalled() or not (m.can_send() if queue == TX else m.can_post(RX)):
            return
        self._add(["lie", {"queue": queue}])

    @precondition(lambda self: self.model.can_repair(RX) or self.model.can_repair(TX))
    @rule(queue=st.sampled_from([RX, TX]))
    def repair(self, queue) -> None:
        if self.model.can_repair(queue):
            self._add(["repair", {"queue": queue}])

    @precondition(lambda self: self.model.running)
    @rule(queue=st.sampled_from([RX, TX]), mode=KICK_MODE)
    def kick(self, queue, mode) -> None:
        self._add(["kick", {"queue": queue, "mode": mode}])

    @precondition(lambda self: self.model.running)
    @rule(queue=st.sampled_from([RX, TX]), disable=st.booleans())
    def event_suppression(self, queue, disable) -> None:
        self._add(["events", {"queue": queue, "disable": disable}])

    @rule()
    def sync(self) -> None:
        self._add(["sync", {}])

    @rule(
        features=FEATURES,
        sizes=st.tuples(SIZES, SIZES),
        variant=RESET_VARIANT,
        bad_queue=st.sampled_from([RX, TX]),
        bad_value=BAD_SIZE,
    )
    def device_reset(self, features, sizes, variant, bad_queue, bad_value) -> None:
        args = {"features": features, "sizes": list(sizes)}
        if variant != "normal":
            args.update(variant=variant, bad_queue=bad_queue, bad_value=bad_value)
        self._add(["reset", args])

    @precondition(lambda self: self.model.running and not self.model.unchecked())
    @rule(queue=st.sampled_from([RX, TX]), size=SIZES)
    def queue_reset(self, queue, size) -> None:
        self._add(["queue_reset", {"queue": queue, "size": size}])

    @precondition(lambda self: self.model.running)
    @rule(accesses=st.lists(ACCESS, min_size=1, max_size=6))
    def odd_registers(self, accesses) -> None:
        self._add(["regs", {"accesses": accesses}])

    @precondition(lambda self: self.model.running and not self.model.unchecked())
    @rule(what=st.sampled_from(["driver_feature", "queue_size_rx", "queue_size_tx", "queue_desc_rx", "queue_desc_tx"]))
    def out_of_order_write(self, what) -> None:
        self._add(["late_write", {"what": what}])

    def teardown(self) -> None:
        if self.executor is not None and self.program:
            type(self).executor(self.program)


# ============================================ executors ======================================================
def run_soft(program: list, *, seed: int = 0, faults: frozenset = frozenset(), poll_limit: int = 200) -> Stats:
    """Run one program on a fresh software device in process (raises :class:`Failure`)."""
    from devices.softnet import SoftVirtioNet
    from host.inproc import InProcessTransport
    from host.memory import MSI_ADDRESS_BASE, MSI_ADDRESS_SIZE

    async def go() -> Stats:
        transport = InProcessTransport(SoftVirtioNet(faults=faults))
        rules = DmaRules(msi_window=(MSI_ADDRESS_BASE, MSI_ADDRESS_BASE + MSI_ADDRESS_SIZE))
        transport.device.dma = CheckedDma(transport.memory, rules)
        driver = FuzzDriver("soft", seed)
        try:
            return await driver.run(transport, program, dma_rules=rules, poll_limit=poll_limit)
        except Failure as exc:
            exc.stats = driver.stats  # type: ignore[attr-defined]
            raise
        finally:
            for task in list(transport._tasks):
                task.cancel()
            if transport.service_errors:
                raise Failure("exception", f"device service task raised {transport.service_errors[0]!r}")

    return asyncio.run(go())


class Job:
    """One campaign job: ``count`` sequences from hypothesis with ``seed``, run by ``execute(program)``.

    ``execute`` returns the program's :class:`Stats` or raises :class:`Failure`.  The first failure is shrunk by
    hypothesis; :attr:`failure` then holds the shortest failing program and its message.
    """

    def __init__(
        self,
        profile: str,
        execute: Callable[[list], Stats],
        *,
        seed: int,
        count: int,
        steps: int = 30,
        on_sequence: Callable[[Stats], None] | None = None,
        shrink: bool = True,
        shrink_budget: int = 300,
    ) -> None:
        self.profile = profile
        self.execute = execute
        self.seed = seed
        self.count = count
        self.steps = steps
        self.on_sequence = on_sequence
        self.shrink = shrink
        self.stats = Stats()
        self.failure: dict | None = None
        self.shrink_runs = 0
        #: Programs run while shrinking, at most (an RTL run takes seconds): past it, every candidate "fails"
        #: at once without running, which ends hypothesis' shrinking quickly; the shortest program that really
        #: failed is kept.
        self.shrink_budget = shrink_budget

    def _run_one(self, program: list) -> None:
        if self.failure is not None:  # shrinking: count the runs, keep the shortest failing program
            if self.shrink_runs >= self.shrink_budget:
                raise AssertionError("shrink budget spent")
            self.shrink_runs += 1
        try:
            result = self.execute(program)
        except Failure as exc:
            partial = getattr(exc, "stats", None)
            if self.failure is None:
                self.stats.sequences += 1
                self.stats.failures += 1
                if partial is not None:
                    partial.sequences = 0
                    self.stats.add(partial)
                if exc.kind == "hang" and not (partial and partial.hangs):
                    self.stats.hangs += 1
                if exc.kind == "stray_dma" and not (partial and partial.stray_dma):
                    self.stats.stray_dma += 1
                if self.on_sequence:
                    self.on_sequence(self.stats)
            if self.failure is None or len(program) <= len(self.failure["program"]):
                self.failure = {"kind": exc.kind, "detail": exc.detail, "program": program}
            raise AssertionError(str(exc)) from None
        if self.failure is None:
            self.stats.add(result)
            if self.on_sequence:
                self.on_sequence(self.stats)

    def run(self) -> Stats:
        machine = type(
            "Machine", (ProgramMachine,), {"profile": self.profile, "seed": self.seed, "executor": self._executor()}
        )
        machine._hypothesis_internal_use_seed = self.seed  # what hypothesis.seed() sets: a reproducible campaign
        phases = (Phase.generate, Phase.shrink) if self.shrink else (Phase.generate,)
        config = settings(
            max_examples=self.count,
            stateful_step_count=self.steps,
            deadline=None,
            database=None,
            phases=phases,
            suppress_health_check=list(HealthCheck),
            print_blob=False,
            report_multiple_bugs=False,
        )
        try:
            run_state_machine_as_test(machine, settings=config)
        except AssertionError:
            if self.failure is None:
                raise
        except Exception:
            if self.failure is None:
                raise
        return self.stats

    def _executor(self) -> Callable[[list], None]:
        def execute(program: list) -> None:
            self._run_one(program)

        return staticmethod(execute)


__all__ = ["Job", "ProgramMachine", "run_soft", "UNMAPPED"]
