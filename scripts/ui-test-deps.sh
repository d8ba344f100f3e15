#!/usr/bin/env bash
# Installs what the starter-page browser test (host/tests/starter_page.rs) needs:
# Debian's Chromium (/usr/bin/chromium) and the npm package playwright-core, pinned in
# host/tests/starter_page/package.json, into target/ui-test/node_modules (or
# $CYPHONIC_UI_TEST_DIR/node_modules). Idempotent: does nothing when both are in place.
# Playwright never downloads a browser of its own here: the test drives Debian's.
set -euo pipefail
cd "$(dirname "$0")/.."

dir="${CYPHONIC_UI_TEST_DIR:-target/ui-test}"
manifest=host/tests/starter_page/package.json
want=$(sed -n 's/.*"playwright-core": *"\([^"]*\)".*/\1/p' "$manifest")
[[ -n "$want" ]] || { echo "ui-test-deps: no playwright-core pin in $manifest" >&2; exit 1; }

missing=()
[[ -x /usr/bin/chromium ]] || missing+=(chromium)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
if ((${#missing[@]})); then
    echo "ui-test-deps: installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

have=""
if [[ -f "$dir/node_modules/playwright-core/package.json" ]]; then
    have=$(node -p "require('./$dir/node_modules/playwright-core/package.json').version")
fi
if [[ "$have" != "$want" ]]; then
    echo "ui-test-deps: installing playwright-core@$want into $dir/node_modules"
    mkdir -p "$dir"
    cp "$manifest" "$dir/package.json"
    # The browser comes from Debian; never let an install script fetch one.
    (cd "$dir" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --no-audit --no-fund \
        --no-package-lock --ignore-scripts --loglevel=error)
fi

echo "ui-test-deps: $(/usr/bin/chromium --version 2>/dev/null | head -1), playwright-core $want in $dir/node_modules"
