#!/usr/bin/env bash
# The GPU path, end to end, one PASS/FAIL line per check. Run it on a machine with CUDA
# from the repository root, with pyro-vae installed (PYTHON, default .venv/bin/python) and
# MNIST in the cache ($PYRO_VAE_DATA, default ~/.cache/pyro_vae; `pyro-vae data fetch mnist`
# where the internet is reachable, or copy the four IDX files there):
#
#     bash benchmarks/gpu_check.sh            # about 3 minutes on one GPU
#
# Checks: training on CUDA (captured, eager, torch.compile; captured = eager to the bit),
# the step's speed against a plain loop, bit-exact resume (deterministic kernels),
# evaluation (IS and AIS), the figures of a 2-D latent, the conv network, a two-process
# torchrun on NCCL (needs two GPUs: SKIP with fewer), and tests/test_cuda.py.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${GPU_CHECK_OUT:-runs/gpu_check}
rm -rf "$OUT" && mkdir -p "$OUT"
failed=0
check() {  # check NAME COMMAND...: PASS or FAIL (with the log's last lines)
    local name=$1; shift
    local start=$SECONDS
    if "$@" > "$OUT/$name.log" 2>&1; then
        echo "PASS  $name  ($((SECONDS - start)) s)"
    else
        echo "FAIL  $name  ($((SECONDS - start)) s); last lines of $OUT/$name.log:"
        tail -n 5 "$OUT/$name.log" | sed 's/^/      /'
        failed=$((failed + 1))
    fi
}
vae() { "$PY" -m pyro_vae.cli "$@"; }
TRAIN=(--dataset mnist-binary --z-dim 2 --hidden 256 --batch-size 256 --device cuda --quiet)

"$PY" - <<'PY' || { echo "FAIL  cuda: torch sees no GPU"; exit 1; }
import torch, pyro
assert torch.cuda.is_available()
print(f"torch {torch.__version__}, pyro {pyro.__version__}, {torch.cuda.device_count()} x "
      f"{torch.cuda.get_device_name(0)}")
PY
check train-captured vae train "${TRAIN[@]}" --epochs 2 --jit --out "$OUT/jit"
check train-eager vae train "${TRAIN[@]}" --epochs 2 --no-jit --out "$OUT/nojit"
check train-torch-compile vae train "${TRAIN[@]}" --epochs 2 --compile --out "$OUT/compiled"
check captured-is-eager "$PY" -c '
import json, sys
read = lambda d: [(m["train_loss"], m["test_loss"]) for m in map(json.loads, open(d + "/metrics.jsonl"))]
a, b = read(sys.argv[1]), read(sys.argv[2])
print("captured", a, "eager", b); sys.exit(0 if a == b else 1)' "$OUT/jit" "$OUT/nojit"
check step-speed "$PY" benchmarks/train_speed.py --device cuda --rows bn --rounds 3
check step-speed-compiled "$PY" benchmarks/train_speed.py --device cuda --rows b --rounds 3 --compile
check resume-bit-exact bash -c "
    $PY -m pyro_vae.cli train ${TRAIN[*]} --epochs 1 --out $OUT/half &&
    $PY -m pyro_vae.cli train --resume $OUT/half --epochs 2 --quiet &&
    $PY -c '
import sys, torch
from pyro_vae.rundir import load_checkpoint
a, b = (load_checkpoint(d)[\"params\"] for d in sys.argv[1:])
bad = [n for n in a if not torch.equal(a[n], b[n])]
print(\"differ:\", bad or \"none\"); sys.exit(1 if bad else 0)' $OUT/jit $OUT/half"
check evaluate-is-ais vae evaluate "$OUT/jit" --is-samples 500 --examples 200 --ais-steps 20
check plot-2d-latent bash -c "$PY -m pyro_vae.cli plot $OUT/jit &&
    test -s $OUT/jit/figures/latent_manifold.png"
check open-on-cpu vae evaluate "$OUT/jit" --device cpu --is-samples 50 --examples 100
check conv-network vae train --dataset mnist-binary --network conv --z-dim 8 --hidden 128 \
    --batch-size 128 --epochs 1 --device cuda --quiet --out "$OUT/conv"
if [ "$("$PY" -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then
    check torchrun-nccl-2 "${PY%python}torchrun" --standalone --nproc_per_node 2 \
        -m pyro_vae.cli train --dataset mnist-binary --elbo meanfield --no-jit --z-dim 8 \
        --hidden 128 --batch-size 256 --epochs 1 --device cuda --quiet --out "$OUT/ddp"
else
    echo "SKIP  torchrun-nccl-2  (one GPU: NCCL needs a GPU per process)"
fi
check test-cuda "$PY" -m pytest -q tests/test_cuda.py
echo "gpu_check: $failed failed"
exit $((failed > 0))
