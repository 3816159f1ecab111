#!/usr/bin/env bash
# Scaffolds a Tollgate plugin crate from plugins/templates/plugin (`just new-plugin NAME`).
#
#   plugins/new-plugin.sh NAME        creates plugins/NAME and adds it to the members of the
#                                     plugins workspace (plugins/Cargo.toml)
#   plugins/new-plugin.sh NAME DIR    creates DIR/NAME as a workspace of its own (depending on
#                                     this repository's sdk/ by absolute path, with a copy of
#                                     plugins/Cargo.lock), e.g. to try the template elsewhere
#
# NAME: lower case letters, digits and dashes, starting with a letter (it is the crate name
# and the name of the .wasm in plugins/dist). The new crate builds for wasm32-wasip1 and its
# unit tests pass as generated.
set -euo pipefail

usage() {
    echo "usage: $0 NAME [DIR]" >&2
    exit 2
}

[[ $# -ge 1 && $# -le 2 ]] || usage
name=$1
if ! [[ $name =~ ^[a-z][a-z0-9]*(-[a-z0-9]+)*$ ]]; then
    echo "error: plugin name \"$name\": use lower case letters, digits and single dashes, starting with a letter (e.g. my-plugin)" >&2
    exit 2
fi

# The plugin's type in Rust: my-plugin → MyPlugin, api-v2 → ApiV2, tls-1 → Tls1.
type_name=$(sed -E -e 's/(^|-)([a-z])/\U\2/g' -e 's/-//g' <<<"$name")

plugins_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_dir=$(dirname "$plugins_dir")
template_dir="$plugins_dir/templates/plugin"
workspace_manifest="$plugins_dir/Cargo.toml"

if [[ $# -eq 2 ]]; then
    mkdir -p "$2"
    dest_parent=$(cd "$2" && pwd)
else
    dest_parent=$plugins_dir
fi
member=false
[[ $dest_parent == "$plugins_dir" ]] && member=true
dest="$dest_parent/$name"

if [[ -e $dest ]]; then
    echo "error: $dest already exists" >&2
    exit 1
fi
if $member && grep -Eq "^members *=.*\"$name\"" "$workspace_manifest"; then
    echo "error: \"$name\" is already a member of $workspace_manifest" >&2
    exit 1
fi
if $member && ! grep -Eq '^members *= *\[.*\] *$' "$workspace_manifest"; then
    echo "error: cannot find a one-line members = [...] in $workspace_manifest" >&2
    exit 1
fi

# Copy the template, replacing the placeholders (__NAME__ the crate, __TYPE__ the plugin's
# type); *.in files lose the suffix.
mkdir -p "$dest"
(cd "$template_dir" && find . -type f) | while IFS= read -r file; do
    target="$dest/${file#./}"
    target=${target%.in}
    mkdir -p "$(dirname "$target")"
    sed -e "s/__NAME__/$name/g" -e "s/__TYPE__/$type_name/g" "$template_dir/$file" >"$target"
done

if $member; then
    sed -E -i "/^members *=/ s/\] *\$/, \"$name\"]/" "$workspace_manifest"
    echo "created plugins/$name (member of plugins/Cargo.toml)"
    echo "  test:  cargo test --manifest-path plugins/Cargo.toml -p $name"
    echo "  build: just plugins   (writes plugins/dist/$name.wasm; a running gateway swaps it in)"
else
    # A workspace of its own, with what the plugins workspace would have given it.
    cat >>"$dest/Cargo.toml" <<EOF

# Outside the plugins workspace: a workspace of its own (written by plugins/new-plugin.sh).
[workspace]

[workspace.package]
version = "0.1.0"
edition = "2021"
license = "Apache-2.0"

[workspace.dependencies]
tollgate-sdk = { path = "$repo_dir/sdk" }
serde = { version = "1", features = ["derive"] }

[workspace.lints.rust]
unsafe_code = "forbid"

[workspace.lints.clippy]
all = { level = "warn", priority = -1 }

[profile.release]
opt-level = 3
lto = true
codegen-units = 1
panic = "abort"
strip = "debuginfo"
EOF
    cp "$plugins_dir/Cargo.lock" "$dest/Cargo.lock"
    # The lints on header accessors that panic on bytes that are not UTF-8 (sdk/README.md).
    cp "$plugins_dir/clippy.toml" "$dest/clippy.toml"
    echo "created $dest (a workspace of its own)"
    echo "  test:  cargo test --manifest-path $dest/Cargo.toml"
    echo "  build: cargo build --release --target wasm32-wasip1 --manifest-path $dest/Cargo.toml"
fi
