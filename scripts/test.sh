#!/usr/bin/env bash
# Install everything (dev extras included) and run the whole test suite.
# pytest's own exit code is the result; 5 ("no tests collected") is a failure too.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
