"""cocotbext-pcie's UltraScale+ hard-IP model, extended with the configuration-extend interface.

The model in cocotbext-pcie 0.2.16 answers every configuration request itself; its ``cfg_ext`` logic is an
empty stub.  The real integrated block forwards configuration requests in its user windows to user logic
(PG213 "Configuration Extend Interface"), and this subclass does the same:

* every configuration read of function *f* pulses ``cfg_ext_read_received`` for one ``user_clk`` cycle with
  ``cfg_ext_register_number`` (dword number) and ``cfg_ext_function_number`` (PG213: "All the received
  configuration reads regardless of their address are indicated by 1 cycle assertion");
* for registers inside the user windows the completion data is whatever user logic returns on
  ``cfg_ext_read_data`` with ``cfg_ext_read_data_valid``; if nothing comes within
  :attr:`VirtioUspDevice.cfg_ext_timeout_cycles` the read returns 0 and :attr:`cfg_ext_timeouts` counts it (so
  a silent gateware fails the capability walk loudly instead of hanging the bus);
* every configuration write pulses ``cfg_ext_write_received`` with ``cfg_ext_write_data`` and
  ``cfg_ext_write_byte_enable``; inside the windows the hard IP stores nothing itself;
* the hard IP's last legacy capability (PCI Express capability at 0x70) chains to the first user capability,
  which is how the real core is configured to link user capabilities into its list (see hdl/pcie/README.md).

Nothing here knows what the gateware puts in the window: the capabilities come from the DUT.

**Function Level Reset** (the model declares ``cfg_flr_in_process``/``cfg_flr_done`` but implements neither, and
its PCI Express capability ignores Initiate Function Level Reset): :class:`VirtioUspDevice` advertises FLR
(Device Capabilities bit 28) and, on a Device Control write with bit 15 (PCIe Base 6.6.2), after the write's
completion as the spec requires, resets the function's configuration state the way the hard IP does (Command:
memory space and Bus Master Enable off, so the model drops requests from then on, as it does for any request
with Bus Master Enable clear; the BAR addresses; MSI-X Enable and Function Mask; Device Control), raises
``cfg_flr_in_process[f]`` and holds it until the gateware pulses ``cfg_flr_done[f]`` (PG213 "Configuration
Control Interface"; the Xilinx example design answers with a one-cycle pulse).  ``flr_in_process(f)`` tells
a test when the function is back (a real host waits 100 ms instead); ``flr_done_callbacks`` are called on the
clock edge that saw the pulse; a done pulse without an FLR in progress counts in ``flr_spurious_done``.
"""

from __future__ import annotations

import logging
from functools import partial

import cocotb
from cocotb.triggers import Lock, RisingEdge
from cocotbext.pcie.xilinx.us import UltraScalePlusPcieDevice
from cocotbext.pcie.xilinx.us.usp_model import UltraScalePlusPcieFunction

from hdl.pcie.cfgext import FIRST_CAP_OFFSET, USER_CONFIG_WINDOWS


class CfgExtFunction(UltraScalePlusPcieFunction):
    """A PF whose configuration accesses are also presented on the device's cfg_ext ports."""

    cfg_ext_device: VirtioUspDevice | None = None

    def _forwarded(self, reg: int) -> bool:
        dev = self.cfg_ext_device
        return dev is not None and any(lo // 4 <= reg < hi // 4 for lo, hi in dev.cfg_ext_windows)

    async def read_config_register(self, reg: int) -> int:
        dev = self.cfg_ext_device
        if dev is None or not dev.cfg_ext_enabled:
            return await super().read_config_register(reg)
        if self._forwarded(reg):
            return await dev.cfg_ext_read(self.function_num, reg, wait=True)
        await dev.cfg_ext_read(self.function_num, reg, wait=False)
        return await super().read_config_register(reg)

    async def write_config_register(self, reg: int, data: int, mask: int) -> None:
        dev = self.cfg_ext_device
        if dev is None or not dev.cfg_ext_enabled:
            await super().write_config_register(reg, data, mask)
            return
        await dev.cfg_ext_write(self.function_num, reg, data, mask)
        if not self._forwarded(reg):
            await super().write_config_register(reg, data, mask)


class VirtioUspDevice(UltraScalePlusPcieDevice):
    """UltraScalePlusPcieDevice + configuration-extend forwarding in ``cfg_ext_windows`` (byte ranges)."""

    def __init__(
        self,
        *args,
        cfg_ext_windows=USER_CONFIG_WINDOWS,
        first_user_cap: int = FIRST_CAP_OFFSET,
        cfg_ext_timeout_cycles: int = 64,
        **kwargs,
    ) -> None:
        self.cfg_ext_windows = tuple(cfg_ext_windows)
        self.cfg_ext_timeout_cycles = cfg_ext_timeout_cycles
        self.cfg_ext_timeouts = 0
        self.cfg_ext_reads = 0
        self.cfg_ext_writes = 0
        self._cfg_ext_lock = Lock()
        self.flr_count = 0
        self.flr_spurious_done = 0
        self.flr_done_callbacks: list = []
        self._flr_active = 0
        super().__init__(*args, **kwargs)
        self.cfg_ext_enabled = self.cfg_ext_read_received is not None and self.cfg_ext_read_data is not None
        for f in self.functions:
            f.cfg_ext_device = self
            # The PCIe capability is the last one of the hard IP's legacy list; point it at the user window.
            if self.cfg_ext_enabled and first_user_cap:
                f.pcie_cap.next_cap = first_user_cap
        self.flr_enabled = self.cfg_flr_in_process is not None and self.cfg_flr_done is not None
        if self.flr_enabled:
            self.cfg_flr_in_process.value = 0
            for f in self.functions:
                f.pcie_cap.function_level_reset_capability = True
                f.pcie_cap.initiate_function_level_reset = partial(self._initiate_flr, f)
                f.flr_defaults = (f.pcie_cap.max_payload_size, f.pcie_cap.max_read_request_size)
            cocotb.start_soon(self._run_flr_done())
        self.log.info("cfg_ext windows: %s", ", ".join(f"{lo:#x}-{hi - 1:#x}" for lo, hi in self.cfg_ext_windows))

    def make_function(self):  # noqa: ANN201 - same signature as the base class
        self.default_function = CfgExtFunction
        return super().make_function()

    async def cfg_ext_read(self, function: int, reg: int, *, wait: bool) -> int:
        """One cfg_ext read indication; with ``wait`` the data user logic returns (0 after a timeout)."""
        async with self._cfg_ext_lock:
            edge = RisingEdge(self.user_clk)
            await edge
            self.cfg_ext_register_number.value = reg
            self.cfg_ext_function_number.value = function
            self.cfg_ext_read_received.value = 1
            await edge
            self.cfg_ext_read_received.value = 0
            if not wait:
                return 0
            self.cfg_ext_reads += 1
            # data valid may come in the cycle right after the indication: sample from this edge on
            for _ in range(self.cfg_ext_timeout_cycles):
                if int(self.cfg_ext_read_data_valid.value):
                    return int(self.cfg_ext_read_data.value)
                await edge
            self.cfg_ext_timeouts += 1
            self.log.error("cfg_ext read of register %#x (function %d): no cfg_ext_read_data_valid", reg, function)
            return 0

    async def cfg_ext_write(self, function: int, reg: int, data: int, mask: int) -> None:
        async with self._cfg_ext_lock:
            edge = RisingEdge(self.user_clk)
            await edge
            self.cfg_ext_register_number.value = reg
            self.cfg_ext_function_number.value = function
            self.cfg_ext_write_data.value = data & 0xFFFFFFFF
            self.cfg_ext_write_byte_enable.value = mask & 0xF
            self.cfg_ext_write_received.value = 1
            await edge
            self.cfg_ext_write_received.value = 0
            self.cfg_ext_writes += 1

    # ---- Function Level Reset ----------------------------------------------------------------------------
    def flr_in_process(self, function: int = 0) -> bool:
        return bool(self._flr_active >> function & 1)

    async def _initiate_flr(self, f) -> None:
        """Device Control bit 15 written: reset the function's configuration state, then start the FLR."""
        cocotb.start_soon(self._start_flr(f))  # after the configuration write's completion (PCIe Base 6.6.2)

    async def _start_flr(self, f) -> None:
        await RisingEdge(self.user_clk)
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
        self._flr_active |= 1 << f.function_num
        self.cfg_flr_in_process.value = self._flr_active
        self.flr_count += 1

    async def _run_flr_done(self) -> None:
        edge = RisingEdge(self.user_clk)
        while True:
            await edge
            done = self.cfg_flr_done.value
            if not done.is_resolvable or not int(done):
                continue
            hit = int(done) & self._flr_active
            if int(done) & ~self._flr_active & 0xF:
                self.flr_spurious_done += 1
            if hit:
                self._flr_active &= ~hit
                self.cfg_flr_in_process.value = self._flr_active
                for callback in self.flr_done_callbacks:
                    callback()


def quiet(*loggers: logging.Logger | None, level: int = logging.WARNING) -> None:
    """cocotbext logs every TLP at INFO; tests keep them at WARNING unless asked otherwise."""
    for log in loggers:
        if log is not None:
            log.setLevel(level)


__all__ = ["CfgExtFunction", "VirtioUspDevice", "quiet", "cocotb"]
