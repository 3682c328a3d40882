"""`python -m benchmarks [--quick] [--pg-url URL] [--out DIR]`."""

from __future__ import annotations

import os

# "on one core": BLAS must not spread the background figures over every core. Set before
# numpy is imported (nothing in benchmarks/__init__.py imports it).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from benchmarks.cli import main  # noqa: E402

raise SystemExit(main())
