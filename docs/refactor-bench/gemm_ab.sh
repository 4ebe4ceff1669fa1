#!/usr/bin/env bash
set -u
O=/work/meas16/out
bin() { ls -t $1/target/release/deps/$2-* | grep -v '\.d$' | head -1; }
for round in 1 2 3; do
  for side in before after; do
    if [ $side = before ]; then D=/work/wt14; else D=/work/main; fi
    (cd $D/benches && $(bin $D gemm) --bench --noplot '^sgemm (256x256x256|512x512x512|1024x1024x1024|2048x1536x384)/lanes$') > $O/15_gemm_${side}_$round.txt 2>&1
    (cd $D/benches && $(bin $D recurrence) --bench --noplot 'recurrence/lstm_H360_T256_1t/B16/') > $O/16_rec_${side}_$round.txt 2>&1
  done
done
echo done > $O/DONE3
