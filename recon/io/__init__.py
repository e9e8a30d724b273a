"""Bases files on disk: HDF5 schema v2 (and the v1 reader), atomic locked writes, hashes."""
