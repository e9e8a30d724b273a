#!/usr/bin/env bash
# The prepared GPU check (run through the device tool from the repo root; writes to $OUT):
# JAX solvers on the GPU, LowRankExpConv on CUDA in three dtypes, module speed on CUDA.
set -uo pipefail
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
OUT="${OUT:-/tmp/recon-device}"; mkdir -p "$OUT"
cp benchmarks/RESULTS.md "$OUT/RESULTS.before.md" 2>/dev/null || true
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 - <<'PY' 2>&1 | tee "$OUT/cuda_modules.txt"
import torch
from torch import nn
from recon.modules import LowRankExpConv
torch.manual_seed(0)
for scheme, bases in ((1, 9), (2, 24)):
    conv = nn.Conv2d(16, 24, 3, padding=1, stride=(1, 2), dilation=(2, 1)).cuda()
    module = LowRankExpConv.from_conv(conv, scheme, bases)
    x = torch.randn(4, 16, 20, 20, device="cuda")
    with torch.inference_mode():
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            got = module.to(dtype)(x.to(dtype)).float()
            ref = conv(x)
            print(f"scheme {scheme} {dtype}: max |low-rank - dense| = {(got - ref).abs().max().item():.3g}"
                  f" (dense max {ref.abs().max().item():.3g})")
            module.float()
PY
timeout 200 python3 -m benchmarks.solver_devices 2>&1 | tail -n 8
timeout 300 python3 -m benchmarks.inference_speed --device cuda --repeats 20 2>&1 | tail -n 5
cp benchmarks/RESULTS.md "$OUT/RESULTS.md"
