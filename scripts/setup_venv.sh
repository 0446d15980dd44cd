#!/usr/bin/env bash
# Creates (or refreshes) the project's virtual environment at .venv from requirements.lock.
# Idempotent: when .venv matches the lock (stamp file), it returns at once.
#
# Melting Pot is installed in one of two ways, recorded in .venv/meltingpot-install.json:
#   online  - the normal build, which downloads DeepMind's asset bundle (background bots);
#   offline - the bundle cannot be reached: the package is built from its sdist with an empty
#             asset tarball in place, so substrates work and bot-based scenarios report the
#             missing bundle clearly at validation time.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
VENV=.venv
MP_VERSION=2.4.1
MP_ASSETS_VERSION=2.3.0   # ASSETS_VERSION in dm-meltingpot 2.4.1's setup.py
# pip warns once per package about this machine's partial local mirror indexes; hide only that noise.
quiet_pip() { "$VENV/bin/python" -m pip "$@" 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2); }
stamp_value="$(sha256sum requirements.lock scripts/setup_venv.sh | sha256sum | cut -c1-16)"

if [[ -f $VENV/.setup-stamp && "$(cat $VENV/.setup-stamp)" == "$stamp_value" ]]; then
  exit 0
fi

if ! command -v "$PYTHON" >/dev/null; then
  echo "setup: $PYTHON not found. Install Python 3.11 (e.g. apt-get install python3.11-venv) or set PYTHON=..." >&2
  exit 1
fi
echo "setup: creating $VENV from requirements.lock (a few minutes on first run)"
[[ -d $VENV ]] || "$PYTHON" -m venv "$VENV"
quiet_pip install -q --no-deps -r requirements.lock

if ! $VENV/bin/python -c "import importlib.metadata as m; assert m.version('dm-meltingpot') == '$MP_VERSION'" 2>/dev/null; then
  mode=online
  echo "setup: installing dm-meltingpot $MP_VERSION (online build, downloads the bot asset bundle)"
  if ! timeout 900 "$VENV/bin/python" -m pip install -q --no-deps --no-cache-dir "dm-meltingpot==$MP_VERSION" >/tmp/meltingpot-online.log 2>&1; then
    mode=offline
    echo "setup: the asset bundle could not be downloaded (see /tmp/meltingpot-online.log);"
    echo "setup: building dm-meltingpot without it: substrates work, bot scenarios will say what is missing"
    work=$(mktemp -d)
    quiet_pip download -q --no-deps --no-binary :all: -d "$work" "dm-meltingpot==$MP_VERSION"
    tar xzf "$work"/dm_meltingpot-$MP_VERSION.tar.gz -C "$work"
    src="$work/dm-meltingpot-$MP_VERSION"   # the sdist unpacks to the project name with a dash
    mkdir -p "$work/stage/assets/saved_models" "$src/assets"
    tar czf "$src/assets/meltingpot-assets-$MP_ASSETS_VERSION.tar.gz" -C "$work/stage" assets
    quiet_pip wheel -q --no-deps "$src" -w "$work/wheelhouse"
    quiet_pip install -q --no-deps "$work"/wheelhouse/dm_meltingpot-*.whl
    rm -rf "$work"
  fi
  printf '{"version": "%s", "mode": "%s", "assets_version": "%s"}\n' "$MP_VERSION" "$mode" "$MP_ASSETS_VERSION" \
    > $VENV/meltingpot-install.json
fi
echo "setup: Melting Pot install: $(cat $VENV/meltingpot-install.json)"
quiet_pip check
echo "$stamp_value" > $VENV/.setup-stamp
echo "setup: done"
