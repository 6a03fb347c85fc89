#!/usr/bin/env bash
# Installs the Debian packages that the real-component tests drive, when running as root and
# they are missing. Without root the tests that need them say so instead.
set -euo pipefail
packages=()
for pkg in "$@"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || packages+=("$pkg")
done
if [ ${#packages[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null; then
  echo "note: not root (or no apt-get): missing Debian packages ${packages[*]} are not installed" >&2
  exit 0
fi
apt-get update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
