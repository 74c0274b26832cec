#!/usr/bin/env bash
# Runs the README's first command, the default demo (12 members), RUNS times in a row and
# requires every run to pass. A benchmark-style check, not part of scripts/test.sh (CI runs the
# demo once); its figures go into docs/BENCHMARKS.md.
#
#   bash scripts/demo-soak.sh [RUNS] [extra demo flags...]     (RUNS defaults to 20)
#
# Each run gets its own --subnet and --dir; a failed run's directory (authority, member logs,
# audit logs) is kept under $SOAK_DIR (default: a temporary directory) and named at the end.
set -uo pipefail
cd "$(dirname "$0")/.."

runs=${1:-20}
shift || true
cargo build --release -p genesisctl --locked >&2 || exit 2
bin=target/release/genesisctl
soak=${SOAK_DIR:-$(mktemp -d -t genesis-demo-soak.XXXXXX)}
mkdir -p "$soak" || exit 2
passed=0
failed=0
failures=()
for i in $(seq 1 "$runs"); do
  dir="$soak/run-$i"
  # 127.60.x.0/24 .. 127.99.x.0/24: a fresh subnet per run, so a slow exit never collides.
  subnet="127.$((60 + (i - 1) / 250 % 40)).$(((i - 1) % 250 + 1))"
  start=$(date +%s%N)
  if "$bin" demo --json --dir "$dir" --subnet "$subnet" "$@" >"$soak/run-$i.json" 2>"$soak/run-$i.err"; then
    passed=$((passed + 1))
    rm -rf "$dir"
    result=ok
  else
    failed=$((failed + 1))
    why=$(python3 -c 'import json, sys
d = json.load(open(sys.argv[1]))
print(next((s["name"] + ": " + s["detail"] for s in d["stages"] if not s["ok"]), "no failed stage"))' "$soak/run-$i.json" 2>/dev/null || tail -n 1 "$soak/run-$i.err")
    failures+=("run $i: $why (files in $dir)")
    result=FAILED
  fi
  printf 'run %3d  %-6s %6d ms\n' "$i" "$result" "$((($(date +%s%N) - start) / 1000000))" >&2
done
for f in "${failures[@]}"; do echo "  $f" >&2; done
echo "demo soak: $runs runs of '$bin demo $*' in $soak"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
