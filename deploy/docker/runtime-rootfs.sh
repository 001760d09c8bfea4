#!/bin/sh
# Lays out in $1 what the scratch runtime image holds besides its binary: the
# shared libraries the given binaries load, a non-root user (10001) and /tmp.
set -eu
out=$1
shift
mkdir -p "$out/etc" "$out/tmp" "$out/usr/local/bin" "$out/var/lib/shopmesh/keys"
for binary in "$@"; do
    ldd "$binary" | awk '/=> \// { print $3 } /^\t\/lib/ { print $1 }'
done | sort -u | while read -r lib; do
    cp -L --parents "$lib" "$out/"
done
printf 'root:x:0:0:root:/root:/sbin/nologin\nshop:x:10001:10001:shopmesh:/var/lib/shopmesh:/sbin/nologin\n' >"$out/etc/passwd"
printf 'root:x:0:\nshop:x:10001:\n' >"$out/etc/group"
printf 'hosts: files dns\n' >"$out/etc/nsswitch.conf"
chmod 1777 "$out/tmp"
# The keys volume is created from this directory, so it starts owned by the user.
chown -R 10001:10001 "$out/var/lib/shopmesh"
