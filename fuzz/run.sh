#!/usr/bin/env bash
# fuzz/run.sh [TARGET...] - a bounded cargo-fuzz run of every target (what scripts/test does).
#
#   decode     every input decoder (DeviceThreatReport, ConnectorHeartbeat, ConnectorConfig,
#              ThreatPolicy, DeviceEnrollment, AppInventory, DeviceStateRecord; Confluent,
#              single-object, JSON, bare datum, schema-registry resolution)
#   config     Config::from_toml on arbitrary UTF-8
#   catalogue  Catalogue::parse on arbitrary UTF-8
#   engine     decoded records applied to the rule engine, timers, restore of changelog records
#
# Environment:
#   SKIP_FUZZ=1        skip (prints why)
#   FUZZ_SECONDS       per target, default 20 (libFuzzer -max_total_time)
#   FUZZ_TARGET_DIR    build dir, default ${XDG_CACHE_HOME:-~/.cache}/mtdgate/fuzz-target: kept
#                      outside the work tree so a fresh clone on the same machine reuses it
#
# Installs what it needs, idempotently: the nightly toolchain (if rustup can) and cargo-fuzz
# (skipped when `cargo fuzz --version` works). Each target starts from fuzz/seeds/TARGET
# (written by fuzz/seeds.py) and grows fuzz/corpus/TARGET (not in git). A crash fails the run;
# libFuzzer leaves the input in fuzz/artifacts/TARGET/ and the command to reproduce it is
# printed.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "fuzz: $*"; }

if [ "${SKIP_FUZZ:-}" = 1 ]; then
  say "skipped (SKIP_FUZZ=1)"
  exit 0
fi

SECONDS_PER_TARGET=${FUZZ_SECONDS:-20}
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/mtdgate
TARGET_DIR=${FUZZ_TARGET_DIR:-$CACHE/fuzz-target}
ALL_TARGETS="decode config catalogue engine"
TARGETS=${*:-$ALL_TARGETS}
t0=$SECONDS

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  say "installing the nightly toolchain (cargo-fuzz needs -Zsanitizer)"
  if ! rustup toolchain install nightly --profile minimal; then
    say "skipped: no nightly toolchain and rustup could not install one"
    exit 0
  fi
fi
if cargo fuzz --version >/dev/null 2>&1; then
  say "$(cargo fuzz --version) already installed"
else
  say "installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

say "building targets (nightly, ASan, debug assertions) in $TARGET_DIR"
cargo +nightly fuzz build --target-dir "$TARGET_DIR"
say "built after $((SECONDS - t0)) s"
# The binaries are run directly: `cargo fuzz run` would rebuild whenever the sources change
# meanwhile, and the time per target would no longer be bounded.
HOST=$(rustc +nightly -vV | sed -n 's/^host: //p')
BIN_DIR=$TARGET_DIR/$HOST/release

for t in $TARGETS; do
  corpus=fuzz/corpus/$t
  mkdir -p "$corpus" "fuzz/artifacts/$t"
  log=$(mktemp)
  say "$t: ${SECONDS_PER_TARGET} s"
  if ! ASAN_OPTIONS=${ASAN_OPTIONS:-detect_odr_violation=0} "$BIN_DIR/$t" \
      -artifact_prefix="fuzz/artifacts/$t/" -max_total_time="$SECONDS_PER_TARGET" \
      -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 -print_funcs=0 \
      "$corpus" "fuzz/seeds/$t" >"$log" 2>&1; then
    grep -a -E -m 40 -A 30 "panicked|ERROR: |SUMMARY" "$log" >&2 || tail -n 60 "$log" >&2
    artifact=$(grep -a -o "fuzz/artifacts/$t/[^ ]*" "$log" | tail -n 1 || true)
    say "$t FAILED; input: ${artifact:-see above}"
    [ -n "$artifact" ] && say "reproduce: cargo +nightly fuzz run $t $artifact"
    rm -f "$log"
    exit 1
  fi
  runs=$(grep -a -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
  cov=$(grep -a -E '#[0-9]+[[:space:]]+DONE' "$log" | grep -o 'cov: [0-9]*' | tail -n 1 || true)
  say "$t: ok, $runs runs, ${cov:-cov ?}, corpus $(ls "$corpus" | wc -l) inputs"
  rm -f "$log"
done
say "done in $((SECONDS - t0)) s"
