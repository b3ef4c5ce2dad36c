#!/usr/bin/env bash
# Make sure the system tools the test suite needs are installed, before pytest starts:
#   /usr/bin/chromium  the browser tests drive Debian's Chromium (never `playwright install`)
#   pg_dump            the backup/restore tests (package postgresql-client)
# Missing ones are installed with apt-get when this runs as root or with passwordless sudo.
# Otherwise it installs nothing and stops, printing the one command to run. `make test`
# runs it (target test-tools); so does CI, through `make test`.
#
# CHROMIUM_BIN (default /usr/bin/chromium) exists for this script's own tests.
set -euo pipefail

CHROMIUM_BIN="${CHROMIUM_BIN:-/usr/bin/chromium}"

missing_packages() {
  local packages=()
  [ -x "$CHROMIUM_BIN" ] || packages+=(chromium)
  command -v pg_dump >/dev/null 2>&1 || packages+=(postgresql-client)
  echo "${packages[@]}"
}

read -r -a missing <<<"$(missing_packages)"
[ "${#missing[@]}" -eq 0 ] && exit 0

run_instead() {
  local sudo="sudo "
  [ "$(id -u)" -eq 0 ] && sudo=""
  echo "The tests need ${missing[*]}, which is not installed, and $1." >&2
  echo "Run: ${sudo}apt-get install -y ${missing[*]}" >&2
  echo "then run make test again." >&2
  exit 1
}

if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  as_root=(sudo -n)
else
  run_instead "this user cannot install packages (not root, no passwordless sudo)"
fi
command -v apt-get >/dev/null 2>&1 || run_instead "apt-get is not available here (install it with your package manager)"

echo "Installing ${missing[*]} for the tests (apt-get)"
# Update the package lists first: a fresh machine or container often has none.
if ! "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
  || ! "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; then
  run_instead "installing it failed (see apt-get's messages above)"
fi

read -r -a missing <<<"$(missing_packages)"
if [ "${#missing[@]}" -gt 0 ]; then
  run_instead "apt-get finished but it is still missing ($CHROMIUM_BIN, pg_dump)"
fi
