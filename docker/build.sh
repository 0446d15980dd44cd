#!/usr/bin/env bash
# Builds the project's image: prepares a wheelhouse from requirements.lock on this host, then runs
# `docker build` with docker/Dockerfile on a context of exactly the checkout's files + the wheelhouse.
#
#   docker/build.sh --accept-sc2-license                 # the full image (CUDA, SC2 4.10, Melting Pot bots)
#   docker/build.sh --no-sc2 --torch cpu                 # no StarCraft II, CPU torch (the lock as is)
#   docker/build.sh --pin                                # record SHA-256s of UNPINNED downloads (networked host)
#
# Options (each maps to a build argument of docker/Dockerfile):
#   --tag NAME               image name (default marl-repro-suite:latest, the manifests' default image)
#   --base IMAGE             BASE_IMAGE (default: the Dockerfile's digest-pinned CUDA runtime image)
#   --python-from SOURCE     PYTHON_FROM: 'standalone' (default; python-build-standalone 3.11, for
#                            Ubuntu-based CUDA images) or 'apt' (the base's python3, e.g. Debian bookworm)
#   --torch VARIANT          'cu128' (default: the lock's torch version, CUDA 12.8 build, from the PyTorch
#                            index) or 'cpu' (the lock's own +cpu wheel); recorded as TORCH_VARIANT
#   --no-sc2                 INSTALL_SC2=0: no StarCraft II, maps or smacv2 (SMAC scenarios unavailable)
#   --accept-sc2-license     needed for the SC2 stage: you accept Blizzard's AI and Machine Learning
#                            licence (https://blzdistsc2-a.akamaihd.net/AI_AND_MACHINE_LEARNING_LICENSE.html)
#   --no-meltingpot-assets   MELTINGPOT_ASSETS=0: Melting Pot without DeepMind's bot bundle ("offline")
#   --wheelhouse-only        prepare docker/wheelhouse and stop
#   -- ARGS...               passed to `docker build` as they are (e.g. --network=host)
# Environment: DOCKER (CLI, default docker), PYTHON (a Python 3.11 with pip, default python3.11).
set -euo pipefail
cd "$(dirname "$0")/.."

TAG=marl-repro-suite:latest
BASE=""
PYTHON_FROM=standalone
TORCH=cu128
INSTALL_SC2=1
ACCEPT=""
MP_ASSETS=1
WHEELHOUSE_ONLY=0
PIN=0
EXTRA=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --tag) TAG=$2; shift 2 ;;
    --base) BASE=$2; shift 2 ;;
    --python-from) PYTHON_FROM=$2; shift 2 ;;
    --torch) TORCH=$2; shift 2 ;;
    --no-sc2) INSTALL_SC2=0; shift ;;
    --accept-sc2-license) ACCEPT=yes; shift ;;
    --no-meltingpot-assets) MP_ASSETS=0; shift ;;
    --wheelhouse-only) WHEELHOUSE_ONLY=1; shift ;;
    --pin) PIN=1; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
DOCKER=${DOCKER:-docker}
PYTHON=${PYTHON:-python3.11}
WH=docker/wheelhouse
MP_VERSION=2.4.1  # as in scripts/setup_venv.sh

if [[ $PIN == 1 ]]; then
  # Trust on first use: download every UNPINNED file once here and write its hash into downloads.txt.
  tmp=$(mktemp -d)
  while read -r sha name url; do
    [[ -z $sha || $sha == \#* || $sha != UNPINNED ]] && continue
    echo "build.sh: downloading $name to pin it"
    curl -fsSL --retry 3 -o "$tmp/$name" "$url"
    digest=$(sha256sum "$tmp/$name" | cut -d' ' -f1)
    sed -i "s|^UNPINNED  $name  |$digest  $name  |" docker/downloads.txt
    echo "build.sh: pinned $name = $digest (check it against the publisher if you can, then commit docker/downloads.txt)"
  done < docker/downloads.txt
  rm -rf "$tmp"
  exit 0
fi
case $PYTHON_FROM in standalone|apt) ;; *) echo "build.sh: --python-from is 'standalone' or 'apt'" >&2; exit 2 ;; esac
if [[ $INSTALL_SC2 == 1 && $ACCEPT != yes ]]; then
  echo "build.sh: the StarCraft II stage needs --accept-sc2-license (Blizzard's AI and Machine Learning licence);" >&2
  echo "build.sh: or build without it: --no-sc2" >&2
  exit 2
fi

# The wheelhouse: exactly the lock's wheels (torch swapped for its CUDA build when asked), the
# Melting Pot sdist (built in the image with the pinned asset bundle) and the SC2 overlay.
torch_line=$(grep -E '^torch==' requirements.lock)
torch_version=${torch_line#torch==}; torch_version=${torch_version%%+*}
mkdir -p "$WH"
grep -vE '^torch==' requirements.lock > "$WH/lock-without-torch.txt"
pip_dl() { "$PYTHON" -m pip download -q -d "$WH" "$@" 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2); }
echo "build.sh: preparing $WH from requirements.lock (torch $torch_version, variant $TORCH)"
pip_dl --no-deps -r "$WH/lock-without-torch.txt"
if [[ $TORCH == cpu ]]; then
  pip_dl --no-deps "$torch_line"
  torch_req=$torch_line
else
  torch_req="torch==$torch_version+$TORCH"
  # With its dependencies (the nvidia-* CUDA libraries), held to the lock's versions where shared.
  pip_dl --index-url "https://download.pytorch.org/whl/$TORCH" -c "$WH/lock-without-torch.txt" "$torch_req"
fi
{ cat "$WH/lock-without-torch.txt"; echo "$torch_req"; } > "$WH/requirements.txt"
pip_dl --no-deps --no-binary :all: "dm-meltingpot==$MP_VERSION"
pip_dl --no-deps -r docker/requirements-sc2.txt
rm "$WH/lock-without-torch.txt"
echo "build.sh: wheelhouse ready ($(find "$WH" -type f | wc -l) files, $(du -sh "$WH" | cut -f1))"
[[ $WHEELHOUSE_ONLY == 1 ]] && exit 0

commit=$(git rev-parse HEAD 2>/dev/null || echo unknown)
dirty=0; [[ -n $(git status --porcelain --untracked-files=no 2>/dev/null) ]] && dirty=1
args=(--build-arg "INSTALL_SC2=$INSTALL_SC2" --build-arg "ACCEPT_SC2_LICENSE=$ACCEPT"
      --build-arg "PYTHON_FROM=$PYTHON_FROM" --build-arg "TORCH_VARIANT=$TORCH"
      --build-arg "MELTINGPOT_ASSETS=$MP_ASSETS"
      --build-arg "LOCK_SHA256=$(sha256sum requirements.lock | cut -d' ' -f1)"
      --build-arg "GIT_COMMIT=$commit" --build-arg "GIT_DIRTY=$dirty")
[[ -n $BASE ]] && args+=(--build-arg "BASE_IMAGE=$BASE")
# Protobuf: the pure-Python implementation loads s2clientprotocol's old generated code (see
# docker/requirements-sc2.txt); images without StarCraft II keep the fast default.
[[ $INSTALL_SC2 == 0 ]] && args+=(--build-arg "PROTOBUF_IMPLEMENTATION=upb")

# The build context: src/ = the checkout's files (tracked, and untracked but not ignored: no .venv,
# results or caches) and wheelhouse/ (hard links), so COPY src/ never carries the wheels twice.
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/src"
git ls-files -co --exclude-standard | while read -r f; do [[ -f $f ]] && echo "$f"; done | tar -c -T - | tar -x -C "$ctx/src"
cp -al "$PWD/$WH" "$ctx/wheelhouse" 2>/dev/null || cp -a "$WH" "$ctx/wheelhouse"
echo "build.sh: building $TAG"
"$DOCKER" build -f "$ctx/src/docker/Dockerfile" -t "$TAG" "${args[@]}" "${EXTRA[@]}" "$ctx"
echo "build.sh: built $TAG"
