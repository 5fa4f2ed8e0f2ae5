"""Where keras_vit's inference time goes on Keras' JAX backend.

    KERAS_BACKEND=jax python benchmarks/jax_breakdown.py 64

For float32 and bfloat16 ViT-B/16 at the given batch: `predict_on_batch`
on NumPy input (what users call), the same with the input already on the
device (drops the host copy), `model.stateless_call` jitted by hand (drops
Keras' per-call work), and that under explicit TF32 / bfloat16 matrix
precision. On the H200 (2026-12-04, batch 64) this showed the model's own
arithmetic at timm's speed and the gap to timm in the other two rows
(BENCHMARKS.md). It writes the compiled float32 HLO beside $OUT (or /tmp).
"""
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
import jax
import numpy as np

import keras_vit

def bench(f, n=20, w=3):
    for _ in range(w): r = f()
    jax.block_until_ready(r)
    t = time.perf_counter()
    for _ in range(n): r = f()
    jax.block_until_ready(r)
    return (time.perf_counter() - t) / n * 1000

BATCH = int(sys.argv[1]) if len(sys.argv) > 1 else 64
x = np.random.default_rng(0).uniform(-1, 1, (BATCH, 224, 224, 3)).astype("float32")
xd = jax.device_put(x)
for policy in ("float32", "bfloat16"):
    model = keras_vit.ViTB16(weights=None)
    if policy == "bfloat16":
        model = keras_vit.with_precision(model, "bfloat16", copy=False)
    print(policy, "predict_on_batch numpy: %.1f ms" % bench(lambda: model.predict_on_batch(x)), flush=True)
    print(policy, "predict_on_batch device x: %.1f ms" % bench(lambda: model.predict_on_batch(xd)), flush=True)
    tv = [v.value for v in model.trainable_variables]; ntv = [v.value for v in model.non_trainable_variables]
    f = jax.jit(lambda tv, ntv, x: model.stateless_call(tv, ntv, x, training=False)[0])
    print(policy, "jit stateless_call: %.1f ms" % bench(lambda: f(tv, ntv, xd)), flush=True)
    with jax.default_matmul_precision("tensorfloat32"):
        g = jax.jit(lambda tv, ntv, x: model.stateless_call(tv, ntv, x, training=False)[0])
        print(policy, "jit stateless_call tf32 explicit: %.1f ms" % bench(lambda: g(tv, ntv, xd)), flush=True)
    with jax.default_matmul_precision("bfloat16"):
        g = jax.jit(lambda tv, ntv, x: model.stateless_call(tv, ntv, x, training=False)[0])
        print(policy, "jit stateless_call precision=bfloat16: %.1f ms" % bench(lambda: g(tv, ntv, xd)), flush=True)
    if policy == "float32":
        hlo = f.lower(tv, ntv, xd).compile().as_text()
        open(os.path.join(os.environ.get("OUT", "/tmp"), "hlo_f32.txt"), "w").write(hlo)
        print("custom-calls:", sorted(set(l.split('custom_call_target="')[1].split('"')[0] for l in hlo.splitlines() if "custom_call_target" in l)), flush=True)
        print("fusions:", hlo.count(" fusion("), "dots:", hlo.count(" dot("), "transposes:", hlo.count(" transpose("), "copies:", hlo.count(" copy("), flush=True)
