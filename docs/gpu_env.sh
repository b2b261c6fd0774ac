# Sourced by the GPU check scripts: the GPU image lacks trl and datasets, and TRL 1.16 wants a newer transformers
# than the image's, so they come as wheels from .whl/ (docs/engine.md). Logs go to $OUT/$1.
set -uo pipefail
: "${OUT:?set OUT to the folder that receives the results}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
exec > >(tee -a "$OUT/$1") 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
pipq() { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$@"; }
pipq /tmp/site .whl/datasets-* .whl/dill-* .whl/multiprocess-* .whl/trl-* || exit 1
pipq /tmp/site_tf .whl/transformers-* || exit 1
export PYTHONPATH=/tmp/site:$PWD
python3 -c "import torch, transformers, accelerate, datasets, pyarrow, pytest; print('torch', torch.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__, 'datasets', datasets.__version__, 'pyarrow', pyarrow.__version__, 'pytest', pytest.__version__)"
