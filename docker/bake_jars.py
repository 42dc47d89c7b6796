"""Resolve, at image build time, every jar the jobs' Spark sessions ask Ivy for.

Run by ``docker/Dockerfile`` as the image's user, so the jars land in that user's Ivy cache
(``~/.ivy2.5.2``) and ``pipelines.session`` records them in ``eo-lakehouse-jars.json``:
later sessions, and ``spark-submit`` through the ``spark-defaults.conf`` the build writes
next, pass them as ``spark.jars`` and never reach Maven. A container of the image therefore
runs its jobs with no network.

What is resolved is what :func:`pipelines.session.build_session` resolves for each profile
in ``conf/``, once with tables on a local folder and once with tables on S3 (Delta's jar;
S3A's ``hadoop-aws`` and AWS SDK modules for the second; the profile's ``spark.packages``):
a package the project adds to its sessions is baked in by the next build with no change
here. ``EXTRA_PACKAGES`` (comma-separated Maven coordinates, the Dockerfile's build
argument of that name) adds packages on top. Resolving only configures the session: nothing
is read from or written to either root.

Each profile gets its own Python process: Spark reads ``spark.jars.packages`` only when the
JVM starts. Ivy keeps a second copy of every jar in its resolution cache
(``~/.ivy2.5.2/cache``, about 90 MB for Delta); the sessions use the copies in
``~/.ivy2.5.2/jars``, so the cache is dropped once every profile is resolved.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CONF = Path(__file__).resolve().parents[1] / "conf"


#: Table roots to resolve a profile's session for: a local folder (replaced by a temporary
#: one) and an S3 bucket, never contacted.
ROOTS = {"local": None, "object store": "s3a://eo-lakehouse-image-build/lakehouse"}


def overrides(profile: str, root: str) -> list[str]:
    """A local one-core session with tables at ``root``, the profile's packages and
    ``EXTRA_PACKAGES``."""
    from pipelines.config import load_config

    out = ["spark.master=local[1]", "spark.ui=false", f"storage.root={root}"]
    extra = [p.strip() for p in os.environ.get("EXTRA_PACKAGES", "").split(",") if p.strip()]
    if extra:
        packages = [*load_config(profile, out).spark.packages, *extra]
        out.append(f"spark.packages={','.join(packages)}")
    return out


def resolve(profile: str, where: str) -> list[str]:
    """Start (and stop) the session of ``profile`` with tables ``where`` (a key of
    :data:`ROOTS`); return the jars it resolved."""
    from pipelines.config import load_config
    from pipelines.session import build_session, cached_jars, session_packages, uses_object_store

    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(profile, overrides(profile, ROOTS[where] or tmp))
        spark = build_session(config, verbose=True)
        spark.stop()
    packages = session_packages(config.spark, uses_object_store(config))
    jars = cached_jars(packages)
    if jars is None:
        raise SystemExit(f"bake_jars: profile {profile}: Ivy did not resolve {packages}")
    return jars


def main(argv: list[str]) -> int:
    if argv[:1] == ["--one"]:
        for jar in resolve(argv[1], argv[2]):
            print(f"  {jar}")
        return 0
    from pipelines.config import load_config
    from pipelines.session import session_packages, uses_object_store

    done: list[list[str]] = []  # package lists resolved: one session each, not per profile
    for profile in sorted(p.stem for p in CONF.glob("*.yaml")):
        for where, root in ROOTS.items():
            config = load_config(profile, overrides(profile, root or "/tmp/eo-bake"))
            packages = session_packages(config.spark, uses_object_store(config))
            if packages in done:
                continue
            done.append(packages)
            print(f"bake_jars: profile {profile}, tables on {where}: {packages}", flush=True)
            subprocess.run([sys.executable, __file__, "--one", profile, where], check=True)
    from pipelines.session import JARS_CACHE

    shutil.rmtree(JARS_CACHE.parent / "cache", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
