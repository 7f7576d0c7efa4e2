"""The PCIe half of the endpoint: Xilinx UltraScale+ (PG213) user-interface blocks.

* :mod:`.tlp` - CQ/CC/RQ/RC descriptor layouts;
* :mod:`.completer` - BAR completer (CQ in, CC out) onto a :class:`~hdl.signatures.RegisterBus`;
* :mod:`.regmux` - arbitration of register masters and BAR0 address decoding;
* :mod:`.dma` - requester DMA engine (RQ out, RC in) behind DmaReadPort / DmaWritePort;
* :mod:`.msix` - MSI-X table and PBA, signalling through ``cfg_interrupt_msix_*``;
* :mod:`.cfgext` - virtio vendor capabilities through the configuration-extend interface;
* :mod:`.testcore` - a stand-in for the virtio core (scratch registers, DMA copy engine) for tests.
* :mod:`.ptile` - the Intel P-tile Avalon-ST half (the second family), reusing the blocks above.

See README.md in this directory for the configuration-space window decision (PG213 references).
"""
