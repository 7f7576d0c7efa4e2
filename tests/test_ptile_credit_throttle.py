"""The P-tile model's transmit-credit throttle (``sim.ptile.TxCreditThrottle``) on its own, without a simulator.

What the RTL starvation test relies on: the limit shown is legal (never above the real one, never backwards,
frozen while paused), it really is smaller than the real one, and a TLP sent beyond it is reported.
"""

from __future__ import annotations

import itertools

from cocotbext.pcie.core.port import FcStateData, FcStateHeader
from cocotbext.pcie.core.tlp import Tlp, TlpType

from sim.ptile import TxCreditThrottle


def _state(cls, initial: int) -> FcStateData:
    """A transmitter's view of one credit type after InitFC advertised ``initial`` credits."""
    state = cls()
    state.tx_initial_allocation = initial
    state.tx_credit_limit = initial
    return state


def _write(nbytes: int) -> Tlp:
    tlp = Tlp()
    tlp.fmt_type = TlpType.MEM_WRITE
    tlp.set_data(bytes(nbytes))
    return tlp


def test_pass_through_until_started() -> None:
    throttle = TxCreditThrottle()
    pd = _state(FcStateData, 1024)
    throttle.clock()
    assert throttle.limit("pd", pd, 16) == 1024
    throttle.on_tlp(_write(4096))  # far beyond any cap: not checked while the throttle is off
    assert throttle.violations == [] and throttle.held_back == 0


def test_limit_shown_is_small_monotone_frozen_and_never_above_the_real_one() -> None:
    throttle = TxCreditThrottle()
    pd = _state(FcStateData, 1024)
    ph = _state(FcStateHeader, 64)
    # a blocked stretch of 3 cycles after every open one
    throttle.start({"pd": 24, "ph": 2}, itertools.cycle([False, True, True, True]))
    assert throttle.limit("ph", ph, 12) == 2
    shown = []
    for step in range(40):
        throttle.clock()
        before = throttle.shown.get("pd", 0)
        value = throttle.limit("pd", pd, 16)
        assert ((value - before) & 0xFFFF) < 0x8000, "the limit shown went backwards"
        assert ((pd.tx_credit_limit - value) & 0xFFFF) < 0x8000, "the limit shown is above the real one"
        if throttle.paused:
            assert value == before, "the limit moved during a blocked stretch"
        shown.append(value)
        # the link takes 8 credits a cycle; the host returns credits 16 at a time every other cycle
        pd.tx_credits_consumed = (pd.tx_credits_consumed + 8) & 0xFFFF
        if step % 2:
            pd.tx_credit_limit = (pd.tx_credit_limit + 16) & 0xFFFF
    assert throttle.held_back > 0 and throttle.frozen_cycles == 30
    # never more than the cap beyond what the link had consumed, and the cap really reached
    beyond = [((v - c) & 0xFFFF) for v, c in zip(shown, range(0, 320, 8), strict=True)]
    assert max(beyond) == 24 and all(b < 0x8000 for b in beyond), beyond
    throttle.stop()
    throttle.clock()
    assert throttle.limit("pd", pd, 16) == pd.tx_credit_limit  # stopping gives the real limit back (forward)


def test_tlp_beyond_the_limit_shown_is_a_violation() -> None:
    throttle = TxCreditThrottle()
    pd = _state(FcStateData, 1024)
    ph = _state(FcStateHeader, 64)
    throttle.start({"pd": 24, "ph": 2})
    throttle.clock()
    assert throttle.limit("pd", pd, 16) == 24 and throttle.limit("ph", ph, 12) == 2
    throttle.on_tlp(_write(256))  # 16 data credits, 1 header: within what was shown
    assert throttle.violations == []
    throttle.on_tlp(_write(256))  # 32 data credits spent against 24 shown
    assert len(throttle.violations) == 1 and "pd spent 32" in throttle.violations[0]
    throttle.on_tlp(_write(16))  # a third header against 2 shown (and still beyond the data limit)
    assert any("ph spent 3" in v for v in throttle.violations)
