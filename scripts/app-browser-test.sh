#!/usr/bin/env bash
# Drives two `handover app` instances in Debian's headless Chromium with Playwright
# (app/tests/browser/*.mjs). Run by the Rust test tests/tests/app_browser.rs, which starts a relay
# process and the `handover app` processes and passes their addresses in HANDOVER_BROWSER_CONFIG
# (a JSON file).
#
# Installs what it needs: Debian's chromium (apt-get) when /usr/bin/chromium is missing, and the
# pinned playwright-core from app/tests/browser/package-lock.json (npm ci) into
# app/tests/browser/node_modules (ignored by git). Screenshots go to target/app-browser/.
# Any setup failure is a test failure: this script never skips. HANDOVER_BROWSER_SCRIPT=bench.mjs
# runs the latency benchmark instead (app/benches/browser_latency.rs).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
browser_dir="$here/app/tests/browser"

if [[ -z "${HANDOVER_BROWSER_CONFIG:-}" ]]; then
  echo "app-browser-test: HANDOVER_BROWSER_CONFIG is not set; run it through" \
       "'cargo test --workspace --test app_browser'" >&2
  exit 2
fi

# Several browser tests run at once (cargo runs a test binary's tests in parallel): one of them
# installs while the others wait, so none reads a half-written node_modules.
mkdir -p "$here/target/app-browser"
exec 9>"$here/target/app-browser/.setup.lock"
flock 9

chromium="${CHROMIUM:-/usr/bin/chromium}"
if [[ ! -x "$chromium" ]]; then
  echo "app-browser-test: installing Debian's chromium" >&2
  if [[ "$(id -u)" == 0 ]]; then
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >&2
  else
    sudo apt-get update -qq >&2
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >&2
  fi
fi
[[ -x "$chromium" ]] || { echo "app-browser-test: no chromium at $chromium" >&2; exit 1; }

command -v node >/dev/null || { echo "app-browser-test: node is required (apt-get install nodejs npm)" >&2; exit 1; }
pinned="$(cd "$browser_dir" && node -p "require('./package-lock.json').packages['node_modules/playwright-core'].version")"
installed="$(cd "$browser_dir" && node -p "try { require('./node_modules/playwright-core/package.json').version } catch (e) { '' }")"
if [[ "$pinned" != "$installed" ]]; then
  (cd "$browser_dir" && npm ci --no-audit --no-fund --loglevel=error >&2)
fi

flock -u 9
exec 9>&-
export CHROMIUM="$chromium"
export HANDOVER_SCREENSHOTS="$here/target/app-browser"
exec node "$browser_dir/${HANDOVER_BROWSER_SCRIPT:-story.mjs}"
