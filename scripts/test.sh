#!/usr/bin/env bash
# Install everything (dev extras included) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
set +e
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
code=$?
set -e
# pytest's 5 means "no tests collected": that is a failure for us, not a pass.
exit $code
