#!/usr/bin/env bash
# The GPU check behind the README numbers, one command sized for a 15-minute device lease:
#   1. fastllama against the HF forward on CUDA (incl. bf16 autocast);
#   2. native vs TRL throughput on the default transformer (configs/gpu/bench.yaml);
#   3. the same on the 1M-parameter transformer (configs/gpu/bench_1m.yaml);
#   4. the tiny pipeline (pretrain, process PG, eval) on the machine's own transformers.
# Run from the repo root with trl/datasets/dill/multiprocess/transformers wheels in .whl/ (the GPU image lacks
# trl and datasets; TRL 1.16 wants a newer transformers than the image's; pytest and xxhash come with the image).
# The step limits add up to 510 s, inside one 600 s device command. Each step's results land in $OUT as
# soon as it ends, so a step cut short by its timeout loses only itself.
source docs/gpu_env.sh gpu.log
S=$(date +%s)
timeout 60 python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/test_fastllama.py
echo "fastllama tests took $(( $(date +%s) - S )) s"

bench() {  # config, out folder, time limit (s): TRL 1.16 with transformers 5.24, for both backends alike
  local S; S=$(date +%s)
  PYTHONPATH=/tmp/site_tf:/tmp/site:$PWD timeout "$3" python3 -m experiments.bench --config "$1" --out_dir "$2"
  echo "bench $1 took $(( $(date +%s) - S )) s"
  cp "$2/bench.json" "$OUT/$(basename "$1" .yaml).json" 2>/dev/null
  for f in "$2"/*/metrics.jsonl; do echo "$f"; grep -h '"done/' "$f"; done
}
bench configs/gpu/bench.yaml /tmp/bench 200
bench configs/gpu/bench_1m.yaml /tmp/bench_1m 170

T=/tmp/gpu_tiny; S=$(date +%s)
timeout 80 bash -c "python3 -m pretrain --config configs/tiny/pretrain.yaml --run.run_dir $T/base \
 && python3 -m posttrain --config configs/tiny/posttrain_process.yaml --base $T/base --run.run_dir $T/process \
 && python3 -m eval --config configs/tiny/eval.yaml --base $T/base --checkpoints.process $T/process --out_dir $T/eval" \
 && echo "TINY PIPELINE OK on the machine's transformers in $(( $(date +%s) - S )) s"
grep -h '"done/' $T/process/metrics.jsonl; cp $T/eval/eval.json "$OUT/tiny_eval.json" 2>/dev/null
