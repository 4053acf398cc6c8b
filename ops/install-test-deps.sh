#!/usr/bin/env bash
# Installs the system programs the test suite runs for real, so that the README's test command
# works on a fresh Debian machine. `.ci/run` and the README both call this script.
# Run as root, it installs the Debian packages that are missing; otherwise it says what to
# install. It exits non-zero while anything is missing: the tests that need it would fail anyway,
# and a message naming the package here is kinder than a failure deep in the suite.
set -euo pipefail

# Each program the tests look up on PATH, and the Debian package that provides it.
#   chromium              tests/test_browser.py records speech with MediaRecorder in it
#   promtool, prometheus  tests/test_prometheus_config.py checks the rules, and
#                         tests/test_live_stack.py scrapes the service
#   haproxy               the scale-out tests put the service behind a real load balancer
PROGRAMS=(chromium promtool prometheus haproxy)
declare -A PACKAGE_OF=([chromium]=chromium [promtool]=prometheus [prometheus]=prometheus
  [haproxy]=haproxy)

on_path() {
  # `chromium-browser` is the same browser under another distribution's name; the tests take it.
  command -v "$1" >/dev/null || { [[ $1 == chromium ]] && command -v chromium-browser >/dev/null; }
}

# Sets `uninstalled` (packages to install) and `off_path` (installed programs the tests cannot
# find: Debian puts haproxy in /usr/sbin, which is not on a non-root user's default PATH).
find_missing() {
  uninstalled=()
  off_path=()
  local program package dir
  for program in "${PROGRAMS[@]}"; do
    on_path "$program" && continue
    for dir in /usr/sbin /sbin; do
      if [[ -x $dir/$program ]]; then
        off_path+=("$dir/$program")
        continue 2
      fi
    done
    package=${PACKAGE_OF[$program]}
    [[ " ${uninstalled[*]} " == *" $package "* ]] || uninstalled+=("$package")
  done
}

explain_and_fail() {
  {
    if ((${#uninstalled[@]})); then
      echo "The tests need these Debian packages, which are not installed: ${uninstalled[*]}"
      echo "Install them as root, then run the tests again:"
      echo "  sudo apt-get update && sudo apt-get install -y --no-install-recommends ${uninstalled[*]}"
      echo "(On other systems: install Chromium, Prometheus with promtool, and HAProxy on PATH.)"
    fi
    local path
    for path in "${off_path[@]}"; do
      echo "${path##*/} is installed as $path, but its folder is not on PATH; add it, then run the tests again:"
      echo "  export PATH=\"\$PATH:${path%/*}\""
    done
  } >&2
  exit 1
}

find_missing

if ((${#uninstalled[@]})); then
  if ((EUID != 0)) || ! command -v apt-get >/dev/null; then explain_and_fail; fi
  echo "installing the Debian packages the tests need: ${uninstalled[*]}"
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${uninstalled[@]}"
  find_missing
fi
if ((${#uninstalled[@]} + ${#off_path[@]})); then explain_and_fail; fi

# Versions in the log, so a failure can be traced to the programs the tests actually ran.
# (`sed -n 1p` reads to the end, so no program dies of SIGPIPE under pipefail.)
"$(command -v chromium || command -v chromium-browser)" --version
prometheus --version 2>&1 | sed -n 1p
promtool --version 2>&1 | sed -n 1p
haproxy -v | sed -n 1p
