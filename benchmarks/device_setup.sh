# Sourced on a GPU machine that has PyTorch, Triton and transformers but not this project's
# lighter dependencies and no network (`. benchmarks/device_setup.sh` from the checkout's root):
# installs the wheels carried in .whl/ into /tmp/site and makes `loraroute` importable from this
# checkout (its package folders mapped as pyproject.toml maps them), without building it.
# Run pytest as `python3 -P -m pytest ...`: without -P the checkout's own loraroute/ folder
# (which lacks the mapped subpackages) comes first on sys.path and shadows /tmp/lr.
#
# The wheels, fetched where pip works (Python 3.12, manylinux x86_64):
#   pydantic pydantic_core pydantic-settings annotated-types typing-inspection python-dotenv
#   platformdirs typing_extensions sqlalchemy sqlmodel   (the versions of .venv; pip download
#   --no-deps ...; the engine's adapter loading reads the registry's folder checks, which import
#   SQLModel)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || return 1
mkdir -p /tmp/lr/loraroute && cp -r loraroute/. /tmp/lr/loraroute/
for p in agents registry router; do ln -sfn "$PWD/$p" "/tmp/lr/loraroute/$p"; done
export PYTHONPATH=/tmp/site:/tmp/lr HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
