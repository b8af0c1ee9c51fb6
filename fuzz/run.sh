#!/usr/bin/env bash
# Builds the AFL harnesses (fuzz/afl/) and fuzzes each target for a bounded time, one at
# a time, then prints per target: executions, exec/s, corpus size, crashes and hangs.
#
#   fuzz/run.sh                      # every target, SECONDS_PER_TARGET (default 900) each
#   SECONDS_PER_TARGET=60 fuzz/run.sh scrub check_path
#
# Needs cargo-afl (`cargo install cargo-afl`; AFL++ itself is built from the crate's
# sources on first use, or by `cargo afl config --build`). Findings and the generated
# corpus go to fuzz/afl/out/<target>/ (ignored by git); a second run resumes from there
# (remove the folder for a fresh start). Exits 1 when any target found a crash or hang.
# Not part of CI. No network: every target runs in-process on bytes.
set -euo pipefail

fuzz=$(cd "$(dirname "$0")" && pwd)
seconds=${SECONDS_PER_TARGET:-900}
out=${AFL_OUT:-$fuzz/afl/out}
all=(config_parse check_path rewrite_query scrub)
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=("${all[@]}")
for t in "${targets[@]}"; do
    [[ " ${all[*]} " == *" $t "* ]] || { echo "unknown target $t (known: ${all[*]})" >&2; exit 2; }
done

# Shared machines: no CPU governor or core_pattern changes, no core pinning, plain output.
export AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_AFFINITY=1 AFL_NO_UI=1
export AFL_AUTORESUME=1

echo "== building the AFL harnesses"
(cd "$fuzz/afl" && cargo afl build --release --bins)

stat() { awk -F' *: *' -v k="$1" '$1 == k { print $2 }' "$2"; }

mkdir -p "$out"
summary=()
found=0
for t in "${targets[@]}"; do
    dict=()
    [ -f "$fuzz/dicts/$t.dict" ] && dict=(-x "$fuzz/dicts/$t.dict")
    echo "== $t: ${seconds}s, findings in $out/$t/default/"
    started=$(date +%s)
    # config_parse reads the files its configs name (fixtures/) from the current directory.
    (cd "$fuzz/targets" && cargo afl fuzz -V "$seconds" -t 1000 "${dict[@]}" \
        -i "$fuzz/seeds/$t" -o "$out/$t" -- "$fuzz/afl/target/release/$t") > "$out/$t.log" 2>&1 || {
        echo "afl-fuzz failed for $t; the end of $out/$t.log:" >&2
        tail -n 30 "$out/$t.log" >&2
        exit 2
    }
    stats=$out/$t/default/fuzzer_stats
    crashes=$(stat saved_crashes "$stats")
    hangs=$(stat saved_hangs "$stats")
    line=$(printf '%-14s %6ss %12s %10s %8s %8s %6s' "$t" "$(( $(date +%s) - started ))" \
        "$(stat execs_done "$stats")" "$(stat execs_per_sec "$stats")" "$(stat corpus_count "$stats")" \
        "$crashes" "$hangs")
    echo "$line"
    summary+=("$line")
    if [ "$crashes" != 0 ] || [ "$hangs" != 0 ]; then
        found=1
        ls "$out/$t/default/crashes" "$out/$t/default/hangs" 2>/dev/null | grep -v README || true
    fi
done

echo
printf '%-14s %7s %12s %10s %8s %8s %6s\n' target wall executions exec/s corpus crashes hangs
printf '%s\n' "${summary[@]}"
exit "$found"
