#!/bin/bash
# The GPU figures of the backends issue (15, item 6) on a device machine that
# has JAX and PyTorch but no TensorFlow: Keras and what it needs travel as
# wheels in .whl/ (`python3 -m pip download --no-deps --only-binary=:all:
# --python-version 3.12 ... -d .whl keras==3.15.1 namex optree num2words`).
# Writes under $OUT: device.txt, backends.log, backends.json, tests_jax.log.
#
#   bash benchmarks/gpu_backends.sh [bench|tests|all]
set -o pipefail
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 KERAS_BACKEND=jax
export XLA_PYTHON_CLIENT_PREALLOCATE=false
what=${1:-all}
{ nvidia-smi -L; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import jax, torch, keras; print('jax', jax.__version__, jax.devices(), '| torch', torch.__version__, torch.cuda.get_device_name(0), '| keras', keras.__version__)"
  nproc; } 2>&1 | tee "$OUT/device.txt"
if [ "$what" != tests ]; then
  timeout 290 python3 benchmarks/backends.py --backends jax torch \
      --precisions float32 mixed_bfloat16 --steps 10 --warmup 3 --repeats 5 \
      --batches 1 8 --torch-generate-batches 1 8 2>&1 | tee "$OUT/backends.log"
  cp benchmarks/results/backends.json "$OUT/" 2>/dev/null
fi
if [ "$what" != bench ]; then
  # The portable suite (what CI runs on JAX), less the modules that import
  # TensorFlow at the top (they are TensorFlow-only and CI runs them there).
  timeout ${TESTS_TIMEOUT:-280} python3 -m pytest -q -p no:cacheprovider -n 8 -rfE \
      -m "not tensorflow_only" \
      --ignore=tests/distribute/test_strategy.py --ignore=tests/export/test_ctranslate2.py \
      --ignore=tests/export/test_export.py --ignore=tests/export/test_spans_export.py \
      --ignore=tests/test_data.py --ignore=tests/text \
      --durations=5 tests 2>&1 | tee "$OUT/tests_jax.log" | tail -25
fi
