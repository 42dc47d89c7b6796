"""Task scheduling of the jobs: how many Spark tasks, and which work items each one gets.

Driver-side helpers shared by ingest (read blocks weighed by area), features and classify
(``tiles`` files weighed by bytes).

Decisions
---------
* One task per core, never more than ``max_per_task`` items each (:func:`task_count`):
  a Python task has a fixed cost of about 0.5 s here (worker hand-over, closure, GDAL and
  Arrow set-up), so small work items are grouped rather than given a task each.
* Items are grouped by size, largest first into the lightest group
  (:func:`balanced_groups`), so the tasks of a stage finish together.
* A group is one partition, its items in group order (:func:`grouped_rdd`).
"""

from __future__ import annotations

from typing import Any, TypeVar

from pyspark import RDD
from pyspark.sql import SparkSession

K = TypeVar("K", str, int, tuple[int, int])


def grouped_rdd(spark: SparkSession, groups: list[list[Any]]) -> RDD:
    """The items of ``groups``, one partition (task) per group, each in group order."""
    # parallelize gives each of n items its own partition.
    return spark.sparkContext.parallelize(groups, max(1, len(groups))).flatMap(lambda g: g)


def task_count(spark: SparkSession, n_items: int, max_per_task: int = 64) -> int:
    """Tasks for ``n_items`` independent work items (blocks, files).

    Each Python task has a fixed cost (measured at ~0.5 s here: worker hand-over, closure,
    GDAL and Arrow set-up), so items are grouped: one task per core (bench/: 2 tasks ran
    the 5490 px features job in 10.1 s, 4 in 12.6 s, 8 in 15.0 s), and no task takes more
    than ``max_per_task`` items. The count is a multiple of the cores (unless there are
    fewer items): three tasks on two cores run two side by side and then the third alone
    while a core idles (four 5490 px scenes, 144 blocks: ingest's tasks 7.1 s in three,
    about 5.4 s in two of the same total work, issue 12).
    """
    cores = max(1, spark.sparkContext.defaultParallelism)
    n = max(cores, -(-n_items // max_per_task))
    return max(1, min(n_items, -(-n // cores) * cores))


def balanced_groups(sizes: dict[K, int], n: int) -> list[list[K]]:
    """Split items into ``n`` groups of about equal total size (largest first, each into
    the lightest group), each group in key order.

    A task's time grows with the pixels it handles, so groups of equal size finish
    together. Ingest weighs read blocks by area: split in scene order, one of two tasks
    got the full block rows and the other the narrow last one (56 % / 44 % of the
    pixels). Features and classify weigh tiles files by bytes, which follow their valid
    pixels (correlation 0.98 on the 5490 px bench scene); split in name order one of two
    tasks ran 18 % longer.
    """
    groups: list[list[K]] = [[] for _ in range(max(1, n))]
    load = [0] * len(groups)
    for key in sorted(sizes, key=lambda k: (-sizes[k], k)):
        i = load.index(min(load))
        groups[i].append(key)
        load[i] += sizes[key]
    return [sorted(g) for g in groups if g]
