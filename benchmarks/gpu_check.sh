#!/usr/bin/env bash
# One script for a machine with a GPU (< 8 minutes): train the CIFAR-10-size presets briefly
# on synthetic data in bf16 and print images/s per GPU and peak memory for vdm and w-pcdm;
# then sampling speed (Heun 18, ancestral 256) per preset and FID's Inception-v3 feature rate.
# Without a GPU it runs the same code path on a tiny model on the CPU (that is what CI tests).
#   bash benchmarks/gpu_check.sh            # SECONDS_PER_MODEL=120 by default on GPU
set -euo pipefail
cd "$(dirname "$0")/.."
if python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  python3 -c "import torch; print('GPU:', torch.cuda.get_device_name(0), '| torch', torch.__version__)"
  python3 benchmarks/throughput.py --preset cifar10 --models vdm,w-pcdm --device cuda \
    --batch "${BATCH:-128}" --seconds "${SECONDS_PER_MODEL:-120}"
  python3 benchmarks/sample_speed.py --preset cifar10 --models vdm,w-pcdm,lp-pcdm --device cuda \
    --n "${SAMPLES:-256}" --inception-n 5000
else
  echo "no GPU: running the tiny CPU version of the check"
  python3 benchmarks/throughput.py --preset tiny --shape 1,8,8 --models vdm,w-pcdm --device cpu \
    --batch 16 --seconds "${SECONDS_PER_MODEL:-2}" --warmup 1
  python3 benchmarks/sample_speed.py --preset tiny --shape 1,8,8 --models vdm,w-pcdm --device cpu \
    --samplers heun:4,ancestral:8 --n 4
fi
