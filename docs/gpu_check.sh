#!/usr/bin/env bash
# The GPU check behind the README numbers: fastllama against the HF forward on CUDA, every stage on the GPU,
# then native vs TRL throughput.
# Run from the repo root with trl/datasets wheels in .whl/ (the GPU image lacks them); results in $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
exec > >(tee -a "$OUT/gpu.log") 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
pipq() { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$@"; }
pipq /tmp/site .whl/datasets-* .whl/dill-* .whl/multiprocess-* .whl/xxhash-* .whl/trl-* .whl/pytest-* .whl/pluggy-* .whl/iniconfig-* || exit 1
pipq /tmp/site_tf .whl/transformers-* || exit 1
export PYTHONPATH=/tmp/site:$PWD
python3 -c "import torch, transformers, accelerate, datasets, pyarrow; print('torch', torch.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__, 'datasets', datasets.__version__, 'pyarrow', pyarrow.__version__)"
python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/test_fastllama.py  # the lean forward on CUDA, incl. bf16
T=/tmp/gpu_tiny; S=$(date +%s)
python3 -m pretrain --config configs/tiny/pretrain.yaml --run.run_dir $T/base \
 && python3 -m posttrain --config configs/tiny/posttrain_process.yaml --base $T/base --run.run_dir $T/process \
 && python3 -m eval --config configs/tiny/eval.yaml --base $T/base --checkpoints.process $T/process --out_dir $T/eval \
 && echo "TINY PIPELINE OK on the machine's transformers in $(( $(date +%s) - S )) s"
grep -h '"done/' $T/process/metrics.jsonl; cp $T/eval/eval.json "$OUT/tiny_eval.json" 2>/dev/null
export PYTHONPATH=/tmp/site_tf:/tmp/site:$PWD  # TRL 1.16 with transformers 5.24, for both backends alike
S=$(date +%s)
timeout 250 python3 -m posttrain.bench --config configs/gpu/bench.yaml --out_dir /tmp/bench --batch_sizes "[1024, 4096, 32768]"
echo "bench took $(( $(date +%s) - S )) s"; cp /tmp/bench/bench.json "$OUT/" 2>/dev/null
for f in /tmp/bench/*/metrics.jsonl; do echo "$f"; grep -h '"done/' "$f"; done
