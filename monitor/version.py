"""attnmon's version, for `attnmon --version`.

    >>> version()   # doctest: +SKIP
    '0.1.0'
"""

from __future__ import annotations

from pathlib import Path

DISTRIBUTION = "attention-monitor"
# a checkout run with PYTHONPATH and never pip-installed has no metadata, only this file
PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def version() -> str:
    """The installed distribution's version; from a source tree without metadata, the
    version its pyproject.toml declares, marked as such (else `unknown`)."""
    import importlib.metadata

    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        import tomllib

        project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
        if project["name"] == DISTRIBUTION:
            return f"{project['version']} (source tree, not installed)"
    except (OSError, ValueError, KeyError, TypeError):
        pass  # (tomllib's TOMLDecodeError is a ValueError)
    return "unknown (not installed)"
