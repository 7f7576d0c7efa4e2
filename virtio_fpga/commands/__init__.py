"""Subcommands of ``virtio-fpga``: one module each, discovered by ``virtio_fpga.cli``."""
