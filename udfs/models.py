"""Model bundles: a trained classifier in a folder, its metadata, and the predict kernel.

A bundle is a folder::

    metadata.json   model_id, trainer, format, feature names (in order), band scaling
                    convention, classes (code + name), sensors, training run, metrics, ...
    model.onnx      (format "onnx": a scikit-learn model converted with skl2onnx,
                    zipmap disabled: outputs ``label`` int64 and ``probabilities`` float32)
    spark_model/    (format "spark": a saved Spark MLlib model, loaded by the driver)

:func:`load_bundle` validates the folder, :func:`check_compatible` the data a bundle is
applied to, and :func:`predict_pixels` classifies a float32 feature matrix with
onnxruntime (one inference session per process and model file; a random forest as
sessions of a few trees each, :func:`forest_parts`). No pyspark here.

Decisions
---------
* **Radiometry.** A model is trained on one radiometry, ``"surface"`` (S2 L2A, Landsat
  C2 L2) or ``"toa"`` (S2 L1C), :attr:`udfs.sensors.Sensor.radiometry`. Training on
  sensors of both raises :class:`RadiometryError`; applying a model to pixels of another
  radiometry than its own (``metadata["radiometry"]``, else its sensors') is refused.
* **Accuracy interval**: see :mod:`udfs.metrics`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from udfs.errors import PipelineError, unsafe_id

METADATA = "metadata.json"
MODEL_FILES = {"onnx": "model.onnx", "spark": "spark_model"}
REQUIRED_KEYS = (
    "model_id",
    "trainer",
    "format",
    "model_file",
    "feature_names",
    "scaling",
    "classes",
    "model_classes",
    "sensors",
    "training_run_id",
    "metrics",
    "created",
)
#: Rows predicted per onnxruntime call: bounds the probability matrix held at once. The
#: 64-tree demo forest on one thread predicted 0.214 Mpx/s in calls of 65 536 rows (a
#: whole 256 px tile) and 0.25-0.27 Mpx/s in calls of 256..16 384 (issue 12, one run):
#: a smaller batch keeps the rows being routed through the trees in cache.
PREDICT_CHUNK = 16384
#: Trees per onnxruntime session when a random forest is predicted in parts
#: (:func:`forest_parts`). The 64-tree demo forest (5490 px bench lake, 0.61 M pixels,
#: one thread, 2026-12-02): as skl2onnx writes it 0.204 Mpx/s; without its zero leaf
#: weights 0.262; and in parts of 2, 4, 8, 16 trees 0.287, 0.292, 0.302, 0.302 (in parts
#: of 8 with the zero weights kept: 0.221). Probabilities identical in every case.
TREES_PER_PART = 8


class ModelError(PipelineError, ValueError):
    """A model bundle is missing, incomplete, or does not fit the data it is applied to."""


class RadiometryError(ModelError):
    """Top-of-atmosphere and surface reflectance would be mixed in one model."""


@dataclass(frozen=True)
class ModelBundle:
    """A loaded (validated) bundle: its folder and metadata.

    Attributes
    ----------
    path : Path
        The bundle folder.
    metadata : dict
        Parsed ``metadata.json``.
    """

    path: Path
    metadata: dict[str, Any]

    @property
    def model_id(self) -> str:
        return str(self.metadata["model_id"])

    @property
    def format(self) -> str:
        return str(self.metadata["format"])

    @property
    def model_path(self) -> Path:
        return self.path / str(self.metadata["model_file"])

    @property
    def feature_names(self) -> list[str]:
        return list(self.metadata["feature_names"])

    @property
    def sensors(self) -> list[str]:
        return list(self.metadata["sensors"])

    @property
    def model_classes(self) -> NDArray[np.int32]:
        """Class codes in the order of the model's probability columns."""
        return np.asarray(self.metadata["model_classes"], dtype=np.int32)

    @property
    def class_names(self) -> dict[int, str]:
        return {int(c["code"]): str(c["name"]) for c in self.metadata["classes"]}


# ----------------------------------------------------------------------------- radiometry


def training_radiometry(sensors: Sequence[str]) -> str:
    """The one radiometry (``surface`` | ``toa``) of ``sensors``.

    Raises :class:`RadiometryError` naming each sensor and its radiometry when they differ,
    :class:`ModelError` for an unknown sensor or none at all.
    """
    from udfs.sensors import SENSORS

    unknown = sorted(set(sensors) - set(SENSORS))
    if unknown:
        raise ModelError(f"unknown sensor(s) {', '.join(unknown)}")
    kinds = {s: SENSORS[s].radiometry for s in sorted(set(sensors))}
    if not kinds:
        raise ModelError("no sensors to train on")
    if len(set(kinds.values())) > 1:
        raise RadiometryError(
            "cannot train one model on top-of-atmosphere and surface reflectance together: "
            + ", ".join(f"{s} is {r}" for s, r in kinds.items())
            + " (restrict the scenes with --sensors or --scenes)"
        )
    return next(iter(kinds.values()))


def bundle_radiometry(bundle: ModelBundle) -> str:
    """The model's radiometry: ``metadata["radiometry"]``, else that of its sensors."""
    given = bundle.metadata.get("radiometry")
    return str(given) if given else training_radiometry(bundle.sensors)


def _radiometry_problems(bundle: ModelBundle, sensors: Sequence[str]) -> list[str]:
    from udfs.sensors import SENSORS

    want = bundle_radiometry(bundle)
    other = {s: SENSORS[s].radiometry for s in sorted(set(sensors)) if s in SENSORS}
    return [
        f"{s} pixels are {r} reflectance, the model was trained on {want} reflectance "
        f"({', '.join(bundle.sensors)})"
        for s, r in other.items()
        if r != want
    ]


# ----------------------------------------------------------------------------- writing


def write_metadata(path: Path, metadata: Mapping[str, Any]) -> Path:
    """Write ``metadata.json`` after checking that every required key is present."""
    missing = [k for k in REQUIRED_KEYS if k not in metadata]
    if missing:
        raise ModelError(f"bundle metadata lacks {', '.join(missing)}")
    path.mkdir(parents=True, exist_ok=True)
    out = path / METADATA
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(metadata, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, out)
    return out


@contextlib.contextmanager
def _int_missing_flags() -> Iterator[None]:
    """Let skl2onnx convert HistGradientBoosting models with this onnx.

    skl2onnx 1.20 gives each leaf's ``nodes_missing_value_tracks_true`` as a Python
    ``False``, which onnx >= 1.18 refuses in an ints attribute ("Expected an int, got a
    boolean"); the flag is given as 0/1 for the conversion's duration. It only matters
    for NaN inputs, which are never predicted (:func:`predict_with_session`).
    """
    from skl2onnx.common import tree_ensemble

    original = tree_ensemble.add_node

    def add_node(*args: Any, **kwargs: Any) -> Any:
        flag = kwargs.get("nodes_missing_value_tracks_true")
        if flag is not None:
            kwargs["nodes_missing_value_tracks_true"] = int(flag)
        return original(*args, **kwargs)

    tree_ensemble.add_node = add_node
    try:
        yield
    finally:
        tree_ensemble.add_node = original


def sklearn_to_onnx(estimator: Any, n_features: int) -> bytes:
    """Serialized ONNX model of a fitted scikit-learn classifier (float32 input ``X``).

    ``zipmap`` is disabled so the outputs are plain tensors: ``label`` (int64) and
    ``probabilities`` (float32, columns in ``estimator.classes_`` order).
    """
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    try:
        with _int_missing_flags():
            onx = to_onnx(
                estimator,
                initial_types=[("X", FloatTensorType([None, int(n_features)]))],
                options={id(estimator): {"zipmap": False}},
            )
    except (RuntimeError, TypeError, ValueError, NotImplementedError) as e:
        raise ModelError(
            f"cannot convert {type(estimator).__name__} to ONNX with skl2onnx: {e}"
        ) from e
    return onx.SerializeToString()


def write_onnx_bundle(path: str | Path, estimator: Any, metadata: Mapping[str, Any]) -> ModelBundle:
    """Write a scikit-learn classifier as ``model.onnx`` + ``metadata.json`` in ``path``.

    ``metadata`` must hold every :data:`REQUIRED_KEYS` entry except ``format``,
    ``model_file`` and ``model_classes``, which are filled in here.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    names = list(metadata["feature_names"])
    blob = sklearn_to_onnx(estimator, len(names))
    tmp = path / (MODEL_FILES["onnx"] + ".tmp")
    tmp.write_bytes(blob)
    os.replace(tmp, path / MODEL_FILES["onnx"])
    meta = {
        **metadata,
        "format": "onnx",
        "model_file": MODEL_FILES["onnx"],
        "model_classes": [int(c) for c in estimator.classes_],
    }
    write_metadata(path, meta)
    return load_bundle(path)


# ----------------------------------------------------------------------------- loading


def load_bundle(path: str | Path) -> ModelBundle:
    """Open and validate a bundle folder.

    Raises :class:`ModelError` naming the folder and what is wrong: the folder or
    ``metadata.json`` is missing or unreadable, a required key is absent, or the model
    file the metadata names does not exist.
    """
    path = Path(path)
    if not path.is_dir():
        raise ModelError(f"model bundle {path}: folder does not exist")
    meta_path = path / METADATA
    if not meta_path.is_file():
        raise ModelError(f"model bundle {path}: {METADATA} is missing")
    try:
        metadata = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"model bundle {path}: {METADATA} is not readable JSON: {e}") from e
    if not isinstance(metadata, dict):
        raise ModelError(f"model bundle {path}: {METADATA} must hold a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in metadata]
    if missing:
        raise ModelError(f"model bundle {path}: {METADATA} lacks {', '.join(missing)}")
    fmt = metadata["format"]
    if fmt not in MODEL_FILES:
        raise ModelError(
            f"model bundle {path}: unknown format {fmt!r} (known: {', '.join(MODEL_FILES)})"
        )
    model = path / str(metadata["model_file"])
    if not model.exists():
        raise ModelError(
            f"model bundle {path}: model file {metadata['model_file']} is missing "
            f"(format {fmt}, trainer {metadata['trainer']})"
        )
    if not metadata["feature_names"]:
        raise ModelError(f"model bundle {path}: feature_names is empty")
    # The id names the bundle's partition of ``predictions`` and its folder: a value
    # such as "../x" must not reach a path.
    why = unsafe_id(metadata["model_id"])
    if why is not None:
        raise ModelError(f"model bundle {path}: {METADATA} model_id {why}")
    return ModelBundle(path, metadata)


def check_compatible(
    bundle: ModelBundle, feature_columns: Sequence[str], sensors: Sequence[str]
) -> None:
    """Raise :class:`ModelError` unless the data fits the model.

    The data must offer exactly the bundle's features in the bundle's order, and come
    from sensors the model was trained on, of its radiometry. The message says what
    differs: missing and unexpected features, a different order, unknown sensors, another
    radiometry (then a :class:`RadiometryError`).
    """
    want = bundle.feature_names
    got = list(feature_columns)
    problems = []
    if got != want:
        missing = [f for f in want if f not in got]
        extra = [f for f in got if f not in want]
        if missing:
            problems.append(f"missing feature(s) {', '.join(missing)}")
        if extra:
            problems.append(f"unexpected feature(s) {', '.join(extra)}")
        if not missing and not extra:
            problems.append(f"features in another order: expected {want}, got {got}")
    unknown = sorted(set(sensors) - set(bundle.sensors))
    if unknown:
        problems.append(
            f"sensor(s) {', '.join(unknown)} not trained on (model sensors: "
            f"{', '.join(bundle.sensors)})"
        )
    radiometry = _radiometry_problems(bundle, sensors)
    problems += radiometry
    if problems:
        error = RadiometryError if radiometry else ModelError
        raise error(f"model {bundle.model_id} ({bundle.path}): " + "; ".join(problems))


def sensor_features(sensor_key: str) -> set[str]:
    """Every feature name the pixel view can offer for a sensor.

    Reflectance band columns (``red``, ``nir08`` ...) and lower-case names of the spectral
    indices whose bands the sensor has.
    """
    from udfs.indices import INDICES, MissingIndexBandError, index_columns
    from udfs.sensors import SENSORS

    names = {b.common for b in SENSORS[sensor_key].reflectance_bands}
    for index in INDICES:
        try:
            index_columns([index], sensor_key)
        except MissingIndexBandError:
            continue
        names.add(index.lower())
    return names


def model_bands(bundle: ModelBundle, sensor_key: str) -> set[str]:
    """``tiles`` band columns a sensor's scenes must hold to feed the model: its band
    features and the bands of its indices (quality bands are always tiled)."""
    from udfs.indices import MissingIndexBandError, index_columns
    from udfs.sensors import SENSORS

    commons = {b.common for b in SENSORS[sensor_key].reflectance_bands}
    out = {f for f in bundle.feature_names if f in commons}
    for index in index_names(bundle):
        try:
            out.update(index_columns([index], sensor_key)[index].values())
        except MissingIndexBandError:
            continue  # check_data refuses such a sensor with its own message
    return out


def index_names(bundle: ModelBundle) -> list[str]:
    """Spectral indices (upper-case names of :data:`udfs.indices.INDICES`) the model uses."""
    from udfs.indices import INDICES

    lower = {i.lower(): i for i in INDICES}
    return [lower[f] for f in bundle.feature_names if f in lower]


def check_data(bundle: ModelBundle, sensors: Sequence[str]) -> None:
    """Raise :class:`ModelError` unless every sensor's pixels can feed the model.

    A sensor must be one the model was trained on, of the model's radiometry (surface or
    top-of-atmosphere reflectance), and offer every feature of the bundle (bands and
    indices). The message names each sensor and what it lacks.
    """
    from udfs.sensors import SENSORS

    radiometry = _radiometry_problems(bundle, sensors)
    problems = list(radiometry)
    unknown = sorted(set(sensors) - set(bundle.sensors))
    if unknown:
        problems.append(
            f"sensor(s) {', '.join(unknown)} not trained on (model sensors: "
            f"{', '.join(bundle.sensors)})"
        )
    for sensor in sorted(set(sensors)):
        if sensor not in SENSORS:
            problems.append(f"unknown sensor {sensor!r}")
            continue
        missing = [f for f in bundle.feature_names if f not in sensor_features(sensor)]
        if missing:
            problems.append(f"{sensor} has no feature {', '.join(missing)}")
    if problems:
        error = RadiometryError if radiometry else ModelError
        raise error(f"model {bundle.model_id} ({bundle.path}): " + "; ".join(problems))


# ----------------------------------------------------------------------------- predicting


#: Attributes of a ``TreeEnsembleClassifier`` that list leaf weights, one entry per weight.
CLASS_ATTRIBUTES = ("class_ids", "class_nodeids", "class_treeids", "class_weights")


def _forest_node(model: Any) -> Any:
    """The graph's only node when it is a ``TreeEnsembleClassifier`` whose probabilities
    are plain sums of leaf weights (no post-transform, no base values, float thresholds):
    a random forest as skl2onnx writes it. None for anything else."""
    from onnx import helper

    nodes = list(model.graph.node)
    if len(nodes) != 1 or nodes[0].op_type != "TreeEnsembleClassifier":
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in nodes[0].attribute}
    if any(k.endswith("_as_tensor") for k in attrs) or attrs.get("base_values"):
        return None
    if attrs.get("post_transform", b"NONE") not in (b"NONE", "NONE"):
        return None
    return nodes[0]


def _with_attributes(empty: Any, node: Any, attrs: Mapping[str, Any]) -> bytes:
    """The model ``empty`` (a graph without nodes) with ``node`` given ``attrs``, serialized."""
    import onnx
    from onnx import helper

    new = helper.make_node(
        node.op_type, list(node.input), list(node.output), name=node.name, domain=node.domain,
        **attrs,
    )  # fmt: skip
    out = onnx.ModelProto()
    out.CopyFrom(empty)
    out.graph.node.append(new)
    return bytes(out.SerializeToString())


def forest_parts(model: bytes, trees_per_part: int) -> list[bytes]:
    """A random forest's ONNX model as models of ``trees_per_part`` trees each, whose
    ``probabilities`` add up to the forest's; ``[model]`` for any other model.

    Each part also leaves out the zero leaf weights skl2onnx writes (one weight per class
    per leaf; a random forest leaf of pure training pixels has one non-zero weight):
    adding zero changes no sum. Why: onnxruntime walks every tree for one row before the
    next row, so the whole forest's nodes and weights compete for the core's cache; parts
    that fit in it predicted faster on this machine (issue 12, see :data:`TREES_PER_PART`).
    With a power-of-two tree count and pure leaves every partial sum is a multiple of
    1/trees, exact in float32, so the summed probabilities equal the forest's bit for bit;
    otherwise they may differ in the last float32 bit.
    """
    import onnx

    m = onnx.load_from_string(model)
    node = _forest_node(m)
    if node is None:
        return [model]
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    cls = {k: np.asarray(attrs[k]) for k in CLASS_ATTRIBUTES}
    nonzero = cls["class_weights"] != 0
    # Every leaf keeps at least one weight entry (onnxruntime expects one per leaf).
    leaf = cls["class_treeids"].astype(np.int64) << 32 | cls["class_nodeids"].astype(np.int64)
    _, first, inverse = np.unique(leaf, return_index=True, return_inverse=True)
    weighted = np.bincount(inverse, weights=nonzero, minlength=len(first)) > 0
    keep = nonzero.copy()
    keep[first[~weighted]] = True
    node_attrs = {k: np.asarray(v) for k, v in attrs.items() if k.startswith("nodes_")}
    node_trees = node_attrs["nodes_treeids"]
    tree_ids = np.unique(node_trees)
    n_parts = max(1, -(-len(tree_ids) // max(1, trees_per_part)))
    empty = onnx.ModelProto()
    empty.CopyFrom(m)
    del empty.graph.node[:]
    parts = []
    for ids in np.array_split(tree_ids, n_parts):
        in_nodes = np.isin(node_trees, ids)
        in_cls = keep & np.isin(cls["class_treeids"], ids)
        changes: dict[str, Any] = {k: v[in_nodes].tolist() for k, v in node_attrs.items()}
        changes.update({k: v[in_cls].tolist() for k, v in cls.items()})
        # Trees numbered 0..n-1 within the part.
        changes["nodes_treeids"] = np.searchsorted(ids, node_trees[in_nodes]).tolist()
        changes["class_treeids"] = np.searchsorted(ids, cls["class_treeids"][in_cls]).tolist()
        parts.append(_with_attributes(empty, node, {**attrs, **changes}))
    return parts


class SummedSessions:
    """onnxruntime sessions of a forest's parts (:func:`forest_parts`) run as one model:
    ``run(["probabilities"], feeds)`` returns the sum of the parts' probabilities."""

    def __init__(self, sessions: Sequence[Any]) -> None:
        self.sessions = list(sessions)

    def get_inputs(self) -> Any:
        return self.sessions[0].get_inputs()

    def run(self, outputs: Sequence[str], feeds: Mapping[str, Any]) -> list[Any]:
        if list(outputs) != ["probabilities"]:
            raise ModelError(f"a forest in parts gives 'probabilities' only, not {outputs}")
        total = None
        for sess in self.sessions:
            (proba,) = sess.run(["probabilities"], feeds)
            if total is None:
                total = proba
            else:
                total += proba
        return [total]


def _new_session(model: str | bytes, label: str) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    # Executors already run one task per core: one thread per session avoids oversubscribing.
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    try:
        blob = Path(model).read_bytes() if isinstance(model, str) else model
        parts = forest_parts(blob, TREES_PER_PART)
        sessions = [
            ort.InferenceSession(p, sess_options=opts, providers=_providers()) for p in parts
        ]
    except Exception as e:  # onnx and onnxruntime raise their own (non-exported) types
        raise ModelError(f"model {label} cannot be loaded by onnxruntime: {e}") from e
    return sessions[0] if len(sessions) == 1 else SummedSessions(sessions)


def _providers() -> list[str]:
    """CUDA when this onnxruntime build has it (onnxruntime-gpu on a GPU host), else CPU."""
    import onnxruntime as ort

    have = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in have]


@functools.lru_cache(maxsize=8)
def _session(path: str, mtime_ns: int, size: int) -> Any:
    """One onnxruntime session per model file (and version of it) per process."""
    return _new_session(path, f"file {path}")


_BLOB_SESSIONS: dict[str, Any] = {}


def session_from_bytes(sha256: str, blob: Callable[[], bytes]) -> Any:
    """One onnxruntime session per model digest per process (executor Python worker).

    ``blob`` is only called the first time a digest is seen, so a broadcast model is
    deserialized once per worker, not once per batch.
    """
    sess = _BLOB_SESSIONS.get(sha256)
    if sess is None:
        if len(_BLOB_SESSIONS) >= 8:
            _BLOB_SESSIONS.clear()
        sess = _BLOB_SESSIONS[sha256] = _new_session(blob(), f"sha256 {sha256[:12]}")
    return sess


def model_sha256(bundle: ModelBundle) -> str:
    """Hex SHA-256 of the bundle's model file (ONNX), identifying the exact weights."""
    return hashlib.sha256(bundle.model_path.read_bytes()).hexdigest()


def onnx_session(bundle: ModelBundle) -> Any:
    """The cached onnxruntime session of an ONNX bundle."""
    if bundle.format != "onnx":
        raise ModelError(
            f"model {bundle.model_id}: predict_pixels needs an ONNX bundle, this one is "
            f"{bundle.format!r} (trainer {bundle.metadata['trainer']}); apply it with Spark"
        )
    st = bundle.model_path.stat()
    return _session(str(bundle.model_path), st.st_mtime_ns, st.st_size)


def predict_pixels(
    bundle: ModelBundle, X: ArrayLike
) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
    """Classify pixels with an ONNX bundle (see :func:`predict_with_session`)."""
    x = np.asarray(X)
    if x.ndim != 2 or x.shape[1] != len(bundle.feature_names):
        raise ModelError(
            f"model {bundle.model_id}: expected a (n, {len(bundle.feature_names)}) feature "
            f"matrix ({', '.join(bundle.feature_names)}), got shape {x.shape}"
        )
    return predict_with_session(lambda: onnx_session(bundle), bundle.model_classes, x)


def predict_with_session(
    session: Callable[[], Any], codes: ArrayLike, X: ArrayLike
) -> tuple[NDArray[np.int32], NDArray[np.float32]]:
    """Classify pixels with an onnxruntime session of a classifier bundle.

    Parameters
    ----------
    session : callable
        Returns the onnxruntime session (called only when a row is classifiable).
    codes : array of int
        Class codes in the order of the model's probability columns.
    X : array, shape (n, f), float32
        One row per pixel, columns in the bundle's ``feature_names`` order (surface
        reflectance and indices, unitless).

    Returns
    -------
    classes : ndarray, shape (n,), int32
        Class code of the most probable class (ties: the lowest code, as scikit-learn's
        ``predict``); ``0`` where a row holds a non-finite value.
    confidence : ndarray, shape (n,), float32
        Probability of that class; ``0`` where the class is ``0``.
    """
    x = np.asarray(X, dtype=np.float32)
    n = x.shape[0]
    classes = np.zeros(n, dtype=np.int32)
    confidence = np.zeros(n, dtype=np.float32)
    ok = np.isfinite(x).all(axis=1)
    if not ok.any():
        return classes, confidence
    sess = session()
    input_name = sess.get_inputs()[0].name
    codes = np.asarray(codes, dtype=np.int32)
    all_ok = bool(ok.all())
    rows = np.arange(n) if all_ok else np.flatnonzero(ok)
    for start in range(0, len(rows), PREDICT_CHUNK):
        idx: Any = rows[start : start + PREDICT_CHUNK]
        if all_ok:  # a slice: no gather copy of the chunk
            idx = slice(start, min(start + PREDICT_CHUNK, n))
        (proba,) = sess.run(["probabilities"], {input_name: np.ascontiguousarray(x[idx])})
        # argmax (first maximum) rather than the ONNX label output: ties then resolve to
        # the lowest code, exactly as scikit-learn's predict does.
        best = np.argmax(proba, axis=1)
        classes[idx] = codes[best]
        confidence[idx] = proba[np.arange(len(best)), best]
    return classes, confidence
