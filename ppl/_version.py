"""The version of ppl, in a module of its own so that any part of the package can read it
without importing `ppl` itself (which imports every part)."""

__version__ = "0.1.0"
