#!/usr/bin/env bash
# Load test of kms-node with oha (a load generator we did not write):
# enc_keys on KME_A and dec_keys on KME_B at the same time, over HTTPS with
# client certificates and keep-alive, and GET status alone as the reference
# (TLS + HTTP + handler without key work) measured in the same run.
#
#   cargo build --release -p qkd-examples --bin kms-node
#   cargo install oha --locked          # oha 1.16 here
#   examples/kms-node/bench.sh [SECONDS] [CONNECTIONS] [POOL]
#
# dec_keys needs a key ID that node A handed out and node B has not served
# yet for every request, but oha can only repeat one URL or pick URLs at
# random from a file (--urls-from-file). So POOL key IDs are taken first
# (enc_keys, 1000 per request) and written as dec_keys URLs; oha picks them
# at random with replacement, so a few requests hit an ID served already
# and get 400: only the 200 answers count as pairs. Node B's dec_keys wait
# is set to 1 ms for the run: every pool ID's notice arrived before it, so
# the wait only delays those repeated IDs (with the example's 2 s, each one
# held a connection for 2 s and the run measured the waits).
set -euo pipefail
secs="${1:-10}"
conns="${2:-16}"
pool="${3:-300000}"
root="$(cd "$(dirname "$0")/../.." && pwd)"
bin="${KMS_NODE:-$root/target/release/kms-node}"
oha="${OHA:-oha}"
dir="$(mktemp -d)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

"$bin" certs --out "$dir/certs" --kme KME_A --kme KME_B --sae SAE_A --sae SAE_B >/dev/null
# The simulated block source: the benchmark measures the API, and the
# simulated source keeps the stores full at any rate.
sed -e 's/127.0.0.1:8443/127.0.0.1:18443/; s/127.0.0.1:9441/127.0.0.1:19441/; s/127.0.0.1:9442/127.0.0.1:19442/; s/^kind = "pipeline"/kind = "simulated"/' \
    "$root/examples/kms-node/node-a.toml" > "$dir/node-a.toml"
sed -e 's/127.0.0.1:8444/127.0.0.1:18444/; s/127.0.0.1:9441/127.0.0.1:19441/; s/127.0.0.1:9442/127.0.0.1:19442/; s/^dec_wait_ms = .*/dec_wait_ms = 1/; s/^kind = "pipeline"/kind = "simulated"/' \
    "$root/examples/kms-node/node-b.toml" > "$dir/node-b.toml"
"$bin" run --config "$dir/node-a.toml" > "$dir/a.log" 2>&1 & pids+=($!)
"$bin" run --config "$dir/node-b.toml" > "$dir/b.log" 2>&1 & pids+=($!)

c="$dir/certs"
tls_a=(--cacert "$c/ca.pem" --cert "$c/SAE_A.pem" --key "$c/SAE_A.key")
tls_b=(--cacert "$c/ca.pem" --cert "$c/SAE_B.pem" --key "$c/SAE_B.key")
a="https://127.0.0.1:18443/api/v1/keys"
b="https://127.0.0.1:18444/api/v1/keys"
for i in $(seq 200); do
    if curl -sf "${tls_a[@]}" "$a/SAE_B/status" 2>/dev/null | grep -q '"stored_key_count":[1-9]'; then break; fi
    sleep 0.05
done

# The pool of key IDs for dec_keys.
for i in $(seq $(( (pool + 999) / 1000 ))); do
    curl -sf "${tls_a[@]}" -X POST -H 'Content-Type: application/json' \
        -d '{"number": 1000, "size": 256}' "$a/SAE_B/enc_keys"
    echo
done | python3 -c '
import json, sys
for line in sys.stdin:
    if line.strip():
        for k in json.loads(line)["keys"]:
            print("'"$b"'/SAE_A/dec_keys?key_ID=" + k["key_ID"])
' > "$dir/dec-urls"
echo "pool: $(wc -l < "$dir/dec-urls") key IDs taken at KME_A for dec_keys at KME_B"

echo "== reference: GET status at KME_A alone (${secs} s, ${conns} connections)"
"$oha" --no-tui -z "${secs}s" -c "$conns" "${tls_a[@]}" "$a/SAE_B/status" | tee "$dir/ref.txt"
echo "== pairs: GET enc_keys at KME_A and GET dec_keys at KME_B together (${secs} s, ${conns} connections each)"
"$oha" --no-tui -z "${secs}s" -c "$conns" "${tls_a[@]}" "$a/SAE_B/enc_keys" > "$dir/enc.txt" &
enc=$!
"$oha" --no-tui -z "${secs}s" -c "$conns" "${tls_b[@]}" --urls-from-file "$dir/dec-urls" > "$dir/dec.txt"
wait "$enc"
echo "-- enc_keys"; cat "$dir/enc.txt"
echo "-- dec_keys"; cat "$dir/dec.txt"
