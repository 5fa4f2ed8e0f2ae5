"""Time to accuracy of the training recipes, from scratch, on this machine.

Run (with nothing else running; on 2 cores a background job halves the numbers):
    python benchmarks/time_to_accuracy.py digits          # the main job's recipe
    python benchmarks/time_to_accuracy.py fashion_mnist   # needs dataset-fashion-mnist

    python benchmarks/time_to_accuracy.py --keep runs/fmnist fashion_mnist --random-erasing 0.25
                                                          # keeps the run; extra train options last

It runs `keras-vit train --data NAME --output ...` exactly as the
README documents it, then prints one line:
    digits: test accuracy 0.97xx in NNN s (target >= 0.97 in <= 180 s): PASS
(with the accuracy without test-time augmentation beside it where the
recipe has one: Fashion-MNIST's flips) and appends the result, with the machine and versions, to
benchmarks/results.jsonl.
"""

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

TARGETS = {"digits": (0.97, 180.0), "fashion_mnist": (0.91, 1800.0)}
HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _common  # noqa: E402


def machine():
    import keras
    import tensorflow as tf

    return {
        "cpus": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        # The CPU model: the same recipe's time differs between the VM's
        # machines (BENCHMARKS.md: AMD EPYC and Intel Xeon).
        "cpu_model": _common.cpu_model(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", choices=sorted(TARGETS))
    parser.add_argument("--keep", metavar="DIR", help="train into DIR and keep the run (default: a temporary "
                                                       "directory, removed afterwards)")
    parser.add_argument("--json", metavar="PATH", help="also save the result as JSON")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="more keras-vit train options")
    args = parser.parse_args(argv)
    for option in ("--keep", "--json"):
        # Everything after the data set's name goes to `keras-vit train`,
        # which does not know these options.
        if any(arg == option or arg.startswith(option + "=") for arg in args.extra):
            parser.error(f"{option} must come before the data set's name, received it after "
                         f"{args.data!r}: {' '.join(args.extra)}")
    target_accuracy, target_seconds = TARGETS[args.data]
    with tempfile.TemporaryDirectory() as tmp:
        output = pathlib.Path(args.keep) if args.keep else pathlib.Path(tmp) / args.data
        command = [sys.executable, "-m", "keras_vit.cli", "train", "--data", args.data,
                   "--output", str(output), "--verbose", "2"] + args.extra
        started = time.time()
        returncode = subprocess.run(command).returncode
        wall = time.time() - started
        if returncode != 0:
            # keras-vit train has printed its own error above.
            print(f"{args.data}: keras-vit train failed with exit status {returncode} after "
                  f"{wall:.0f} s; nothing recorded", file=sys.stderr)
            return 2
        results = json.loads((output / "results.json").read_text())
    accuracy = results["test_accuracy"]
    # The recipe's result is measured as the recipe says, test-time
    # augmentation included (`tta`; runs before it have none).
    tta = results.get("tta", "none")
    verdict = "PASS" if accuracy >= target_accuracy and wall <= target_seconds else "FAIL"
    without = "" if tta == "none" else \
        f" with {tta} TTA ({results['test_accuracy_without_tta']:.4f} without)"
    print(f"{args.data}: test accuracy {accuracy:.4f}{without} in {wall:.0f} s "
          f"(target >= {target_accuracy} in <= {target_seconds:.0f} s): {verdict}")
    record = {"data": args.data, "command": " ".join(["keras-vit"] + command[3:]),
              "test_accuracy": accuracy, "tta": tta,
              "test_accuracy_without_tta": results.get("test_accuracy_without_tta", accuracy),
              "wall_time_s": round(wall, 1),
              "epochs": results["epochs"], "num_params": results["num_params"],
              "verdict": verdict, "machine": machine(), "date": time.strftime("%Y-%m-%d")}
    with open(HERE / "results.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    if args.json:
        _common.save_json(args.json, record)
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
