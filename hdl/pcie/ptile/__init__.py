"""The PCIe half on the Intel P-tile Avalon-ST hard IP (Intel 683059), beside the UltraScale+ one.

* :mod:`.avst` - RX splitter (to the shared completer and DMA engine), TX header builders and arbiter with
  flow-control credits, configuration-output decoder, VirtIO PCI configuration access responder;
* :mod:`.top` - ``virtio_net_endpoint`` with the P-tile port names.

See README.md in this directory for what is taken from the user guide and what is assumed.
"""
