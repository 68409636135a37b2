"""Datasets that ship with importq."""
