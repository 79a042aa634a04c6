"""Shared test support: tiny models, toy data, benchmark writers, slow references (no downloads)."""
