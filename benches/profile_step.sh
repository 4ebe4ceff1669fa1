#!/usr/bin/env bash
# Where a training step spends its time: GEMM, attention, optimizer, and the rest (LayerNorm,
# GELU, bias, residual, embedding, cross-entropy, zeroing gradients), as shares of the step.
#
#   benches/profile_step.sh 'gpt_small/B16_T256/1t'      # any filter of `cargo bench --bench train_step`
#
# Builds the train_step bench with frame pointers (into target/profile-fp, so the normal build
# is untouched), samples it with `perf record -g` after a delay that skips model creation, and
# sums perf's inclusive ("children") time of each kernel entry point. Single-threaded filters
# (`.../1t`) give exact shares; with 2 threads stolen work loses its caller and lands in "rest".
# Needs Linux `perf` with kernel.perf_event_paranoid ≤ 2. Leaves out: per-call GFLOP/s.
set -euo pipefail
filter=${1:?usage: benches/profile_step.sh BENCH_FILTER [SECONDS]}
seconds=${2:-12}
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}/profile-fp
RUSTFLAGS="-C target-cpu=native -C force-frame-pointers=yes" \
    cargo build --release -q -p benches --bench train_step
bin=$(ls -t "$CARGO_TARGET_DIR"/release/deps/train_step-* | grep -v '\.d$' | head -1)
data=$(mktemp /tmp/profile_step.XXXXXX)
trap 'rm -f "$data"' EXIT
# Start sampling after the model is built (the gpt2 preset takes seconds to initialize).
perf record -q -D 6000 -F 999 -g -o "$data" "$bin" --bench --profile-time "$seconds" "$filter" >/dev/null 2>&1
perf report -i "$data" --children --sort symbol -g none 2>/dev/null | awk '
    /%/ {
        incl = $1; sub("%", "", incl)
        sym = $0; sub(/^[^]]*\] /, "", sym); sub(/ +-? +-? *$/, "", sym)
        if (sym ~ /^criterion::bencher::Bencher<M>::iter$/) step = incl
        else if (sym == "kernels::gemm::sgemm") gemm = incl
        else if (sym == "kernels::attention::attention_forward") attf = incl
        else if (sym == "kernels::attention::attention_backward") attb = incl
        else if (sym ~ /^kernels::optim::adamw_step$/) opt = incl
    }
    END {
        if (step == 0) { print "no samples in the step: is the filter right?"; exit 1 }
        rest = step - gemm - attf - attb - opt
        printf "%-44s %6s\n", "share of the training step", "%"
        printf "%-44s %6.1f\n", "GEMM (kernels::sgemm)", 100 * gemm / step
        printf "%-44s %6.1f\n", "attention forward", 100 * attf / step
        printf "%-44s %6.1f\n", "attention backward", 100 * attb / step
        printf "%-44s %6.1f\n", "AdamW (kernels::optim::adamw_step)", 100 * opt / step
        printf "%-44s %6.1f\n", "pointwise, copies, zero_grad (the rest)", 100 * rest / step
    }'
