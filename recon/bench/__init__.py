"""Measuring instead of assuming: side-by-side timing, the never-slower guard, MAC counts."""
