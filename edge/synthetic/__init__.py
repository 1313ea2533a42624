"""Synthetic smears: the field generator (smear) and data sets written from it (datasets), for tests,
demos and the simulated camera. Not real cells; never a measure of accuracy.

May import: edge.runtime.
"""
