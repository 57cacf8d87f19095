# Shared by scripts/*: idempotent installers for the test and build tooling.
# Every version is pinned here or in a lock file next to it.

step() { printf '\n==> %s\n' "$*" >&2; }

# Tools `cargo install` puts here must be found even on a machine whose
# profile does not add the folder to PATH.
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

# The toolchain named in rust-toolchain.toml, with the wasm target the edge
# and the shared crate's wasm check need.
ensure_rust() {
    step "rust toolchain $(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml) + wasm32 target"
    rustup show active-toolchain >/dev/null 2>&1 || rustup toolchain install
    rustup target list --installed | grep -qx wasm32-unknown-unknown ||
        rustup target add wasm32-unknown-unknown
}

# Debian packages, installed only when their command is missing.
ensure_apt() { # ensure_apt COMMAND PACKAGE
    command -v "$1" >/dev/null 2>&1 && return 0
    step "apt-get install $2"
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$2" >/dev/null
}

# A cargo-installed tool at an exact version (`--locked` first; the crates
# mirror can lag a lock file's pins, e.g. wasm-bindgen-cli 0.2.130's lock
# wants a webpki-roots the mirror lacks; then resolve afresh). Built without
# optimisation: worker-build and wasm-bindgen then install in 2 minutes
# instead of 5 on 2 cores, a third of a cold `scripts/test`, and they turn the
# edge's 350 kB module into the very same files in about a second either way.
ensure_cargo_tool() { # ensure_cargo_tool CRATE VERSION BINARY
    if "$3" --version 2>/dev/null | grep -q "$2"; then return 0; fi
    step "cargo install --debug $1 $2"
    cargo install --debug "$1" --version "$2" --locked || cargo install --debug "$1" --version "$2"
}

# The Worker build tools. worker-build would download wasm-bindgen and
# wasm-opt from github.com, which CI cannot reach: wasm-bindgen comes from
# crates.io at the exact version edge/Cargo.toml pins, wasm-opt is disabled
# in edge/Cargo.toml, esbuild comes from npm (wrangler's own).
ensure_worker_tools() {
    ensure_cargo_tool worker-build 0.8.7 worker-build
    ensure_cargo_tool wasm-bindgen-cli 0.2.130 wasm-bindgen
    export WASM_BINDGEN_BIN="${WASM_BINDGEN_BIN:-$(command -v wasm-bindgen)}"
    export ESBUILD_BIN="${ESBUILD_BIN:-$PWD/node_modules/.bin/esbuild}"
}

# npm packages of package-lock.json (wrangler, miniflare/workerd, jose, @azure/identity).
# Keyed on the lock file's hash, so a changed lock reinstalls and an unchanged one is a no-op.
ensure_node() {
    export WRANGLER_SEND_METRICS=false CLOUDFLARE_CF_FETCH_ENABLED=false CI=1
    local stamp=node_modules/.package-lock.sha256
    local want
    want=$(sha256sum package-lock.json | cut -d' ' -f1)
    [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && return 0
    step "npm ci (pinned wrangler, miniflare, jose, @azure/identity, mermaid + jsdom)"
    npm ci --no-audit --no-fund --loglevel=error
    echo "$want" >"$stamp"
}

# A virtualenv in .venv with requirements-test.txt (moto server, awscurl, PyJWT, cfn-lint,
# azure-identity). Keyed on the lock file's hash like ensure_node: pip installs the new pins
# over the existing venv.
ensure_python() {
    local stamp=.venv/.requirements.sha256
    local want
    want=$(sha256sum requirements-test.txt | cut -d' ' -f1)
    if ! { [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; }; then
        step "python venv .venv (pinned moto[server], awscurl, PyJWT, cfn-lint, azure-identity)"
        [ -x .venv/bin/python ] || python3 -m venv .venv
        .venv/bin/pip install --quiet --disable-pip-version-check -r requirements-test.txt
        echo "$want" >"$stamp"
    fi
    export AWS2AZURE_PYTHON="$PWD/.venv/bin/python"
    export PATH="$PWD/.venv/bin:$PATH"
}

# AWS's SigV4 test suite (Apache-2.0) for the devstack gateway's verifier,
# as botocore's source distribution ships it (tests/unit/auth/aws4_testsuite),
# at the botocore version requirements-test.txt pins. Only that folder is
# kept, in .tools/aws4_testsuite (git-ignored). Needs ensure_python first.
ensure_sigv4_suite() {
    local version dir=.tools/aws4_testsuite
    version=$(sed -n 's/^botocore==//p' requirements-test.txt)
    [ -n "$version" ] || { echo "requirements-test.txt pins no botocore" >&2; return 1; }
    export AWS2AZURE_SIGV4_SUITE="$PWD/$dir"
    [ -f "$dir/.botocore-version" ] && [ "$(cat "$dir/.botocore-version")" = "$version" ] && return 0
    step "AWS SigV4 test suite from the botocore $version source distribution"
    local tmp
    tmp=$(mktemp -d)
    .venv/bin/pip download --quiet --disable-pip-version-check --no-deps \
        --no-binary :all: "botocore==$version" -d "$tmp"
    tar -xzf "$tmp/botocore-$version.tar.gz" -C "$tmp" \
        "botocore-$version/tests/unit/auth/aws4_testsuite"
    rm -rf "$dir"
    mkdir -p .tools
    mv "$tmp/botocore-$version/tests/unit/auth/aws4_testsuite" "$dir"
    echo "$version" >"$dir/.botocore-version"
    rm -rf "$tmp"
}
