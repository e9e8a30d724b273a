"""The version of recon (also written into every bases file)."""
__version__ = "0.2.0"
