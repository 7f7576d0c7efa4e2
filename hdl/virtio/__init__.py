"""The virtio half of the endpoint: PCI transport registers, packed-ring engine and the virtio-net data path.

It meets the PCIe half only through :mod:`hdl.signatures` (``VirtioCoreSignature``).
"""

from hdl.virtio.core import VirtioNetCore

__all__ = ["VirtioNetCore"]
