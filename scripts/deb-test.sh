#!/usr/bin/env bash
# The Linux package test (scripts/test.sh calls it; run as root on a Debian machine):
#   1. installs what it needs: cargo-deb (pinned), dpkg-dev (dpkg-shlibdeps, for the
#      Depends line) and systemd (for systemd-analyze) when missing;
#   2. builds the release binaries and plugins (a no-op when they are up to date) and
#      both packages, cyphonic-node and cyphonic-cloud, with packaging/linux/build-debs.sh
#      (the same script scripts/release.sh uses);
#   3. checks the package contents (`dpkg-deb -c`), installs both with dpkg, checks the
#      files, modes, system user and enablement, validates the installed units with
#      `systemd-analyze verify`, runs the installed binaries (--version, check-config,
#      the cloud's `key show` as its service user);
#   4. purges both and checks that nothing is left.
# It never starts the services: the maintainer scripts start them only where systemd
# runs, and where it does, a temporary policy-rc.d forbids it. A machine that already
# has cyphonic packages or files is refused, and an exit at any point (failure,
# Ctrl-C) purges what the test installed, so the machine ends as it was found (apart
# from the tools of step 1).
#
# Knobs: CARGO_TARGET_DIR (where the release build is), DEB_TEST_KEEP=1 leaves the
# .debs in $CARGO_TARGET_DIR/debian-test.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
OUT="$TARGET_DIR/debian-test"
PKGS=(cyphonic-node cyphonic-cloud)
PLUGINS=(libcyphonic_linux_tun.so libcyphonic_netlink_mobility.so libcyphonic_aes_gcm.so
    libcyphonic_chacha20_poly1305.so libcyphonic_ctr_hmac.so)
CLOUD_USER=cyphonic-cloud
# Everything the packages may create: none of it may exist before, or after the purge.
LEFTOVERS=(/etc/cyphonic /usr/lib/cyphonic /var/lib/cyphonic /var/lib/cyphonic-cloud
    /run/cyphonic /usr/bin/cyphonicd /usr/bin/cyphonic /usr/bin/cyphonic-cloud
    /usr/lib/systemd/system/cyphonicd.service /usr/lib/systemd/system/cyphonic-cloud.service
    /lib/systemd/system/cyphonicd.service /lib/systemd/system/cyphonic-cloud.service
    /etc/systemd/system/cyphonicd.service /etc/systemd/system/cyphonic-cloud.service
    /etc/systemd/system/multi-user.target.wants/cyphonicd.service
    /etc/systemd/system/multi-user.target.wants/cyphonic-cloud.service
    /var/lib/systemd/deb-systemd-helper-enabled/cyphonicd.service.dsh-also
    /var/lib/systemd/deb-systemd-helper-enabled/cyphonic-cloud.service.dsh-also
    /var/lib/systemd/deb-systemd-helper-enabled/multi-user.target.wants/cyphonicd.service
    /var/lib/systemd/deb-systemd-helper-enabled/multi-user.target.wants/cyphonic-cloud.service
    /var/lib/systemd/deb-systemd-helper-masked/cyphonicd.service
    /var/lib/systemd/deb-systemd-helper-masked/cyphonic-cloud.service
    /usr/share/doc/cyphonic-node /usr/share/doc/cyphonic-cloud)

START=$SECONDS
CHECKS=0
step() {
    printf '\n=== deb-test: %s (t=%ds)\n' "$*" "$((SECONDS - START))"
}
ok() {
    CHECKS=$((CHECKS + 1))
    printf 'ok   %s\n' "$*"
}
fail() {
    printf 'FAIL %s\n' "$*" >&2
    exit 1
}

# --- cleanup: whatever happened, leave no package, file or user behind ---------------
POLICY=/usr/sbin/policy-rc.d
POLICY_BACKUP=""
POLICY_OURS=0
INSTALLED_BY_US=0
cleanup() {
    local rc=$?
    set +e
    if [ "$INSTALLED_BY_US" = 1 ]; then
        for p in "${PKGS[@]}"; do
            if dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null | grep -qv '^not-installed$'; then
                echo "deb-test: cleanup: purging $p" >&2
                dpkg --purge --force-remove-reinstreq "$p" >/dev/null 2>&1 ||
                    dpkg --purge --force-all "$p" >/dev/null 2>&1
            fi
        done
        # The preflight made sure none of these existed: anything here now is ours (and
        # only here if a failure came before or in the purge).
        for path in "${LEFTOVERS[@]}"; do
            if [ -e "$path" ] || [ -L "$path" ]; then
                echo "deb-test: cleanup: removing leftover $path" >&2
                rm -rf "$path"
            fi
        done
        getent passwd "$CLOUD_USER" >/dev/null && userdel "$CLOUD_USER" 2>/dev/null
        getent group "$CLOUD_USER" >/dev/null && groupdel "$CLOUD_USER" 2>/dev/null
    fi
    if [ "$POLICY_OURS" = 1 ]; then
        rm -f "$POLICY"
        [ -n "$POLICY_BACKUP" ] && mv "$POLICY_BACKUP" "$POLICY"
    fi
    [ "${DEB_TEST_KEEP:-0}" = 1 ] || rm -rf "$OUT"
    if [ "$rc" != 0 ]; then
        printf '\ndeb-test: FAILED (exit %s) after %ds; the machine was cleaned up\n' "$rc" "$((SECONDS - START))" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- preflight ----------------------------------------------------------------------
step "preflight"
[ "$(id -u)" = 0 ] || fail "run as root (it installs and purges packages)"
command -v dpkg >/dev/null || fail "not a Debian system (no dpkg)"
for p in "${PKGS[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
    if [ -n "$status" ] && [ "$status" != not-installed ]; then
        fail "$p is already on this machine (status $status): this test would remove it; purge it first"
    fi
done
for path in "${LEFTOVERS[@]}"; do
    if [ -e "$path" ] || [ -L "$path" ]; then
        fail "$path already exists: this test would remove it; move it away first"
    fi
done
getent passwd "$CLOUD_USER" >/dev/null && fail "user $CLOUD_USER already exists"
getent group "$CLOUD_USER" >/dev/null && fail "group $CLOUD_USER already exists"
ok "no cyphonic package, file or user on this machine"

# --- tools --------------------------------------------------------------------------
step "tools"
need=()
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v dpkg-shlibdeps >/dev/null || need+=(dpkg-dev)
command -v strip >/dev/null || need+=(binutils)
if [ "${#need[@]}" -gt 0 ]; then
    echo "installing Debian packages: ${need[*]}"
    apt-get update -qq
    # No recommends: systemd would pull dbus, timesyncd and more; verify needs none.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
systemd-analyze --version | head -n 1

# --- build --------------------------------------------------------------------------
step "release build (no-op when up to date)"
t0=$SECONDS
packaging/linux/build-debs.sh --build-only
echo "release build: $((SECONDS - t0))s"
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
[ -n "$VERSION" ] || fail "no workspace version in Cargo.toml"
DEB_VERSION="$VERSION-1"

step "cargo deb (both packages)"
rm -rf "$OUT" && mkdir -p "$OUT"
t0=$SECONDS
packaging/linux/build-debs.sh --no-build "$OUT"
cargo deb --version
NODE_DEB="$OUT/cyphonic-node_${DEB_VERSION}_amd64.deb"
CLOUD_DEB="$OUT/cyphonic-cloud_${DEB_VERSION}_amd64.deb"
[ -f "$NODE_DEB" ] || fail "no $NODE_DEB"
[ -f "$CLOUD_DEB" ] || fail "no $CLOUD_DEB"
ok "built $(basename "$NODE_DEB") ($(($(stat -c %s "$NODE_DEB") / 1024)) KiB) and $(basename "$CLOUD_DEB") ($(($(stat -c %s "$CLOUD_DEB") / 1024)) KiB) in $((SECONDS - t0))s"

# --- contents -----------------------------------------------------------------------
step "package contents (dpkg-deb -c)"
# "mode path" lines of a package's files (not directories).
contents() {
    dpkg-deb -c "$1" | awk '$1 !~ /^d/ { sub(/^\.\//, "", $6); print $1, "/" $6 }' | sort
}
expect_in() { # deb, mode, path
    local listing=$1 mode=$2 path=$3
    grep -qx -- "$mode $path" <<<"$listing" || fail "$(basename "$4") lacks $path with mode $mode"
}
node_files=$(contents "$NODE_DEB")
cloud_files=$(contents "$CLOUD_DEB")
node_expected=(
    "-rwxr-xr-x /usr/bin/cyphonicd"
    "-rwxr-xr-x /usr/bin/cyphonic"
    "-rw-r--r-- /etc/cyphonic/node.yaml"
    "-rw-r--r-- /etc/cyphonic/dns_filter.lua"
    "-rw-r--r-- /etc/cyphonic/config.lua"
    "-rw-r--r-- /usr/lib/systemd/system/cyphonicd.service"
    "-rw-r--r-- /usr/share/doc/cyphonic-node/copyright"
)
for p in "${PLUGINS[@]}"; do node_expected+=("-rw-r--r-- /usr/lib/cyphonic/plugins/$p"); done
cloud_expected=(
    "-rwxr-xr-x /usr/bin/cyphonic-cloud"
    "-rw-r--r-- /etc/cyphonic/cloud.yaml"
    "-rw-r--r-- /usr/lib/systemd/system/cyphonic-cloud.service"
    "-rw-r--r-- /usr/share/doc/cyphonic-cloud/copyright"
)
for e in "${node_expected[@]}"; do
    grep -qx -- "$e" <<<"$node_files" || fail "cyphonic-node lacks: $e"
done
for e in "${cloud_expected[@]}"; do
    grep -qx -- "$e" <<<"$cloud_files" || fail "cyphonic-cloud lacks: $e"
done
ok "cyphonic-node has its ${#node_expected[@]} expected files ($(wc -l <<<"$node_files") in all)"
ok "cyphonic-cloud has its ${#cloud_expected[@]} expected files ($(wc -l <<<"$cloud_files") in all)"
# Nothing outside the places a package of ours may write to.
stray=$(printf '%s\n%s\n' "$node_files" "$cloud_files" | awk '{print $2}' |
    grep -Ev '^/(usr/bin/cyphonic(d|-cloud)?|usr/lib/cyphonic/plugins/[^/]+\.so|etc/cyphonic/[^/]+|usr/lib/systemd/system/cyphonic(d|-cloud)\.service|usr/share/doc/cyphonic-(node|cloud)/[^/]+)$' || true)
[ -z "$stray" ] || fail "unexpected files in the packages: $stray"
ok "no file outside /usr/bin, /usr/lib/cyphonic/plugins, /etc/cyphonic, the units and the docs"
# Stripped: the release profile keeps debug info, the packages must not.
tmp_bin=$(mktemp -d)
dpkg-deb --fsys-tarfile "$NODE_DEB" | tar -x -C "$tmp_bin" ./usr/bin/cyphonicd
if file_info=$(readelf -S "$tmp_bin/usr/bin/cyphonicd" 2>/dev/null) && grep -q '\.debug_info' <<<"$file_info"; then
    rm -rf "$tmp_bin"
    fail "/usr/bin/cyphonicd in the package still carries debug info"
fi
rm -rf "$tmp_bin"
ok "binaries are stripped"
for deb in "$NODE_DEB" "$CLOUD_DEB"; do
    conffiles=$(dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles)
    name=$(dpkg-deb -f "$deb" Package)
    case $name in
        cyphonic-node) want=$'/etc/cyphonic/config.lua\n/etc/cyphonic/dns_filter.lua\n/etc/cyphonic/node.yaml' ;;
        cyphonic-cloud) want=/etc/cyphonic/cloud.yaml ;;
    esac
    [ "$(sort <<<"$conffiles")" = "$want" ] || fail "$name conffiles: got '$conffiles', want '$want'"
    grep -q 'libc6' <<<"$(dpkg-deb -f "$deb" Depends)" || fail "$name: no libc6 in Depends (dpkg-shlibdeps missing?)"
done
ok "conffiles: everything in /etc/cyphonic; Depends computed"

# --- install ------------------------------------------------------------------------
step "dpkg -i (services are not started)"
if [ -d /run/systemd/system ]; then
    # systemd runs here: the maintainer scripts would start the services. A policy-rc.d
    # that answers 101 makes deb-systemd-invoke refuse to.
    if [ -e "$POLICY" ]; then
        POLICY_BACKUP="$POLICY.deb-test-backup.$$"
        mv "$POLICY" "$POLICY_BACKUP"
    fi
    printf '#!/bin/sh\nexit 101\n' >"$POLICY"
    chmod 755 "$POLICY"
    POLICY_OURS=1
fi
INSTALLED_BY_US=1
dpkg -i "$NODE_DEB" "$CLOUD_DEB" >"$OUT/dpkg-install.log" 2>&1 || {
    cat "$OUT/dpkg-install.log" >&2
    fail "dpkg -i failed"
}
for p in "${PKGS[@]}"; do
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$p")" = installed ] || fail "$p is not installed"
done
ok "both packages installed"

step "installed files"
# path, "mode owner:group" as stat prints them.
expect_stat() {
    local path=$1 want=$2 got
    got=$(stat -c '%a %U:%G' "$path" 2>/dev/null) || fail "$path is missing"
    [ "$got" = "$want" ] || fail "$path: got $got, want $want"
}
expect_stat /usr/bin/cyphonicd "755 root:root"
expect_stat /usr/bin/cyphonic "755 root:root"
expect_stat /usr/bin/cyphonic-cloud "755 root:root"
for p in "${PLUGINS[@]}"; do expect_stat "/usr/lib/cyphonic/plugins/$p" "644 root:root"; done
for f in node.yaml dns_filter.lua config.lua cloud.yaml; do expect_stat "/etc/cyphonic/$f" "644 root:root"; done
cmp -s /etc/cyphonic/node.yaml config/node.yaml || fail "/etc/cyphonic/node.yaml differs from config/node.yaml"
cmp -s /etc/cyphonic/cloud.yaml config/cloud.yaml || fail "/etc/cyphonic/cloud.yaml differs from config/cloud.yaml"
expect_stat /var/lib/cyphonic "700 root:root"
expect_stat /var/lib/cyphonic-cloud "700 $CLOUD_USER:$CLOUD_USER"
ok "binaries 0755, plugins and config 0644 (root), state dirs 0700 (/var/lib/cyphonic root's, /var/lib/cyphonic-cloud $CLOUD_USER's)"
IFS=: read -r _ _ uid _ _ home shell <<<"$(getent passwd "$CLOUD_USER")"
[ "$uid" -lt 1000 ] || fail "$CLOUD_USER has uid $uid: not a system user"
[ "$home" = /var/lib/cyphonic-cloud ] || fail "$CLOUD_USER's home is $home"
case $shell in */nologin | /bin/false) ;; *) fail "$CLOUD_USER can log in (shell $shell)" ;; esac
ok "system user $CLOUD_USER (uid $uid, home $home, shell $shell)"
# Every plugin node.yaml names is a file the package installed.
named=0
while read -r path; do
    [ -f "$path" ] || fail "node.yaml names $path, which the package does not install"
    named=$((named + 1))
done < <(sed -n 's/^ *\(- \|interface: \|mobility: \)\(\/usr\/lib\/cyphonic\/plugins\/[^ ]*\)$/\2/p' /etc/cyphonic/node.yaml)
[ "$named" = "${#PLUGINS[@]}" ] || fail "node.yaml names $named plugin files under /usr/lib/cyphonic/plugins, want ${#PLUGINS[@]}"
ok "node.yaml names the $named installed plugins"
for unit in cyphonicd cyphonic-cloud; do
    [ -L "/etc/systemd/system/multi-user.target.wants/$unit.service" ] ||
        fail "$unit.service is not enabled (no multi-user.target.wants link)"
done
ok "both units enabled for multi-user.target (deb-systemd-helper)"
running=""
for exe in /proc/[0-9]*/exe; do
    case $(readlink "$exe" 2>/dev/null) in
        /usr/bin/cyphonicd | /usr/bin/cyphonic-cloud) running+=" ${exe%/exe}" ;;
    esac
done
[ -z "$running" ] || fail "the installed daemons were started:$running"
ok "no installed daemon was started"

step "systemd-analyze verify (units as installed)"
verify_out=$(systemd-analyze verify /usr/lib/systemd/system/cyphonicd.service \
    /usr/lib/systemd/system/cyphonic-cloud.service 2>&1) || {
    printf '%s\n' "$verify_out" >&2
    fail "systemd-analyze verify failed"
}
# Warnings about other units on this machine are not ours; any line naming ours is.
ours=$(grep -E 'cyphonic' <<<"$verify_out" || true)
[ -z "$ours" ] || {
    printf '%s\n' "$verify_out" >&2
    fail "systemd-analyze verify complained about our units"
}
ok "systemd-analyze verify: both units clean"
if systemd-analyze security --help 2>/dev/null | grep -q -- '--offline'; then
    for unit in cyphonicd cyphonic-cloud; do
        score=$(systemd-analyze security --offline=yes "/usr/lib/systemd/system/$unit.service" 2>/dev/null |
            sed -n 's/.*Overall exposure level for .*: \(.*\)$/\1/p')
        echo "     systemd-analyze security: $unit.service exposure $score"
    done
fi

step "installed binaries run"
for b in cyphonicd cyphonic cyphonic-cloud; do
    got=$("/usr/bin/$b" --version)
    [ "$got" = "$b $VERSION" ] || fail "$b --version printed '$got', want '$b $VERSION'"
done
ok "cyphonicd, cyphonic, cyphonic-cloud --version print $VERSION"
# The packaged default config: it must parse, its scripts must load and every plugin it
# names must load. Its cloud section is a placeholder (192.0.2.1, a sample key), which
# check-config cannot tell from a real one: offline, it contacts nothing.
set +e
check_out=$(/usr/bin/cyphonic check-config --config /etc/cyphonic/node.yaml 2>&1)
check_rc=$?
set -e
printf '%s\n' "$check_out" | sed 's/^/     | /'
[ "$check_rc" = 0 ] || fail "cyphonic check-config on the installed default config failed (exit $check_rc)"
grep -qx '/etc/cyphonic/node.yaml: OK' <<<"$check_out" || fail "check-config did not say OK"
for p in "${PLUGINS[@]}"; do
    grep -qE "^  (interface|crypto|mobility) plugin .*\(/usr/lib/cyphonic/plugins/$p\)$" <<<"$check_out" ||
        fail "check-config did not load the plugin /usr/lib/cyphonic/plugins/$p"
done
ok "cyphonic check-config accepts /etc/cyphonic/node.yaml and loads all ${#PLUGINS[@]} plugins"
# node.yaml leaves the config-logic script out (config_script: null); the shipped
# template must load all the same.
tmp_conf=$(mktemp -d)
sed 's|^config_script: null$|config_script: /etc/cyphonic/config.lua|' /etc/cyphonic/node.yaml >"$tmp_conf/node.yaml"
grep -qx 'config_script: /etc/cyphonic/config.lua' "$tmp_conf/node.yaml" ||
    fail "/etc/cyphonic/node.yaml has no 'config_script: null' line to switch on"
if ! logic_out=$(/usr/bin/cyphonic check-config --config "$tmp_conf/node.yaml" 2>&1); then
    printf '%s\n' "$logic_out" >&2
    rm -rf "$tmp_conf"
    fail "check-config with config_script: /etc/cyphonic/config.lua failed"
fi
rm -rf "$tmp_conf"
ok "the installed config.lua passes check-config as config_script"
# The cloud as its service user: the data directory is writable for it, the key is made.
key_out=$(runuser -u "$CLOUD_USER" -- /usr/bin/cyphonic-cloud -c /etc/cyphonic/cloud.yaml key show)
grep -qE '^cyphonic1:[0-9a-f]{64}$' <<<"$(head -n 1 <<<"$key_out")" || fail "key show printed: $key_out"
expect_stat /var/lib/cyphonic-cloud/cloud.key "600 $CLOUD_USER:$CLOUD_USER"
ok "cyphonic-cloud key show as $CLOUD_USER: $(head -n 1 <<<"$key_out" | cut -c1-20)..., cloud.key 0600"

# --- reinstall ----------------------------------------------------------------------
step "dpkg -i again (an upgrade in place keeps config, keys and the user)"
sed -i 's/^log: info$/log: debug/' /etc/cyphonic/node.yaml
grep -qx 'log: debug' /etc/cyphonic/node.yaml || fail "could not edit /etc/cyphonic/node.yaml"
key_before=$(sha256sum /var/lib/cyphonic-cloud/cloud.key)
uid_before=$(id -u "$CLOUD_USER")
dpkg -i --force-confold "$NODE_DEB" "$CLOUD_DEB" >"$OUT/dpkg-reinstall.log" 2>&1 || {
    cat "$OUT/dpkg-reinstall.log" >&2
    fail "dpkg -i over the installed packages failed"
}
grep -qx 'log: debug' /etc/cyphonic/node.yaml || fail "the reinstall overwrote the edited /etc/cyphonic/node.yaml"
[ "$(sha256sum /var/lib/cyphonic-cloud/cloud.key)" = "$key_before" ] || fail "the reinstall changed the cloud key"
[ "$(id -u "$CLOUD_USER")" = "$uid_before" ] || fail "the reinstall recreated $CLOUD_USER"
expect_stat /var/lib/cyphonic "700 root:root"
expect_stat /var/lib/cyphonic-cloud "700 $CLOUD_USER:$CLOUD_USER"
ok "reinstall kept the edited node.yaml, the cloud key, the user and the state dirs"

# --- purge --------------------------------------------------------------------------
step "dpkg --purge"
dpkg --purge "${PKGS[@]}" >"$OUT/dpkg-purge.log" 2>&1 || {
    cat "$OUT/dpkg-purge.log" >&2
    fail "dpkg --purge failed"
}
for p in "${PKGS[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
    [ -z "$status" ] || [ "$status" = not-installed ] || fail "$p still known to dpkg: $status"
done
left=()
for path in "${LEFTOVERS[@]}"; do
    if [ -e "$path" ] || [ -L "$path" ]; then left+=("$path"); fi
done
[ "${#left[@]}" = 0 ] || fail "left after purge: ${left[*]}"
getent passwd "$CLOUD_USER" >/dev/null && fail "user $CLOUD_USER left after purge"
getent group "$CLOUD_USER" >/dev/null && fail "group $CLOUD_USER left after purge"
INSTALLED_BY_US=0
ok "purge left nothing: ${#LEFTOVERS[@]} paths, user and group gone"

printf '\ndeb-test: OK: %d checks, cyphonic-node and cyphonic-cloud %s built, installed, verified and purged in %ds\n' \
    "$CHECKS" "$DEB_VERSION" "$((SECONDS - START))"
