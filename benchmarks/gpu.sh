#!/usr/bin/env bash
# GPU numbers for issue 29, on the machine the `device` tool lends (JAX and
# PyTorch with CUDA, timm; no TensorFlow, no network). keras_vit runs there
# on Keras' JAX backend; timm is the peer on the same GPU.
#
# Prepare here (CPU), then run there in ONE device call (15 minutes of
# device time a session, start-up included):
#
#   rm -rf dist && pip wheel --no-deps -w dist . \
#     && pip download --no-deps -d dist keras==3.15.1 safetensors namex
#   # device tool: run(command="bash benchmarks/gpu.sh", carry=["dist"], timeout_s=540)
#
# The device's Python may differ from this machine's: if `pip install` below
# reports a missing dependency, one cheap device call of
# `python -V; pip list` says which (download that wheel with
# --python-version/--only-binary=:all: and carry it in dist/ too).
#
# It writes into $OUT (which comes back): nvidia-smi's card line, the
# inference and training results as JSON and their tables, and the
# parity check. Copy the tables into BENCHMARKS.md with the card and
# versions.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/keras_vit_gpu}"
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1

nvidia-smi -L || true
python -V
pip install --quiet --no-index --no-deps dist/*.whl || exit 1
python -c "import jax, keras, torch, timm; print('jax', jax.__version__, jax.devices()); \
print('keras', keras.__version__, 'torch', torch.__version__, 'timm', timm.__version__)" || exit 1

export KERAS_BACKEND=jax
# The parity check first (the cheapest, and the one that must hold): a
# random timm ViT-B/16 loaded into keras_vit on the GPU, at full float32
# matrix-product precision on both sides (TF32 would differ by ~1e-3).
timeout 120 python - <<'EOF' | tee "$OUT/parity.txt"
import jax
jax.config.update("jax_default_matmul_precision", "highest")
import numpy as np, timm, torch
from safetensors.torch import save_file
import keras_vit

torch.backends.cuda.matmul.allow_tf32 = False
torch.manual_seed(0)
reference = timm.create_model("vit_base_patch16_224", pretrained=False).eval()
with torch.no_grad():  # far-apart logits: the default init gives near-zero ones
    for p in reference.parameters():
        p.add_(torch.randn_like(p) * 0.02)
save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, "/tmp/vit_b16.safetensors")
images = np.random.default_rng(0).uniform(-1, 1, (4, 224, 224, 3)).astype("float32")
with torch.no_grad():
    expected = reference.cuda()(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()).cuda()).cpu().numpy()
model = keras_vit.ViTB16(weights="/tmp/vit_b16.safetensors", classifier_activation=None)
got = np.asarray(model.predict(images, verbose=0))
print(f"parity ViT-B/16 on {jax.devices()[0].device_kind}: max |keras_vit - timm| = "
      f"{np.abs(got - expected).max():.2e} (logit std {expected.std():.2f}; tolerance 1e-4)")
EOF

systems="keras_vit_jax keras_vit_jax_bf16 timm timm_bf16"
timeout 200 python benchmarks/inference.py --device cuda --rounds 1 --batch 1 8 64 --repeats 20 \
    --systems $systems --json "$OUT/inference.json" | tail -12
timeout 200 python benchmarks/training.py --device cuda --rounds 1 --cases vit_s16 --steps 5 \
    --systems $systems --json "$OUT/training.json" | tail -10
