"""Distributed training with two local workers (MultiWorkerMirroredStrategy).

Run:
    python examples/distributed.py                   # two worker processes on 127.0.0.1, about a minute
    python examples/distributed.py --epochs 30       # longer

On a real cluster, start the same command on every machine, each with its
own TF_CONFIG (the worker list is the same everywhere; "index" differs):

    TF_CONFIG='{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}' \\
        keras-vit train --strategy multi_worker --output runs/digits

If the workers are stopped (a preempted cluster), start the same commands
again: every worker resumes from the chief's backup in OUTPUT/backup, so
the run directory must be on a file system that all workers share.

This example starts both workers here, as subprocesses of itself, with the
small digits ViT; `--batch-size` is the global batch (32 per worker here).
Only worker 0 (the chief) writes the run directory. It prints:
    worker 0 (chief): test accuracy 0.9x, 2 replicas
    worker 1: finished, wrote nothing
    run directory OUTPUT: best.keras config.json curves.png last.keras log.csv logs results.json
"""

import argparse
import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--output", help="the chief's run directory (default: a temporary folder)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds before the workers are stopped")
    args = parser.parse_args(argv)

    output = pathlib.Path(args.output or pathlib.Path(tempfile.mkdtemp(prefix="keras_vit_mwms_")) / "digits")
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    command = [sys.executable, "-m", "keras_vit", "train", "--strategy", "multi_worker", "--output", str(output),
               "--epochs", str(args.epochs), "--batch-size", "64", "--hidden-dim", "32", "--num-heads", "2",
               "--mlp-dim", "64", "--num-layers", "2", "--learning-rate", "5e-3", "--verbose", "0", "--overwrite"]
    processes = []
    for index in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        processes.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True))
    try:
        finished = [p.communicate(timeout=args.timeout) for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
    for index, (process, (stdout, stderr)) in enumerate(zip(processes, finished)):
        if process.returncode != 0:
            print(f"worker {index} failed ({process.returncode}):\n{stderr[-3000:]}")
            return None
    results = json.loads((output / "results.json").read_text())
    print(f"worker 0 (chief): test accuracy {results['test_accuracy']:.2f}, {results['num_replicas']} replicas")
    print("worker 1: finished, wrote nothing")
    print(f"run directory {output}: " + " ".join(sorted(p.name for p in output.iterdir())))
    return results


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
