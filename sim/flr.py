"""Function Level Reset (PCIe Base 6.6.2) for cocotbext-pcie's hard-IP models, which declare FLR ports but
implement neither them nor the Initiate Function Level Reset bit (their PCI Express capability ignores it).

:class:`FunctionLevelReset` is mixed into a device model (:class:`sim.usp.VirtioUspDevice`,
:class:`sim.ptile.VirtioPtileDevice`) and given the model's in-process output and done input:

* the function advertises FLR (Device Capabilities bit 28);
* a Device Control write with bit 15 starts it after the write's completion, as the spec requires: the
  function's configuration state is reset the way the hard IP does (Command: I/O and memory space, Bus Master
  Enable - so the model, or the gateware's own filter, drops requests from then on -, the BAR addresses, MSI-X
  Enable and Function Mask, Device Control's fields), and the function's in-process bit goes high;
* the bit stays high until the gateware pulses its done bit (UltraScale+ PG213 ``cfg_flr_in_process`` /
  ``cfg_flr_done``, the Xilinx example design answers with a one-cycle pulse; P-tile 683059 4.2.2.2
  ``flr_rcvd_pf`` / ``flr_completed_pf``).

``flr_in_process(f)`` tells a test when the function is back (a real host waits 100 ms instead);
``flr_done_callbacks`` are called on the clock edge that saw the done pulse; a pulse without an FLR in progress
counts in ``flr_spurious_done``.
"""

from __future__ import annotations

from functools import partial

import cocotb
from cocotb.triggers import RisingEdge


class FunctionLevelReset:
    """Mixin for a cocotbext-pcie device model: FLR of its functions through an in-process/done port pair."""

    flr_enabled = False

    def flr_setup(self, in_process, done, clock) -> None:
        """Call after the model's own ``__init__``; ``in_process`` (driven here) and ``done`` are the ports."""
        self.flr_count = 0
        self.flr_spurious_done = 0
        self.flr_done_callbacks: list = []
        self._flr_active = 0
        self._flr_in_process = in_process
        self._flr_done = done
        self._flr_clock = clock
        self.flr_enabled = in_process is not None and done is not None
        if not self.flr_enabled:
            return
        in_process.value = 0
        self.msix_after_flr = 0
        self._msix_grace = 0
        for f in self.functions:
            self._guard_msix(f)
            f.pcie_cap.function_level_reset_capability = True
            f.pcie_cap.initiate_function_level_reset = partial(self._initiate_flr, f)
            f.flr_defaults = (f.pcie_cap.max_payload_size, f.pcie_cap.max_read_request_size)
        cocotb.start_soon(self._run_flr_done())

    def _guard_msix(self, f) -> None:
        """The model turns an MSI-X request into an exception when MSI-X is disabled; the enable it shows the
        gateware is a cycle late, so a request in the cycle the FLR cleared MSI-X Enable would end the run.  A
        hard IP sends no message then (PG213 answers ``cfg_interrupt_msix_fail``); such requests are dropped and
        counted in ``msix_after_flr``; at any other time a request while MSI-X is disabled still fails the run."""
        cap = f.msix_cap
        issue = cap.issue_msix_interrupt

        async def guarded(*args, **kwargs) -> None:
            if not cap.msix_enable and self._msix_grace:  # only in the cycles right after an FLR started
                self.msix_after_flr += 1
                return
            await issue(*args, **kwargs)

        cap.issue_msix_interrupt = guarded

    def flr_in_process(self, function: int = 0) -> bool:
        return bool(self._flr_active >> function & 1)

    async def _initiate_flr(self, f) -> None:
        """Device Control bit 15 written: reset the function's configuration state, then start the FLR."""
        cocotb.start_soon(self._start_flr(f))  # after the configuration write's completion (PCIe Base 6.6.2)

    async def _start_flr(self, f) -> None:
        await RisingEdge(self._flr_clock)
        f.io_space_enable = f.memory_space_enable = f.bus_master_enable = False
        f.parity_error_response_enable = f.serr_enable = f.interrupt_disable = False
        for i, mask in enumerate(f.bar_mask):
            f.bar[i] &= ~mask  # the address goes, the type bits stay
        f.msix_cap.msix_enable = False
        f.msix_cap.msix_function_mask = False
        cap = f.pcie_cap
        cap.max_payload_size, cap.max_read_request_size = f.flr_defaults
        cap.correctable_error_reporting_enable = cap.non_fatal_error_reporting_enable = False
        cap.fatal_error_reporting_enable = cap.unsupported_request_reporting_enable = False
        cap.enable_relaxed_ordering = cap.extended_tag_field_enable = cap.enable_no_snoop = False
        self._msix_grace = 3  # cycles
        self._flr_active |= 1 << f.function_num
        self._flr_in_process.value = self._flr_active
        self.flr_count += 1

    async def _run_flr_done(self) -> None:
        edge = RisingEdge(self._flr_clock)
        while True:
            await edge
            if self._msix_grace:
                self._msix_grace -= 1
            done = self._flr_done.value
            if not done.is_resolvable or not int(done):
                continue
            hit = int(done) & self._flr_active
            if int(done) & ~self._flr_active:
                self.flr_spurious_done += 1
            if hit:
                self._flr_active &= ~hit
                self._flr_in_process.value = self._flr_active
                for callback in self.flr_done_callbacks:
                    callback()
