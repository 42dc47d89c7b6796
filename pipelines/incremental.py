"""Daily incremental ingest: what a run examines, from the last successful run's watermark.

``ingest.since`` picks the scenes an ingest run looks at:

* ``all`` (default): every scene of the source (each product's metadata is parsed; scenes
  already in ``scenes`` are then skipped by id without reading a pixel).
* ``watermark``: only what is new since the last *succeeded* ingest run over the same
  ``ingest.source`` (:func:`watermark`), less ``ingest.lookback_days``.
* an ISO date or time (``2024-07-01``): only what is from then on.

``ingest.watermark_by`` says what "new" means:

* ``acquired``: acquisition time. The watermark is the newest ``scenes.acquired`` among the
  scenes committed by succeeded ingest runs of this source. A listed product is dated by
  its name (Sentinel-2 ``S2B_MSIL2A_20240621T103629_...`` or ``S2A_31UFU_20240621_0_L2A``,
  Landsat ``LC09_L2SP_198025_20240726_...``); a STAC item by its ``datetime``.
* ``arrival``: when the product reached the source. The watermark is the ``started`` time
  of the last succeeded ingest run of this source; a product's arrival is the latest
  change time of its folder and files (local: ``st_ctime``, which copying, moving in and
  writing all set, and which ``cp -p`` / ``rsync -a`` cannot set back; S3: LastModified);
  a STAC item's is that of the JSON document that holds it.

Decisions
---------
* **Only succeeded runs move the watermark.** A failed or killed run (status ``failed``,
  ``running``, ``killed``) is ignored: the scenes it did not commit are examined again by
  the next run, those it did commit are in ``scenes`` and skipped by id. No gap, no
  double count.
* **Per source.** The watermark is taken from runs with the same ``source`` string (the
  ``runs`` column): two schedules feeding one table root from different sources do not
  move each other's. A new spelling of the source starts from no watermark (everything is
  examined once).
* **Safe side.** A product is left unread as *before the watermark* only when it is
  certainly older than ``watermark - lookback_days``: a name gives a day, so a product
  counts as acquired up to the end of the *next* day (a day's margin for sensing times
  near midnight and for the products' own rounding). A product that cannot be dated
  (a folder name without a date, an unknown layout, no change time) is always examined.
* **Already ingested, not read.** Inside the window, a listed product whose id is already
  in ``scenes`` with this tiling is skipped from its listing (its metadata is not parsed).
  So a long lookback costs a listing, not reads.
* **Accounted for.** Every product left unread counts in the run's ``inputs_seen`` and
  ``skipped`` (``runs`` has no column of its own for them) and the job says so in one line
  before its summary.
* **Whole archive when it matters.** ``ingest.rebuild``, or scenes in ``scenes`` tiled with
  other settings, make the run examine everything (re-tiling and its refusal need every
  scene); so does a first run (no succeeded run of this source yet).
* **Rejected inputs.** A product a succeeded run rejected is examined again while it is
  inside the lookback window, then no more (re-run with ``--set ingest.since=all`` or a
  date to retry it).
* **An explicit date is a floor.** A succeeded run with ``since=<date>`` moves the
  watermark like any other: it means "nothing before that date".
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

SINCE_MODES = ("all", "watermark")
WATERMARK_BY = ("acquired", "arrival")

#: Acquisition day in a product name: Sentinel-2 SAFE name, Earth Search COG name, Landsat
#: Collection 2 product id (the first of its two dates).
_NAME_DAY = (
    re.compile(r"^S2[A-D]_MSIL(?:1C|2A)_(\d{8})T\d{6}_"),
    re.compile(r"^S2[A-D]_\d{1,2}[A-Z]{3}_(\d{8})_\d+_L(?:1C|2A)$"),
    re.compile(r"^L[COTEM]0\d_L\w{3}_\d{6}_(\d{8})_\d{8}_\d\d_(?:T1|T2|RT)"),
)

#: A name's day, to the end of the next day: margin for sensing near midnight.
NAME_MARGIN = timedelta(days=2)

BEFORE = "before watermark"
KNOWN = "already ingested"


def parse_since(text: str) -> datetime | None:
    """The start of ``ingest.since`` as an aware UTC time; None for ``all`` / ``watermark``.

    A date (``2024-07-01``) is its midnight UTC; a time without offset is UTC. Raises
    ``ValueError`` for anything else.
    """
    if text in SINCE_MODES:
        return None
    if re.fullmatch(r"\d{4}-\d\d-\d\d", text):
        return datetime.combine(date.fromisoformat(text), time(), timezone.utc)
    t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)


def acquired_by(name: str) -> datetime | None:
    """Latest time a product of this name can have been acquired (UTC), from the day in
    its name plus :data:`NAME_MARGIN`; None when the name carries no date."""
    base = name.rsplit("/", 1)[-1].removesuffix(".SAFE")
    for pattern in _NAME_DAY:
        if m := pattern.match(base):
            try:
                day = datetime.strptime(m.group(1), "%Y%m%d").replace(tzinfo=timezone.utc)
            except ValueError:
                return None
            return day + NAME_MARGIN
    return None


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)


@dataclass(frozen=True)
class Watermark:
    """How far the succeeded runs of a source got.

    Attributes
    ----------
    at : datetime
        UTC: newest acquisition (``acquired``) or the run's start (``arrival``).
    by : str
        ``acquired`` or ``arrival``.
    run_id : str
        The succeeded run it comes from.
    scene_id : str or None
        ``acquired``: the scene that set it.
    """

    at: datetime
    by: str
    run_id: str
    scene_id: str | None = None

    def describe(self) -> str:
        at = self.at.strftime("%Y-%m-%dT%H:%M:%SZ")
        if self.by == "arrival":
            return f"{at} (start of succeeded run {self.run_id})"
        return f"{at} (acquisition of {self.scene_id}, succeeded run {self.run_id})"


def watermark(
    runs: Iterable[Mapping[str, Any]],
    scenes: Iterable[Mapping[str, Any]],
    source: str,
    by: str,
) -> Watermark | None:
    """The watermark of ``source`` from ``runs`` rows (``run_id``, ``job``, ``source``,
    ``status``, ``started``) and ``scenes`` rows (``scene_id``, ``acquired``, ``run_id``);
    None when no succeeded ingest run of that source (``arrival``), or none that committed
    a scene (``acquired``), is there.

    Only ``succeeded`` ingest runs count (module docstring, "Decisions").
    """
    ok = {
        r["run_id"]: r
        for r in runs
        if r["job"] == "ingest" and r["status"] == "succeeded" and r["source"] == source
    }
    if by == "arrival":
        if not ok:
            return None
        last = max(ok.values(), key=lambda r: (_utc(r["started"]), r["run_id"]))
        return Watermark(_utc(last["started"]), by, last["run_id"])
    done = [s for s in scenes if s["run_id"] in ok]
    if not done:
        return None
    top = max(done, key=lambda s: (_utc(s["acquired"]), s["scene_id"]))
    return Watermark(_utc(top["acquired"]), by, top["run_id"], top["scene_id"])


@dataclass(frozen=True)
class Passed:
    """A listed product that is not read: ``why`` is :data:`BEFORE` or :data:`KNOWN`."""

    scene_id: str
    href: str
    why: str


@dataclass(frozen=True)
class Window:
    """What an incremental run examines (see the module docstring).

    Attributes
    ----------
    by : str
        ``acquired`` or ``arrival``: which time of a product ``cutoff`` is compared with.
    cutoff : datetime or None
        Products certainly older are not read; None: no product is too old.
    known : frozenset of str
        Scene ids in ``scenes`` with this run's tiling: not read when listed.
    """

    by: str
    cutoff: datetime | None = None
    known: frozenset[str] = frozenset()

    def why_not_read(
        self, scene_id: str | None, acquired: datetime | None, arrived: datetime | None
    ) -> str | None:
        """:data:`BEFORE`, :data:`KNOWN` or None (read it) for a product.

        ``acquired``: latest possible acquisition time (:func:`acquired_by`, or a STAC
        item's datetime); ``arrived``: latest change time. Either may be None (unknown).
        """
        when = acquired if self.by == "acquired" else arrived
        if self.cutoff is not None and when is not None and _utc(when) < self.cutoff:
            return BEFORE
        if scene_id is not None and scene_id in self.known:
            return KNOWN
        return None


@dataclass
class Found:
    """What discovery returned under a window: candidates to work on, products passed.

    ``cutoff``: the window's start in words (``acquired before 2024-06-14T10:36:29Z``),
    what a product :data:`BEFORE` it is older than; empty without a cutoff.
    """

    candidates: list[Any]
    passed: list[Passed] = field(default_factory=list)
    note: str = ""
    cutoff: str = ""


def window_for(
    config: Any,
    runs: Iterable[Mapping[str, Any]],
    scenes: Sequence[Mapping[str, Any]],
) -> tuple[Window | None, str]:
    """The window of a run of ``config`` (None: examine everything, as ``since=all``) and
    the decision in words, from the ``runs`` and ``scenes`` rows (``scenes``: ``scene_id``,
    ``acquired``, ``run_id``, ``tiling_digest``)."""
    ing = config.ingest
    if ing.since == "all":
        return None, ""
    digest = ing.tiling_digest()
    if ing.rebuild:
        return None, "ingest.rebuild is set"
    other = sorted(s["scene_id"] for s in scenes if s["tiling_digest"] != digest)
    if other:
        return None, (f"{len(other)} scene(s) (e.g. {other[0]}) are tiled with other settings")
    known = frozenset(s["scene_id"] for s in scenes)
    start = parse_since(ing.since)
    if start is not None:
        return Window(ing.watermark_by, start, known), (
            f"since {start.strftime('%Y-%m-%dT%H:%M:%SZ')} by {_by_words(ing.watermark_by)}"
        )
    mark = watermark(runs, scenes, ing.source, ing.watermark_by)
    if mark is None:
        return Window(ing.watermark_by, None, known), (
            f"no succeeded ingest run of {ing.source} yet"
        )
    cutoff = mark.at - timedelta(days=ing.lookback_days)
    return Window(ing.watermark_by, cutoff, known), (
        f"watermark by {_by_words(ing.watermark_by)} {mark.describe()}, "
        f"less {ing.lookback_days:g} day(s) of lookback"
    )


def _by_words(by: str) -> str:
    return "acquisition time" if by == "acquired" else "arrival time"


def decision_line(found: Found) -> str:
    """The one line the job prints about its window (empty for ``since=all``)."""
    if not found.note:
        return ""
    counts = {w: [p.scene_id for p in found.passed if p.why == w] for w in (BEFORE, KNOWN)}
    parts = [f"{len(ids)} {w}" for w, ids in counts.items() if ids]
    if not parts:
        return f"ingest: {found.note}; every listed scene examined"
    return f"ingest: {found.note}; not read: {', '.join(parts)} (counted as skipped)"


def account(run: Any, found: Found) -> str:
    """Count the passed products in ``run`` (``seen`` and ``skipped``, as ``runs`` records
    them); those before the window go to ``run.before_watermark`` too, with the window's
    start in ``run.watermark`` (for the summary, which names them apart from the scenes
    already ingested). Returns the decision line.

    Call after :func:`pipelines.ingest.split_candidates` (which sets ``run.seen``).
    """
    run.seen += len(found.passed)
    run.skipped.extend(p.scene_id for p in found.passed)
    run.before_watermark.extend(p.scene_id for p in found.passed if p.why == BEFORE)
    run.watermark = found.cutoff
    return decision_line(found)


# ----------------------------------------------------------------------------- tables


def table_rows(lake: Any, name: str, columns: list[str]) -> list[dict[str, Any]]:
    """Some columns of a table as dicts: delta-rs where it reads them (local roots, Delta
    on S3), Spark otherwise."""
    if lake.arrow_io:
        try:  # delta-rs: milliseconds
            return lake.read_arrow(name, columns).to_pylist()
        except ValueError:  # reader features delta-rs lacks: Spark below
            pass
    if lake.spark is None or not lake.exists(name):
        return []
    return [r.asDict() for r in lake.read(name).select(*columns).collect()]


def discover_new(lake: Any, config: Any) -> Found:
    """Discover the source's scenes under this run's window (:func:`window_for`, from the
    ``runs`` and ``scenes`` tables). With ``since=all``: plain discovery, nothing passed."""
    from pipelines.discover import discover_window

    ing = config.ingest
    window, note = None, ""
    if ing.since != "all":
        runs = table_rows(lake, "runs", ["run_id", "job", "source", "status", "started"])
        scenes = table_rows(lake, "scenes", ["scene_id", "acquired", "run_id", "tiling_digest"])
        window, note = window_for(config, runs, scenes)
    candidates, passed = discover_window(ing.source, ing.allowed_roots, window)
    cutoff = ""
    if window is not None and window.cutoff is not None:
        verb = "acquired" if window.by == "acquired" else "arrived"
        cutoff = f"{verb} before {window.cutoff.strftime('%Y-%m-%dT%H:%M:%SZ')}"
    return Found(candidates, passed, note, cutoff)
