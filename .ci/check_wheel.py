"""Check the package as users install it: run by the wheel's own interpreter, outside the
checkout (``make wheel-check``). Imports every module of the installed wheel (none may need
more than the core dependencies at import time) and runs ``adapters --help`` and
``adapters doctor`` from the installed console script, and Alembic's migrations from the wheel."""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import subprocess
import sys
import tempfile
from pathlib import Path

import loraroute

here = Path(loraroute.__file__).resolve().parent
if "site-packages" not in here.parts:
    sys.exit(f"loraroute was imported from {here}, not from an installed wheel")
names = [m.name for m in pkgutil.walk_packages(loraroute.__path__, "loraroute.")]
# every module, Alembic's env.py and revision scripts too (they run their migrations only
# inside Alembic's migration context)
migrations = "loraroute.registry.migrations."
for name in names:
    importlib.import_module(name)
for needed in (
    "loraroute.registry",
    "loraroute.router.encoders",
    "loraroute.agents.lora",
    f"{migrations}env",
):
    if needed not in names:
        sys.exit(f"the wheel lacks {needed}")
print(f"imported {len(names)} modules from {here}")

script = Path(sys.executable).with_name("adapters")
with tempfile.TemporaryDirectory() as home:
    env = {**os.environ, "LORAROUTE_HOME": home, "HF_HUB_OFFLINE": "1"}
    subprocess.run([str(script), "--help"], check=True, env=env, stdout=subprocess.DEVNULL)
    out = subprocess.run(
        [str(script), "doctor", "--json"], check=True, env=env, capture_output=True, text=True
    )
    report = json.loads(out.stdout)
    print(f"adapters doctor: registry {report['registry']}, device {report['torch_device']}")
    # the schema's revisions ship in the wheel and run under Alembic from there
    old = f"sqlite:///{home}/old.db"
    subprocess.run([str(script), "registry", "migrate", "--registry", old], check=True, env=env)
    out = subprocess.run(
        [str(script), "registry", "migrate", "--check", "--registry", old, "--json"],
        check=True,
        env=env,
        capture_output=True,
        text=True,
    )
    print(f"adapters registry migrate: {out.stdout.strip()}")
