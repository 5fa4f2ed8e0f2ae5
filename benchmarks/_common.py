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
    try:
        with open("/proc/cpuinfo") as f:
            return re.search(r"model name\s*:\s*(.*)", f.read()).group(1).strip()
    except (OSError, AttributeError):
        return platform.processor() or platform.machine()


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


def header(results, how):
    """The machine, the versions every worker reported, the date and `how`."""
    import time

    versions = {}
    for r in results:
        versions.update(r.get("versions", {}))
    return (f"Machine: {cpu_model()}, {os.cpu_count()} cores; Python {platform.python_version()}; "
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


def publish(results, how, table, name, title, write):
    """Prints the header and the table; with `write`, puts them into BENCHMARKS.md."""
    markdown = header(results, how) + "\n\n" + table
    print("\n" + markdown)
    if write:
        write_block(name, title, markdown)
    return 0
