"""Training throughput: keras_vit's `model.fit` (AdamW, one optimizer step
per batch) against timm in a plain PyTorch training loop, each system in
its own process, in one invocation.

Run with nothing else running:
    python benchmarks/training.py                         # both cases below
    python benchmarks/training.py --cases tiny --rounds 3 --write   # interleaved, into BENCHMARKS.md
    python benchmarks/training.py --cases vit_s16 --steps 2 --write   # about 6 s a step here

Cases:
    vit_s16   ViT-S/16 at 224, batch 16 and 32, 1000 classes
    tiny      the from-scratch case: 32x32 images, patch 4, width 192,
              depth 6, 3 heads, MLP 768, 10 classes, batch 128

Systems:
    keras_vit        model.fit on a cached tf.data set of random batches,
                     keras_vit.training.compile (AdamW, warm-up/cosine,
                     label smoothing, clipping), default settings
    keras_vit_bf16   the same under the mixed_bfloat16 policy
    keras_vit_jax    keras_vit on Keras' JAX backend (KERAS_BACKEND=jax), float32,
                     the same tf.data set (XLA-compiled steps, as Keras does on JAX)
    keras_vit_jax_bf16  the same under the mixed_bfloat16 policy
    keras_vit_torch  keras_vit on Keras' PyTorch backend, float32 (eager steps,
                     as Keras' jit_compile="auto" is on PyTorch)
Where TensorFlow is not installed (the lent GPU machine), the keras_vit
systems read the same batches from a `keras.utils.PyDataset` instead.
`--device cuda` runs timm and keras_vit on JAX on the GPU (benchmarks/gpu.sh).
    timm             timm's VisionTransformer, torch.optim.AdamW, cross
                     entropy with label smoothing, clip_grad_norm_, eager
    timm_bf16        the same with the forward pass and loss under
                     torch.autocast("cpu", dtype=torch.bfloat16) (PyTorch's
                     mixed-precision recipe; float32 weights and optimizer)

The table's "vs timm" compares with timm at the same precision: float32
systems with `timm`, bfloat16 ones with `timm_bf16`.

Each worker runs `--warmup` steps, then `--repeats` rounds of `--steps`
steps in the same run (one `model.fit`, timed per step by a callback) and
reports the median ms per step over the rounds, img/s and peak resident
memory.
"""

import argparse
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _common  # noqa: E402

CASES = {
    "vit_s16": dict(image=224, patch=16, width=384, depth=12, heads=6, mlp=1536, classes=1000,
                    batches=(16, 32)),
    "tiny": dict(image=32, patch=4, width=192, depth=6, heads=3, mlp=768, classes=10, batches=(128,)),
    # The Fashion-MNIST recipe's model (keras_vit.runs.config.RECIPES), for
    # profiles; not run by default.
    "fashion_mnist": dict(image=28, patch=4, width=64, depth=6, heads=4, mlp=128, classes=10, batches=(128,)),
    # Not run by default (minutes a system on 2 CPU cores): the GPU script's.
    "vit_b16": dict(image=224, patch=16, width=768, depth=12, heads=12, mlp=3072, classes=1000,
                    batches=(8,)),
}
DEFAULT_CASES = ("vit_s16", "tiny")
SYSTEMS = ("keras_vit", "keras_vit_bf16", "keras_vit_jax", "keras_vit_jax_bf16", "keras_vit_torch", "timm",
           "timm_bf16")


def _keras_vit(case, batch, bf16):
    import importlib.util

    import keras
    import numpy as np

    import keras_vit

    if bf16:
        keras.config.set_dtype_policy("mixed_bfloat16")
    c = CASES[case]
    model = keras_vit.ViT(input_shape=(c["image"], c["image"], 3), classes=c["classes"],
                          patch_size=c["patch"], hidden_dim=c["width"], num_layers=c["depth"],
                          num_heads=c["heads"], mlp_dim=c["mlp"], include_preprocessing=True)
    keras_vit.training.compile(model, steps=10_000, learning_rate=1e-3, warmup_steps=100)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch * 4, c["image"], c["image"], 3)).astype("float32")
    y = keras.utils.to_categorical(rng.integers(0, c["classes"], batch * 4), c["classes"])
    framework = keras.backend.backend()
    versions = {"keras_vit": keras_vit.__version__, framework: __import__(framework).__version__,
                "keras": keras.__version__}
    if importlib.util.find_spec("tensorflow") is not None:
        import tensorflow as tf

        data = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch).cache().repeat()
        versions["tensorflow"] = tf.__version__
    else:
        class Batches(keras.utils.PyDataset):
            """The same four batches, over and over (fit stops at steps_per_epoch)."""

            def __len__(self):
                return 1_000_000

            def __getitem__(self, index):
                rows = slice((index % 4) * batch, (index % 4 + 1) * batch)
                return x[rows], y[rows]

        data = Batches()

    class Clock(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            stamps.append(time.perf_counter())

    stamps = []

    def run(n):
        # One fit for every step, timed per step by a callback: a fit per
        # round would add Keras' per-fit set-up to every round.
        stamps.clear()
        stamps.append(time.perf_counter())
        model.fit(data, steps_per_epoch=n, epochs=1, verbose=0, callbacks=[Clock()])
        return list(stamps)

    framework = keras.backend.backend()
    return run, versions


def _timm(case, batch, bf16, device="cpu"):
    import contextlib

    import numpy as np
    import timm
    import torch
    from timm.models.vision_transformer import VisionTransformer

    c = CASES[case]
    model = VisionTransformer(img_size=c["image"], patch_size=c["patch"], embed_dim=c["width"],
                              depth=c["depth"], num_heads=c["heads"], mlp_ratio=c["mlp"] / c["width"],
                              num_classes=c["classes"]).train().to(device)
    _common.match_jax_float32_matmuls(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.uniform(-1, 1, (batch, 3, c["image"], c["image"])).astype("float32")).to(device)
    y = torch.from_numpy(rng.integers(0, c["classes"], batch)).to(device)
    autocast = (lambda: torch.autocast(device, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext

    def run(n):
        stamps = [time.perf_counter()]
        for _ in range(n):
            optimizer.zero_grad(set_to_none=True)
            with autocast():
                loss = loss_fn(model(x), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            if device != "cpu":
                torch.cuda.synchronize()  # the step done, not only queued
            stamps.append(time.perf_counter())
        return stamps

    return run, {"timm": timm.__version__, "torch": torch.__version__}


def worker(system, case, batch, steps, repeats, warmup, device="cpu"):
    _common.set_backend(system, device)
    if system in ("timm", "timm_bf16"):
        run, versions = _timm(case, batch, bf16=system == "timm_bf16", device=device)
    else:
        run, versions = _keras_vit(case, batch, bf16=system.endswith("_bf16"))
    # Timestamps after every step of one continuous run: warm-up steps
    # first, then `repeats` rounds of `steps` steps.
    stamps = run(warmup + repeats * steps)
    times = [
        (stamps[warmup + (r + 1) * steps] - stamps[warmup + r * steps]) * 1000 / steps
        for r in range(repeats)
    ]
    median = statistics.median(times)
    _common.report(dict(
        system=system, case=case, batch=batch, ms_per_step=median, best_ms=min(times),
        img_per_s=batch * 1000 / median, peak_rss_mb=_common.peak_rss_mb(), versions=versions,
        amx="amx_bf16" in _common.cpu_flags(), device=_common.device_name(system, device),
    ))


def _table(results):
    rows = ["| case | batch | system | ms/step (median) | best | img/s | peak RSS (MB) | vs timm |",
            "|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            rows.append(f"| {r['case']} | {r['batch']} | {r['system']} | failed: {r['error']} | | | | |")
            continue
        peer = "timm_bf16" if r["system"].endswith("_bf16") else "timm"
        ref = next((t for t in results if t["system"] == peer and t["case"] == r["case"]
                    and t["batch"] == r["batch"] and "error" not in t), None)
        ratio = f"{r['img_per_s'] / ref['img_per_s']:.2f}x" if ref else "-"
        rows.append(f"| {r['case']} | {r['batch']} | {r['system']} | {r['ms_per_step']:.0f} | "
                    f"{r['best_ms']:.0f} | {_common.img_per_s_cell(r, 1)} | {r['peak_rss_mb']:.0f} | {ratio} |")
    return "\n".join(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(DEFAULT_CASES), choices=list(CASES))
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--batches", type=int, nargs="+",
                        help="batch sizes to run instead of each case's own (a GPU wants larger ones)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every system this many times, interleaved, and keep the median run")
    parser.add_argument("--write", action="store_true", help="write the table into BENCHMARKS.md")
    parser.add_argument("--json", metavar="PATH", help="also save the results (every case) as JSON")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cuda: timm and keras_vit on JAX on the GPU")
    parser.add_argument("--worker", choices=SYSTEMS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.repeats < 5:
        parser.error(f"--repeats must be >= 5, received {args.repeats}")
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, received {args.rounds}")
    if args.batches and min(args.batches) < 1:
        parser.error(f"--batches must be >= 1, received {args.batches}")
    if args.worker:
        worker(args.worker, args.cases[0], args.batch, args.steps, args.repeats, args.warmup, args.device)
        return 0
    jobs = [(dict(case=case, batch=batch, system=system),
             [sys.executable, __file__, "--worker", system, "--cases", case, "--batch", str(batch),
              "--steps", str(args.steps), "--repeats", str(args.repeats), "--warmup", str(args.warmup),
              "--device", args.device])
            for case in args.cases for batch in (args.batches or CASES[case]["batches"])
            for system in args.systems]
    results = _common.run_rounds(
        jobs, args.rounds, "ms_per_step", 3600,
        lambda r: f"{r['img_per_s']:.1f} img/s, {r['ms_per_step']:.0f} ms/step")
    how = (f"median of {args.repeats} rounds of {args.steps} steps after {args.warmup} warm-up "
           "steps, each system in its own process"
           + (f"; {args.rounds} interleaved runs, the median run shown with the range of img/s "
              "over the runs." if args.rounds > 1 else "."))
    # One block of BENCHMARKS.md per case, so that the cases can be run
    # (and rerun) separately.
    for case in args.cases:
        mine = [r for r in results if r["case"] == case]
        _common.publish(mine, how, _table(mine), f"training-{case}",
                        f"Training throughput, {case} (`benchmarks/training.py --cases {case}`)",
                        args.write)
    if args.json:
        _common.save_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
