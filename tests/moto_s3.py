"""moto's S3 server (``python -m moto.server``) with conditional writes made atomic.

moto 5 answers ``PUT`` with ``If-None-Match: *`` in two steps on its request threads: it
looks the key up, then stores the object. Two commits of the same Delta log version at the
same instant can therefore both succeed, the second overwriting the first, which S3, MinIO
and the other stores delta-rs relies on never allow (a conditional write is atomic there).
Under load the window is wide enough to lose a commit in the concurrency tests. This
launcher serializes moto's object writes (single PUTs and multipart completions) with one
lock and runs moto's own server otherwise unchanged; reads stay concurrent.

Usage: ``python tests/moto_s3.py -H 127.0.0.1 -p PORT`` (moto.server's arguments).
"""

from __future__ import annotations

import functools
import threading
from typing import Any


def serialize(cls: Any, names: tuple[str, ...], lock: threading.Lock) -> None:
    """Make the methods ``names`` of ``cls`` run one at a time under ``lock``."""
    for name in names:
        method = getattr(cls, name)

        @functools.wraps(method)
        def locked(*args: Any, __method: Any = method, **kwargs: Any) -> Any:
            with lock:
                return __method(*args, **kwargs)

        setattr(cls, name, locked)


if __name__ == "__main__":
    from moto.s3.responses import S3Response
    from moto.server import main

    serialize(S3Response, ("put_object", "_key_response_post"), threading.Lock())
    main()
