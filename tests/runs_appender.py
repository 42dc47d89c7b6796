"""A process that appends six ``runs`` rows with delta-rs, no Spark, for the concurrency
tests: ``python tests/runs_appender.py ROOT FIRST`` writes run ids ``r{FIRST:03d}`` to
``r{FIRST+5:03d}`` into the tables under ROOT (local or ``s3://``), one commit each, and
prints ``<run id> written`` or ``<run id> left`` (found written by another process).

Started several at once with overlapping FIRST values, every id must end up in ``runs``
exactly once, each written by exactly one process.
"""

import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import pyarrow as pa
    from pyspark.sql.pandas.types import to_arrow_schema

    from pipelines.config import load_config
    from pipelines.datamodel import RUNS
    from pipelines.preflight import driver_lake
    from pipelines.runs import Run, run_row

    config = load_config("local", [f"storage.root={sys.argv[1]}"])
    lake = driver_lake(config)
    first = int(sys.argv[2])
    for i in range(first, first + 6):  # overlapping ids between processes
        run = Run(config)
        run.run_id = f"r{i:03d}"
        row = pa.Table.from_pylist([run_row(run, "succeeded")], schema=to_arrow_schema(RUNS))
        done = lake.append_arrow("runs", row, owner=f"p{first}")
        print(run.run_id, "written" if done.written else "left", flush=True)
