#!/usr/bin/env bash
# Builds the optional C++ extension of marl/value/fast_gru.py (the fused GRU recurrence) into build/fast_gru/,
# once (about two minutes on a 2-core machine; cached, rebuilt only when its source changes).
# Never fatal: without g++ or ninja, or when the build fails, training uses the PyTorch recurrence
# (same values, slower) and says so once per process.
set -uo pipefail
cd "$(dirname "$0")/.."
so=build/fast_gru/marl_fast_gru.so
src=marl/value/csrc/fast_gru.cpp
if [[ ${MARL_FAST_GRU:-auto} == python ]]; then
  echo "setup: MARL_FAST_GRU=python, not building the C++ GRU extension"
  exit 0
fi
if [[ -f $so && $so -nt $src ]]; then
  exit 0
fi
if ! command -v ninja >/dev/null || ! command -v g++ >/dev/null; then
  echo "setup: g++ or ninja missing: the C++ GRU extension is not built; the PyTorch recurrence will be used"
  exit 0
fi
echo "setup: building the C++ GRU extension into build/fast_gru (once, about two minutes)"
start=$(date +%s)
if .venv/bin/python -m marl.value.fast_gru --build; then
  echo "setup: C++ GRU extension built in $(( $(date +%s) - start )) s"
else
  echo "setup: the C++ GRU extension could not be built (above); the PyTorch recurrence will be used"
fi
exit 0
