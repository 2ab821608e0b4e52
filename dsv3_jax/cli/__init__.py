"""Thin command-line entry points (DESIGN.md principle 10: they only parse flags)."""
