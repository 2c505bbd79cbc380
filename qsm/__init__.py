"""qsm: the quantitative susceptibility mapping (QSM) study layer on top of voxstats."""

__version__ = "0.1.0"
