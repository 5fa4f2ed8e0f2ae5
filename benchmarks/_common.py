"""Helpers shared by the benchmark scripts: each system runs in its own
process, reports one `RESULT {json}` line, and the table goes into a marked
block of BENCHMARKS.md."""

import json
import os
import pathlib
import platform
import re
import subprocess

HERE = pathlib.Path(__file__).resolve().parent


def peak_rss_mb():
    """This process's peak resident memory (VmHWM), in MB."""
    with open("/proc/self/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+)", f.read()).group(1)) / 1024


def cpu_model():
    """The CPU as /proc/cpuinfo names it, with its family and model numbers
    and the instructions the numbers depend on: cloud VMs name very
    different CPUs "AMD EPYC" (Zen 2 without AVX-512, Zen 4 with it)."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
        name = re.search(r"model name\s*:\s*(.*)", text).group(1).strip()
        family = re.search(r"cpu family\s*:\s*(\d+)", text).group(1)
        model = re.search(r"^model\s*:\s*(\d+)", text, re.M).group(1)
    except (OSError, AttributeError):
        return platform.processor() or platform.machine()
    flags = cpu_flags()
    features = [label for flag, label in (("avx512f", "AVX-512"), ("avx512_bf16", "AVX512-BF16"),
                                          ("amx_bf16", "AMX")) if flag in flags] or ["AVX2" if "avx2" in flags
                                                                                     else "no AVX2"]
    return f"{name} (family {family}, model {model}; {', '.join(features)})"


def cpu_flags():
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            return set(re.search(r"^flags\s*:\s*(.*)$", f.read(), re.M).group(1).split())
    except (OSError, AttributeError):
        return set()


def system_backend(system):
    """The Keras backend a keras_vit system runs on: `keras_vit_jax*` on
    JAX, `keras_vit_torch*` on PyTorch, the others on TensorFlow."""
    for backend in ("jax", "torch"):
        if system.startswith(f"keras_vit_{backend}"):
            return backend
    return "tensorflow"


def set_backend(system, device="cpu"):
    """Sets Keras' backend for a worker of `system` before Keras is
    imported, and keeps JAX and PyTorch on the CPU unless `device` is
    `"cuda"` (a CUDA build would otherwise take the GPU by itself)."""
    os.environ["KERAS_BACKEND"] = system_backend(system)
    if device == "cpu":
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    if system.startswith("keras_vit") or system == "matmul_floor":
        # First, as a user's `import keras_vit`: it turns on TensorFlow's
        # oneDNN kernels where TensorFlow would leave them off (x86 without
        # AVX512-VNNI/BF16 or AMX), which must happen before TensorFlow
        # loads. The matrix-product floor runs the same kernels.
        import keras_vit  # noqa: F401


def match_jax_float32_matmuls(device):
    """On a GPU, lets PyTorch's float32 matrix products use TF32 as JAX's
    (keras_vit's) do by default, so that the float32 rows compare the same
    arithmetic; PyTorch's own default is full float32 products there."""
    if device != "cpu":
        import torch

        torch.set_float32_matmul_precision("high")


def device_name(system, device):
    """What a worker of `system` ran on: the CPU, or the GPU's name."""
    if device == "cpu" or (not system.startswith("timm") and system_backend(system) == "tensorflow"):
        return cpu_model()
    if system.startswith("timm") or system_backend(system) == "torch":
        import torch

        return torch.cuda.get_device_name()
    import jax

    return jax.devices()[0].device_kind


def report(result):
    """What a worker prints for `run_worker` to read."""
    print("RESULT " + json.dumps(result), flush=True)


def run_worker(command, identity, timeout):
    """Runs one worker process; its result, or `identity` with an error."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    completed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    line = next((l for l in completed.stdout.splitlines() if l.startswith("RESULT ")), None)
    if completed.returncode != 0 or line is None:
        tail = (completed.stderr or completed.stdout).strip().splitlines()[-3:]
        return dict(identity, error=" | ".join(tail)[:300])
    return json.loads(line[len("RESULT "):])


def run_rounds(jobs, rounds, key, timeout, describe):
    """Runs every `(identity, command)` job `rounds` times, interleaved
    (job 1, job 2, ..., then again), and returns one result per job: the
    round whose `key` (ms per batch or step) is the median, with
    `round_img_per_s` listing every round's img/s. This shared VM's speed
    drifts by up to 10% within minutes; interleaving spreads the drift over
    every system instead of letting it land on one. `describe(result)` is
    printed after each run."""
    runs = [[] for _ in jobs]
    for r in range(rounds):
        for (identity, command), results in zip(jobs, runs):
            result = run_worker(command, identity, timeout)
            results.append(result)
            shown = describe(result) if "error" not in result else result["error"]
            prefix = f"round {r + 1}/{rounds} " if rounds > 1 else ""
            print(prefix + " ".join(str(v) for v in identity.values()) + ": " + shown, flush=True)
    combined = []
    for results in runs:
        good = sorted((r for r in results if "error" not in r), key=lambda r: r[key])
        if not good:
            combined.append(results[-1])
            continue
        median = dict(good[(len(good) - 1) // 2])
        median["round_img_per_s"] = [r["img_per_s"] for r in results if "error" not in r]
        median["failed_rounds"] = len(results) - len(good)
        combined.append(median)
    return combined


def img_per_s_cell(result, digits):
    """img/s, with the range over the rounds when there were several."""
    cell = f"{result['img_per_s']:.{digits}f}"
    rounds = result.get("round_img_per_s", [])
    if len(rounds) > 1:
        cell += f" ({min(rounds):.{digits}f}-{max(rounds):.{digits}f})"
    if result.get("failed_rounds"):
        cell += f", {result['failed_rounds']} failed run(s)"
    return cell


def header(results, how):
    """The machine, the versions every worker reported, the date and `how`."""
    import time

    versions = {}
    for r in results:
        versions.update(r.get("versions", {}))
    gpus = sorted({r["device"] for r in results if r.get("device") and r["device"] != cpu_model()})
    return (f"Machine: {cpu_model()}, {os.cpu_count()} cores" + "".join(f"; GPU: {gpu}" for gpu in gpus)
            + f"; Python {platform.python_version()}; "
            + ", ".join(f"{k} {v}" for k, v in sorted(versions.items()))
            + f"; {time.strftime('%Y-%m-%d')}; {how}")


def write_block(name, title, markdown):
    """Replaces (or appends) the `<!-- name:begin/end -->` block of BENCHMARKS.md."""
    path = HERE.parent / "BENCHMARKS.md"
    text = path.read_text()
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{markdown}\n{end}"
    if begin in text:
        text = re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text += f"\n## {title}\n\n{block}\n"
    path.write_text(text)


def publish(results, how, table, name, title, write, json_path=None):
    """Prints the header and the table; with `write`, puts them into
    BENCHMARKS.md; with `json_path`, also saves the results there (for
    `benchmarks/targets.py`)."""
    markdown = header(results, how) + "\n\n" + table
    print("\n" + markdown)
    if write:
        write_block(name, title, markdown)
    if json_path:
        save_json(json_path, results)
    return 0


def save_json(path, value):
    """Writes `value` as JSON to `path` through a temporary file and a rename."""
    path = pathlib.Path(path)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(value, indent=1))
    os.replace(temporary, path)
