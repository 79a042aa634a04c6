"""The data package's error, in a module of its own so every reader (the CL_Benchmark loader, the
provenance records, corpora, instruction sets) raises the same type without importing each other."""

from __future__ import annotations


class DataError(ValueError):
    """Bad or missing benchmark data; the message names the file and the problem."""
