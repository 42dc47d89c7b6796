"""The command line, ``python -m pipelines.demo``; its help is the package docstring."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pipelines.demo as package  # only its __doc__, read when main runs (the --help text)
from pipelines.demo.build import generate
from pipelines.demo.grid import MAX_SIZE, MIN_SIZE
from pipelines.demo.scenes import select_scenes


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m pipelines.demo --out data/demo --size 512``."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.demo",
        description=package.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=Path("data/demo"), help="output folder")
    parser.add_argument(
        "--size",
        type=int,
        default=512,
        help=f"pixels per side of the 10 m grid ({MIN_SIZE}..{MAX_SIZE})",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--scenes",
        nargs="+",
        metavar="ID",
        help="only these scenes (ids or parts of ids, e.g. 20240621 LC09)",
    )
    args = parser.parse_args(argv)
    if not MIN_SIZE <= args.size <= MAX_SIZE:
        parser.error(f"--size must be {MIN_SIZE}..{MAX_SIZE}, got {args.size}")
    try:
        select_scenes(args.scenes)
    except ValueError as e:
        parser.error(str(e))
    start = time.perf_counter()
    manifest = generate(args.out, size=args.size, seed=args.seed, scenes=args.scenes)
    for scene in manifest["scenes"]:
        print(f"{scene['id']}  cloud {scene['cloud_cover']:5.1f} %  {scene['path']}")
    print(f"labels: {manifest['labels_per_class']}")
    print(f"catalog: {manifest['catalog']}")
    print(f"{args.size} x {args.size} px in {time.perf_counter() - start:.1f} s -> {args.out}")
    return 0
