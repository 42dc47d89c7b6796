"""Accumulators whose class a Python worker can import cheaply.

A task function that holds an accumulator makes a fresh worker import the accumulator
param's module when it unpickles the task; kept here, next to nothing else, that import
is ``pyspark.accumulators`` only (from :mod:`pipelines.runs` it pulled in pyspark.sql,
pyarrow's datasets and rasterio: 1.15 s per new worker, issue 12).
"""

from __future__ import annotations

from pyspark.accumulators import AccumulatorParam


class ListParam(AccumulatorParam):
    """Accumulator of lists: executors report unreadable blocks to the driver."""

    def zero(self, value: list) -> list:
        return []

    def addInPlace(self, a: list, b: list) -> list:  # noqa: N802  (pyspark's name)
        return a + b
