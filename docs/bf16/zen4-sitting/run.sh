#!/usr/bin/env bash
# One sitting: peaks, GEMM fp32/bf16 beside PyTorch, attention, training steps beside PyTorch autocast.
set -u
cd /work/main
OUT=/work/meas/out; mkdir -p $OUT
PY=~/.cache/peers/bin/python
stat() { head -1 /proc/stat; }
{ date; lscpu | grep -E "Model name|family|^Model:"; uptime; } > $OUT/00_machine.txt
gcc -O3 -march=native benches/peers/peak_fma.c -o /tmp/peak_fma && gcc -O3 -march=native benches/peers/peak_bf16.c -o /tmp/peak_bf16
{ /tmp/peak_fma; /tmp/peak_bf16; } > $OUT/01_peaks.txt 2>&1
cargo bench --bench gemm -- "gemm " > $OUT/02_gemm_lanes.txt 2>&1
THREADS=1 $PY benches/peers/peers_gemm.py > $OUT/03_gemm_peers.txt 2>&1

cargo bench --bench attention -- "attention_fwd_bwd/flash_.*/1t" > $OUT/05_attention.txt 2>&1
./target/release/runner parallelism --precision bf16 --seq-lens 64,256,1024 --b1-seq-lens 1024 --threads 1,2 --steps 3 --rounds 1 --out $OUT/par_bf16 > $OUT/06_par_bf16.txt 2>&1
AMP=1 THREADS=1 $PY benches/peers/peers_train.py > $OUT/07_peers_train_amp_1.txt 2>&1
AMP=1 THREADS=2 $PY benches/peers/peers_train.py > $OUT/07_peers_train_amp_2.txt 2>&1
./target/release/runner parallelism --precision fp32 --seq-lens 64,256,1024 --b1-seq-lens 1024 --threads 1,2 --steps 3 --rounds 1 --out $OUT/par_fp32 > $OUT/08_par_fp32.txt 2>&1

cargo bench --bench train_step -- "gpt2_124m/B4_T64/.*/1t" > $OUT/09_gpt2.txt 2>&1
AMP=1 THREADS=1 $PY benches/peers/peers_gpt2_124m.py > $OUT/10_gpt2_peer_amp.txt 2>&1
{ /tmp/peak_fma; /tmp/peak_bf16; date; uptime; } > $OUT/11_peaks_end.txt 2>&1
echo done > $OUT/DONE
