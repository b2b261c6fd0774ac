#!/usr/bin/env bash
# The one-GPU pipeline of the README (`make pipeline CONFIGS=configs/gpu`) end to end on the machine's own
# transformers, shortened to fit what is left of a device lease: pretraining 2,000 of its 6,000 steps, each
# post-training arm 1M of its 10M reward queries. Every stage's metrics.jsonl keeps its wall times, from which
# the full pipeline's time follows. The step limits add up to 330 s.
source docs/gpu_env.sh gpu_pipeline.log
R=/tmp/gpu_pipeline
stage() {  # time limit (s), stage, arguments...
  local S; S=$(date +%s)
  timeout "$1" python3 -m "${@:2}" || { echo "$2 FAILED or was cut at $1 s"; return 1; }
  echo "$2 took $(( $(date +%s) - S )) s"
}
stage 150 pretrain --config configs/gpu/pretrain.yaml --run.run_dir $R/base --train.steps 2000 \
 && stage 60 posttrain --config configs/gpu/posttrain_outcome.yaml --base $R/base --run.run_dir $R/outcome \
      --optim.max_queries 1000000 \
 && stage 60 posttrain --config configs/gpu/posttrain_process.yaml --base $R/base --run.run_dir $R/process \
      --optim.max_queries 1000000 \
 && stage 60 eval --config configs/gpu/eval.yaml --base $R/base --checkpoints.outcome $R/outcome \
      --checkpoints.process $R/process --out_dir $R/eval
for f in base outcome process; do cp $R/$f/metrics.jsonl "$OUT/$f.jsonl" 2>/dev/null; done
cp $R/eval/eval.json "$OUT/pipeline_eval.json" 2>/dev/null
