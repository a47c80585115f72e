"""The Python API: the README's example runs as written, and the package stays light to import."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    section = README.read_text().split("## Python API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert blocks, "the README's Python API section has no python block"
    return blocks[0]


@pytest.mark.slow
def test_the_readme_example_runs_as_written(tmp_path, monkeypatch, shared_datasets):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RNNRBM_MIRROR", str(shared_datasets))
    out = subprocess.run([sys.executable, "-c", readme_example()], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert re.search(r"LL -\d+\.\d\d ± \d\.\d\d nats/frame, ACC \d+\.\d%", out.stdout), out.stdout
    assert sorted(p.name for p in tmp_path.glob("demo-*.mid")) == ["demo-001.mid", "demo-002.mid"]
    assert (tmp_path / "runs" / "api-demo" / "best.pt").is_file()


def test_the_api_names_are_functions_and_importing_the_package_does_not_import_torch():
    code = ("import sys, rnnrbm_cli as rr; light = 'torch' not in sys.modules; "
            "print(light, all(callable(getattr(rr, n)) for n in rr.__all__ if n != '__version__'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "True"]
