"""PCIe faults injected from the simulated root complex and the hard IP model (issue 12, part 3).

A fabric-side model: nothing here knows the driver.  :class:`CompletionFaults` sits in the RootComplex's
memory-read handler (cocotbext-pcie's ``RootComplex.handle_mem_read_tlp`` serves the read; its completions are
collected and then changed, held back or dropped before they go on the link), :func:`starve` throttles the
UltraScale+ model's streams and credits.  The installed cocotbext-pcie is never edited.

Faults that break a request (the device must end it with an error, raise DEVICE_NEEDS_RESET and recover by
device reset):

* ``ur`` / ``ca``: the read is answered by one completion with Unsupported Request / Completer Abort status
  (PCIe Base 2.3.2: a completion with a status other than SC ends the request).  ``ca`` on a read that the root
  complex splits sends the first completion with its data, then the CA: a completer that fails part way;
* ``poison``: the first completion of the read has the EP bit set (PCIe Base 2.7.2, poisoned data), the rest of
  the request's completions follow normally.  The hard IP reports error code 0001 on RC (PG213 "Handling of
  Completion Errors");
* ``drop``: no completion at all.  The device's own completion timeout must end the read (PCIe Base 2.8).  The
  hard IP keeps the request in its Split Completion Table (the model's ``active_request``) until its own
  completion timeout, after ``hardip_timeout_ns``, when it reports error code 1001 with Request Completed on RC
  and forgets the tag, as PG213 describes;
* ``late``: the completions are held back ``late_ns`` (longer than the device's timeout) or until
  :meth:`CompletionFaults.release_late`, then delivered.  They are the read's real completions.  If the hard
  IP still had the request in its table (``hardip_timeout_ns=None`` or longer than the wait) they arrive with
  error code 0 - only the device can tell that the tag is no longer outstanding; if the hard IP timed the
  request out first (its 1001 report ended the read) they arrive marked "invalid tag" (0110).  Either way the
  device must drop them (an Unexpected Completion, PCIe Base 2.3.2), never take them as data of a later
  request on the same tag.

Legal behaviour the device must simply handle, with every byte right:

* ``reorder`` (:meth:`CompletionFaults.reorder`): every completion split at every 64-byte Read Completion
  Boundary (PCIe Base 2.3.1.1), and each read's completions held a random time, so completions of different
  reads pass each other; the completions of one read stay in address order (PCIe Base table 2-40, D5 and
  2.3.1.1);
* credit starvation (:func:`starve`): the device's RQ (``tready``) and CC blocked for long stretches, the hard
  IP's completion credit limit cut so it holds the device's reads back (the model's ``cpld_credit_limit``:
  PG213's RQ holds non-posted requests while the completion buffer cannot take their data), completions to the
  device paused on RC and delayed in the host.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import cocotb
from cocotb.simtime import get_sim_time
from cocotb.triggers import Event, First, Timer
from cocotbext.pcie.core.tlp import CplStatus, PcieId, Tlp, TlpType
from cocotbext.pcie.xilinx.us.tlp import ErrorCode, Tlp_us

from sim.testbench import _CollectingRootComplex

#: The faults :meth:`CompletionFaults.arm` takes, with what each does to a read.
FAULT_KINDS: dict[str, str] = {
    "ur": "one completion with Unsupported Request status, no data",
    "ca": "the first completion (if the read is split), then one with Completer Abort status",
    "poison": "the first completion poisoned (EP), the rest as usual",
    "drop": "no completion; the hard IP's own timeout (error code 1001) after hardip_timeout_ns",
    "late": "the real completions, held back past the device's timeout",
}

READ_TYPES = (TlpType.MEM_READ, TlpType.MEM_READ_64)


@dataclass
class Injection:
    """One read a fault was applied to."""

    kind: str
    tag: int
    addr: int
    nbytes: int
    time_ns: float
    #: when the late completions went out / the hard IP reported its timeout (ns), if that happened
    delivered_ns: float | None = None

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class _Armed:
    kind: str
    count: int
    match: list[tuple[int, int]] | None
    late_ns: float | None
    hardip_timeout_ns: float | None


@dataclass
class CompletionFaults:
    """Fault injector in the RootComplex's memory-read path.  :meth:`install` it once per bench, then
    :meth:`arm` a fault for the next read(s), or turn on :meth:`reorder`."""

    bench: object
    seed: int = 1
    injections: list[Injection] = field(default_factory=list)
    reads_seen: int = 0

    def __post_init__(self) -> None:
        self.rc = self.bench.rc
        self.dev = self.bench.dev
        self.rng = random.Random(self.seed)
        self._armed: list[_Armed] = []
        self._late: list[tuple[Injection, list]] = []
        self._release = Event()
        self.reorder_ns = 0.0
        # whatever handled reads before (the bench's ReadLatency): reads without a fault still go through it
        self._next = {t: self.rc.rx_tlp_handler[t] for t in READ_TYPES}
        for t in READ_TYPES:
            self.rc.register_rx_tlp_handler(t, self._handle_read)

    @classmethod
    def install(cls, bench, seed: int = 1) -> CompletionFaults:
        """The bench's injector (created on first use)."""
        faults = getattr(bench, "completion_faults", None)
        if faults is None:
            faults = cls(bench, seed=seed)
            bench.completion_faults = faults
        return faults

    # ---- control ----------------------------------------------------------------------------------------
    def arm(
        self,
        kind: str,
        count: int = 1,
        *,
        match: list[tuple[int, int]] | None = None,
        late_ns: float | None = None,
        hardip_timeout_ns: float | None = 50_000.0,
    ) -> None:
        """Apply ``kind`` to the next ``count`` reads (only reads starting in one of the ``match`` ranges
        ``[lo, hi)`` if given).

        ``late``: ``late_ns`` after the read, or at :meth:`release_late` when ``late_ns`` is None.
        ``drop``: ``hardip_timeout_ns`` is the hard IP's completion timeout (None: it never reports).
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"fault kind must be one of {sorted(FAULT_KINDS)}, not {kind!r}")
        self._armed.append(_Armed(kind, count, match, late_ns, hardip_timeout_ns))

    def disarm(self) -> None:
        self._armed.clear()

    def reorder(self, max_delay_ns: float) -> None:
        """Split every completion at the 64-byte RCB and hold each read's completions 0..``max_delay_ns``
        (0 turns it off).  Legal (PCIe Base 2.3.1.1, table 2-40 D5): the device must reassemble every byte."""
        self.reorder_ns = float(max_delay_ns)

    def release_late(self) -> None:
        """Deliver the held-back completions of ``late`` faults (those injected so far) now."""
        release, self._release = self._release, Event()  # later late faults wait for the next call
        release.set()

    @property
    def pending_late(self) -> int:
        return len(self._late)

    # ---- the read path ------------------------------------------------------------------------------------
    def _take(self, tlp: Tlp) -> _Armed | None:
        addr = tlp.address + tlp.get_first_be_offset()
        for armed in self._armed:
            if armed.match is not None and not any(lo <= addr < hi for lo, hi in armed.match):
                continue
            armed.count -= 1
            if armed.count <= 0:
                self._armed.remove(armed)
            return armed
        return None

    async def _serve(self, tlp: Tlp, *, split_on_rcb: bool) -> list:
        """The completions cocotbext-pcie's RootComplex would send for ``tlp`` (reads memory now)."""
        proxy = _CollectingRootComplex(self.rc)
        proxy.split_on_all_rcb = split_on_rcb or self.rc.split_on_all_rcb
        await type(self.rc).handle_mem_read_tlp(proxy, tlp)
        return proxy.completions

    async def _handle_read(self, tlp: Tlp) -> None:
        self.reads_seen += 1
        armed = self._take(tlp)
        if armed is None and not self.reorder_ns:
            await self._next[tlp.fmt_type](tlp)
            return
        if armed is None:  # legal reordering: split at every RCB, each read held a random time
            cpls = await self._serve(tlp, split_on_rcb=True)
            cocotb.start_soon(self._send_later(cpls, self.rng.uniform(0, self.reorder_ns)))
            return
        now = get_sim_time("ns")
        inj = Injection(armed.kind, tlp.tag, tlp.address + tlp.get_first_be_offset(), tlp.get_be_byte_count(), now)
        self.injections.append(inj)
        if armed.kind == "ur":
            await self.rc.send(Tlp.create_ur_completion_for_tlp(tlp, PcieId(0, 0, 0)))
        elif armed.kind == "ca":
            cpls = await self._serve(tlp, split_on_rcb=True)
            if len(cpls) > 1:
                await self.rc.send(cpls[0])
            await self.rc.send(Tlp.create_ca_completion_for_tlp(tlp, PcieId(0, 0, 0)))
        elif armed.kind == "poison":
            cpls = await self._serve(tlp, split_on_rcb=True)
            cpls[0].ep = True
            for cpl in cpls:
                await self.rc.send(cpl)
        elif armed.kind == "drop":
            if armed.hardip_timeout_ns is not None:
                cocotb.start_soon(self._hardip_timeout(inj, self.dev.active_request[tlp.tag], armed.hardip_timeout_ns))
        elif armed.kind == "late":
            if armed.hardip_timeout_ns is not None:  # the hard IP may give up on the request first
                cocotb.start_soon(self._hardip_timeout(inj, self.dev.active_request[tlp.tag], armed.hardip_timeout_ns))
            cpls = await self._serve(tlp, split_on_rcb=False)
            self._late.append((inj, cpls))
            cocotb.start_soon(self._deliver_late(inj, cpls, armed.late_ns, self._release))

    async def _send_later(self, cpls: list, delay_ns: float) -> None:
        if delay_ns > 0:
            await Timer(round(delay_ns * 1000), "ps")
        for cpl in cpls:  # one read's completions in address order
            await self.rc.send(cpl)

    async def _deliver_late(self, inj: Injection, cpls: list, late_ns: float | None, release: Event) -> None:
        if late_ns is None:
            await release.wait()
        else:
            await First(Timer(round(late_ns * 1000), "ps"), release.wait())
        self._late.remove((inj, cpls))
        inj.delivered_ns = get_sim_time("ns")
        for cpl in cpls:
            await self.rc.send(cpl)

    async def _hardip_timeout(self, inj: Injection, request, timeout_ns: float) -> None:
        """The hard IP's completion timeout for a request that got no completion: it leaves the Split Completion
        Table (and gives back its completion credits), and the user side gets error code 1001 with Request
        Completed (PG213 "Requester Completion Descriptor Format")."""
        await Timer(round(timeout_ns * 1000), "ps")
        dev = self.dev
        if request is None or dev.active_request[inj.tag] is not request:
            return  # a completion came after all (or the tag was reused): nothing timed out in the hard IP
        dev.active_request[inj.tag] = None
        dev.tag_available_count = dev.get_available_tag_count()
        dev.cpld_credit_count = max(dev.cpld_credit_count - request.get_data_credits(), 0)
        dev.cpld_credit_released.set()
        report = Tlp_us(Tlp.create_completion_for_tlp(request, PcieId(0, 0, 0), False, CplStatus.SC))
        report.error_code = ErrorCode.TIMEOUT
        report.request_completed = True
        report.byte_count = request.get_be_byte_count()
        report.lower_address = (request.address + request.get_first_be_offset()) & 0xFFF
        inj.delivered_ns = get_sim_time("ns")
        dev.rc_queue.put_nowait(report)

    def summary(self) -> dict:
        return {
            "reads_seen": self.reads_seen,
            "injections": [i.as_dict() for i in self.injections],
            "pending_late": self.pending_late,
        }


# ---- credit starvation --------------------------------------------------------------------------------------


def stretches(rng: random.Random, blocked: int, open_: int) -> Iterator[bool]:
    """A pause generator (one value per clock, True = paused) of long blocked stretches (about ``blocked``
    cycles, 0.5x..1.5x) with short open windows (about ``open_`` cycles)."""
    while True:
        for _ in range(max(1, round(blocked * rng.uniform(0.5, 1.5)))):
            yield True
        for _ in range(max(1, round(open_ * rng.uniform(0.5, 1.5)))):
            yield False


def starve(
    bench,
    *,
    rq: tuple[int, int] | None = None,
    cc: tuple[int, int] | None = None,
    rc: tuple[int, int] | None = None,
    cpl_credits: int | None = None,
    completion_delay_ns: float | None = None,
    seed: int = 1,
) -> Callable[[], None]:
    """Throttle the UltraScale+ model: ``rq``/``cc`` = (blocked, open) cycles of the device's RQ/CC ``tready``;
    ``rc`` = (paused, open) cycles of completions towards the device; ``cpl_credits``: the hard IP's completion
    data credit limit (16 bytes each; reads wait in the hard IP while it would be exceeded); and
    ``completion_delay_ns``: the host holds every read's completions that long.  All legal: the device must keep
    every byte right.  Returns a function that undoes it all."""
    dev = bench.dev
    rng = random.Random(seed)
    saved_limit = dev.cpld_credit_limit
    saved_latency = bench.read_latency.latency_ns
    for pair, stream in ((rq, dev.rq_sink), (cc, dev.cc_sink), (rc, dev.rc_source)):
        if pair is not None:
            stream.set_pause_generator(stretches(random.Random(rng.random()), *pair))
    if cpl_credits is not None:
        dev.cpld_credit_limit = cpl_credits
    if completion_delay_ns is not None:
        bench.read_latency.latency_ns = completion_delay_ns

    def undo() -> None:
        for stream in (dev.rq_sink, dev.cc_sink, dev.rc_source):
            stream.clear_pause_generator()
            stream.pause = False  # killing the generator leaves the last value, perhaps a pause, in place
        dev.cpld_credit_limit = saved_limit
        dev.cpld_credit_released.set()
        bench.read_latency.latency_ns = saved_latency

    return undo


def starve_ptile(
    bench,
    *,
    tx: tuple[int, int] | None = None,
    rx: tuple[int, int] | None = None,
    tx_credits: dict[str, int] | None = None,
    credit_pauses: tuple[int, int] | None = None,
    completion_delay_ns: float | None = None,
    seed: int = 1,
) -> Callable[[], None]:
    """Throttle the P-tile model: ``tx``/``rx`` = (blocked, open) cycles of ``tx_st_ready`` (the hard IP refusing
    the device's TLPs) and of ``rx_st`` (the hard IP holding completions and requests for the device);
    ``tx_credits``: at most that many credits of each kind ("ph", "pd", "nph", "npd", "cplh", "cpld") shown
    beyond what has reached the link, frozen during the (blocked, open) stretches of ``credit_pauses``
    (:class:`sim.ptile.TxCreditThrottle`, which also counts any TLP sent beyond the limit shown);
    ``completion_delay_ns``: the host holds every read's completions that long.  All legal.  Returns the undo."""
    dev = bench.dev
    rng = random.Random(seed)
    saved_latency = bench.read_latency.latency_ns
    for pair, stream in ((tx, dev.tx_sink), (rx, dev.rx_source)):
        if pair is not None:
            stream.set_pause_generator(stretches(random.Random(rng.random()), *pair))
    if tx_credits is not None:
        pauses = stretches(random.Random(rng.random()), *credit_pauses) if credit_pauses else None
        dev.tx_credits.start(tx_credits, pauses)
    if completion_delay_ns is not None:
        bench.read_latency.latency_ns = completion_delay_ns

    def undo() -> None:
        for stream in (dev.tx_sink, dev.rx_source):
            stream.clear_pause_generator()
            stream.pause = False
        dev.tx_credits.stop()
        bench.read_latency.latency_ns = saved_latency

    return undo


__all__ = ["FAULT_KINDS", "CompletionFaults", "Injection", "starve", "starve_ptile", "stretches"]
