#!/usr/bin/env bash
# Installs the servers the tests run privately (each test session starts its own PostgreSQL cluster
# and Redis on loopback ports, in temporary folders): Debian's postgresql and redis-server; and the
# Chromium the console's browser tests drive (Playwright is given its path: it downloads nothing),
# with a font for Chinese, so that the zh-CN pages' screenshots show characters, not boxes.
# Idempotent and quiet when everything is there already; needs root (or sudo) only to install.
set -euo pipefail

missing=()
compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null || missing+=(postgresql)
command -v redis-server >/dev/null || missing+=(redis-server)
[[ -x /usr/bin/chromium ]] || missing+=(chromium)
[[ -f /usr/share/fonts/truetype/wqy/wqy-microhei.ttc ]] || missing+=(fonts-wqy-microhei)
((${#missing[@]})) || exit 0

echo "installing ${missing[*]} (Debian packages) for the tests"
sudo=""
[[ $(id -u) -eq 0 ]] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
