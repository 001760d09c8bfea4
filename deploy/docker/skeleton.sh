#!/bin/sh
# Copies the workspace's manifests and lock file into $1, each crate's targets
# replaced by empty ones: enough for cargo to build every dependency.
set -eu
out=$1
find . -name Cargo.toml -not -path './target/*' | while read -r manifest; do
    dir=$(dirname "$manifest")
    mkdir -p "$out/$dir"
    cp "$manifest" "$out/$dir/"
    if [ -f "$dir/src/lib.rs" ]; then mkdir -p "$out/$dir/src"; : >"$out/$dir/src/lib.rs"; fi
    if [ -f "$dir/src/main.rs" ]; then mkdir -p "$out/$dir/src"; echo 'fn main() {}' >"$out/$dir/src/main.rs"; fi
    if [ -f "$dir/build.rs" ]; then echo 'fn main() {}' >"$out/$dir/build.rs"; fi
done
cp Cargo.lock "$out/"
