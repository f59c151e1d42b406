"""The README's snippets run as written, against the real service on the bundled sample survey.

Each ``curl`` of the HTTP-contract block runs with ``--fail`` added (a 4xx/5xx fails the
test) and the host rewritten to this test's port; the Python block runs as it is, with the
port rewritten. The multi-layer block needs the test surveys of tests/service/test_layers.py
and is run there in spirit, not here.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from .serve_harness import REPO_ROOT, ServeApp

README = (REPO_ROOT / "README.md").read_text()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def _commands(block: str) -> list[str]:
    """Shell commands of a block: continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", block)
    out, pending = [], ""
    for line in joined.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending = f"{pending}\n{line}" if pending else line
        if pending.count("'") % 2 == 0:  # a quoted JSON body may span lines
            out.append(pending)
            pending = ""
    return out


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    sample = tmp_path_factory.mktemp("hi4pi")
    served = ServeApp({"surveys": [{"name": "hi4pi", "url": str(sample)}], "build_sample_survey": True})
    yield served
    served.close()


def _here(text: str, app) -> str:
    return text.replace("localhost:8000", f"localhost:{app.port}")


def test_the_http_contract_curls_succeed(app, tmp_path):
    block = next(b for b in _blocks("bash") if "/v1/tile-manifest" in b)
    commands = [c for c in _commands(block) if c.startswith("curl")]
    assert len(commands) >= 7
    for command in commands:
        run = subprocess.run(
            _here(command.replace("curl ", "curl --fail-with-body ", 1), app),
            shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert run.returncode == 0, f"{command}\n{run.stdout[-500:]}{run.stderr[-500:]}"
    assert (tmp_path / "lmc.png").stat().st_size > 1000 and (tmp_path / "sky.fits").stat().st_size > 2880


def test_the_astroquery_snippet_runs(app, tmp_path):
    (block,) = [b for b in _blocks("python") if "hips2fitsClass" in b]
    script = _here(block, app) + "\nassert hdul[0].data.shape == (300, 600), hdul[0].data.shape\n"
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
