# Shared by scripts/*: idempotent installers for the test and build tooling.
# Every version is pinned here or in a lock file next to it.

step() { printf '\n==> %s\n' "$*" >&2; }

# The toolchain named in rust-toolchain.toml, with the wasm target the edge
# and the shared crate's wasm check need.
ensure_rust() {
    step "rust toolchain $(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml) + wasm32 target"
    rustup show active-toolchain >/dev/null 2>&1 || rustup toolchain install
    rustup target list --installed | grep -qx wasm32-unknown-unknown ||
        rustup target add wasm32-unknown-unknown
}
