#!/bin/sh
# fetch.sh NAME DEST: download the file NAME listed in downloads.txt to DEST and verify its SHA-256.
# Used inside the image build for every download that does not come from a package index.
set -eu
name=$1
dest=$2
manifest=${DOWNLOADS_MANIFEST:-/opt/build/downloads.txt}
line=$(awk -v n="$name" '!/^#/ && $2 == n {print $1, $3}' "$manifest")
if [ -z "$line" ]; then
  echo "fetch.sh: $name is not listed in downloads.txt; add '<sha256>  $name  <url>' there" >&2
  exit 1
fi
sha=${line%% *}
url=${line#* }
if [ "$sha" = UNPINNED ]; then
  echo "fetch.sh: $name has no pinned SHA-256 yet. Run docker/build.sh --pin on a networked host" >&2
  echo "fetch.sh: (it records the hash in docker/downloads.txt), check it, commit it, then build again." >&2
  exit 1
fi
curl -fsSL --retry 3 -o "$dest" "$url"
echo "$sha  $dest" | sha256sum -c --quiet - || {
  echo "fetch.sh: $name from $url does not have the pinned SHA-256 $sha" >&2
  rm -f "$dest"
  exit 1
}
