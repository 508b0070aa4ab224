#!/usr/bin/env bash
# Make .venv in the repository root and install sg2vid-diffusers into it, editable, with the test
# extras. Safe to run again: once installed, and while setup.py and setup.cfg are unchanged, it
# returns at once.
#
#   PYTHON=python3.12 bash scripts/setup.sh   # pick the interpreter (default: python3.11, python3)
#   TORCH_SPEC='torch==2.13.0' ...            # the torch to install when .venv has none
#
# torch goes in first and on its own: installed as a dependency of the package, pip picks the
# default (multi-GB CUDA) build, while torch==2.13.0 resolves to the CPU wheel on our machines.
# A torch already in .venv (a CUDA build, say) is kept.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
venv=.venv
stamp="$venv/.sg2vid-setup"
torch_spec=${TORCH_SPEC:-torch==2.13.0}

if [[ ! -x "$venv/bin/python" ]]; then
    python=${PYTHON:-}
    if [[ -z "$python" ]]; then
        for candidate in python3.11 python3; do
            if command -v "$candidate" >/dev/null; then python=$candidate; break; fi
        done
    fi
    if [[ -z "$python" ]] || ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
        echo "scripts/setup.sh: needs Python >= 3.11 (set PYTHON=/path/to/python3.11)" >&2
        exit 1
    fi
    "$python" -m venv "$venv"
fi

fingerprint=$(cat setup.py setup.cfg | sha256sum | cut -d' ' -f1)
if [[ -f "$stamp" && "$(cat "$stamp")" == "$fingerprint" && -x "$venv/bin/sg2vid" ]]; then
    exit 0
fi

rm -f "$stamp"
if ! "$venv/bin/python" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("torch") is None)'; then
    "$venv/bin/python" -m pip install --quiet --progress-bar off "$torch_spec"
fi
"$venv/bin/python" -m pip install --quiet --progress-bar off -e '.[test]'
echo "$fingerprint" >"$stamp"
