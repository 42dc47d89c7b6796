"""``python -m pipelines.demo``: see :func:`pipelines.demo.cli.main`."""

import sys

from pipelines.demo.cli import main

sys.exit(main())
