"""Every README shell block marked runnable runs as written, with the files it names."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"<!-- (runnable|file: (\S+)) -->\n```\w*\n(.*?)```", re.S)


def blocks():
    return [(m.group(1), m.group(2), m.group(3)) for m in BLOCK.finditer(README.read_text())]


def test_readme_has_runnable_blocks():
    kinds = [k for k, _, _ in blocks()]
    assert "runnable" in kinds and any(k.startswith("file:") for k in kinds)


def test_runnable_blocks_run_as_written(tmp_path):
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.pop("ATTNMON_STORE_URL", None)
    (tmp_path / ".venv").symlink_to(sys.prefix)  # the README's blocks run beside `make demo`'s .venv
    for _, name, body in blocks():
        if name:
            (tmp_path / name).write_text(body)
    for kind, _, body in blocks():
        if kind == "runnable":
            proc = subprocess.run(["bash", "-euo", "pipefail", "-c", body], cwd=tmp_path, env=env,
                                  capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            assert "equal to numpy's" in proc.stdout or "python" not in body
