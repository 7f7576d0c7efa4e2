"""Device side of vfio-user (QEMU docs/interop/vfio-user.rst): serve our virtio-net device to a VMM over a socket.

This package is the *device* party: it answers a vfio-user client (QEMU's ``vfio-user-pci``) with a device's
configuration space, BAR 0 and interrupts, and lets the device DMA into the client's memory.  It never imports
the driver side (``host.driver``, ``host.vfio``); the back-ends are the software reference device
(``vfio_user.soft``) and the RTL under cocotb (``sim.vfio_user_rtl``).
"""
