"""Chip (64 x 64 pixel) classification with a deep model in ONNX: the executor side.

Pure numpy kernels, the Arrow wrapper that cuts chips inside ``mapInArrow`` and the
ONNX Runtime factory that :func:`pyspark.ml.functions.predict_batch_udf` calls once per
Python worker. No pyspark here (a test checks that).

Model contract (what :func:`make_predict_fn` expects of any ONNX model, the demo CNN of
:func:`build_chip_cnn` included):

* one float32 input of shape ``(N, C, chip, chip)``: surface reflectance (unitless,
  nominally 0..1) of the bands named in the metadata, in that order, NaN/nodata as 0.
  **Masked pixels get the same treatment as nodata** (0 in every channel): the job's
  :class:`udfs.masks.MaskSettings` (clouds, shadows, cirrus, snow by default) and the
  invalid pixels (saturated, outside the valid DN range) are masked exactly as for the
  statistics and the pixel view. Negative reflectance is kept as measured, like in every
  reflectance layer (:mod:`udfs.indices` states the policy).
  Any normalisation is part of the graph, so callers feed plain reflectance;
* an output of shape ``(N, K)`` with class probabilities (softmax), named by the
  ``eo.output`` metadata entry (else the model's first output);
* ``metadata_props`` (all strings; lists as JSON): ``eo.bands`` (``tiles`` band columns,
  e.g. ``["blue", "green", "red", "nir"]``), ``eo.chip_size`` (``"64"``), ``eo.classes``
  (K names), ``eo.output`` and, informative only, ``eo.normalisation`` and ``eo.input``.
  ``bands`` / ``classes`` / ``chip`` passed to :func:`make_predict_fn` replace missing
  entries, so a model exported elsewhere works without being edited.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from udfs.features import TileDataError, decode_tile, reflectance_layers, tile_quality
from udfs.masks import MaskSettings
from udfs.sensors import SENSORS

CHIP_SIZE = 64
DEFAULT_BANDS = ("blue", "green", "red", "nir")
#: Band column to use when a sensor lacks the one asked for: Landsat has no ``nir``
#: column, its NIR band (SR_B5, 0.85-0.88 um) is the STAC common name ``nir08``.
BAND_FALLBACK = {"nir": "nir08"}
#: Land-cover classes of the demo scenes (pipelines/demo.py CLASSES, codes 1..6).
DEMO_CLASSES = ("water", "forest", "cropland", "grassland", "urban", "bare_soil")

INPUT_NAME = "chips"
OUTPUT_NAME = "probabilities"
FEATURES_NAME = "features"  # pooled features before the dense layer, (N, F)
OPSET = 17
IR_VERSION = 8  # readable by every onnxruntime >= 1.14


class ModelSpecError(ValueError):
    """An ONNX model does not say (or contradicts) what the chips must look like."""


# ----------------------------------------------------------------------------- chips


def resolve_bands(sensor_key: str, bands: Sequence[str]) -> list[str]:
    """The ``tiles`` columns of ``sensor_key`` that hold the requested bands, in order.

    A band the sensor lacks is replaced by :data:`BAND_FALLBACK` (``nir`` -> ``nir08`` for
    Landsat). Raises :class:`KeyError` naming the sensor and band when neither exists.
    """
    have = {b.common for b in SENSORS[sensor_key].reflectance_bands}
    out = []
    for band in bands:
        col = band if band in have else BAND_FALLBACK.get(band)
        if col not in have:
            raise KeyError(
                f"{sensor_key} has no reflectance band {band!r} (bands: {', '.join(sorted(have))})"
            )
        out.append(col)
    return out


def masked_reflectance(
    sensor_key: str,
    dn: Mapping[str, np.ndarray],
    scaling: Mapping[str, tuple[float, float]],
    masks: MaskSettings | None = None,
) -> dict[str, np.ndarray]:
    """Reflectance of one decoded tile (float32, unitless), NaN where masked or nodata.

    The same quality mask as the statistics and the pixel view
    (:func:`udfs.features.tile_quality`): invalid pixels and the classes / flags of
    ``masks`` (None: :data:`udfs.masks.DEFAULT_MASKS`) become NaN, which
    :func:`chips_from_tile` feeds to the model as 0.
    """
    q = tile_quality(sensor_key, dn, masks)
    refl = reflectance_layers(sensor_key, dn, scaling)
    for arr in refl.values():
        arr[q.masked] = np.nan
    return refl


def chips_from_tile(
    arrays: Mapping[str, np.ndarray], bands: Sequence[str], chip: int = CHIP_SIZE, pad: bool = False
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Cut a tile into square chips, band-first.

    Parameters
    ----------
    arrays : mapping of str to ndarray, shape (rows, cols)
        Surface reflectance (float32, unitless, NaN for nodata) by ``tiles`` column; every
        band of ``bands`` must be present with the same shape.
    bands : sequence of str
        Keys of ``arrays`` in channel order.
    chip : int
        Chip side in pixels.
    pad : bool
        Edge handling. False (default): chips that would cross the tile's bottom or right
        edge are skipped, so every chip holds real pixels only (a 150 x 130 tile gives
        2 x 2 chips of 64). True: the tile is padded with 0 (the nodata value fed to the
        model) to the next multiple of ``chip``, so every pixel is in a chip.

    Returns
    -------
    chips : ndarray of float32, shape (n, len(bands), chip, chip)
        Row-major over the chip grid; NaN and +-inf replaced by 0.
    positions : list of (int, int)
        ``(chip_row, chip_col)`` of each chip in the tile's chip grid; the chip's
        upper-left pixel is ``(chip_row * chip, chip_col * chip)`` in the tile.
    """
    if chip <= 0:
        raise ValueError(f"chip size must be positive, got {chip}")
    if not bands:
        raise ValueError("at least one band is needed")
    missing = [b for b in bands if b not in arrays]
    if missing:
        raise KeyError(f"band(s) {', '.join(missing)} not in the tile (have {', '.join(arrays)})")
    shapes = {b: np.shape(arrays[b]) for b in bands}
    if len(set(shapes.values())) != 1 or len(shapes[bands[0]]) != 2:
        raise ValueError(f"bands must be 2-D arrays of one shape, got {shapes}")
    h, w = shapes[bands[0]]
    n_r, n_c = (-(-h // chip), -(-w // chip)) if pad else (h // chip, w // chip)
    c = len(bands)
    stack = np.zeros((c, n_r * chip, n_c * chip), dtype=np.float32)
    rows, cols = min(h, n_r * chip), min(w, n_c * chip)
    for i, b in enumerate(bands):
        stack[i, :rows, :cols] = np.asarray(arrays[b], dtype=np.float32)[:rows, :cols]
    stack[~np.isfinite(stack)] = 0.0
    chips = (
        stack.reshape(c, n_r, chip, n_c, chip).transpose(1, 3, 0, 2, 4).reshape(-1, c, chip, chip)
    )
    positions = [(r, q) for r in range(n_r) for q in range(n_c)]
    return np.ascontiguousarray(chips), positions


def make_chip_reader(
    scenes: Mapping[str, Mapping[str, Any]],
    bands: Sequence[str],
    schema: pa.Schema,
    chip: int = CHIP_SIZE,
    pad: bool = False,
    masks: MaskSettings | None = None,
) -> Callable[[Iterable[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """mapInArrow function: ``tiles`` rows -> one row per chip (see ``pipelines.deep``).

    ``scenes`` is ``pipelines.features.scene_table``'s scene_id -> sensor, scaling. Tiles
    of other scenes are skipped, and so are tiles whose pixel buffers do not decode (the
    features job rejects those with a reason). Pixels masked by ``masks`` (None: the
    defaults) or invalid are 0 in the chips, like nodata.
    """
    scaling = {
        sid: {k: (float(v[0]), float(v[1])) for k, v in s["scaling"].items()}
        for sid, s in scenes.items()
    }

    def cut(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for row in batch.to_pylist():
                scene = scenes.get(row["scene_id"])
                if scene is None:
                    continue
                sensor = scene["sensor"]
                try:
                    dn = decode_tile(row, sensor)
                except TileDataError:
                    continue
                refl = masked_reflectance(sensor, dn, scaling[row["scene_id"]], masks)
                chips, pos = chips_from_tile(refl, resolve_bands(sensor, bands), chip, pad)
                if not pos:
                    continue
                n, per_chip = len(pos), chips[0].size
                offsets = pa.array(np.arange(n + 1, dtype=np.int32) * per_chip, pa.int32())
                flat = pa.ListArray.from_arrays(offsets, pa.array(chips.reshape(-1)))
                columns = {
                    "scene_id": pa.array([row["scene_id"]] * n, pa.string()),
                    "tile_row": pa.array([row["tile_row"]] * n, pa.int32()),
                    "tile_col": pa.array([row["tile_col"]] * n, pa.int32()),
                    "chip_row": pa.array([p[0] for p in pos], pa.int32()),
                    "chip_col": pa.array([p[1] for p in pos], pa.int32()),
                    "sensor": pa.array([sensor] * n, pa.string()),
                    "chip": flat.cast(schema.field("chip").type),
                }
                yield pa.RecordBatch.from_arrays([columns[f.name] for f in schema], schema=schema)

    return cut


# ----------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class ModelSpec:
    """What a chip model expects and returns (from its metadata, see the module doc)."""

    bands: tuple[str, ...]
    chip: int
    classes: tuple[str, ...]
    input_name: str
    output_name: str

    @property
    def input_size(self) -> int:
        """Length of one flattened chip: ``C * chip * chip``."""
        return len(self.bands) * self.chip * self.chip


def _json_list(meta: Mapping[str, str], key: str) -> tuple[str, ...] | None:
    return tuple(json.loads(meta[key])) if key in meta else None


def spec_from_session(
    session: Any,
    bands: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
    chip: int | None = None,
) -> ModelSpec:
    """Read a :class:`ModelSpec` from an ``onnxruntime.InferenceSession``.

    Arguments given here win over the model's metadata; what neither gives raises
    :class:`ModelSpecError`, and so does a band count that contradicts the input shape.
    """
    meta = session.get_modelmeta().custom_metadata_map
    inp = session.get_inputs()[0]
    outputs = [o.name for o in session.get_outputs()]
    bands_ = tuple(bands) if bands is not None else _json_list(meta, "eo.bands")
    classes_ = tuple(classes) if classes is not None else _json_list(meta, "eo.classes")
    chip_ = (
        chip if chip is not None else int(meta["eo.chip_size"]) if "eo.chip_size" in meta else None
    )
    if bands_ is None or classes_ is None or chip_ is None:
        raise ModelSpecError(
            f"model input {inp.name!r} {inp.shape}: metadata lacks eo.bands, eo.classes or "
            f"eo.chip_size (found {sorted(meta)}); pass bands=, classes= and chip="
        )
    shape = list(inp.shape)
    if len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != len(bands_)):
        raise ModelSpecError(
            f"model input {inp.name!r} has shape {shape}, expected (N, {len(bands_)}, "
            f"{chip_}, {chip_}) for bands {list(bands_)}"
        )
    output = meta.get("eo.output", outputs[0])
    if output not in outputs:
        raise ModelSpecError(f"eo.output {output!r} is not an output of the model ({outputs})")
    return ModelSpec(bands_, int(chip_), classes_, inp.name, output)


def providers(available: Sequence[str]) -> list[str]:
    """ONNX Runtime providers to ask for: CUDA first when this onnxruntime has it."""
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def open_session(model_path: str, intra_op_threads: int | None = None) -> Any:
    """An ``onnxruntime.InferenceSession`` on the GPU when onnxruntime has CUDA, else CPU."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if intra_op_threads:
        options.intra_op_num_threads = intra_op_threads
    return ort.InferenceSession(
        model_path, sess_options=options, providers=providers(ort.get_available_providers())
    )


def make_predict_fn(
    model_path: str,
    bands: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
    chip: int | None = None,
    intra_op_threads: int | None = None,
) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """The ``make_predict_fn`` of ``predict_batch_udf``: load the model, return ``predict``.

    Called once per Python worker (``predict_batch_udf`` caches the result), so the
    ``InferenceSession`` is created once per worker, not per batch. ``predict`` takes the
    flat batch ``(N, C * chip * chip)`` float32 (channel-major chips, as cut by
    :func:`chips_from_tile`) and returns ``chip_class`` (object array of class names) and
    ``chip_confidence`` (float32 probability of that class), both of length N.
    """
    session = open_session(model_path, intra_op_threads)
    spec = spec_from_session(session, bands, classes, chip)
    names = np.array(spec.classes, dtype=object)

    def predict(inputs: np.ndarray) -> dict[str, np.ndarray]:
        x = np.asarray(inputs, dtype=np.float32).reshape(-1, len(spec.bands), spec.chip, spec.chip)
        probs = session.run([spec.output_name], {spec.input_name: x})[0]
        if probs.ndim != 2 or probs.shape[1] != len(names):
            raise ModelSpecError(
                f"model output {spec.output_name!r} has shape {probs.shape}, expected "
                f"({len(x)}, {len(names)}) for classes {list(spec.classes)}"
            )
        idx = np.argmax(probs, axis=1)
        return {
            "chip_class": names[idx],
            "chip_confidence": probs[np.arange(len(idx)), idx].astype(np.float32),
        }

    return predict


# ----------------------------------------------------------------------------- demo CNN


def _he(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
    return (rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)).astype(np.float32)


def chip_cnn_model(
    bands: Sequence[str] = DEFAULT_BANDS,
    chip: int = CHIP_SIZE,
    classes: Sequence[str] = DEMO_CLASSES,
    seed: int = 0,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    widths: tuple[int, int] = (8, 16),
) -> Any:
    """A small EuroSAT-style CNN as an ``onnx.ModelProto`` (weights drawn from ``seed``).

    ``(x - mean) / std`` per band, then [conv 3x3 (pad 1) + ReLU + maxpool 2x2] x 2,
    global average pool (output ``features``, ``(N, widths[1])``), dense layer and softmax
    (output ``probabilities``, ``(N, K)``). Conv weights are He-normal, the dense layer
    Glorot-like; the same arguments give byte-identical models. ``mean`` / ``std`` default
    to 0.1 / 0.1 reflectance for every band.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    c, k = len(bands), len(classes)
    if c == 0 or k < 2:
        raise ValueError(f"need at least one band and two classes, got {bands} / {classes}")
    if chip % 4:
        raise ValueError(f"chip size must be a multiple of 4 (two 2x2 poolings), got {chip}")
    mean_ = np.asarray(mean if mean is not None else [0.1] * c, np.float32).reshape(1, c, 1, 1)
    std_ = np.asarray(std if std is not None else [0.1] * c, np.float32).reshape(1, c, 1, 1)
    rng = np.random.default_rng(seed)
    w1, w2 = widths
    weights = {
        "mean": mean_,
        "std": std_,
        "conv1.w": _he(rng, (w1, c, 3, 3), c * 9),
        "conv1.b": np.zeros(w1, np.float32),
        "conv2.w": _he(rng, (w2, w1, 3, 3), w1 * 9),
        "conv2.b": np.zeros(w2, np.float32),
        "dense.w": (rng.standard_normal((w2, k)) * math.sqrt(1.0 / w2)).astype(np.float32),
        "dense.b": np.zeros(k, np.float32),
    }
    conv: dict[str, Any] = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    pool: dict[str, Any] = {"kernel_shape": [2, 2], "strides": [2, 2]}
    nodes = [
        helper.make_node("Sub", [INPUT_NAME, "mean"], ["centred"]),
        helper.make_node("Div", ["centred", "std"], ["normalised"]),
        helper.make_node("Conv", ["normalised", "conv1.w", "conv1.b"], ["c1"], **conv),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], **pool),
        helper.make_node("Conv", ["p1", "conv2.w", "conv2.b"], ["c2"], **conv),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("MaxPool", ["r2"], ["p2"], **pool),
        helper.make_node("GlobalAveragePool", ["p2"], ["gap"]),
        helper.make_node("Flatten", ["gap"], [FEATURES_NAME], axis=1),
        helper.make_node("Gemm", [FEATURES_NAME, "dense.w", "dense.b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], [OUTPUT_NAME], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "chip_cnn",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["N", c, chip, chip])],
        [
            helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["N", k]),
            helper.make_tensor_value_info(FEATURES_NAME, TensorProto.FLOAT, ["N", w2]),
        ],
        initializer=[numpy_helper.from_array(v, name) for name, v in weights.items()],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="eo-lakehouse",
        doc_string="EuroSAT-style chip classifier built by udfs.deep.chip_cnn_model",
    )
    model.ir_version = IR_VERSION
    helper.set_model_props(
        model,
        {
            "eo.bands": json.dumps(list(bands)),
            "eo.chip_size": str(chip),
            "eo.classes": json.dumps(list(classes)),
            "eo.input": "surface reflectance float32 (N, C, chip, chip), band order eo.bands, "
            "NaN/nodata as 0",
            "eo.normalisation": json.dumps(
                {"in_graph": True, "mean": mean_.ravel().tolist(), "std": std_.ravel().tolist()}
            ),
            "eo.output": OUTPUT_NAME,
            "eo.seed": str(seed),
        },
    )
    onnx.checker.check_model(model)
    return model


def build_chip_cnn(
    path: str,
    bands: Sequence[str] = DEFAULT_BANDS,
    chip: int = CHIP_SIZE,
    classes: Sequence[str] = DEMO_CLASSES,
    seed: int = 0,
    **kwargs: Any,
) -> str:
    """Write :func:`chip_cnn_model` to ``path`` (an ``.onnx`` file); returns ``path``."""
    import onnx

    onnx.save_model(chip_cnn_model(bands, chip, classes, seed, **kwargs), path)
    return path


def fit_dense_layer(model: Any, chips: np.ndarray, labels: np.ndarray, l2: float = 1e-2) -> Any:
    """Fit the CNN's final dense layer to labelled chips (ridge regression on one-hot).

    Runs the model on ``chips`` (float32, ``(n, C, chip, chip)``) with ONNX Runtime to get
    the pooled ``features``, solves ``min |[F 1] W - Y|^2 + l2 |W|^2`` for one-hot ``Y``
    of ``labels`` (int class indices, ``(n,)``), and returns a copy of ``model`` with
    ``dense.w`` / ``dense.b`` replaced (scaled so the softmax is reasonably sharp). The
    convolutions keep their random weights: a random-feature classifier, enough for
    the demo's land-cover classes, not a trained network.
    """
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feats = session.run([FEATURES_NAME], {INPUT_NAME: np.asarray(chips, np.float32)})[0]
    k = next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == "dense.b").size
    y = np.zeros((len(labels), k))
    y[np.arange(len(labels)), np.asarray(labels, int)] = 1.0
    mu, sd = feats.mean(axis=0), feats.std(axis=0) + 1e-6
    z = np.hstack([(feats - mu) / sd, np.ones((len(feats), 1))])
    sol = np.linalg.solve(z.T @ z + l2 * np.eye(z.shape[1]), z.T @ y) * 10.0
    w = sol[:-1] / sd[:, None]
    b = sol[-1] - (mu / sd) @ sol[:-1]
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for t in out.graph.initializer:
        if t.name in ("dense.w", "dense.b"):
            t.CopyFrom(
                numpy_helper.from_array(
                    (w if t.name == "dense.w" else b).astype(np.float32), t.name
                )
            )
    return out
