#!/usr/bin/env bash
# Backup and restore throughput and peak memory (docs/benchmarks.md): a `flotilla sim` whose
# cluster sim-1 holds N ConfigMaps (default 10000, ~1 KiB each) in one namespace; one backup
# to a directory and one to s3s-fs on loopback, each restored into sim-2 under a new
# namespace. Prints objects/s and the process's peak RSS (GNU time's %M) per step.
#
#   cargo build --release -p flotilla-cli
#   N=10000 QPS=500 backup/bench.sh    # FLOTILLA=target/release/flotilla, FLOTILLA_TEST_S3S=s3s-fs
# QPS is the restore's --qps (default 50, which caps a restore near 50 objects/s).
set -euo pipefail
cd "$(dirname "$0")/.."
N="${N:-10000}"
BIN="$(realpath "${FLOTILLA:-target/release/flotilla}")"
S3S="${FLOTILLA_TEST_S3S:-s3s-fs}"
work="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

"$BIN" sim --clusters 2 --kubeconfig-out "$work/kc" >"$work/sim.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -s "$work/kc" ] && break; sleep 0.1; done
k() { kubectl --kubeconfig "$work/kc" --request-timeout 60s "$@"; }

mkdir -p "$work/repo"
cat >"$work/repo/fleet.yaml" <<YAML
apiVersion: flotilla.dev/v1alpha1
kind: Fleet
metadata: {name: bench}
clusters: [{name: sim-1}, {name: sim-2}]
backups:
  - name: bench
    schedule: "@daily"
    clusters: {names: [sim-1]}
    include: {namespaces: [bench]}
    retain: 1d
    store: file:///unused
YAML

echo '{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bench"}}' | k --context sim-1 create -f - >/dev/null
python3 - "$N" "$work" <<'PY'
import json, sys
n, work = int(sys.argv[1]), sys.argv[2]
step = 2000
for start in range(0, n, step):
    items = [{"apiVersion": "v1", "kind": "ConfigMap",
              "metadata": {"name": f"cm-{i:06d}", "namespace": "bench", "labels": {"app": "bench"}},
              "data": {"payload": "x" * 1000, "index": str(i)}}
             for i in range(start, min(n, start + step))]
    with open(f"{work}/chunk-{start:06d}.json", "w") as f:
        json.dump({"apiVersion": "v1", "kind": "List", "items": items}, f)
PY
t0=$(date +%s.%N)
for f in "$work"/chunk-*.json; do k --context sim-1 create --validate=false -f "$f" >/dev/null; done
echo "created $N ConfigMaps in $(echo "$(date +%s.%N) - $t0" | bc) s"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$work/s3/bench-bucket"
"$S3S" --host 127.0.0.1 --port "$port" --access-key bench --secret-key bench-secret "$work/s3" >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret FLOTILLA_S3_ENDPOINT="http://127.0.0.1:$port"

measure() { # label, then the flotilla arguments
  local label="$1"; shift
  /usr/bin/time -f "%e %M" -o "$work/time" "$BIN" "$@" --repo "$work/repo" >"$work/out" 2>"$work/err" \
    || { cat "$work/err" >&2; exit 1; }
  read -r secs rss <"$work/time"
  printf '%-22s %8.2f s %10.0f objects/s %8d KiB peak RSS\n' "$label" "$secs" "$(echo "$N / $secs" | bc -l)" "$rss"
}
for store in "file://$work/store" "s3://bench-bucket/fleet"; do
  kind=${store%%:*}
  measure "backup to $kind" backup run bench --kubeconfig "$work/kc" --store "$store"
  measure "restore from $kind" restore --backup bench --cluster sim-1 --to sim-2 \
    --namespace-map "bench=bench-$kind" --kubeconfig "$work/kc" --store "$store" --qps "${QPS:-50}" --burst "${QPS:-100}"
  created=$(grep -c ' created$' "$work/out" || true)
  [ "$created" -ge "$N" ] || { echo "restore created $created objects, expected $N" >&2; exit 1; }
done
