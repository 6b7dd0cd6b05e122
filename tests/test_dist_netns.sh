#!/bin/sh
# Issue 18, "two machines": data-parallel training with the two ranks in two
# network namespaces joined by a veth pair, so that Open MPI launches rank 1
# through a remote agent and all traffic (ORTE's out-of-band channel and the
# MPI byte transfer layer) goes over TCP between two addresses, as between two
# hosts. The run must equal one process on the global batch (every loss term,
# every step, within 1e-5 relative) and rank 1 must really have run in the
# second namespace.
#
#   test_dist_netns.sh AMDIM_PACK AMDIM_LOAD AMDIM_TRAIN MPIRUN
#
# Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN), iproute2's `ip` and python3;
# exits 77 (skip) without them. Namespaces amdim-a-PID / amdim-b-PID and the
# temporary directory are removed on every exit (EXIT, INT, TERM).
set -u

me=test_dist_netns
[ $# -eq 4 ] || { echo "usage: $0 AMDIM_PACK AMDIM_LOAD AMDIM_TRAIN MPIRUN" >&2; exit 2; }
# absolute paths: the remote daemon starts rank 1 from its own shell
abspath() {
    case $1 in
        */*) [ -x "$1" ] && printf '%s/%s\n' "$(cd "$(dirname "$1")" && pwd)" "$(basename "$1")" ;;
        *) command -v "$1" ;;
    esac
}
pack=$(abspath "$1") && load=$(abspath "$2") && train=$(abspath "$3") && mpirun=$(abspath "$4") ||
    { echo "$me: FAIL: one of $* is not an executable"; exit 1; }

STEPS=25        # training steps
BATCH=32        # global batch (16 pairs per rank)
TOL=1e-5        # relative tolerance per loss term and step
MPI_LIMIT=90    # seconds for the mpirun job, and
ONE_LIMIT=45    # for the single process: together below CTest's TIMEOUT (180),
                # which kills with SIGKILL, so that the cleanup trap still runs

skip() { echo "$me: SKIP: $*"; exit 77; }
fail() { echo "$me: FAIL: $*"; exit 1; }

ip=$(command -v ip) || skip "iproute2's 'ip' is not installed"
command -v python3 >/dev/null 2>&1 || skip "python3 is not installed (needed to write the data set and compare metrics)"
[ "$(id -u)" -eq 0 ] || skip "not root: creating network namespaces needs CAP_NET_ADMIN and CAP_SYS_ADMIN"

nsa=amdim-a-$$ nsb=amdim-b-$$
va=amva$$ vb=amvb$$                  # at most 11 characters (IFNAMSIZ is 16)
net=10.$((100 + $$ % 100)).$((($$ / 100) % 250 + 1))
ipa=$net.1 ipb=$net.2
tmp=
bgpid=

# Runs a command in the background and waits for it: a TERM or INT to this
# script then interrupts the wait at once (a foreground child would delay the
# trap until it ends) and the cleanup ends the command.
run() { "$@" </dev/null & bgpid=$!; wait $bgpid; rc=$?; bgpid=; return $rc; }

# Kills what still runs in one of our namespaces (an orted or a rank left by a
# failed job), then removes the namespace; its veth end goes with it.
drop_ns() {
    "$ip" netns list 2>/dev/null | awk '{print $1}' | grep -qx "$1" || return 0
    pids=$("$ip" netns pids "$1" 2>/dev/null)
    if [ -n "$pids" ]; then
        echo "$me: cleanup: ending processes left in $1: $(echo $pids)"
        kill -TERM $pids 2>/dev/null
        i=0
        while [ $i -lt 20 ] && [ -n "$("$ip" netns pids "$1" 2>/dev/null)" ]; do
            sleep 0.1; i=$((i + 1))
        done
        pids=$("$ip" netns pids "$1" 2>/dev/null)
        [ -z "$pids" ] || kill -KILL $pids 2>/dev/null
    fi
    "$ip" netns del "$1" 2>/dev/null || echo "$me: cleanup: could not delete namespace $1"
}
cleanup() {
    [ -z "$bgpid" ] || { kill -TERM "$bgpid" 2>/dev/null; sleep 0.2; }
    drop_ns "$nsa"
    drop_ns "$nsb"
    "$ip" link del "$va" 2>/dev/null    # only there when setup failed before the move
    [ -z "$tmp" ] || rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# Names left by an earlier run that was killed outright (SIGKILL skips traps):
# only ours (amdim-[ab]-PID) whose PID is gone.
for ns in $("$ip" netns list 2>/dev/null | awk '{print $1}' | grep -E '^amdim-[ab]-[0-9]+$'); do
    kill -0 "${ns##*-}" 2>/dev/null || { echo "$me: removing stale namespace $ns"; drop_ns "$ns"; }
done

# --- 1. two "machines" ------------------------------------------------------
"$ip" netns add "$nsa" 2>/dev/null || skip "cannot create a network namespace ('ip netns add' failed: no CAP_NET_ADMIN/CAP_SYS_ADMIN?)"
"$ip" netns add "$nsb" 2>/dev/null || skip "cannot create a second network namespace"
"$ip" link add "$va" type veth peer name "$vb" 2>/dev/null || skip "cannot create a veth pair (no veth support?)"
{ "$ip" link set "$va" netns "$nsa" &&
  "$ip" link set "$vb" netns "$nsb" &&
  "$ip" -n "$nsa" addr add "$ipa/24" dev "$va" &&
  "$ip" -n "$nsb" addr add "$ipb/24" dev "$vb" &&
  "$ip" -n "$nsa" link set lo up && "$ip" -n "$nsb" link set lo up &&
  "$ip" -n "$nsa" link set "$va" up && "$ip" -n "$nsb" link set "$vb" up; } 2>/dev/null ||
    skip "cannot configure the veth pair between $nsa and $nsb"
echo "$me: namespaces $nsa ($ipa) and $nsb ($ipb), veth $va/$vb"
# TCP from B to A (the way orted reaches mpirun); the namespaces are new, so
# the port is free. Without this, a dead link would show as a 90 s mpirun hang.
"$ip" netns exec "$nsa" python3 -c '
import socket, sys
s = socket.socket(); s.settimeout(10); s.bind((sys.argv[1], 18018)); s.listen(1)
c, _ = s.accept(); c.sendall(b"ok")' "$ipa" </dev/null & bgpid=$!
"$ip" netns exec "$nsb" python3 -c '
import socket, sys, time
end = time.time() + 5
while True:
    try:
        c = socket.create_connection((sys.argv[1], 18018), timeout=1); break
    except OSError:
        if time.time() > end: raise
        time.sleep(0.05)
c.settimeout(5); sys.exit(c.recv(2) != b"ok")' "$ipa" </dev/null 2>/dev/null ||
    skip "no TCP connection from $nsb to $ipa:18018 over the veth pair"
wait $bgpid; bgpid=

tmp=$(mktemp -d "${TMPDIR:-/tmp}/amdim-netns.XXXXXX") || fail "mktemp"
mkdir -p "$tmp/tmp-a" "$tmp/tmp-b"

# --- 2. a data set: 160 CIFAR-10 records, stripes per class ----------------
python3 - "$tmp/data_batch_1.bin" <<'EOF' || fail "writing the CIFAR-10 records"
import random, sys
r = random.Random(18)
out = bytearray()
for i in range(160):
    c = i % 10
    period = 2 + c
    out.append(c)
    for ch in range(3):
        base = 40 + 20 * ch + 15 * c
        for y in range(32):
            for x in range(32):
                v = ((x + y * (c % 3)) // period) % 2
                out.append(min(255, base + 120 * v + r.randrange(24)))
open(sys.argv[1], "wb").write(out)
EOF
"$pack" -q -j 1 --split train cifar10 "$tmp/data_batch_1.bin" "$tmp/data.lmdb" >"$tmp/pack.log" 2>&1 ||
    { tail -n 20 "$tmp/pack.log"; fail "amdim-pack could not pack the records"; }

# --- 3. the remote agent ----------------------------------------------------
# Open MPI 4.1 starts the daemon of every other host as
#   AGENT [plm_rsh_args] HOST orted --daemonize -mca ess "env" ... -mca orte_hnp_uri "...;tcp://IP:PORT" ...
# the words of a command line for a remote shell (ssh semantics: they are
# joined with spaces and the remote shell parses them, quotes included). The
# agent maps HOST to its namespace and hands that line to sh there. Both
# namespaces share the host name, so each daemon gets its own TMPDIR for its
# session directory.
agent=$tmp/agent.sh
cat >"$agent" <<EOF
#!/bin/sh
echo "agent: \$*" >>"$tmp/agent.log"
while [ \$# -gt 0 ]; do case \$1 in -*) shift ;; *) break ;; esac; done
[ \$# -ge 2 ] || { echo "agent: usage: agent [options] HOST COMMAND..." >&2; exit 255; }
host=\$1; shift
case \$host in
    $ipb) ns=$nsb dir=$tmp/tmp-b ;;
    $ipa) ns=$nsa dir=$tmp/tmp-a ;;
    *) echo "agent: unknown host \$host" >&2; exit 255 ;;
esac
exec "$ip" netns exec "\$ns" env TMPDIR="\$dir" sh -c "\$*"
EOF
chmod +x "$agent"
printf '%s slots=1\n%s slots=1\n' "$ipa" "$ipb" >"$tmp/hostfile"

# --- 4. two ranks, one per namespace, over TCP only -------------------------
flags="--ndf 8 --n-rkhs 32 --n-depth 1 --log-every 1 --threads 1 --steps $STEPS --lr 1e-3 --warmup 0"
rankcmd="\"$ip\" netns identify \$\$ >\"$tmp/ns.\$OMPI_COMM_WORLD_RANK\";
\"$load\" --workers 1 --batch $BATCH --seed 3 --shard auto \"$tmp/data.lmdb\" 2>\"$tmp/load.\$OMPI_COMM_WORLD_RANK.log\" |
\"$train\" --out \"$tmp/run-dist\" $flags --sync-bn"
t0=$(date +%s)
run env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 TMPDIR="$tmp/tmp-a" \
    timeout -k 5 $MPI_LIMIT "$ip" netns exec "$nsa" "$mpirun" \
    --hostfile "$tmp/hostfile" -np 2 --bind-to none \
    --mca plm_rsh_agent "$agent" --mca plm_rsh_args "" --mca plm_rsh_no_tree_spawn 1 \
    --mca pml ob1 --mca btl self,tcp \
    --mca btl_tcp_if_include "$net.0/24" --mca oob_tcp_if_include "$net.0/24" \
    sh -c "$rankcmd" >"$tmp/mpirun.log" 2>&1
rc=$?
t1=$(date +%s)
if [ $rc -ne 0 ]; then
    echo "--- mpirun output (tail) ---"; tail -n 40 "$tmp/mpirun.log"
    echo "--- agent calls ---"; cat "$tmp/agent.log" 2>/dev/null
    for r in 0 1; do
        [ -s "$tmp/load.$r.log" ] && { echo "--- amdim-load rank $r (tail) ---"; tail -n 10 "$tmp/load.$r.log"; }
    done
    [ $rc -eq 124 ] || [ $rc -eq 137 ] && fail "step 4: the two-namespace mpirun job did not finish within ${MPI_LIMIT} s"
    fail "step 4: the two-namespace mpirun job failed (exit $rc)"
fi
echo "$me: two-namespace job: $((t1 - t0)) s"

# rank 0 in A, rank 1 in B, and the daemon really launched through the agent
n0=$(cat "$tmp/ns.0" 2>/dev/null) n1=$(cat "$tmp/ns.1" 2>/dev/null)
echo "$me: rank 0 ran in '$n0', rank 1 in '$n1'"
[ "$n0" = "$nsa" ] && [ "$n1" = "$nsb" ] ||
    { tail -n 20 "$tmp/mpirun.log"; fail "step 4: ranks ran in '$n0' and '$n1', expected $nsa and $nsb"; }
grep -q "^agent: $ipb .*orted" "$tmp/agent.log" 2>/dev/null ||
    fail "step 4: Open MPI did not start the daemon for $ipb through the agent"

# --- 5. one process on the global batch -------------------------------------
run sh -c "\"$load\" --workers 1 --batch $BATCH --seed 3 \"$tmp/data.lmdb\" 2>\"$tmp/load.single.log\" |
    timeout -k 5 $ONE_LIMIT \"$train\" --out \"$tmp/run-single\" $flags" >"$tmp/single.log" 2>&1 ||
    { tail -n 20 "$tmp/single.log"; tail -n 10 "$tmp/load.single.log"; fail "step 5: the single-process run failed"; }

# --- 6. every loss term, every step ------------------------------------------
python3 - "$tmp/run-single/metrics.jsonl" "$tmp/run-dist/metrics.jsonl" $STEPS $TOL <<'EOF' ||
import json, sys
keys = ("loss", "nce_1t5", "nce_1t7", "nce_5t5", "reg", "cls_mlp", "cls_lin")
def read(path):
    rows = {}
    try:
        with open(path) as f:
            for line in f:
                d = json.loads(line)
                if d.get("kind") == "train":
                    rows[d["step"]] = d
    except (OSError, ValueError) as e:
        sys.exit("cannot read %s: %s" % (path, e))
    return rows
one, dist = read(sys.argv[1]), read(sys.argv[2])
steps, tol = int(sys.argv[3]), float(sys.argv[4])
want = list(range(1, steps + 1))
for name, rows in (("single process", one), ("two namespaces", dist)):
    if sorted(rows) != want:
        sys.exit("%s logged steps %s, expected 1..%d" % (name, sorted(rows), steps))
worst = (0.0, None, None, 0.0, 0.0)
bad = 0
for s in want:
    for k in keys:
        a, b = float(one[s][k]), float(dist[s][k])
        if a != a or b != b:
            sys.exit("step %d %s is not a number (%r, %r)" % (s, k, a, b))
        rel = abs(a - b) / max(abs(a), abs(b), 1e-30)
        if rel > worst[0]:
            worst = (rel, s, k, a, b)
        if rel > tol:
            bad += 1
            if bad <= 10:
                print("step %d %s: one process %.17g, two namespaces %.17g, relative %.3g" % (s, k, a, b, rel))
rel, s, k, a, b = worst
print("worst relative difference %.3g over %d steps x %d terms%s" %
      (rel, steps, len(keys), "" if s is None else " (step %d %s: %.17g vs %.17g)" % (s, k, a, b)))
if bad:
    sys.exit("%d values differ by more than %g relative" % (bad, tol))
EOF
    fail "step 6: the two-namespace run differs from one process"
echo "$me: PASS"
