"""Device-side models: the other party of the virtio interface (spec 2: the driver and the device are two).

The driver and its transports live in ``host/``; what stands in for a device lives here, so a reader never
mistakes one side's code for the other's: the software reference device (:mod:`devices.softnet`), and models
that misbehave on purpose to test the driver.
"""
