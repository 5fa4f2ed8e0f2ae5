"""ViT-B/16 (or ViT-S/16, `--variant S/16`) inference at 224: keras_vit
against timm and keras-hub, each system in its own process, in one
invocation.

Run with nothing else running (on 2 cores a background job halves the
numbers):
    python benchmarks/inference.py                    # batch 1 and 8, every system
    python benchmarks/inference.py --batch 8 --repeats 7 --systems keras_vit timm
    python benchmarks/inference.py --write            # also writes the table into BENCHMARKS.md
    python benchmarks/inference.py --variant S/16 --systems keras_vit_bf16 timm_bf16
    python benchmarks/inference.py --rounds 1         # one run per system (default 3, interleaved)
    python benchmarks/inference.py --device cuda --systems keras_vit_jax keras_vit_jax_bf16 timm timm_bf16
                                                      # on a GPU (benchmarks/gpu.sh; JAX, no TensorFlow)

Systems (random weights: speed does not depend on their values; ViTB16 and
ViT-B/16 below read ViTS16 and ViT-S/16 with `--variant S/16`):
    keras_vit            keras_vit.ViTB16(weights=None), float32, model.predict_on_batch (the user path)
    keras_vit_call       the same model called directly, model(x, training=False)
    keras_vit_bf16       keras_vit.with_precision(ViTB16(weights=None), "bfloat16", copy=False), predict_on_batch
    keras_vit_int8       keras_vit.with_precision(ViTB16(weights=None), "int8", copy=False) (Keras' quantize;
                         predict_on_batch compiled by XLA, as with_precision sets)
    keras_vit_savedmodel keras_vit.export's SavedModel, `predict_images` signature
    keras_vit_jax        keras_vit on Keras' JAX backend (KERAS_BACKEND=jax), float32, predict_on_batch
                         (compiled by XLA, as Keras does on JAX)
    keras_vit_jax_bf16   the same at bfloat16 (with_precision(model, "bfloat16", copy=False))
    keras_vit_torch      keras_vit on Keras' PyTorch backend, float32, predict_on_batch (eager, as
                         Keras' jit_compile="auto" is on PyTorch)
    timm                 timm vit_base_patch16_224, eval(), torch.inference_mode(), eager
    timm_bf16            the same under torch.autocast("cpu", dtype=torch.bfloat16)
    timm_int8            the same with PyTorch's dynamic int8 quantization of every nn.Linear
                         (torch.ao.quantization.quantize_dynamic, qint8 weights, int8
                         activations quantized per batch: the peer of Keras' quantize)
    keras_hub            keras_hub.models.ViTImageClassifier (ViT-B/16 sizes), predict_on_batch
    matmul_floor         only keras_vit's ViT-B/16 matrix products (patch embedding, q/k/v,
                         attention, projection, MLP, head; same shapes, float32; the last
                         block for the class token only, as keras_vit computes it) in one
                         tf.function: the time TensorFlow's oneDNN kernels need for the
                         arithmetic alone, so the table shows how close each system is to it

Each worker warms up, then times `--repeats` (>= 5) batches and reports the
median and best ms per batch, img/s and its peak resident memory (VmHWM).
The ratios are against timm and keras-hub measured in the same invocation.
Requirements: the package's [test] extra (timm; see DEVELOPERS.md for the
torch pins) and keras-hub (`pip install --no-deps keras-hub==0.32.0
kagglehub kagglesdk==0.1.28`; its tensorflow-text requirement would pull the full
`tensorflow` beside `tensorflow-cpu` and is not needed for ViT).
"""

import argparse
import atexit
import pathlib
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _common  # noqa: E402

SYSTEMS = ("keras_vit", "keras_vit_call", "keras_vit_bf16", "keras_vit_int8", "keras_vit_savedmodel",
           "keras_vit_jax", "keras_vit_jax_bf16", "keras_vit_torch", "timm", "timm_bf16", "timm_int8", "keras_hub",
           "matmul_floor")
REFERENCES = ("timm", "keras_hub")
# Per variant: keras_vit's builder, timm's model, and the sizes.
VARIANTS = {
    "B/16": dict(builder="ViTB16", timm="vit_base_patch16_224", width=768, depth=12, heads=12, mlp=3072),
    "S/16": dict(builder="ViTS16", timm="vit_small_patch16_224", width=384, depth=12, heads=6, mlp=1536),
}


def _time(run, batch, repeats, warmup):
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append((time.perf_counter() - started) * 1000)
    median = statistics.median(times)
    return {"ms_per_batch": median, "best_ms": min(times), "img_per_s": batch * 1000 / median}


def _keras_vit(system, batch, variant):
    import keras
    import numpy as np

    import keras_vit

    model = getattr(keras_vit, VARIANTS[variant]["builder"])(weights=None)
    if system in ("keras_vit_bf16", "keras_vit_int8", "keras_vit_jax_bf16"):
        # The documented way for a float32 model loaded to run at another
        # precision: changed in place, no second copy of the weights.
        model = keras_vit.with_precision(model, "int8" if system == "keras_vit_int8" else "bfloat16",
                                         copy=False)
    x = np.random.default_rng(0).uniform(-1, 1, (batch, 224, 224, 3)).astype("float32")
    versions = {"keras_vit": keras_vit.__version__, "keras": keras.__version__}
    framework = keras.backend.backend()
    versions[framework] = __import__(framework).__version__
    if system == "keras_vit_call":
        return (lambda: model(x, training=False).numpy()), versions
    if system == "keras_vit_savedmodel":
        import tensorflow as tf

        directory = tempfile.mkdtemp(prefix="keras_vit_bench_")
        atexit.register(shutil.rmtree, directory, ignore_errors=True)  # 348 MB of ViT-B/16
        path = keras_vit.export.export_saved_model(model, directory)
        predict = tf.saved_model.load(path).signatures["predict_images"]
        images = tf.constant((x + 1) * 127.5)
        return (lambda: predict(images=images)["probabilities"].numpy()), versions
    return (lambda: model.predict_on_batch(x)), versions


def _timm(batch, variant, bfloat16=False, int8=False, device="cpu"):
    import contextlib

    import numpy as np
    import timm
    import torch

    model = timm.create_model(VARIANTS[variant]["timm"], pretrained=False).eval()
    if int8:
        model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    model = model.to(device)
    _common.match_jax_float32_matmuls(device)
    x = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (batch, 3, 224, 224)).astype("float32"))
    autocast = (lambda: torch.autocast(device, dtype=torch.bfloat16)) if bfloat16 else contextlib.nullcontext

    def run():
        with torch.inference_mode(), autocast():
            # Images in from the host and logits back to it, as keras_vit's
            # predict_on_batch takes and returns them (on a GPU: both
            # copies timed, and the queue drained before the clock).
            return model(x.to(device)).float().cpu()

    return run, {"timm": timm.__version__, "torch": torch.__version__}


def _keras_hub(batch, variant):
    import keras
    import keras_hub
    import numpy as np

    v = VARIANTS[variant]
    backbone = keras_hub.models.ViTBackbone(
        image_shape=(224, 224, 3), patch_size=16, num_layers=v["depth"], num_heads=v["heads"],
        hidden_dim=v["width"], mlp_dim=v["mlp"],
    )
    model = keras_hub.models.ViTImageClassifier(backbone=backbone, num_classes=1000)
    x = np.random.default_rng(0).uniform(0, 1, (batch, 224, 224, 3)).astype("float32")
    return (lambda: model.predict_on_batch(x)), {"keras_hub": keras_hub.__version__,
                                                 "keras": keras.__version__}


def _matmul_floor(batch, variant):
    import numpy as np
    import tensorflow as tf

    v = VARIANTS[variant]
    tokens, width, heads, mlp, depth = 197, v["width"], v["heads"], v["mlp"], v["depth"]
    rng = np.random.default_rng(0)

    def weight(*shape):
        return tf.constant(rng.normal(0, 0.02, shape).astype("float32"))

    patches, embed = weight(batch * 196, 16 * 16 * 3), weight(16 * 16 * 3, width)
    x0 = weight(batch * tokens, width)
    qkv, proj, fc1, fc2 = weight(width, 3 * width), weight(width, width), weight(width, mlp), weight(mlp, width)
    head = weight(width, 1000)

    @tf.function
    def run():
        # Each product's result feeds the next (so none is pruned); the
        # reshapes are free, the values meaningless.
        x = tf.matmul(patches, embed)
        x = x0 + tf.reduce_mean(x) * 0
        for _ in range(depth - 1):
            q = tf.reshape(tf.matmul(x, qkv)[:, :width], (batch, tokens, heads, width // heads))
            q = tf.transpose(q, (0, 2, 1, 3))
            attention = tf.matmul(q, q, transpose_b=True)
            a = tf.matmul(attention, q)
            a = tf.reshape(tf.transpose(a, (0, 2, 1, 3)), (batch * tokens, width))
            x = tf.matmul(a, proj)
            x = tf.matmul(tf.matmul(x, fc1), fc2)
        # The last block as keras_vit computes it under class-token pooling:
        # keys and values of every token, the rest for the class token only.
        k = tf.reshape(tf.matmul(x, qkv[:, width:])[:, :width], (batch, tokens, heads, width // heads))
        k = tf.transpose(k, (0, 2, 1, 3))
        q = tf.reshape(tf.matmul(tf.reshape(x, (batch, tokens, width))[:, 0], qkv[:, :width]),
                       (batch, heads, 1, width // heads))
        a = tf.matmul(tf.matmul(q, k, transpose_b=True), k)
        x = tf.matmul(tf.reshape(a, (batch, width)), proj)
        x = tf.matmul(tf.matmul(x, fc1), fc2)
        return tf.matmul(x, head)

    return (lambda: run().numpy()), {"tensorflow": tf.__version__}


def worker(system, batch, variant, repeats, warmup, device="cpu"):
    _common.set_backend(system, device)
    if system == "matmul_floor":
        run, versions = _matmul_floor(batch, variant)
    elif system in ("timm", "timm_bf16", "timm_int8"):
        run, versions = _timm(batch, variant, bfloat16=system == "timm_bf16", int8=system == "timm_int8",
                              device=device)
    elif system == "keras_hub":
        run, versions = _keras_hub(batch, variant)
    else:
        run, versions = _keras_vit(system, batch, variant)
    result = _time(run, batch, repeats, warmup)
    result.update(system=system, batch=batch, variant=variant, peak_rss_mb=_common.peak_rss_mb(),
                  versions=versions, amx="amx_bf16" in _common.cpu_flags(), device=_common.device_name(system, device))
    if system == "keras_vit_bf16":
        import keras_vit

        # Whether this CPU is one where bfloat16 is expected to be faster
        # (targets.py checks the bfloat16 speed target only there).
        result["bfloat16_cpu"] = keras_vit.bfloat16_cpu()
    _common.report(result)


def _table(results):
    rows = ["| system | batch | ms/batch (median) | best | img/s | peak RSS (MB) | vs timm | vs keras-hub |",
            "|---|---|---|---|---|---|---|---|"]
    for batch in sorted({r["batch"] for r in results}):
        same = {r["system"]: r for r in results if r["batch"] == batch and "error" not in r}
        for r in (r for r in results if r["batch"] == batch):
            if "error" in r:
                rows.append(f"| {r['system']} | {batch} | failed: {r['error']} | | | | | |")
                continue
            ratios = []
            for reference in REFERENCES:
                ref = same.get(reference)
                ratios.append(f"{r['img_per_s'] / ref['img_per_s']:.2f}x" if ref else "-")
            rows.append(f"| {r['system']} | {batch} | {r['ms_per_batch']:.0f} | {r['best_ms']:.0f} | "
                        f"{_common.img_per_s_cell(r, 2)} | {r['peak_rss_mb']:.0f} | {ratios[0]} | {ratios[1]} |")
    return "\n".join(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="B/16")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3,
                        help="run every system this many times, interleaved, and keep the median round")
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS)
    parser.add_argument("--write", action="store_true", help="write the table into BENCHMARKS.md")
    parser.add_argument("--json", metavar="PATH", help="also save the results as JSON")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cuda: timm on the GPU, keras_vit on JAX's GPU (the TensorFlow systems stay on "
                             "the CPU; this tensorflow-cpu has no GPU)")
    parser.add_argument("--worker", choices=SYSTEMS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 5:
        parser.error(f"--repeats must be >= 5, received {args.repeats}")
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, received {args.rounds}")
    if args.worker:
        worker(args.worker, args.batch[0], args.variant, args.repeats, args.warmup, args.device)
        return 0
    jobs = [(dict(batch=batch, system=system),
             [sys.executable, __file__, "--worker", system, "--batch", str(batch), "--variant", args.variant,
              "--repeats", str(args.repeats), "--warmup", str(args.warmup), "--device", args.device])
            for batch in args.batch for system in args.systems]
    results = _common.run_rounds(
        jobs, args.rounds, "ms_per_batch", 1800,
        lambda r: f"{r['img_per_s']:.2f} img/s, {r['ms_per_batch']:.0f} ms/batch, peak {r['peak_rss_mb']:.0f} MB")
    how = (f"median of {args.repeats} batches after {args.warmup} warm-up batches, each system in "
           "its own process"
           + (f"; {args.rounds} interleaved rounds, the median round shown with the range of img/s "
              "over the rounds." if args.rounds > 1 else "."))
    # ViT-B/16 keeps the block name it always had.
    name = "inference" if args.variant == "B/16" else "inference-" + args.variant.replace("/", "")
    flag = "" if args.variant == "B/16" else f" --variant {args.variant}"
    return _common.publish(results, how, _table(results), name,
                           f"ViT-{args.variant} inference at 224 (`benchmarks/inference.py{flag}`)",
                           args.write, args.json)


if __name__ == "__main__":
    sys.exit(main())
