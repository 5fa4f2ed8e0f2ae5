"""Issue 6's speed targets, checked in one command: runs the benchmarks,
then says which targets hold in that run.

Run with nothing else running (on 2 cores a background job halves the
numbers):
    python benchmarks/targets.py                  # about 45 minutes here
    python benchmarks/targets.py --fashion        # also the Fashion-MNIST recipe (about 30 min more)
    python benchmarks/targets.py --write          # the tables and the verdicts into BENCHMARKS.md
    python benchmarks/targets.py --check DIR      # only the verdicts, from the results a run kept in DIR

It runs, in this order, each as documented in DEVELOPERS.md and each
writing its own table (with `--write`):
    inference.py                       ViT-B/16 inference, batch 1 and 8, 3 interleaved rounds
    training.py --cases tiny           the 32x32 from-scratch case, 3 rounds
    training.py --cases vit_s16        ViT-S/16, batch 16 and 32, 3 rounds of 2-step repeats
    time_to_accuracy.py digits         the main job (and fashion_mnist with --fashion)
    bf16_agreement.py                  on the runs just trained, and ViT-B/16 on photos
and keeps their JSON results in `--results DIR` (default: a temporary
directory). Then it prints one row per target: what was measured, the
threshold, and whether it holds. The ratios are between systems measured
in the same invocation, as the issue asks.

The targets (ratios of img/s; memory is peak resident memory):
    1. ViT-B/16 float32 inference, batch 1 and 8, through predict_on_batch,
       the direct call and the SavedModel: >= 1.15x timm, >= 1.1x keras-hub
    2. mixed_bfloat16 inference, batch 8: >= 2.0x timm's float32 on a CPU
       where bfloat16 is faster (`keras_vit.bfloat16_cpu()`; elsewhere the
       row reads "n/a" and does not count); top-1
       agreement with float32 >= 99% on the trained models' test splits
       (bf16_agreement.py's random-weight ViT-B/16 row is in its table but
       not checked: with random weights the classes are near ties that
       rounding flips; BENCHMARKS.md)
    3. model.fit throughput: ViT-S/16 batch 16 and 32, the tiny case
       batch 128: >= 1.1x timm
    4. ViT-B/16 inference, batch 8: peak memory <= 1.2x timm's
    5. time to accuracy recorded (digits >= 97% in 180 s; Fashion-MNIST
       >= 91% in 1800 s with --fashion)

The exit status is 0 when every target holds, 1 otherwise.
"""

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _common  # noqa: E402

INFERENCE_PATHS = {"keras_vit": "predict_on_batch", "keras_vit_call": "direct call",
                   "keras_vit_savedmodel": "SavedModel"}
TRAINING_CASES = (("vit_s16", 16), ("vit_s16", 32), ("tiny", 128))
THRESHOLDS = {"vs_timm": 1.15, "vs_keras_hub": 1.1, "bf16_vs_timm": 2.0, "agreement": 0.99,
              "training_vs_timm": 1.1, "memory_vs_timm": 1.2}


def _find(results, **identity):
    """The result whose fields match `identity`, or None (also for a failed one)."""
    for r in results:
        if all(r.get(k) == v for k, v in identity.items()):
            return None if "error" in r else r
    return None


def _row(target, what, value, threshold, at_least=True, unit="x"):
    if value is None:
        return dict(target=target, what=what, measured="missing", threshold="", verdict="MISSING")
    holds = value >= threshold if at_least else value <= threshold
    # Three decimals: a ratio of 1.0996 against 1.1 must not read "1.10x, NOT MET".
    shown = f"{value:.3f}{unit}" if unit == "x" else f"{value:.4f}"
    bound = (">= " if at_least else "<= ") + (f"{threshold}{unit}" if unit == "x" else f"{threshold}")
    return dict(target=target, what=what, measured=shown, threshold=bound, verdict="met" if holds else "NOT MET")


def _ratio(a, b, key="img_per_s"):
    return a[key] / b[key] if a and b else None


def check(inference, training, agreement, time_to_accuracy):
    """One row per target from the scripts' JSON results: `inference` and
    `training` (lists of results as saved by inference.py and training.py),
    `agreement` (bf16_agreement.py's single result) and `time_to_accuracy`
    (a list of time_to_accuracy.py's records). Missing or failed results
    give MISSING rows, which count as not met."""
    rows = []
    for batch in (1, 8):
        timm = _find(inference, system="timm", batch=batch)
        hub = _find(inference, system="keras_hub", batch=batch)
        for system, path in INFERENCE_PATHS.items():
            mine = _find(inference, system=system, batch=batch)
            rows.append(_row(1, f"inference batch {batch}, {path}, vs timm", _ratio(mine, timm),
                             THRESHOLDS["vs_timm"]))
            rows.append(_row(1, f"inference batch {batch}, {path}, vs keras-hub", _ratio(mine, hub),
                             THRESHOLDS["vs_keras_hub"]))
    timm8 = _find(inference, system="timm", batch=8)
    bf16 = _find(inference, system="keras_vit_bf16", batch=8)
    row = _row(2, "mixed_bfloat16 inference batch 8 vs timm's float32", _ratio(bf16, timm8),
               THRESHOLDS["bf16_vs_timm"])
    if bf16 and bf16.get("bfloat16_cpu") is False and row["verdict"] == "NOT MET":
        # The target is for CPUs whose bfloat16 arithmetic is faster than
        # float32. Where `keras_vit.bfloat16_cpu()` is False (e.g. Intel's
        # AVX-512-BF16 without AMX: bfloat16 dot products at the float32
        # rate) 2x timm's float32 is out of reach of any software, and
        # users are told to stay in float32; the row says so.
        row["verdict"] = "n/a: no fast bfloat16 on this CPU"
    rows.append(row)
    trained = [r for r in (agreement or {}).get("rows", []) if "accuracy_float32" in r]
    if not trained:
        rows.append(_row(2, "bfloat16 top-1 agreement, trained models", None, THRESHOLDS["agreement"]))
    for r in trained:
        rows.append(_row(2, f"bfloat16 top-1 agreement, {r['model']}", r["agreement"],
                         THRESHOLDS["agreement"], unit=""))
    for case, batch in TRAINING_CASES:
        ratio = _ratio(_find(training, system="keras_vit", case=case, batch=batch),
                       _find(training, system="timm", case=case, batch=batch))
        rows.append(_row(3, f"model.fit {case} batch {batch} vs timm", ratio, THRESHOLDS["training_vs_timm"]))
    rows.append(_row(4, "peak memory, inference batch 8, vs timm",
                     _ratio(_find(inference, system="keras_vit", batch=8), timm8, "peak_rss_mb"),
                     THRESHOLDS["memory_vs_timm"], at_least=False))
    if not time_to_accuracy:
        rows.append(_row(5, "time to accuracy", None, None))
    for record in time_to_accuracy or []:
        rows.append(dict(target=5, what=f"time to accuracy, {record['data']}",
                         measured=f"{record['test_accuracy']:.4f} in {record['wall_time_s']:.0f} s",
                         threshold="recorded", verdict="recorded",
                         recipe_verdict=record["verdict"]))
    return rows


def all_met(rows):
    return all(r["verdict"] in ("met", "recorded") or r["verdict"].startswith("n/a") for r in rows)


def table(rows):
    lines = ["| target | what | measured | threshold | verdict |", "|---|---|---|---|---|"]
    for r in rows:
        verdict = r["verdict"]
        if "recipe_verdict" in r:
            verdict += f" (recipe target: {r['recipe_verdict']})"
        lines.append(f"| {r['target']} | {r['what']} | {r['measured']} | {r['threshold']} | {verdict} |")
    return "\n".join(lines)


def _load(path, default):
    return json.loads(path.read_text()) if path.exists() else default


def _run(script, *args):
    command = [sys.executable, str(HERE / script), *args]
    print("\n$ " + " ".join(["python", f"benchmarks/{script}", *args]), flush=True)
    # A failed benchmark leaves its result missing, which the check reports.
    return subprocess.run(command).returncode


def run_all(results, fashion, write):
    results.mkdir(parents=True, exist_ok=True)
    extra = ["--write"] if write else []
    _run("inference.py", "--json", str(results / "inference.json"), *extra)
    _run("training.py", "--cases", "tiny", "--rounds", "3", "--json", str(results / "training-tiny.json"), *extra)
    _run("training.py", "--cases", "vit_s16", "--steps", "2", "--rounds", "3",
         "--json", str(results / "training-vit_s16.json"), *extra)
    runs = []
    for data in ["digits"] + (["fashion_mnist"] if fashion else []):
        _run("time_to_accuracy.py", "--keep", str(results / f"run-{data}"),
             "--json", str(results / f"time_to_accuracy-{data}.json"), data)
        if (results / f"run-{data}" / "results.json").exists():
            runs.append(str(results / f"run-{data}"))
    if runs:
        _run("bf16_agreement.py", "--json", str(results / "bf16.json"), *runs, *extra)


def check_dir(results):
    """`check` on the results kept in `results`; returns the rows and the
    inference results (whose versions head the verdict table)."""
    inference = _load(results / "inference.json", [])
    agreement = _load(results / "bf16.json", [])
    rows = check(
        inference,
        _load(results / "training-tiny.json", []) + _load(results / "training-vit_s16.json", []),
        agreement[0] if agreement else None,
        [_load(path, None) for path in sorted(results.glob("time_to_accuracy-*.json"))],
    )
    return rows, inference


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fashion", action="store_true", help="also run the Fashion-MNIST recipe")
    parser.add_argument("--write", action="store_true",
                        help="write every table and the verdicts into BENCHMARKS.md")
    parser.add_argument("--results", metavar="DIR", help="keep the results (JSON, trained runs) in DIR")
    parser.add_argument("--check", metavar="DIR", help="run nothing: check the results kept in DIR")
    args = parser.parse_args(argv)
    if args.check:
        results = pathlib.Path(args.check)
        if not (results / "inference.json").exists():
            parser.error(f"--check {args.check}: no inference.json there; pass a directory that "
                         "`targets.py --results DIR` filled")
        rows, inference = check_dir(results)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            results = pathlib.Path(args.results or tmp)
            run_all(results, args.fashion, args.write)
            rows, inference = check_dir(results)
    how = ("issue 6's targets, each ratio between systems measured in the same invocation "
           f"(`benchmarks/targets.py`): {'all met' if all_met(rows) else 'NOT all met'}")
    _common.publish(inference, how, table(rows), "targets", "Issue 6's targets (`benchmarks/targets.py`)",
                    args.write)
    return 0 if all_met(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
