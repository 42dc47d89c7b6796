"""Chip classification job: ``tiles`` -> 64 x 64 chips -> an ONNX model -> class per chip.

What the retired ``sparkdl`` ``DeepImagePredictor`` did, with today's pieces: executors cut
each tile into chips of surface reflectance (:func:`chip_frame`, ``mapInArrow`` over
``tiles`` with each scene's own scaling), and
:func:`pyspark.ml.functions.predict_batch_udf` feeds them in batches to an ONNX Runtime
session that each Python worker opens once, on the GPU when onnxruntime has CUDA
(:func:`classify_chips`). Any ONNX model that follows the contract in :mod:`udfs.deep`
plugs in with ``--model``; without one, the job builds the demo CNN (random weights:
the classes it prints are a smoke test, not land cover).

Flow of :func:`main`: load config -> start Spark -> (build the demo CNN) -> chips of the
chosen scenes -> predictions -> counts per class printed; the run is recorded in
``runs`` (``inputs_seen`` = chips classified).

Run with ``python -m pipelines.deep [--root DIR] [--model M.onnx] [--scenes ID,ID]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from pyspark.ml.functions import predict_batch_udf
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.pandas.types import to_arrow_schema
from pyspark.sql.types import (
    ArrayType,
    FloatType,
    IntegerType,
    StringType,
    StructField,
    StructType,
)

from pipelines.config import Config, load_config
from pipelines.features import scene_table
from pipelines.jobs import Job, job_parser, run_main
from pipelines.lakehouse import Lakehouse
from pipelines.runs import Run
from udfs.deep import (
    CHIP_SIZE,
    DEFAULT_BANDS,
    build_chip_cnn,
    make_chip_reader,
    make_predict_fn,
    open_session,
    spec_from_session,
)
from udfs.feature_udfs import TILE_COLUMNS
from udfs.masks import MaskSettings
from udfs.models import ModelError

JOB = "deep"

#: One row per chip. ``chip`` is the flattened float32 ``(C, chip, chip)`` array of
#: surface reflectance (NaN, nodata and masked pixels as 0), channel-major in the order
#: of the bands asked for; ``chip_row`` / ``chip_col`` index the chip grid of the tile
#: (upper-left pixel of the chip in the tile: ``chip_row * chip, chip_col * chip``).
CHIPS = StructType(
    [
        StructField("scene_id", StringType(), False),
        StructField("tile_row", IntegerType(), False),
        StructField("tile_col", IntegerType(), False),
        StructField("chip_row", IntegerType(), False),
        StructField("chip_col", IntegerType(), False),
        StructField("sensor", StringType(), False),
        StructField("chip", ArrayType(FloatType()), False),
    ]
)

PREDICTION = StructType(
    [
        StructField("chip_class", StringType()),
        StructField("chip_confidence", FloatType()),  # softmax probability of chip_class
    ]
)


def chip_frame(
    spark: SparkSession,
    lake: Lakehouse,
    scene_ids: Sequence[str] | None = None,
    bands: Sequence[str] = DEFAULT_BANDS,
    chip: int = CHIP_SIZE,
    pad: bool = False,
    masks: MaskSettings | None = None,
) -> DataFrame:
    """Lazy frame of :data:`CHIPS`: every full ``chip`` x ``chip`` chip of the chosen tiles.

    Chips are cut on the executors from the tiles' DNs, scaled with each scene's own
    ``scenes.scaling``; nothing is collected but the (small) scene table. ``bands`` are
    ``tiles`` columns (``nir`` falls back to ``nir08`` for Landsat, see
    :data:`udfs.deep.BAND_FALLBACK`). Partial chips at the bottom/right tile edges are
    skipped unless ``pad`` (then zero-padded). Tiles written with ``ingest.overlap > 0``
    give overlapping chips at tile borders. Pixels masked by ``masks`` (the job passes
    ``features.masks()``; None: the defaults) or invalid are 0 in the chips, like nodata.
    """
    scenes = scene_table(lake, list(scene_ids) if scene_ids is not None else None)
    tiles = lake.read("tiles").filter(F.col("scene_id").isin(list(scenes)))
    reader = make_chip_reader(scenes, list(bands), to_arrow_schema(CHIPS), chip, pad, masks)
    return tiles.select(*TILE_COLUMNS).mapInArrow(reader, CHIPS)


def classify_chips(
    df: DataFrame,
    model_path: str,
    batch_size: int = 64,
    predict_fn_factory: Callable[[], Callable[..., Any]] | None = None,
    **model_args: Any,
) -> DataFrame:
    """``df`` with ``chip_class`` (string) and ``chip_confidence`` (float) added.

    Runs ``model_path`` (an ONNX file every executor can read) through
    ``predict_batch_udf`` in batches of at most ``batch_size`` chips (Arrow batches are
    not merged: keep ``spark.sql.execution.arrow.maxRecordsPerBatch >= batch_size`` for
    full GPU batches). ``model_args`` (``bands``, ``classes``, ``chip``,
    ``intra_op_threads``) go to :func:`udfs.deep.make_predict_fn` and override the
    model's metadata. ``predict_fn_factory`` replaces that factory altogether (a
    TensorRT engine, a counting wrapper in tests); it must return a ``predict`` with the
    same contract.
    """
    spec = spec_from_session(
        open_session(model_path),
        **{k: v for k, v in model_args.items() if k in ("bands", "classes", "chip")},
    )
    factory = predict_fn_factory or partial(make_predict_fn, model_path, **model_args)
    udf = predict_batch_udf(
        factory,
        return_type=PREDICTION,
        batch_size=batch_size,
        input_tensor_shapes=[[spec.input_size]],
    )
    return (
        df.withColumn("_prediction", udf("chip"))
        .withColumn("chip_class", F.col("_prediction.chip_class"))
        .withColumn("chip_confidence", F.col("_prediction.chip_confidence"))
        .drop("_prediction")
    )


# ----------------------------------------------------------------------------- the job


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = job_parser("deep", __doc__.split("\n")[0])
    p.add_argument("--model", help="ONNX chip model (default: build the demo CNN)")
    p.add_argument("--scenes", help="comma-separated scene ids (default: all)")
    p.add_argument("--batch-size", type=int, default=64, help="chips per model call")
    p.add_argument("--seed", type=int, default=0, help="weights of the demo CNN")
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> Config:
    return load_config(
        args.profile, [*([f"storage.root={args.root}"] if args.root else []), *args.set]
    )


def chip_model(model: str | None, seed: int) -> str:
    """The ONNX chip model to apply: ``model``, or the demo CNN built now with ``seed``.

    Raises :class:`ModelError` when ``model`` does not exist.
    """
    if model is None:
        model = os.path.join(tempfile.mkdtemp(prefix="chip_cnn_"), "chip_cnn_demo.onnx")
        build_chip_cnn(model, seed=seed)
        print(f"no --model: built the demo CNN (random weights, seed {seed}) at {model}")
    elif not os.path.exists(model):
        raise ModelError(f"model not found: {model}")
    return model


def plan(args: argparse.Namespace, config: Config) -> Job:
    """The job for ``args``: the model is built or checked here, before Spark starts."""
    model = chip_model(args.model, args.seed)
    spec = spec_from_session(open_session(model))
    scene_ids = args.scenes.split(",") if args.scenes else None
    counts: list[Any] = []

    def work(spark: SparkSession, lake: Lakehouse, run: Run) -> Run:
        masks = config.features.masks()
        chips = chip_frame(spark, lake, scene_ids, bands=spec.bands, chip=spec.chip, masks=masks)
        counts.extend(
            classify_chips(chips, model, args.batch_size)
            .groupBy("chip_class")
            .agg(F.count("*").alias("chips"), F.avg("chip_confidence").alias("mean_confidence"))
            .orderBy("chip_class")
            .collect()
        )
        run.seen = sum(r.chips for r in counts)
        return run

    def summary(run: Run, lake: Lakehouse) -> str:
        lines = [f"deep run {run.run_id}: {run.seen} chips of {spec.chip} px classified by {model}"]
        lines += [
            f"  {r.chip_class:<12} {r.chips:>7}  mean confidence {r.mean_confidence:.3f}"
            for r in counts
        ]
        return "\n".join(lines)

    return Job(work, summary, source=lambda lake: lake.path("tiles"))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_main(
        JOB, lambda: config_from_args(args), lambda config: plan(args, config), verbose=args.verbose
    )


if __name__ == "__main__":
    sys.exit(main())
