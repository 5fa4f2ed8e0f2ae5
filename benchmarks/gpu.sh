#!/usr/bin/env bash
# GPU numbers for issue 29 (ViT-B/16 inference; ViT-S/16 and ViT-B/16 training), on the machine the `device` tool lends (JAX and
# PyTorch with CUDA, timm; no TensorFlow, no network). keras_vit runs there
# on Keras' JAX backend; timm is the peer on the same GPU.
#
# Prepare here (CPU), then run there in ONE device call (15 minutes of
# device time a session, start-up included). The machine has Python 3.12,
# JAX, PyTorch, timm, safetensors, h5py, rich and ml-dtypes, but not Keras,
# namex or optree, so those travel as wheels with keras_vit's own:
#
#   rm -rf dist && pip wheel --no-deps -w dist . \
#     && pip download --no-deps -d dist keras==3.15.1 namex \
#     && pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#          --platform manylinux_2_17_x86_64 -d dist optree==0.20.0
#   # device tool: run(command="bash benchmarks/gpu.sh", carry=["dist"], timeout_s=570)
#
# Each stage has its own time limit, and every result line is logged as
# it comes, so a stage that runs long loses only itself.
#
# It writes into $OUT (which comes back): the log (nvidia-smi's card
# line, versions, every result), the parity check, and the inference and
# training results as JSON. Copy the tables into BENCHMARKS.md with the
# card and versions.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/keras_vit_gpu}"
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1

nvidia-smi -L || true
python3 -V
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    dist/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 KERAS_BACKEND=jax
python3 -c "import jax, keras, torch, timm; print('jax', jax.__version__, jax.devices()); \
print('keras', keras.__version__, 'torch', torch.__version__, 'timm', timm.__version__)" || exit 1

# The parity check first (the cheapest, and the one that must hold): a
# random timm ViT-B/16 loaded into keras_vit on the GPU, at full float32
# matrix-product precision on both sides (TF32 would differ by ~1e-3).
timeout 100 python3 - <<'EOF' | tee "$OUT/parity.txt"
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

# float32 rows: TF32 matrix products on both sides (JAX's default on a
# GPU; benchmarks/_common.match_jax_float32_matmuls sets PyTorch's).
systems="keras_vit_jax keras_vit_jax_bf16 timm timm_bf16"
timeout 200 python3 benchmarks/inference.py --device cuda --rounds 1 --batch 1 64 --repeats 10 --warmup 3 \
    --systems $systems --json "$OUT/inference.json"
timeout 330 python3 benchmarks/training.py --device cuda --rounds 1 --cases vit_s16 vit_b16 --batches 128 \
    --steps 5 --repeats 5 --warmup 3 --systems $systems --json "$OUT/training.json"
