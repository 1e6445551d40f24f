#!/usr/bin/env bash
# Makes sure the Debian tools the recipes shell out to are present:
# Festival with the kal_diphone voice (Neutral pairs), espeak-ng (mini corpus), sox.
set -euo pipefail
packages="festival festvox-kallpc16k espeak-ng sox"
missing=()
command -v text2wave >/dev/null 2>&1 || missing+=(festival)
[ -d /usr/share/festival/voices/english/kal_diphone ] || missing+=(festvox-kallpc16k)
command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)
command -v sox >/dev/null 2>&1 || missing+=(sox)
[ ${#missing[@]} -eq 0 ] && exit 0

echo "Missing system packages: ${missing[*]}"
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || true
    apt-get install -y -qq --no-install-recommends $packages >/dev/null
    echo "Installed: $packages"
else
    echo "Install them with:"
    echo "    sudo apt-get install -y $packages"
    exit 1
fi
