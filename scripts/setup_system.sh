#!/usr/bin/env bash
# System packages the report tests need, installed once (idempotent, quiet):
#   chromium       - opens the HTML report headless (console errors, screenshot)
#   poppler-utils  - pdftoppm / pdftotext render and read the PDF report
#   libpango*, fonts-dejavu-core - WeasyPrint's text layout and a font for the PDF
# Skips everything when all are present; needs root (or sudo) only when something is missing.
set -euo pipefail
PACKAGES=(chromium poppler-utils libpango-1.0-0 libpangoft2-1.0-0 fonts-dejavu-core)

missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if (( ${#missing[@]} == 0 )); then
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "setup_system: apt-get not found; install these packages by hand: ${missing[*]}" >&2
  exit 1
fi
SUDO=""
if (( EUID != 0 )); then
  if command -v sudo >/dev/null; then SUDO="sudo"; else
    echo "setup_system: need root to install ${missing[*]} (run as root or install sudo)" >&2
    exit 1
  fi
fi
echo "setup_system: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
