"""Errors shared by the command line and its subcommands (a module of its own, so ``python -m virtio_fpga.cli``
and the console script see the same class)."""


class CliError(Exception):
    """A user mistake or an unmet precondition: printed as one line, exit status 2."""
