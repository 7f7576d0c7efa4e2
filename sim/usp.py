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

**Function Level Reset**: the model declares ``cfg_flr_in_process``/``cfg_flr_done`` but implements neither;
:class:`sim.flr.FunctionLevelReset` adds them (PG213 "Configuration Control Interface").
"""

from __future__ import annotations

import logging

import cocotb
from cocotb.triggers import Lock, RisingEdge
from cocotbext.pcie.xilinx.us import UltraScalePlusPcieDevice
from cocotbext.pcie.xilinx.us.usp_model import UltraScalePlusPcieFunction

from hdl.pcie.cfgext import FIRST_CAP_OFFSET, USER_CONFIG_WINDOWS
from sim.flr import FunctionLevelReset


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


class VirtioUspDevice(FunctionLevelReset, UltraScalePlusPcieDevice):
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
        super().__init__(*args, **kwargs)
        self.cfg_ext_enabled = self.cfg_ext_read_received is not None and self.cfg_ext_read_data is not None
        for f in self.functions:
            f.cfg_ext_device = self
            # The PCIe capability is the last one of the hard IP's legacy list; point it at the user window.
            if self.cfg_ext_enabled and first_user_cap:
                f.pcie_cap.next_cap = first_user_cap
        self.flr_setup(self.cfg_flr_in_process, self.cfg_flr_done, self.user_clk)
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


def quiet(*loggers: logging.Logger | None, level: int = logging.WARNING) -> None:
    """cocotbext logs every TLP at INFO; tests keep them at WARNING unless asked otherwise."""
    for log in loggers:
        if log is not None:
            log.setLevel(level)


__all__ = ["CfgExtFunction", "VirtioUspDevice", "quiet", "cocotb"]
