#!/usr/bin/env bash
# System packages some tests use: Chromium (the Temporal UI test), PostgreSQL (the PostgreSQL task
# store) and docker-compose (validates docker-compose.yml). Installs what is missing when it can
# (root with apt-get); otherwise says what is missing, and those tests skip outside CI. Each check
# looks where the tests look (tests/browser.py, tests/pg.py, tests/test_compose.py).
set -euo pipefail

have_any() {
  local name
  for name in "$@"; do
    command -v "$name" >/dev/null 2>&1 && return 0
  done
  return 1
}

missing=()
have_any chromium chromium-browser google-chrome || missing+=(chromium)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || have_any pg_ctl || missing+=(postgresql)
have_any docker-compose || docker compose version >/dev/null 2>&1 || missing+=(docker-compose)

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing system packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "note: missing system packages (${missing[*]}); the tests that need them will skip." >&2
  echo "      install them with: sudo apt-get install ${missing[*]}" >&2
fi
