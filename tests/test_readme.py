"""The README as written: every ```bash and ```python block of it runs, in order, in a shell,
after what `make demo` leaves behind.

`make demo` itself (minutes on the real SmolLM2) is stood in for by the demo run on the tiny
base (same code, two training steps per adapter), and `LORAROUTE_BASE_MODEL` points every
command at that base; everything else is the README's text, run by bash and python in a
folder of this test's own (with a copy of `examples/data/`). Four blocks are left out, each
for the reason in ``SKIPPED``, and the server's port is a free one instead of 8000. The tiny
base lies in a Hugging Face cache, so that, like the embedded default, it has a Hub id.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
SKIPPED = {
    "make demo": "the `demo` fixture stands in for it (and `make test` is this suite)",
    "adapters serve --device cuda": "needs a GPU",
    "pip install 'loraroute[postgres,s3]'": "a team's PostgreSQL and object store; "
    "tests/registry/test_team_registry.py runs the same setup on loopback",
    "pip install 'loraroute[ray]'": "a Ray cluster; tests/agents/server/test_rayserve.py runs it "
    "on loopback",
}


def readme_blocks() -> list[tuple[str, str]]:
    """``(language, text)`` of every bash and python block, in order."""
    found = re.findall(r"^```(bash|python)\n(.*?)^```$", README.read_text(), re.M | re.S)
    return [(lang, text) for lang, text in found]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def demo(tmp_path_factory, tiny_base) -> tuple[Path, Path]:
    """``(home, base)``: a home as `make demo` leaves it (four promoted adapters and a fitted
    router), trained on the tiny base, which lies in a Hugging Face cache as a downloaded
    model would (so that, as the embedded default, it has a Hub id: test-org/tiny-base)."""
    from loraroute.agents.demo import DemoConfig, run_demo
    from loraroute.registry.testing import make_hub_cache
    from loraroute.settings import Settings

    root = tmp_path_factory.mktemp("readme")
    base = make_hub_cache(root / "hf" / "hub", "test-org/tiny-base", tiny_base)
    result = run_demo(
        DemoConfig(base_model=str(base), max_steps=2, max_new_tokens=4),
        settings=Settings(home=root / "home"),
    )
    assert sorted(result.trained) == ["cooking@1", "gardening@1", "space@1", "tech@1"]
    return root, base


def run_block(lang: str, text: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    if lang == "bash":
        cmd = ["bash", "-e", "-o", "pipefail", "-c", text]
    else:
        script = cwd / "snippet.py"
        script.write_text(text)
        cmd = [sys.executable, str(script)]
    # a group of its own: whatever a block starts in the background goes when it ends
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.mark.slow
@pytest.mark.timeout(1200)  # some 20 commands, each a fresh process: minutes on a busy box
def test_every_readme_block_runs_as_written(demo, tmp_path):
    root, base = demo
    work = tmp_path / "clone"
    shutil.copytree(REPO / "examples" / "data", work / "examples" / "data")
    venv_bin = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""),  # as after activation
        "LORAROUTE_HOME": str(root / "home"),
        "LORAROUTE_BASE_MODEL": str(base),
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(root / "hf"),
    }
    for var in ("LORAROUTE_REGISTRY", "HF_HUB_CACHE"):
        env.pop(var, None)
    blocks = readme_blocks()
    skipped = [text for _, text in blocks if any(text.startswith(k) for k in SKIPPED)]
    assert len(skipped) == len(SKIPPED), "a skipped block is gone; update SKIPPED"
    port = str(free_port())
    said = []
    for lang, text in blocks:
        if text in skipped:
            continue
        text = text.replace("8000", port)
        started = time.monotonic()
        done = run_block(lang, text, work, env)
        print(f"{time.monotonic() - started:6.1f} s  {text.splitlines()[0][:70]}")
        said.append(done.stderr)
        assert done.returncode == 0, f"README block failed:\n{text}\n{done.stdout}\n{done.stderr}"
        assert "Traceback" not in done.stderr, done.stderr

    everything = "".join(said)
    assert "legal@1 is not live" in everything  # train --push says how to promote, once
    assert "no routing examples" not in everything
    # the Python API snippet promotes `kitchen`: the saved router state is re-fitted once
    assert everything.count("re-fitted") == 1, everything

    (api,) = [text for lang, text in blocks if lang == "python" and "alias_set" in text]
    again = run_block("python", api, work, env)  # a second run must not fail, nor warn
    assert again.returncode == 0 and "re-fitted" not in again.stderr, again.stderr

    from huggingface_hub import ModelCard

    card = ModelCard.load(work / "cooking-hub" / "README.md")
    assert (card.data.base_model, card.data.library_name) == ("test-org/tiny-base", "peft")
