#!/usr/bin/env bash
# Resolves requirements.in in a throwaway venv and writes the complete pinned set to requirements.lock.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
python3.11 -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install -q -r requirements.in
"$tmp/venv/bin/pip" freeze --all --exclude-editable | grep -v "^pip==" > requirements.lock
rm -rf "$tmp"
echo "wrote requirements.lock ($(wc -l < requirements.lock) packages)"
