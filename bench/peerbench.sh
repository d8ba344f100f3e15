#!/usr/bin/env bash
# peerbench.sh - side-by-side data-plane benchmark of overlay/VPN peers.
#
# Two network namespaces (pb-a, pb-b) joined by one veth pair form the
# "physical" underlay. For each implementation ("case") in turn the harness
#   1. brings the tunnel up between the namespaces (case_<name>),
#   2. waits until the peer's overlay address answers a ping,
#   3. runs the common measurement (measure): ping, TCP x1, TCP x4, UDP at
#      fixed offered rates, sampling CPU time of the case's daemons and of
#      the whole machine around every iperf3 test,
#   4. tears everything of that case down (teardown_case),
# and finally prints a summary table (median over PB_RUNS runs).
#
# Traffic only ever flows between the two namespaces: they have no default
# route and no link to the host or the outside world.
#
# Requirements: bash, iproute2, iperf3, ping, jq, awk, timeout (coreutils);
# per case: cyphonic (this repository, `cargo build --release --workspace`),
# wireguard-go + wg, boringtun-cli + wg, nebula + nebula-cert,
# tincd (1.0), openvpn (2.6) + openssl. A case whose tools are missing is
# reported with status "setup-fail" (others: "died" = a daemon exited at
# start, "no-conn" = no overlay ping within 15 s, "died-test" = a daemon
# exited during the measurement). Must run as root.
#
# Output (in PB_OUT): summary.txt (the tables below), results.tsv (every
# metric of every run: run, case, metric, value), versions.txt, per-test
# iperf3 JSON (+ raw output and server log), daemon logs/configs per case
# (private keys are not copied).
# Tables: throughput/latency; CPU (daemon % of one core per side, machine
# busy/softirq %, daemon cycles per delivered byte at the nominal clock);
# daemon user/sys split; drops (UDP socket rcvbuf per namespace, side a
# tunnel device tx_dropped, netdev backlog).
#
# Usage:
#   sudo ./peerbench.sh                    # all cases, 1 run
#   PB_RUNS=3 ./peerbench.sh               # 3 interleaved runs, medians
#   PB_CASES="raw wggo" ./peerbench.sh     # subset
#   PB_UNDERLAY=6 ./peerbench.sh           # tunnels use the IPv6 underlay
#
# Environment knobs (defaults in brackets):
#   PB_CASES      cases to run, in order
#                 [raw cyphonic wggo boringtun nebula tinc openvpn]
#   PB_RUNS       number of full passes; summary shows medians [1]
#   PB_TIME       seconds per iperf3 test [10]
#   PB_UDP_RATES  offered UDP rates, iperf3 -b syntax ["500M 1G"]
#   PB_UDP_LEN    UDP payload bytes; capped per case at tunnel MTU - 28.
#                 1368 = TCP MSS at MTU 1420 with timestamps [1368]
#   PB_TCP_PAR    parallel streams for the multi-stream TCP test [4]
#   PB_MTU        overlay (tunnel interface) MTU for every case [1420]
#   PB_UNDERLAY   4 or 6: address family of the outer (underlay) packets [4]
#   PB_OUT        results directory [./peerbench-results/<timestamp>]
#   PB_KEEP_WORK  1 = keep the scratch dir with keys/configs/logs [0]
#   PB_FORCE      1 = delete pre-existing pb-a/pb-b namespaces first [0]
#   PB_CYPHONIC_DIR  cyphonic-cloud, cyphonicd, cyphonic and the plugin .so
#                 files [<repository of this script>/target/release]
#   PB_CYPHONIC_SUITE  the one crypto suite both cyphonic nodes offer
#                 (aes-256-gcm, chacha20-poly1305, aes-256-ctr-hmac-sha256)
#                 [aes-256-gcm]
#   PB_BORINGTUN  boringtun-cli binary [boringtun-cli, else ~/.cargo/bin/boringtun-cli]
#   PB_BT_THREADS boringtun worker threads (its default is 4) [4]
#   PB_WGGO       wireguard-go binary [wireguard-go]
#   PB_TINC_CIPHER / PB_TINC_DIGEST / PB_TINC_MACLEN  [aes-256-cbc / sha256 / 16]
#   PB_NEBULA_ROUTINES  nebula "routines" (reader/writer thread pairs) [1]
#   PB_TCP_CC     TCP congestion control for the TCP tests, or "inherit" [cubic]
#   PB_PIN        1 = pin side a to CPU 0 and side b to CPU 1 [0]
#   PB_RMEM_DEFAULT  if set (bytes), temporarily set the global sysctls
#                 net.core.rmem_default/wmem_default (restored on exit) [unset]
#
# ---------------------------------------------------------------------------
# Adding a new implementation (the project's own peer, say "mypeer"):
#   * write   case_mypeer() { ... }   that
#       - creates its config under "$WORK/mypeer" (mkdir it),
#       - starts one daemon per namespace with
#             spawn a <label> <logfile> <cmd...>     (inside pb-a)
#             spawn b <label> <logfile> <cmd...>     (inside pb-b)
#         (spawn runs the command in the namespace, in the background, and
#         records its PID for CPU accounting and cleanup - so the command
#         must stay in the foreground, i.e. not daemonize/fork away),
#       - puts overlay address $OV_A on side a and $OV_B on side b
#         (prefix $OV_PLEN), tunnel interface MTU $OV_MTU,
#       - sets TARGET to the address that side a must reach ($OV_B),
#       - returns non-zero on failure (the case is reported "setup-fail").
#     Underlay addresses: $UL_A / $UL_B (family per PB_UNDERLAY), and
#     $UL_A_HP / $UL_B_HP give "host" forms usable in host:port strings
#     (IPv6 in brackets).
#   * optionally write  ready_mypeer()  (extra readiness wait after the
#     first successful ping) and  down_mypeer()  (extra teardown; daemons
#     and leftover interfaces are removed generically anyway).
#   * add "mypeer" to PB_CASES (and a version line to print_versions).
# ---------------------------------------------------------------------------

set -uo pipefail   # no -e: a failing case must not abort the whole run

# ------------------------------ configuration ------------------------------
NS_A=pb-a
NS_B=pb-b
VETH_A=pb-veth-a
VETH_B=pb-veth-b
UL4_A=198.51.100.1 UL4_B=198.51.100.2 UL4_PLEN=24    # underlay IPv4 (TEST-NET-2)
UL6_A=2001:db8:200::1 UL6_B=2001:db8:200::2 UL6_PLEN=64  # underlay IPv6 (documentation)
OV_A=100.64.0.1 OV_B=100.64.0.2 OV_PLEN=24           # overlay IPv4 (CGNAT range)

CASES=${PB_CASES:-"raw cyphonic wggo boringtun nebula tinc openvpn"}
RUNS=${PB_RUNS:-1}
DURATION=${PB_TIME:-10}
UDP_RATES=${PB_UDP_RATES:-"500M 1G"}
UDP_LEN=${PB_UDP_LEN:-1368}
TCP_PAR=${PB_TCP_PAR:-4}
OV_MTU=${PB_MTU:-1420}
UNDERLAY=${PB_UNDERLAY:-4}
PING_COUNT=20
PING_INTERVAL=0.05
IPERF_PORT=5201
OUT_DIR=${PB_OUT:-./peerbench-results/$(date +%Y%m%d-%H%M%S)}
REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CYPHONIC_DIR=${PB_CYPHONIC_DIR:-$REPO_DIR/target/release}
CYPHONIC_SUITE=${PB_CYPHONIC_SUITE:-aes-256-gcm}
BORINGTUN=${PB_BORINGTUN:-$(command -v boringtun-cli || echo "$HOME/.cargo/bin/boringtun-cli")}
BT_THREADS=${PB_BT_THREADS:-4}
WGGO=${PB_WGGO:-wireguard-go}
TINC_CIPHER=${PB_TINC_CIPHER:-aes-256-cbc}
TINC_DIGEST=${PB_TINC_DIGEST:-sha256}
TINC_MACLEN=${PB_TINC_MACLEN:-16}
NEBULA_ROUTINES=${PB_NEBULA_ROUTINES:-1}
# Optional: raise the *global* net.core.{r,w}mem_default for the duration of
# the run (restored on exit). These sysctls are not per-namespace, so this
# touches the host. Off by default: measure the system as configured.
RMEM_DEFAULT=${PB_RMEM_DEFAULT:-}
# TCP congestion control of the iperf3 TCP tests, set per socket with
# iperf3 -C (TCP_CONGESTION; root may pick any built-in algorithm even if
# it is not in net.ipv4.tcp_allowed_congestion_control). Pinned for
# reproducibility across hosts; "inherit" = the namespace default.
TCP_CC=${PB_TCP_CC:-cubic}
# PB_PIN=1: pin everything of side a (daemon + iperf3 client) to CPU 0 and
# side b (daemon + iperf3 server) to CPU 1, i.e. "one core per peer".
# Kernel softirq work is not pinned. Default: let the scheduler decide.
PIN=${PB_PIN:-0}

CLK_TCK=$(getconf CLK_TCK)
# Nominal core clock for the cycles/byte estimate (TSC/"cpu MHz"; a VM may
# boost above it, so treat cyc/B as an estimate).
CPU_MHZ=$(awk -F: '/^cpu MHz/ {gsub(/ /,"",$2); print $2; exit}' /proc/cpuinfo)
CPU_MHZ=${CPU_MHZ:-1000}

if [[ $UNDERLAY == 6 ]]; then
    UL_A=$UL6_A UL_B=$UL6_B UL_A_HP="[$UL6_A]" UL_B_HP="[$UL6_B]"
else
    UL_A=$UL4_A UL_B=$UL4_B UL_A_HP=$UL4_A UL_B_HP=$UL4_B
fi

# ------------------------------ bookkeeping --------------------------------
WORK=""                 # scratch dir (keys, configs, logs)
declare -A LIVE_PIDS=() # background processes we started and not yet stopped
CASE_PIDS_A=()          # daemons of the current case, namespace a
CASE_PIDS_B=()          # daemons of the current case, namespace b
TARGET=""               # address side a pings/iperfs (set by case_*)
TUN_DEV_A=""            # side a's device towards TARGET (set by measure)
RESULTS=""              # TSV: run case metric value

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "FATAL: $*"; exit 1; }

# ns a|b -> namespace name
ns() { [[ $1 == a ]] && echo "$NS_A" || echo "$NS_B"; }
# nsx a|b cmd... : run a command inside the namespace (foreground)
nsx() { local n; n=$(ns "$1"); shift; ip netns exec "$n" "$@"; }
# pin_prefix a|b : command prefix that applies PB_PIN's CPU affinity
pin_prefix() {
    if [[ $PIN == 1 ]]; then
        [[ $1 == a ]] && echo "taskset -c 0" || echo "taskset -c 1"
    fi
}

# spawn a|b label logfile cmd... : run cmd in the namespace in the background,
# record its PID. `ip netns exec` execs the command, so $! is its PID.
spawn() {
    local side=$1 label=$2 logf=$3; shift 3
    # shellcheck disable=SC2046  # pin_prefix is intentionally word-split
    ip netns exec "$(ns "$side")" $(pin_prefix "$side") "$@" >"$logf" 2>&1 </dev/null &
    local pid=$!
    LIVE_PIDS[$pid]=1
    if [[ $label != - ]]; then
        if [[ $side == a ]]; then CASE_PIDS_A+=("$pid"); else CASE_PIDS_B+=("$pid"); fi
    fi
    SPAWNED_PID=$pid
}

# our_child PID : true if PID is alive and still a direct child of this
# script (guards against signalling a recycled PID).
our_child() {
    local line rest f
    read -r line 2>/dev/null <"/proc/$1/stat" || return 1
    rest=${line##*) }
    read -r -a f <<<"$rest"    # f[0]=state f[1]=ppid
    [[ ${f[1]} == "$$" && ${f[0]} != Z ]]
}

# stop_pid PID : TERM, wait up to ~5 s, then KILL. Only ever our own children.
stop_pid() {
    local pid=$1 i
    unset "LIVE_PIDS[$pid]"
    our_child "$pid" || { wait "$pid" 2>/dev/null; return 0; }
    kill -TERM "$pid" 2>/dev/null
    for ((i = 0; i < 50; i++)); do
        our_child "$pid" || break
        sleep 0.1
    done
    if our_child "$pid"; then
        log "pid $pid ignored SIGTERM, sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null
    fi
    wait "$pid" 2>/dev/null
    return 0
}

# wait_for DESCRIPTION TRIES SLEEP cmd... : bounded polling loop
wait_for() {
    local what=$1 tries=$2 nap=$3 i; shift 3
    for ((i = 0; i < tries; i++)); do
        "$@" >/dev/null 2>&1 && return 0
        sleep "$nap"
    done
    log "timeout waiting for: $what"
    return 1
}

pid_alive_all() { local p; for p in "$@"; do our_child "$p" || return 1; done; }

cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    if [[ -n ${SAVED_RMEM:-} ]]; then
        sysctl -qw net.core.rmem_default="$SAVED_RMEM" net.core.wmem_default="$SAVED_WMEM"
    fi
    for pid in "${!LIVE_PIDS[@]}"; do stop_pid "$pid"; done
    ip netns del "$NS_A" 2>/dev/null
    ip netns del "$NS_B" 2>/dev/null
    # userspace WireGuard UAPI sockets live in the shared /var/run/wireguard
    rm -f /var/run/wireguard/pbwg-a.sock /var/run/wireguard/pbwg-b.sock \
          /var/run/wireguard/pbbt-a.sock /var/run/wireguard/pbbt-b.sock 2>/dev/null
    if [[ -n $WORK && -d $WORK ]]; then
        if [[ ${PB_KEEP_WORK:-0} == 1 ]]; then log "scratch kept in $WORK"
        else rm -rf "$WORK"; fi
    fi
    exit "$rc"
}

# ------------------------------ topology -----------------------------------
setup_netns() {
    local n
    for n in "$NS_A" "$NS_B"; do
        if ip netns list | awk '{print $1}' | grep -qx "$n"; then
            [[ ${PB_FORCE:-0} == 1 ]] || die "namespace $n already exists (PB_FORCE=1 to delete it)"
            ip netns del "$n"
        fi
    done
    ip netns add "$NS_A" && ip netns add "$NS_B" || die "cannot create namespaces"
    ip link add "$VETH_A" netns "$NS_A" type veth peer name "$VETH_B" netns "$NS_B" \
        || die "cannot create veth pair"
    local s dev a4 a6
    for s in a b; do
        if [[ $s == a ]]; then dev=$VETH_A a4=$UL4_A a6=$UL6_A; else dev=$VETH_B a4=$UL4_B a6=$UL6_B; fi
        ip -n "$(ns $s)" link set lo up
        ip -n "$(ns $s)" link set "$dev" mtu 1500 up
        ip -n "$(ns $s)" addr add "$a4/$UL4_PLEN" dev "$dev"
        ip -n "$(ns $s)" addr add "$a6/$UL6_PLEN" dev "$dev" nodad
    done
    wait_for "underlay ping" 50 0.1 nsx a ping -c1 -W1 "$UL4_B" || die "underlay v4 broken"
    wait_for "underlay ping6" 50 0.1 nsx a ping -6 -c1 -W1 "$UL6_B" || die "underlay v6 broken"
}

# Remove every interface in a namespace except lo and the veth (leftover
# tunnel devices of a case).
flush_ifaces() {
    local s=$1 dev keep
    [[ $s == a ]] && keep=$VETH_A || keep=$VETH_B
    for dev in $(ip -n "$(ns "$s")" -o link show | awk -F': ' '{print $2}' | cut -d@ -f1); do
        [[ $dev == lo || $dev == "$keep" ]] && continue
        ip -n "$(ns "$s")" link del "$dev" 2>/dev/null
    done
}

teardown_case() {
    local c=$1 pid
    declare -F "down_$c" >/dev/null && "down_$c"
    for pid in "${CASE_PIDS_A[@]}" "${CASE_PIDS_B[@]}"; do stop_pid "$pid"; done
    CASE_PIDS_A=() CASE_PIDS_B=()
    flush_ifaces a
    flush_ifaces b
    TARGET=""
}

# peak_rss_mib PID... : the daemons' peak resident memory (VmHWM) summed, MiB,
# read after the measurement (so: under load), or NA for a case without daemons
peak_rss_mib() {
    local pid kb total=0 n=0
    for pid in "$@"; do
        kb=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null) || continue
        [[ -n $kb ]] || continue
        total=$((total + kb)) n=$((n + 1))
    done
    if ((n)); then awk -v k="$total" 'BEGIN {printf "%.1f", k / 1024}'; else echo NA; fi
}

# ------------------------------ CPU accounting -----------------------------
# ticks PID... : "utime stime" (clock ticks, all threads) summed over PIDs
ticks() {
    local pid line rest u=0 s=0 f
    for pid in "$@"; do
        [[ -r /proc/$pid/stat ]] || continue
        read -r line <"/proc/$pid/stat" || continue
        rest=${line##*) }          # drop "pid (comm) " - comm may contain spaces
        read -r -a f <<<"$rest"    # f[0]=state ... f[11]=utime f[12]=stime
        u=$((u + f[11])) s=$((s + f[12]))
    done
    echo "$u $s"
}
# sysstat : "busy total softirq" jiffies from /proc/stat (all CPUs)
sysstat() {
    awk '/^cpu / {busy=$2+$3+$4+$7+$8+$9; print busy, busy+$5+$6, $8; exit}' /proc/stat
}

# udp_drops a|b : UDP receive-buffer drops (v4+v6) in the namespace so far.
# These are datagrams the kernel dropped because a UDP socket's receive
# buffer was full: the tunnel daemon's socket (encrypted packets) or the
# iperf3 UDP server's socket.
udp_drops() {
    nsx "$1" awk '
        /^Udp:/ { if (!h) { for (i = 1; i <= NF; i++) n[i] = $i; h = 1 }
                  else for (i = 1; i <= NF; i++) if (n[i] == "RcvbufErrors") s += $i }
        /^Udp6RcvbufErrors/ { s += $2 }
        END { print s + 0 }' /proc/net/snmp /proc/net/snmp6
}

# dev_txdrop DEV : tx_dropped of DEV in namespace a (for a TUN device:
# packets the kernel could not queue to the daemon because its TUN ring was
# full, i.e. the sending daemon did not read fast enough)
dev_txdrop() {
    [[ -n $1 ]] && nsx a cat "/sys/class/net/$1/statistics/tx_dropped" 2>/dev/null || echo 0
}
# backlog_drops : per-CPU input backlog drops (netdev_max_backlog), summed
# over CPUs; global, not per namespace (/proc/net/softnet_stat column 2)
backlog_drops() {
    local sum=0 dropped
    while read -r _ dropped _; do sum=$((sum + 16#$dropped)); done </proc/net/softnet_stat
    echo "$sum"
}

# ------------------------------ results ------------------------------------
RUN_NO=0
CUR_CASE=""
rec() { printf '%s\t%s\t%s\t%s\n' "$RUN_NO" "$CUR_CASE" "$1" "$2" >>"$RESULTS"; }

# ------------------------------ measurement --------------------------------
# iperf_test NAME iperf3-client-args... : one iperf3 test from a to b with a
# fresh one-shot server; records throughput + CPU metrics under NAME.
iperf_test() {
    local name=$1; shift
    local json="$OUT_DIR/run$RUN_NO-$CUR_CASE-$name.json" raw="$OUT_DIR/run$RUN_NO-$CUR_CASE-$name.out"
    spawn b - "$OUT_DIR/run$RUN_NO-$CUR_CASE-$name.server.log" iperf3 -s -1 -p "$IPERF_PORT"
    local srv=$SPAWNED_PID
    if ! wait_for "iperf3 server" 50 0.1 nsx b sh -c "ss -Hltn 'sport = :$IPERF_PORT' | grep -q ."; then
        stop_pid "$srv"; rec "$name.error" "no-server"; return 1
    fi
    local t0 ta0 tb0 s0 t1 ta1 tb1 s1
    local da0 db0 da1 db1 tx0 tx1 bl0 bl1
    da0=$(udp_drops a); db0=$(udp_drops b); tx0=$(dev_txdrop "$TUN_DEV_A"); bl0=$(backlog_drops)
    t0=$(date +%s.%N); ta0=$(ticks "${CASE_PIDS_A[@]}"); tb0=$(ticks "${CASE_PIDS_B[@]}"); s0=$(sysstat)
    # The client runs in the background and we `wait` for it, so that a
    # SIGTERM/SIGINT to this script is handled at once (bash defers traps
    # while a foreground child runs). timeout bounds it in any case.
    # shellcheck disable=SC2046
    timeout $((DURATION + 30)) ip netns exec "$NS_A" $(pin_prefix a) \
        iperf3 -c "$TARGET" -p "$IPERF_PORT" -t "$DURATION" -J --connect-timeout 5000 "$@" >"$raw" 2>&1 &
    local cli=$! rc
    LIVE_PIDS[$cli]=1
    wait "$cli"; rc=$?
    unset "LIVE_PIDS[$cli]"
    t1=$(date +%s.%N); ta1=$(ticks "${CASE_PIDS_A[@]}"); tb1=$(ticks "${CASE_PIDS_B[@]}"); s1=$(sysstat)
    da1=$(udp_drops a); db1=$(udp_drops b); tx1=$(dev_txdrop "$TUN_DEV_A"); bl1=$(backlog_drops)
    stop_pid "$srv"
    # iperf3 3.12 may print warnings (e.g. "UDP block size exceeds TCP MSS")
    # on stdout before the JSON document: keep only the JSON part.
    sed -n '/^{/,$p' "$raw" >"$json"
    rec "$name.udpdrop_a" $((da1 - da0))
    rec "$name.udpdrop_b" $((db1 - db0))
    rec "$name.devdrop_a" $((tx1 - tx0))
    rec "$name.backlog" $((bl1 - bl0))
    local err
    err=$(jq -r '.error // empty' "$json" 2>/dev/null)
    if [[ $rc != 0 || -n $err ]]; then
        log "  $name: iperf3 failed (rc=$rc) ${err}"
        rec "$name.error" "${err:-rc=$rc}"
        return 1
    fi
    local proto bps bytes
    proto=$(jq -r '.start.test_start.protocol' "$json")
    bps=$(jq -r '.end.sum_received.bits_per_second' "$json")
    bytes=$(jq -r '.end.sum_received.bytes' "$json")
    rec "$name.mbps" "$(awk -v b="$bps" 'BEGIN{printf "%.0f", b/1e6}')"
    if [[ $proto == TCP ]]; then
        rec "$name.retr" "$(jq -r '.end.sum_sent.retransmits // 0' "$json")"
        rec "$name.cc" "$(jq -r '.end.sender_tcp_congestion // "?"' "$json")"
    else
        # UDP: .end.sum carries the receiver-side loss/jitter reported back
        rec "$name.loss" "$(jq -r '.end.sum.lost_percent' "$json" | awk '{printf "%.2f", $1}')"
        rec "$name.jitter" "$(jq -r '.end.sum.jitter_ms' "$json" | awk '{printf "%.3f", $1}')"
        rec "$name.sent_mbps" "$(jq -r '.end.sum_sent.bits_per_second' "$json" | awk '{printf "%.0f", $1/1e6}')"
    fi
    # CPU: daemon % of one core (a, b; total and the kernel/"sys" part),
    # machine busy/softirq % of all cores, and daemon (a+b) cycles per
    # delivered payload byte. Daemon sys time includes the network-stack
    # work the kernel does in its syscalls (e.g. a TUN write runs the
    # receiving TCP stack; a UDP send may run the veth peer's receive).
    local sb0 st0 ss0 sb1 st1 ss1 ua0 sa0 ub0 sb_0 ua1 sa1 ub1 sb_1
    read -r sb0 st0 ss0 <<<"$s0"; read -r sb1 st1 ss1 <<<"$s1"
    read -r ua0 sa0 <<<"$ta0"; read -r ua1 sa1 <<<"$ta1"
    read -r ub0 sb_0 <<<"$tb0"; read -r ub1 sb_1 <<<"$tb1"
    local wall
    wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')
    awk -v da=$((ua1 + sa1 - ua0 - sa0)) -v db=$((ub1 + sb_1 - ub0 - sb_0)) \
        -v sa=$((sa1 - sa0)) -v sb=$((sb_1 - sb_0)) -v hz="$CLK_TCK" -v w="$wall" \
        -v busy=$((sb1 - sb0)) -v tot=$((st1 - st0)) -v sirq=$((ss1 - ss0)) \
        -v mhz="$CPU_MHZ" -v by="$bytes" -v nd=$((${#CASE_PIDS_A[@]} + ${#CASE_PIDS_B[@]})) \
        'BEGIN {
            printf "cpu_a\t%.0f\n", (nd ? da/hz/w*100 : -1)
            printf "cpu_b\t%.0f\n", (nd ? db/hz/w*100 : -1)
            printf "sys_a\t%.0f\n", (nd ? sa/hz/w*100 : -1)
            printf "sys_b\t%.0f\n", (nd ? sb/hz/w*100 : -1)
            printf "busy\t%.0f\n", (tot ? busy/tot*100 : 0)
            printf "sirq\t%.0f\n", (tot ? sirq/tot*100 : 0)
            printf "cpb\t%.2f\n", (nd && by > 0 ? (da+db)/hz*mhz*1e6/by : -1)
        }' | while IFS=$'\t' read -r k v; do rec "$name.$k" "$v"; done
    rec "$name.iperf_cpu_client" "$(jq -r '.end.cpu_utilization_percent.host_total' "$json" | awk '{printf "%.0f", $1}')"
    rec "$name.iperf_cpu_server" "$(jq -r '.end.cpu_utilization_percent.remote_total' "$json" | awk '{printf "%.0f", $1}')"
    log "  $name: $(awk -v b="$bps" 'BEGIN{printf "%.0f Mbit/s", b/1e6}')"
    sleep 1
}

# measure : the common measurement for the current case (TARGET must be set)
measure() {
    local dev mtu out pmin pavg pmax pmdev
    dev=$(ip -n "$NS_A" route get "$TARGET" 2>/dev/null | awk '{for(i=1;i<NF;i++) if($i=="dev") {print $(i+1); exit}}')
    mtu=$(ip -n "$NS_A" -o link show dev "$dev" 2>/dev/null | awk '{for(i=1;i<NF;i++) if($i=="mtu") {print $(i+1); exit}}')
    TUN_DEV_A=$dev
    rec mtu "${mtu:-?}"
    # Latency: 20 pings at 50 ms interval (idle link).
    out=$(nsx a ping -c "$PING_COUNT" -i "$PING_INTERVAL" -W 1 -q "$TARGET" 2>&1)
    rec ping.loss "$(sed -n 's/.* \([0-9.]*\)% packet loss.*/\1/p' <<<"$out")"
    # rtt min/avg/max/mdev = 0.031/0.045/0.080/0.010 ms
    read -r pmin pavg pmax pmdev < <(sed -n 's|.*= \([0-9.]*\)/\([0-9.]*\)/\([0-9.]*\)/\([0-9.]*\) ms|\1 \2 \3 \4|p' <<<"$out")
    rec ping.min "${pmin:-NA}"; rec ping.avg "${pavg:-NA}"; rec ping.max "${pmax:-NA}"; rec ping.mdev "${pmdev:-NA}"
    log "  ping avg ${pavg:-NA} ms (mtu ${mtu:-?} dev ${dev:-?})"
    local cc=()
    [[ $TCP_CC != inherit ]] && cc=(-C "$TCP_CC")
    iperf_test tcp1 "${cc[@]}"
    iperf_test "tcp$TCP_PAR" -P "$TCP_PAR" "${cc[@]}"
    # UDP payload: PB_UDP_LEN, but never more than fits the tunnel MTU
    local r ulen=$UDP_LEN
    [[ $mtu =~ ^[0-9]+$ ]] && ((mtu - 28 < ulen)) && ulen=$((mtu - 28))
    rec udp_len "$ulen"
    for r in $UDP_RATES; do
        iperf_test "udp$r" -u -b "$r" -l "$ulen"
    done
}

# save_case_files NAME : copy a case's logs and configs (not keys) to PB_OUT
save_case_files() {
    local src=$WORK/$1 dst=$OUT_DIR/run$RUN_NO-$1-work f
    [[ -d $src ]] || return 0
    while IFS= read -r -d '' f; do
        mkdir -p "$dst/$(dirname "$f")" && cp "$src/$f" "$dst/$f"
    done < <(cd "$src" && find . -type f ! -name '*.key' ! -name '*.priv' -print0)
}

# run_case NAME : bring up, wait, measure, tear down
run_case() {
    local c=$1
    CUR_CASE=$c
    if ! declare -F "case_$c" >/dev/null; then
        log "unknown case '$c'"; rec status unknown; return
    fi
    log "=== run $RUN_NO: $c ==="
    mkdir -p "$WORK/$c"
    local st=""
    if ! "case_$c"; then
        log "  $c: setup failed"; st=setup-fail
    elif ! pid_alive_all "${CASE_PIDS_A[@]}" "${CASE_PIDS_B[@]}"; then
        log "  $c: a daemon exited right after start"; st=died
    elif ! wait_for "$c overlay ping $TARGET" 30 0.5 nsx a ping -c1 -W1 "$TARGET"; then
        st=no-conn
    fi
    if [[ -n $st ]]; then
        rec status "$st"; save_case_files "$c"; teardown_case "$c"; return
    fi
    if declare -F "ready_$c" >/dev/null && ! "ready_$c"; then
        log "  $c: readiness check failed, measuring anyway"
    fi
    measure
    rec rss_a_mib "$(peak_rss_mib "${CASE_PIDS_A[@]}")"
    rec rss_b_mib "$(peak_rss_mib "${CASE_PIDS_B[@]}")"
    if pid_alive_all "${CASE_PIDS_A[@]}" "${CASE_PIDS_B[@]}"; then rec status ok; else rec status died-test; fi
    save_case_files "$c"
    teardown_case "$c"
}

# ============================== implementations ============================

# --- raw veth: no tunnel, the physical upper bound --------------------------
case_raw() {
    TARGET=$UL_B
}

# --- cyphonic (this repository: a cloud and two cyphonicd nodes) -------------
# The cloud (AS/NMS/TRS) runs in pb-a on the underlay address, spawned with
# label "-" so its CPU is not counted as a daemon's. Its IPv4 pool is a /24,
# so the nodes get 100.64.0.x, but which address is the cloud's choice: TARGET
# is read from node b's status. Both nodes offer one suite (PB_CYPHONIC_SUITE)
# and leave the system's DNS alone. Node a finds b through the NMS on the
# first packet to b's virtual address; ready_cyphonic records the path.
CYPHONIC_PASSWORD="peerbench password"
CYPHONIC_CLOUD_PID=""
cyphonic_cli() { # side args...
    local s=$1; shift
    nsx "$s" "$CYPHONIC_DIR/cyphonic" --config "$WORK/cyphonic/$s/node.yaml" "$@"
}
cyphonic_running() { cyphonic_cli "$1" --json status | jq -e '.state == "running"'; }
cyphonic_plugin() { # suite -> plugin file name
    case $1 in
        aes-256-gcm) echo libcyphonic_aes_gcm.so ;;
        chacha20-poly1305) echo libcyphonic_chacha20_poly1305.so ;;
        aes-256-ctr-hmac-sha256) echo libcyphonic_ctr_hmac.so ;;
        *) echo "unknown-suite-$1.so" ;;
    esac
}
case_cyphonic() {
    local d=$WORK/cyphonic bin=$CYPHONIC_DIR f s pin plugin
    plugin=$(cyphonic_plugin "$CYPHONIC_SUITE")
    for f in cyphonic-cloud cyphonicd cyphonic libcyphonic_linux_tun.so "$plugin"; do
        [[ -e $bin/$f ]] || { log "  $bin/$f missing (cargo build --release --workspace, or set PB_CYPHONIC_DIR)"; return 1; }
    done
    mkdir -p "$d/cloud" "$d/a" "$d/b"
    # The defaults but for the data directory, a small pool, a cheap password
    # hash (logins are not measured) and no metrics listener.
    {
        echo "data_dir: $d/cloud/data"
        echo "domain: cyphonic"
        echo "pools:"
        echo "  ipv4: 100.64.0.0/24"
        echo "argon2:"
        echo "  memory_kib: 8192"
        echo "  iterations: 1"
        echo "  parallelism: 1"
        echo "metrics:"
        echo "  listen: null"
        echo "  log_interval_secs: 0"
    } >"$d/cloud/cloud.yaml"
    local cloud=("$bin/cyphonic-cloud" --config "$d/cloud/cloud.yaml")
    pin=$("${cloud[@]}" key show 2>"$d/cloud/key.err" | head -n 1)
    [[ $pin == cyphonic1:* ]] || { log "  cyphonic-cloud key show failed: $(cat "$d/cloud/key.err")"; return 1; }
    # Devices before `serve`, so the two do not create the database at once.
    for s in a b; do
        printf '%s\n' "$CYPHONIC_PASSWORD" |
            "${cloud[@]}" device add "pb-$s" --fqdn "pb-$s.cyphonic" --password-stdin >>"$d/cloud/devices.log" 2>&1 ||
            { log "  cyphonic-cloud device add pb-$s failed: $(tail -n 1 "$d/cloud/devices.log")"; return 1; }
    done
    spawn a - "$d/cloud.log" "${cloud[@]}" serve
    CYPHONIC_CLOUD_PID=$SPAWNED_PID
    for s in a b; do
        if [[ -f $REPO_DIR/scripts/dns_filter.lua ]]; then
            cp "$REPO_DIR/scripts/dns_filter.lua" "$d/$s/dns_filter.lua"
        else
            printf 'function filter(name, qtype, ctx)\n  return "forward"\nend\n' >"$d/$s/dns_filter.lua"
        fi
        {
            echo "state_dir: state"
            echo "log: info"
            echo "cloud:"
            echo "  as: \"$UL_A_HP:7301\""
            echo "  nms: \"$UL_A_HP:7302\""
            echo "  key: \"$pin\""
            echo "tunnel:"
            echo "  listen_port: 7400"
            echo "  suites: [$CYPHONIC_SUITE]"
            echo "plugins:"
            echo "  interface: \"$bin/libcyphonic_linux_tun.so\""
            echo "  crypto: [\"$bin/$plugin\"]"
            echo "interface:"
            echo "  name: pbcy-$s"
            echo "  mtu: $OV_MTU"
            echo "resolver:"
            echo "  filter: dns_filter.lua"
            echo "  system: none"
            echo "control:"
            echo "  socket: run/cyphonicd.sock"
        } >"$d/$s/node.yaml"
    done
    # The cloud may still be starting: the client retries the first login.
    for s in a b; do
        printf '%s\n' "$CYPHONIC_PASSWORD" |
            timeout 30 ip netns exec "$(ns "$s")" "$bin/cyphonic" --config "$d/$s/node.yaml" \
                login --device-id "pb-$s" --password-stdin >"$d/$s/login.log" 2>&1 ||
            { log "  cyphonic login pb-$s failed: $(tail -n 1 "$d/$s/login.log")"; return 1; }
    done
    spawn a cyphonicd-a "$d/a.log" "$bin/cyphonicd" --config "$d/a/node.yaml"
    spawn b cyphonicd-b "$d/b.log" "$bin/cyphonicd" --config "$d/b/node.yaml"
    wait_for "cyphonicd a running" 150 0.2 cyphonic_running a || return 1
    wait_for "cyphonicd b running" 150 0.2 cyphonic_running b || return 1
    TARGET=$(cyphonic_cli b --json status | jq -r '.vip4 // empty')
    [[ -n $TARGET ]] || { log "  node b reports no vip4"; return 1; }
    log "  cyphonic: a=$(cyphonic_cli a --json status | jq -r '.vip4') b=$TARGET, cloud at $UL_A_HP"
}
# Records the path and suite in use (saved with the logs as peers-a.json).
ready_cyphonic() {
    cyphonic_cli a --json peers >"$WORK/cyphonic/peers-a.json" 2>&1 || return 1
    log "  cyphonic peer: $(jq -c '[.peers[] | {fqdn, path, suite, endpoint}]' "$WORK/cyphonic/peers-a.json")"
}
# Nodes first (they may still talk to the NMS while stopping), then the
# cloud, which the generic teardown would leave running (label "-").
down_cyphonic() {
    local pid
    for pid in "${CASE_PIDS_A[@]}" "${CASE_PIDS_B[@]}"; do stop_pid "$pid"; done
    [[ -n $CYPHONIC_CLOUD_PID ]] && stop_pid "$CYPHONIC_CLOUD_PID"
    CYPHONIC_CLOUD_PID=""
}

# --- userspace WireGuard (shared by wireguard-go and boringtun) -------------
# wg_common DIR IFACE_A IFACE_B : keys + `wg set` + addresses, after the two
# daemons created their interfaces and UAPI sockets.
wg_common() {
    local d=$1 ia=$2 ib=$3
    ( umask 077
      wg genkey >"$d/a.key" && wg pubkey <"$d/a.key" >"$d/a.pub" &&
      wg genkey >"$d/b.key" && wg pubkey <"$d/b.key" >"$d/b.pub" ) || return 1
    wait_for "UAPI socket $ia" 50 0.1 test -S "/var/run/wireguard/$ia.sock" || return 1
    wait_for "UAPI socket $ib" 50 0.1 test -S "/var/run/wireguard/$ib.sock" || return 1
    nsx a wg set "$ia" private-key "$d/a.key" listen-port 51820 \
        peer "$(cat "$d/b.pub")" endpoint "$UL_B_HP:51820" allowed-ips "$OV_B/32" || return 1
    nsx b wg set "$ib" private-key "$d/b.key" listen-port 51820 \
        peer "$(cat "$d/a.pub")" endpoint "$UL_A_HP:51820" allowed-ips "$OV_A/32" || return 1
    ip -n "$NS_A" addr add "$OV_A/$OV_PLEN" dev "$ia" || return 1
    ip -n "$NS_B" addr add "$OV_B/$OV_PLEN" dev "$ib" || return 1
    ip -n "$NS_A" link set "$ia" mtu "$OV_MTU" up || return 1
    ip -n "$NS_B" link set "$ib" mtu "$OV_MTU" up || return 1
    TARGET=$OV_B
}

# --- wireguard-go (Go, userspace) -------------------------------------------
case_wggo() {
    command -v "$WGGO" >/dev/null && command -v wg >/dev/null || { log "  wireguard-go/wg missing"; return 1; }
    local d=$WORK/wggo
    # -f: stay in foreground (so our PID is the daemon); env silences the banner.
    spawn a wggo-a "$d/a.log" env WG_PROCESS_FOREGROUND=1 LOG_LEVEL=error "$WGGO" -f pbwg-a
    spawn b wggo-b "$d/b.log" env WG_PROCESS_FOREGROUND=1 LOG_LEVEL=error "$WGGO" -f pbwg-b
    wg_common "$d" pbwg-a pbwg-b
}
down_wggo() { rm -f /var/run/wireguard/pbwg-a.sock /var/run/wireguard/pbwg-b.sock; }

# --- boringtun (Rust, userspace WireGuard) ----------------------------------
case_boringtun() {
    [[ -x $BORINGTUN ]] && command -v wg >/dev/null || { log "  boringtun-cli/wg missing"; return 1; }
    local d=$WORK/boringtun
    # --disable-drop-privileges: we run as root without sudo, keep root so it
    # can keep using the TUN/UAPI; -f: foreground; logs to its own file.
    spawn a bt-a "$d/a.log" "$BORINGTUN" -f --disable-drop-privileges -t "$BT_THREADS" -v error -l "$d/a.btlog" pbbt-a
    spawn b bt-b "$d/b.log" "$BORINGTUN" -f --disable-drop-privileges -t "$BT_THREADS" -v error -l "$d/b.btlog" pbbt-b
    wg_common "$d" pbbt-a pbbt-b
}
down_boringtun() { rm -f /var/run/wireguard/pbbt-a.sock /var/run/wireguard/pbbt-b.sock; }

# --- nebula (Go, Noise-based, certificate PKI) ------------------------------
nebula_config() { # side peer_ov peer_ul_hp lighthouse(true|false)
    local s=$1 peer=$2 peer_hp=$3 lh=$4 d=$WORK/nebula listen
    [[ $UNDERLAY == 6 ]] && listen='"::"' || listen='0.0.0.0'
    {
        echo "pki:"
        echo "  ca: $d/ca.crt"
        echo "  cert: $d/$s.crt"
        echo "  key: $d/$s.key"
        echo "static_host_map:"
        echo "  \"$peer\": [\"$peer_hp:4242\"]"
        echo "lighthouse:"
        echo "  am_lighthouse: $lh"
        echo "  interval: 60"
        if [[ $lh == false ]]; then echo "  hosts:"; echo "    - \"$peer\""; fi
        echo "listen:"
        echo "  host: $listen"
        echo "  port: 4242"
        echo "punchy:"
        echo "  punch: false"
        echo "routines: $NEBULA_ROUTINES"
        echo "tun:"
        echo "  disabled: false"
        echo "  dev: pbneb-$s"
        echo "  drop_local_broadcast: false"
        echo "  drop_multicast: false"
        echo "  tx_queue: 500"
        echo "  mtu: $OV_MTU"
        echo "logging:"
        echo "  level: warning"
        echo "firewall:"
        echo "  outbound:"
        echo "    - port: any"
        echo "      proto: any"
        echo "      host: any"
        echo "  inbound:"
        echo "    - port: any"
        echo "      proto: any"
        echo "      host: any"
    } >"$d/$s.yml"
}
case_nebula() {
    command -v nebula >/dev/null && command -v nebula-cert >/dev/null || { log "  nebula missing"; return 1; }
    local d=$WORK/nebula
    nebula-cert ca -name pb-ca -duration 24h -out-crt "$d/ca.crt" -out-key "$d/ca.key" || return 1
    nebula-cert sign -name a -ip "$OV_A/$OV_PLEN" -ca-crt "$d/ca.crt" -ca-key "$d/ca.key" \
        -out-crt "$d/a.crt" -out-key "$d/a.key" || return 1
    nebula-cert sign -name b -ip "$OV_B/$OV_PLEN" -ca-crt "$d/ca.crt" -ca-key "$d/ca.key" \
        -out-crt "$d/b.crt" -out-key "$d/b.key" || return 1
    # a is the lighthouse; b knows a as its lighthouse. Both have a static
    # host map entry for the other, so no discovery is needed.
    nebula_config a "$OV_B" "$UL_B_HP" true
    nebula_config b "$OV_A" "$UL_A_HP" false
    nebula -test -config "$d/a.yml" >"$d/a.test" 2>&1 || { log "  nebula config a invalid: $(cat "$d/a.test")"; return 1; }
    spawn a nebula-a "$d/a.log" nebula -config "$d/a.yml"
    spawn b nebula-b "$d/b.log" nebula -config "$d/b.yml"
    wait_for "nebula tun up" 50 0.1 ip -n "$NS_A" addr show dev pbneb-a || return 1
    wait_for "nebula tun up" 50 0.1 ip -n "$NS_B" addr show dev pbneb-b || return 1
    TARGET=$OV_B
}

# --- tinc 1.0 (C, router mode) ----------------------------------------------
tinc_node() { # side name addr ov
    local s=$1 name=$2 addr=$3 ov=$4 d=$WORK/tinc/$1 mtu=$OV_MTU
    # tinc 1.0 carries a 14-byte Ethernet header even in router mode and
    # uses CBC + HMAC: over an IPv6 underlay its path MTU is ~1405, so a
    # 1420 interface MTU would make tincd answer with ICMP frag-needed.
    [[ $UNDERLAY == 6 && $mtu -gt 1400 ]] && mtu=1400
    mkdir -p "$d/hosts"
    {
        echo "Name = $name"
        echo "Mode = router"
        echo "DeviceType = tun"
        echo "Device = /dev/net/tun"
        echo "Interface = pbtinc-$s"
        [[ $UNDERLAY == 6 ]] && echo "AddressFamily = ipv6" || echo "AddressFamily = ipv4"
        echo "Port = 655"
        [[ $s == b ]] && echo "ConnectTo = pba"
    } >"$d/tinc.conf"
    {
        echo "Address = $addr"
        echo "Port = 655"
        echo "Subnet = $ov/32"
        echo "Cipher = $TINC_CIPHER"
        echo "Digest = $TINC_DIGEST"
        echo "MACLength = $TINC_MACLEN"
    } >"$d/hosts/$name"
    cat >"$d/tinc-up" <<EOF
#!/bin/sh
ip addr add $ov/$OV_PLEN dev \$INTERFACE
ip link set \$INTERFACE mtu $mtu up
EOF
    chmod +x "$d/tinc-up"
    # -K appends the public key to hosts/<name>; stdin from /dev/null makes
    # it take the default file names without prompting.
    tincd -c "$d" -K2048 </dev/null >"$d/keygen.log" 2>&1 || return 1
}
case_tinc() {
    command -v tincd >/dev/null || { log "  tincd missing"; return 1; }
    local d=$WORK/tinc
    tinc_node a pba "$UL_A" "$OV_A" || return 1
    tinc_node b pbb "$UL_B" "$OV_B" || return 1
    cp "$d/a/hosts/pba" "$d/b/hosts/pba"
    cp "$d/b/hosts/pbb" "$d/a/hosts/pbb"
    # -D: no detach (log to stderr); -d1: log connections
    spawn a tinc-a "$d/a.log" tincd -c "$d/a" -D -d1 --pidfile="$d/a/tinc.pid"
    TINC_PID_A=$SPAWNED_PID
    spawn b tinc-b "$d/b.log" tincd -c "$d/b" -D -d1 --pidfile="$d/b/tinc.pid"
    TINC_PID_B=$SPAWNED_PID
    TARGET=$OV_B
}
# tinc 1.0 sends packets larger than the currently known minimum path MTU
# over its TCP meta connection until PMTU probing has converged, which
# would distort the first seconds of the measurement. Poll the node dump
# (SIGUSR2 -> " <node> at ... pmtu P (min M max X)" in the log) on both
# sides until min == max for the peer (bounded: 60 s).
tinc_pmtu_fixed() { # pid log peer
    our_child "$1" && kill -USR2 "$1" && sleep 0.2 &&
        grep -E "^ *$3 at .* pmtu [0-9]+ \(min [0-9]+ max [0-9]+\)" "$2" | tail -1 |
        sed -E 's/.*\(min ([0-9]+) max ([0-9]+)\).*/\1 \2/' | awk '$1 == $2 && $1 > 0 {ok=1} END {exit !ok}'
}
ready_tinc() {
    local d=$WORK/tinc
    wait_for "tinc PMTU a->b" 120 0.3 tinc_pmtu_fixed "$TINC_PID_A" "$d/a.log" pbb || return 1
    wait_for "tinc PMTU b->a" 120 0.3 tinc_pmtu_fixed "$TINC_PID_B" "$d/b.log" pba || return 1
    log "  tinc PMTU: $(grep -E '^ *pbb at ' "$d/a.log" | tail -1 | sed -E 's/.*(pmtu.*)/\1/')"
}

# --- OpenVPN 2.6 (C, p2p TLS, AES-256-GCM, UDP, tun) -------------------------
case_openvpn() {
    command -v openvpn >/dev/null && command -v openssl >/dev/null || { log "  openvpn/openssl missing"; return 1; }
    local d=$WORK/openvpn s fa fb proto
    for s in a b; do
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
            -subj "/CN=pb-$s" -keyout "$d/$s.key" -out "$d/$s.crt" >/dev/null 2>&1 || return 1
    done
    fa=$(openssl x509 -in "$d/a.crt" -noout -fingerprint -sha256 | cut -d= -f2)
    fb=$(openssl x509 -in "$d/b.crt" -noout -fingerprint -sha256 | cut -d= -f2)
    [[ $UNDERLAY == 6 ]] && proto=udp6 || proto=udp4
    # Common options: p2p mode, self-signed certs pinned by --peer-fingerprint
    # (no CA), AEAD data channel AES-256-GCM only, tun MTU = overlay MTU.
    # DCO is disabled explicitly (kernel module absent anyway).
    local common=(--dev-type tun --proto "$proto" --port 1194 --dh none
                  --data-ciphers AES-256-GCM --tun-mtu "$OV_MTU" --disable-dco
                  --verb 3)
    spawn a ovpn-a "$d/a.log" openvpn "${common[@]}" --dev pbovpn-a --tls-server \
        --remote "$UL_B" --ifconfig "$OV_A" "$OV_B" --cert "$d/a.crt" --key "$d/a.key" --peer-fingerprint "$fb"
    spawn b ovpn-b "$d/b.log" openvpn "${common[@]}" --dev pbovpn-b --tls-client \
        --remote "$UL_A" --ifconfig "$OV_B" "$OV_A" --cert "$d/b.crt" --key "$d/b.key" --peer-fingerprint "$fa"
    TARGET=$OV_B
}
ready_openvpn() {
    wait_for "openvpn init" 60 0.5 grep -q "Initialization Sequence Completed" "$WORK/openvpn/a.log" || return 1
    wait_for "openvpn init" 60 0.5 grep -q "Initialization Sequence Completed" "$WORK/openvpn/b.log"
}

# ============================== reporting ==================================
print_versions() {
    {
        echo "kernel: $(uname -r)"
        echo "cpu: $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo), $(nproc) cpus, ${CPU_MHZ} MHz nominal"
        echo "cpu flags: $(grep -m1 -o -w -E 'aes|avx2|avx512f|vaes|vpclmulqdq|sha_ni' /proc/cpuinfo | sort -u | tr '\n' ' ')"
        echo "iperf3: $(iperf3 --version 2>/dev/null | head -1)"
        [[ -x $CYPHONIC_DIR/cyphonicd ]] && echo "cyphonicd: $("$CYPHONIC_DIR/cyphonicd" --version 2>/dev/null | head -1) ($CYPHONIC_DIR, suite $CYPHONIC_SUITE)"
        command -v "$WGGO" >/dev/null && echo "wireguard-go: $("$WGGO" --version 2>/dev/null | head -1)"
        command -v wg >/dev/null && echo "wg: $(wg --version 2>/dev/null)"
        [[ -x $BORINGTUN ]] && echo "boringtun-cli: $("$BORINGTUN" --version 2>/dev/null)"
        command -v nebula >/dev/null && echo "nebula: $(nebula -version 2>/dev/null)"
        command -v tincd >/dev/null && echo "tincd: $(tincd --version 2>/dev/null | head -1)"
        command -v openvpn >/dev/null && echo "openvpn: $(openvpn --version 2>/dev/null | head -1)"
        echo "sysctl: host tcp cc $(sysctl -n net.ipv4.tcp_congestion_control), namespace default tcp cc $(nsx a sysctl -n net.ipv4.tcp_congestion_control 2>/dev/null || echo '?'), tests use $TCP_CC, pin=$PIN, qdisc $(sysctl -n net.core.default_qdisc)," \
             "rmem_default=$(sysctl -n net.core.rmem_default) rmem_max=$(sysctl -n net.core.rmem_max)" \
             "wmem_default=$(sysctl -n net.core.wmem_default) wmem_max=$(sysctl -n net.core.wmem_max)" \
             "tcp_rmem='$(sysctl -n net.ipv4.tcp_rmem)' tcp_wmem='$(sysctl -n net.ipv4.tcp_wmem)'"
        echo "settings: runs=$RUNS time=${DURATION}s udp_rates='$UDP_RATES' udp_len=$UDP_LEN tcp_par=$TCP_PAR overlay_mtu=$OV_MTU underlay=IPv$UNDERLAY"
    } | tee "$OUT_DIR/versions.txt"
}

# summary : medians over runs: throughput/latency, CPU, CPU split, drops
summary() {
    local rates="$UDP_RATES"
    echo
    grep -E '^(cpu|settings|sysctl):' "$OUT_DIR/versions.txt"
    awk -F'\t' -v cases="$CASES" -v rates="$rates" -v par="$TCP_PAR" '
    function median(key,   n, i, j, t, v) {
        n = cnt[key]; if (n == 0) return "-"
        for (i = 1; i <= n; i++) v[i] = vals[key, i]
        # numeric values only; non-numeric (errors) -> show first
        for (i = 1; i <= n; i++) if (v[i] !~ /^-?[0-9.]+$/) return v[i]
        for (i = 2; i <= n; i++) { t = v[i]; j = i - 1; while (j > 0 && v[j] + 0 > t + 0) { v[j+1] = v[j]; j-- } v[j+1] = t }
        if (n % 2) return v[(n+1)/2]
        return sprintf("%.4g", (v[n/2] + v[n/2+1]) / 2)
    }
    { key = $2 SUBSEP $3; cnt[key]++; vals[key, cnt[key]] = $4 }
    function g(c, m,   r) { r = median(c SUBSEP m); return (r == "-1" || r == "-1.00") ? "-" : r }
    END {
        nc = split(cases, C, " "); nr = split(rates, R, " ")
        print ""
        print "== Throughput / latency (median over runs; Mbit/s = receiver goodput) =="
        hdr = sprintf("%-10s %4s %10s %7s %5s | %8s %5s | %8s %5s", "case", "mtu", "status", "ping_ms", "loss", "tcp1", "retr", "tcp" par, "retr")
        for (i = 1; i <= nr; i++) hdr = hdr sprintf(" | %9s %6s %6s", "udp" R[i], "loss%", "jit_ms")
        print hdr
        for (k = 1; k <= nc; k++) {
            c = C[k]
            line = sprintf("%-10s %4s %10s %7s %5s | %8s %5s | %8s %5s", c, g(c, "mtu"), g(c, "status"), g(c, "ping.avg"), g(c, "ping.loss"),
                           g(c, "tcp1.mbps"), g(c, "tcp1.retr"), g(c, "tcp" par ".mbps"), g(c, "tcp" par ".retr"))
            for (i = 1; i <= nr; i++) { t = "udp" R[i]; line = line sprintf(" | %9s %6s %6s", g(c, t ".mbps"), g(c, t ".loss"), g(c, t ".jitter")) }
            print line
        }
        print ""
        print "== CPU (median; daemon %: of one core, a=sender side, b=receiver side; busy/sirq: % of all cores; cyc/B: daemon a+b cycles per delivered byte) =="
        hdr = sprintf("%-10s", "case")
        nt = 2; T[1] = "tcp1"; T[2] = "tcp" par
        for (i = 1; i <= nr; i++) T[++nt] = "udp" R[i]
        for (i = 1; i <= nt; i++) hdr = hdr sprintf(" | %-8s %4s %4s %4s %4s %5s", T[i], "a%", "b%", "busy", "sirq", "cyc/B")
        print hdr
        for (k = 1; k <= nc; k++) {
            c = C[k]; line = sprintf("%-10s", c)
            for (i = 1; i <= nt; i++) line = line sprintf(" | %-8s %4s %4s %4s %4s %5s", "", g(c, T[i] ".cpu_a"), g(c, T[i] ".cpu_b"), g(c, T[i] ".busy"), g(c, T[i] ".sirq"), g(c, T[i] ".cpb"))
            print line
        }
        print ""
        print "== Daemon CPU split (median; % of one core: total = user + sys; sys = kernel time in the daemon, incl. stack work done in its syscalls) =="
        hdr = sprintf("%-10s", "case")
        for (i = 1; i <= nt; i++) hdr = hdr sprintf(" | %-8s %9s %9s", T[i], "a tot/sys", "b tot/sys")
        print hdr
        for (k = 1; k <= nc; k++) {
            c = C[k]; line = sprintf("%-10s", c)
            for (i = 1; i <= nt; i++) line = line sprintf(" | %-8s %9s %9s", "", g(c, T[i] ".cpu_a") "/" g(c, T[i] ".sys_a"), g(c, T[i] ".cpu_b") "/" g(c, T[i] ".sys_b"))
            print line
        }
        print ""
        print "== Daemon memory: peak RSS (VmHWM) after the load, MiB, side a / side b (median) =="
        for (k = 1; k <= nc; k++) { c = C[k]; printf "%-10s %8s / %-8s\n", c, g(c, "rss_a_mib"), g(c, "rss_b_mib") }
        print ""
        print "== Drops during each test (median). rcv_a/rcv_b: UDP socket receive-buffer drops in namespace a/b (daemon + iperf3 sockets);"
        print "   tun_a: tx_dropped of side a tunnel device (daemon a not reading its TUN fast enough); bklog: netdev backlog drops (global) =="
        hdr = sprintf("%-10s", "case")
        for (i = 1; i <= nt; i++) hdr = hdr sprintf(" | %-8s %7s %7s %7s %6s", T[i], "rcv_a", "rcv_b", "tun_a", "bklog")
        print hdr
        for (k = 1; k <= nc; k++) {
            c = C[k]; line = sprintf("%-10s", c)
            for (i = 1; i <= nt; i++) line = line sprintf(" | %-8s %7s %7s %7s %6s", "", g(c, T[i] ".udpdrop_a"), g(c, T[i] ".udpdrop_b"), g(c, T[i] ".devdrop_a"), g(c, T[i] ".backlog"))
            print line
        }
    }' "$RESULTS"
}

# ================================ main =====================================
main() {
    [[ $EUID == 0 ]] || die "must run as root"
    local t
    for t in ip iperf3 ping jq awk timeout ss; do command -v "$t" >/dev/null || die "missing tool: $t"; done
    mkdir -p "$OUT_DIR" || die "cannot create $OUT_DIR"
    RESULTS=$OUT_DIR/results.tsv
    : >"$RESULTS"
    WORK=$(mktemp -d -t peerbench.work.XXXXXX) || die "mktemp failed"
    trap cleanup EXIT
    trap 'log "interrupted"; exit 130' INT TERM
    if [[ -n $RMEM_DEFAULT ]]; then
        SAVED_RMEM=$(sysctl -n net.core.rmem_default) SAVED_WMEM=$(sysctl -n net.core.wmem_default)
        sysctl -qw net.core.rmem_default="$RMEM_DEFAULT" net.core.wmem_default="$RMEM_DEFAULT" \
            || die "cannot set rmem_default"
    fi
    setup_netns
    print_versions
    local c
    for ((RUN_NO = 1; RUN_NO <= RUNS; RUN_NO++)); do
        for c in $CASES; do
            rm -rf "${WORK:?}/$c"
            run_case "$c"
        done
    done
    summary | tee "$OUT_DIR/summary.txt"
    log "results: $OUT_DIR (results.tsv, summary.txt, per-test iperf3 JSON, daemon logs)"
}

main "$@"
