"""Where the time of a keras_vit step goes: TensorFlow's profiler, per-op
times summed into categories (matrix products, GELU, LayerNorm, layout,
optimizer, XLA kernels, ...), in ms per step.

Run with nothing else running:
    python benchmarks/op_profile.py train tiny      # a model.fit step of benchmarks/training.py's case
    python benchmarks/op_profile.py train vit_s16 --batch 16
    python benchmarks/op_profile.py infer --batch 1 # ViT-B/16 inference, the direct call
    python benchmarks/op_profile.py infer --variant S/16 --precision bfloat16 --batch 1

TensorFlow runs independent ops side by side on its inter-op threads, so
that op times would add up to more than the step; this script runs them one
at a time (`inter_op_parallelism_threads=1`, which did not change step times
here) so that the categories add up to about the step's wall time. The
tables of BENCHMARKS.md's training and inference sections were measured
this way.
"""

import argparse
import collections
import glob
import pathlib
import re
import statistics
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))


def _category(name):
    """The category of a profiled op from its `scope/name:OpType` label."""
    op = name.rsplit(":", 1)[1]
    if "MatMul" in op:
        return "matrix products"
    if re.search(r"adam_w|clip|global_norm", name, re.I) or "Assign" in op:
        return "optimizer"
    if "Gelu" in name or "Erf" in op or "UnaryOps" in op:
        return "GELU (plain ops)"
    if re.search(r"norm1|norm2|encoder_norm", name):
        return "LayerNorm (plain ops)"
    if "Softmax" in op or "softmax" in name:
        return "softmax"
    if re.search(r"Transpose|Concat|Pack|Unpack|Slice|Gather|Broadcast|Tile", op):
        return "transposes, slices, concatenations"
    return "other: " + op


def summarise(logdir, steps):
    """ms per step by category from the profiler's trace in `logdir`."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    path = glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)[0]
    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    totals, counts = collections.Counter(), collections.Counter()
    for plane in space.planes:
        for line in plane.lines:
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if name == "CpuExecutable::ExecuteAsyncOnStream":
                    category = "XLA kernels (fused LayerNorm, GELU)"
                elif ":" in name and "/" in name:
                    category = _category(name)
                else:
                    continue
                totals[category] += event.duration_ps / 1e9 / steps
                counts[category] += 1
    return totals, {k: v // steps for k, v in counts.items()}


def _infer_step(batch, variant, precision):
    """`run(n)`: the direct call of `benchmarks/inference.py`'s keras_vit
    model of `variant` at `precision`."""
    import numpy as np

    import inference
    import keras_vit

    model = getattr(keras_vit, inference.VARIANTS[variant]["builder"])(weights=None)
    model = keras_vit.with_precision(model, precision, copy=False)
    x = np.random.default_rng(0).uniform(-1, 1, (batch, 224, 224, 3)).astype("float32")

    def call():
        return model(x, training=False).numpy()

    def run(n):
        stamps = [time.perf_counter()]
        for _ in range(n):
            call()
            stamps.append(time.perf_counter())
        return stamps

    return run


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["train", "infer"])
    parser.add_argument("case", nargs="?", default="tiny", help="train: a case of benchmarks/training.py")
    parser.add_argument("--batch", type=int, help="default: the case's first batch size; infer: 8")
    parser.add_argument("--steps", type=int, default=3, help="profiled steps (after 5 warm-up steps)")
    parser.add_argument("--variant", choices=("B/16", "S/16"), default="B/16", help="infer: the model")
    parser.add_argument("--precision", choices=("float32", "bfloat16", "int8"), default="float32",
                        help="infer: keras_vit.with_precision's precision")
    args = parser.parse_args(argv)
    import _common
    import training

    if args.mode == "train" and args.case not in training.CASES:
        parser.error(f"case must be one of {sorted(training.CASES)}, received {args.case!r}")
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, received {args.steps}")

    # As the benchmarks' keras_vit workers (and a user's `import keras_vit`)
    # do before TensorFlow loads: oneDNN on where TensorFlow leaves it off.
    # Importing TensorFlow first profiled the Zen CPUs without it (plain
    # LayerNorm and GELU ops, Eigen matmuls).
    _common.set_backend("keras_vit")
    import tensorflow as tf

    import keras_vit

    if not keras_vit.backend.onednn_enabled():
        print("note: TensorFlow's oneDNN kernels are off in this process (TF_ENABLE_ONEDNN_OPTS=0?)")
    tf.config.threading.set_inter_op_parallelism_threads(1)
    if args.mode == "train":
        batch = args.batch or training.CASES[args.case]["batches"][0]
        run, _ = training._keras_vit(args.case, batch, bf16=False)
        what = f"model.fit step, {args.case}, batch {batch}, float32"
    else:
        batch = args.batch or 8
        run = _infer_step(batch, args.variant, args.precision)
        what = f"ViT-{args.variant} inference, direct call, batch {batch}, {args.precision}"
    run(5)
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        stamps = run(args.steps)
        tf.profiler.experimental.stop()
        totals, counts = summarise(logdir, args.steps)
    walls = [(b - a) * 1000 for a, b in zip(stamps, stamps[1:])]
    print(f"\n{what}: wall time per step {statistics.median(walls):.0f} ms "
          f"(median of {args.steps}, under the profiler)\n")
    print("| category | ms per step | ops per step |\n|---|---|---|")
    for category, ms in totals.most_common():
        if ms >= 0.5:
            print(f"| {category} | {ms:.1f} | {counts[category]} |")
    print(f"| all profiled ops | {sum(totals.values()):.1f} | {sum(counts.values())} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
