"""tsdebug: a terminal debugger for TorchScript programs."""

__version__ = "0.1.0"
