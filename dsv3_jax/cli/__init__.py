"""Thin command-line entry points (they only parse flags; the library does the work)."""
