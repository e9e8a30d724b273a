"""The commands: thin shells over the Python API (only this package prints)."""
