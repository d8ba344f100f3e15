#!/usr/bin/env bash
# The main job (README): a one-command demo of a whole overlay on this machine. It builds
# everything in release mode, then runs a cloud and two nodes, each in its own network
# namespace on one underlay bridge, logs both nodes in, and shows node A reaching node B
# by name, end-to-end encrypted through real TUN interfaces:
#
#   cyd-cloud  br0 198.51.100.1/24, 2001:db8:100::1/64   cyphonic-cloud (AS/NMS/TRS)
#   cyd-a      eth0 198.51.100.2, 2001:db8:100::2        cyphonicd node-a.cyphonic
#   cyd-b      eth0 198.51.100.3, 2001:db8:100::3        cyphonicd node-b.cyphonic
#
# Each node's resolver is in front of its namespace's /etc/resolv.conf (the file
# /etc/netns/<ns>/resolv.conf that `ip netns exec` mounts there), so a plain
# `ping node-b.cyphonic` in cyd-a resolves through node A's daemon, which asks the NMS and
# runs the handshake with node B before it answers.
#
# Usage (as root):
#   scripts/run.sh                  the demo; exits non-zero if node A cannot reach node B
#   scripts/run.sh --hold           the same, then keeps everything up until Ctrl-C
#   scripts/run.sh --crypto-bench   the crypto-suite plugins against OpenSSL
#                                   (bench/crypto-vs-openssl.sh)
# Knobs: CYD_KEEP=1 keeps the work directory (configs, state, logs) after the run;
# CYD_FORCE=1 deletes leftover cyd-* namespaces of an earlier run first.
#
# Everything stays inside the namespaces (documentation addresses, no route out) and is
# removed on exit, also after a failure or Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

NS_CLOUD=cyd-cloud
NS_A=cyd-a
NS_B=cyd-b
NAMESPACES=("$NS_CLOUD" "$NS_A" "$NS_B")
CLOUD_IP=198.51.100.1
DOMAIN=cyphonic
# The demo devices' password (the cloud stores only its Argon2id hash).
PASSWORD="cyphonic demo password"

log() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
die() { printf 'run.sh: %s\n' "$*" >&2; exit 1; }

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
}

crypto_bench() {
    if ! command -v openssl >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null
    fi
    cargo build --release --workspace --locked
    exec bench/crypto-vs-openssl.sh
}

HOLD=0
case "${1:-}" in
    "") ;;
    --hold) HOLD=1 ;;
    --crypto-bench) crypto_bench ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
esac

# ------------------------------------------------------------------ prerequisites
[[ $EUID == 0 ]] || die "must run as root (it creates network namespaces and TUN interfaces)"
missing=()
# The build's needs (as scripts/test.sh), then the demo's.
command -v cc >/dev/null || missing+=(gcc libc6-dev)
command -v pkg-config >/dev/null || missing+=(pkg-config)
command -v ip >/dev/null || missing+=(iproute2)
command -v ping >/dev/null || missing+=(iputils-ping)
if ((${#missing[@]})); then
    command -v apt-get >/dev/null || die "missing ${missing[*]}; install them and run again"
    log "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v ip >/dev/null || die "iproute2 (ip) is required"
command -v ping >/dev/null || die "ping (iputils-ping) is required"
[[ -c /dev/net/tun ]] || die "/dev/net/tun is missing: the nodes need TUN devices"
for ns in "${NAMESPACES[@]}"; do
    if ip netns list | awk '{print $1}' | grep -qx "$ns"; then
        [[ ${CYD_FORCE:-0} == 1 ]] ||
            die "namespace $ns exists (another demo running?); CYD_FORCE=1 deletes it"
        ip netns del "$ns"
        rm -rf "/etc/netns/$ns"
    fi
done

log "cargo build --release --workspace"
cargo build --release --workspace --locked
BIN=${CARGO_TARGET_DIR:-$REPO/target}/release
for f in cyphonic-cloud cyphonicd cyphonic libcyphonic_linux_tun.so libcyphonic_aes_gcm.so \
    libcyphonic_chacha20_poly1305.so libcyphonic_ctr_hmac.so; do
    [[ -e $BIN/$f ]] || die "$BIN/$f is missing after the build"
done

# ------------------------------------------------------------------ cleanup
WORK=$(mktemp -d -t cyphonic-demo.XXXXXX)
PIDS=()     # everything started in the background, in start order
LABELS=()   # their labels (log file names)
MADE_NS=()

# stop_all LABEL_PATTERN : SIGTERM to every started process whose label matches, then
# wait for them (SIGKILL after 10 s). Label "-" marks a process already reaped.
stop_all() {
    local i j pid stopping=()
    for i in "${!PIDS[@]}"; do
        # shellcheck disable=SC2053  # the pattern is meant to glob
        [[ ${LABELS[$i]} != - && ${LABELS[$i]} == $1 ]] || continue
        kill -TERM "${PIDS[$i]}" 2>/dev/null && stopping+=("$i")
    done
    for i in "${stopping[@]}"; do
        pid=${PIDS[$i]}
        for ((j = 0; j < 100; j++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "run.sh: ${LABELS[$i]} ignored SIGTERM, killing it" >&2
            kill -KILL "$pid" 2>/dev/null
        fi
        wait "$pid" 2>/dev/null
        LABELS[i]=-   # reaped: its pid may belong to someone else now
    done
}

cleanup() {
    local rc=$? ns f
    trap - EXIT INT TERM
    set +e
    # The nodes first: they log out of the NMS while it still runs.
    stop_all 'node-*'
    stop_all '*'
    if ((rc != 0 && rc != 130)); then
        for f in cloud node-a node-b; do
            [[ -s $WORK/$f.log ]] || continue
            printf '\n--- last lines of %s.log ---\n' "$f" >&2
            tail -n 25 "$WORK/$f.log" >&2
        done
    fi
    for ns in "${MADE_NS[@]}"; do
        ip netns del "$ns" 2>/dev/null
        rm -rf "/etc/netns/$ns"
    done
    if [[ ${CYD_KEEP:-0} == 1 ]]; then
        echo "run.sh: work directory kept in $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'echo "run.sh: interrupted" >&2; exit 130' INT TERM

# in_ns NS CMD... : run CMD inside namespace NS (foreground)
in_ns() { local n=$1; shift; ip netns exec "$n" "$@"; }

# spawn LABEL NS CMD... : start CMD inside NS in the background, output to $WORK/LABEL.log.
# `ip netns exec` execs the command, so $! is the daemon's own pid.
spawn() {
    local label=$1 n=$2; shift 2
    ip netns exec "$n" "$@" >"$WORK/$label.log" 2>&1 </dev/null &
    PIDS+=("$!")
    LABELS+=("$label")
}

# alive LABEL : whether that process still runs
alive() {
    local i
    for i in "${!PIDS[@]}"; do
        [[ ${LABELS[$i]} == "$1" ]] && kill -0 "${PIDS[$i]}" 2>/dev/null && return 0
    done
    return 1
}

# cli NODE ARGS... : the `cyphonic` CLI of node-a/node-b in its namespace
cli() {
    local node=$1; shift
    in_ns "$(node_ns "$node")" "$BIN/cyphonic" --config "$WORK/$node/node.yaml" "$@"
}
node_ns() { [[ $1 == node-a ]] && echo "$NS_A" || echo "$NS_B"; }

# ------------------------------------------------------------------ underlay
log "network namespaces $NS_CLOUD, $NS_A, $NS_B on one bridge"
for ns in "${NAMESPACES[@]}"; do
    ip netns add "$ns"
    MADE_NS+=("$ns")
    ip -n "$ns" link set lo up
done
ip -n "$NS_CLOUD" link add br0 type bridge
ip -n "$NS_CLOUD" addr add "$CLOUD_IP/24" dev br0
ip -n "$NS_CLOUD" addr add 2001:db8:100::1/64 dev br0 nodad
ip -n "$NS_CLOUD" link set br0 up
host=2
for ns in "$NS_A" "$NS_B"; do
    port=v${ns#cyd-}
    ip -n "$NS_CLOUD" link add "$port" type veth peer name eth0 netns "$ns"
    ip -n "$NS_CLOUD" link set "$port" master br0 up
    ip -n "$ns" addr add "198.51.100.$host/24" dev eth0
    ip -n "$ns" addr add "2001:db8:100::$host/64" dev eth0 nodad
    ip -n "$ns" link set eth0 up
    host=$((host + 1))
done

# ------------------------------------------------------------------ cloud
log "cloud: cyphonic-cloud serve in $NS_CLOUD ($CLOUD_IP, UDP 7301-7303)"
mkdir -p "$WORK/cloud"
# The embedded defaults (config/cloud.yaml) with a scratch data directory.
cat >"$WORK/cloud/cloud.yaml" <<EOF
data_dir: $WORK/cloud/data
domain: $DOMAIN
EOF
cloud() { "$BIN/cyphonic-cloud" --config "$WORK/cloud/cloud.yaml" "$@"; }
PIN=$(cloud key show | head -n 1)
[[ $PIN == cyphonic1:* ]] || die "unexpected output of cyphonic-cloud key show: $PIN"
echo "cloud key (what nodes pin): $PIN"
# Before `serve`, so the two do not create the database at once.
for node in node-a node-b; do
    printf '%s\n' "$PASSWORD" | cloud device add "$node" --fqdn "$node.$DOMAIN" --password-stdin
done
spawn cloud "$NS_CLOUD" "$BIN/cyphonic-cloud" --config "$WORK/cloud/cloud.yaml" serve

# ------------------------------------------------------------------ nodes
for node in node-a node-b; do
    ns=$(node_ns "$node")
    d=$WORK/$node
    mkdir -p "$d"
    cp scripts/dns_filter.lua "$d/dns_filter.lua"
    # Relative paths are relative to the config file. See config/node.yaml for every key.
    cat >"$d/node.yaml" <<EOF
state_dir: state
log: info
cloud:
  as: "$CLOUD_IP:7301"
  nms: "$CLOUD_IP:7302"
  key: "$PIN"
tunnel:
  listen_port: 7400
plugins:
  interface: "$BIN/libcyphonic_linux_tun.so"
  crypto:
    - "$BIN/libcyphonic_aes_gcm.so"
    - "$BIN/libcyphonic_chacha20_poly1305.so"
    - "$BIN/libcyphonic_ctr_hmac.so"
interface:
  name: cyph0
  mtu: 1420
resolver:
  filter: dns_filter.lua
  system: resolv-conf
control:
  socket: run/cyphonicd.sock
EOF
    # What the resolver forwards non-overlay names to (nothing answers there: the demo
    # has no internet); the daemon puts itself in front of it.
    mkdir -p "/etc/netns/$ns"
    echo "nameserver $CLOUD_IP" >"/etc/netns/$ns/resolv.conf"
done

for node in node-a node-b; do
    log "$node: cyphonic login --device-id $node"
    # The cloud may still be starting: the client retries the first login itself.
    printf '%s\n' "$PASSWORD" | cli "$node" login --device-id "$node" --password-stdin
done
for node in node-a node-b; do
    spawn "$node" "$(node_ns "$node")" "$BIN/cyphonicd" --config "$WORK/$node/node.yaml"
done

log "waiting for both daemons to report state running"
for node in node-a node-b; do
    for ((i = 0; ; i++)); do
        alive cloud || die "the cloud exited"
        alive "$node" || die "cyphonicd of $node exited"
        cli "$node" --json status 2>/dev/null | grep -q '"state": *"running"' && break
        ((i < 300)) || die "$node did not reach state running within 30 s"
        sleep 0.1
    done
    echo "$node: running"
done

# ------------------------------------------------------------------ the demo
log "cyphonic status (node A)"
cli node-a status

log "ping -c 5 node-b.$DOMAIN (from $NS_A: system resolver -> node A's daemon -> NMS -> handshake)"
ping_rc=0
in_ns "$NS_A" ping -c 5 -i 0.5 -W 2 "node-b.$DOMAIN" || ping_rc=$?

log "cyphonic ping node-b (overlay-level: probes answered by node B's daemon)"
overlay_rc=0
cli node-a ping node-b -c 3 -i 200 || overlay_rc=$?

log "cyphonic peers (node A)"
cli node-a peers

((ping_rc == 0)) || die "ping node-b.$DOMAIN from node A failed (exit $ping_rc)"
((overlay_rc == 0)) || die "cyphonic ping node-b failed (exit $overlay_rc)"
log "node A reached node B by name, end-to-end encrypted"

if ((HOLD)); then
    cat <<EOF

Everything stays up until Ctrl-C. Try, in another shell:
  ip netns exec $NS_A ping node-b.$DOMAIN
  ip netns exec $NS_B ping node-a.$DOMAIN
  ip netns exec $NS_A $BIN/cyphonic --config $WORK/node-a/node.yaml peers
  tail -f $WORK/node-a.log $WORK/cloud.log
EOF
    while alive node-a && alive node-b && alive cloud; do sleep 1; done
    die "a daemon exited"
fi
