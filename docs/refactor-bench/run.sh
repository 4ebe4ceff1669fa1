#!/usr/bin/env bash
# Issue 14's projection again (with the per-kernel misses), then issue 16's before/after benches, quiet.
set -u
cd /work/main
O=/work/meas16/out; rm -rf $O; mkdir -p $O
cargo build --release -p runner > $O/00_build.txt 2>&1
cargo bench -p benches --no-run > $O/00_bench_build.txt 2>&1
{ date; uptime; /tmp/peak_fma; /tmp/peak_bf16; } > $O/01_start.txt 2>&1
rm -rf docs/parallelism/projection
./target/release/runner parallelism --seq-lens --b1-seq-lens 256,1024 --shapes 16x256,16x1024 --threads 1,2 --steps 3 --project 1,2,4,8,16,32,64,128,256 --out docs/parallelism/projection > $O/02_projection.txt 2>&1
bin() { ls -t $1/target/release/deps/$2-* | grep -v '\.d$' | head -1; }
C="--warm-up-time 1 --measurement-time 3 --noplot"
for round in 1 2; do
  for side in before after; do
    if [ $side = before ]; then D=/work/wt14; else D=/work/main; fi
    (cd $D/benches && $(bin $D train_step) --bench $C 'train_step/(gpt|lstm)_small/B16_T256/(fp32|bf16)/1t') > $O/10_train_${side}_$round.txt 2>&1
    if [ $round = 1 ]; then
      (cd $D/benches && $(bin $D gemm) --bench $C '^sgemm [0-9].*/lanes$') > $O/11_gemm_${side}.txt 2>&1
      (cd $D/benches && $(bin $D attention) --bench $C 'attention_fwd_bwd/flash_.*/1t/1024') > $O/12_attn_${side}.txt 2>&1
      (cd $D/benches && $(bin $D recurrence) --bench $C 'recurrence/lstm_H360_T256_1t/B(1|16)/') > $O/13_rec_${side}.txt 2>&1
    fi
  done
done
{ date; uptime; /tmp/peak_fma; /tmp/peak_bf16; } > $O/09_end.txt 2>&1
echo done > $O/DONE
