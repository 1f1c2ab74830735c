"""Small helpers shared by ``scripts/benchmark.py`` and ``scripts/reproduce.py``.

- :func:`machine_info` / :func:`machine_markdown`: what the numbers were measured on (platform, CPU count, torch,
  threads, load average at the start).
- :func:`time_call`: wall-clock and process-CPU seconds of one call.
- :func:`run_forked`: run a measurement in a forked child and return its JSON-able result. A forked child starts
  with ``ru_maxrss`` equal to its resident size at the fork (Linux ``dup_mm``), so ``maxrss`` deltas inside the
  child measure the peak extra memory of what the child did. Only fork from a process that has not yet run a
  parallel torch operation (GNU OpenMP's thread pool does not survive a fork: the child hangs).
- :func:`paired_verdict`, :func:`equivalence_verdict`, :func:`mean_std`: the verdict rules of the reproduction.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import resource
import statistics
import time
from typing import Any, Callable, Sequence

import torch


def machine_info() -> dict[str, Any]:
    """The machine and the load at the time of the call (call it at the start of a run)."""
    try:
        load = os.getloadavg()
    except OSError:  # pragma: no cover - not on Linux
        load = (float("nan"),) * 3
    return {
        "platform": platform.platform(),
        "processor": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU)",
        "python": platform.python_version(),
        "load_average_start": [round(x, 2) for x in load],
        "date_start": datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S %Z").strip(),
    }


def machine_markdown(info: dict[str, Any]) -> str:
    load = ", ".join(f"{x:.2f}" for x in info["load_average_start"])
    return (
        f"- platform: `{info['platform']}` ({info['processor']}), {info['cpu_count']} CPUs, GPU: {info['cuda']}\n"
        f"- torch {info['torch']} ({info['torch_threads']} threads), Python {info['python']}\n"
        f"- load average (1, 5, 15 min) at the start: {load} (other processes shared the CPUs when this is above "
        f"{info['cpu_count']})\n"
        f"- started: {info['date_start']}"
    )


def time_call(fn: Callable[[], Any]) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of one call of ``fn``."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def maxrss_mb() -> float:
    """Peak resident set size of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_forked(fn: Callable[[], dict], timeout: float = 600.0) -> dict:
    """Run ``fn`` in a forked child; return its result dict, or ``{"error": ...}`` if it failed or timed out."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_fd)
        try:
            payload = json.dumps(fn())
        except BaseException as err:  # noqa: BLE001 - report any failure to the parent
            payload = json.dumps({"error": f"{type(err).__name__}: {err}"})
        with os.fdopen(write_fd, "w") as handle:
            handle.write(payload)
        os._exit(0)
    os.close(write_fd)
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    import select

    with os.fdopen(read_fd, "rb") as handle:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                return {"error": f"timed out after {timeout:.0f} s"}
            ready, _, _ = select.select([handle], [], [], min(remaining, 1.0))
            if ready:
                chunk = handle.read1(65536)
                if not chunk:
                    break
                chunks.append(chunk)
    os.waitpid(pid, 0)
    text = b"".join(chunks).decode()
    return json.loads(text) if text else {"error": "child exited without a result"}


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value, NaN for none)."""
    values = [float(v) for v in values]
    if not values:
        return float("nan"), float("nan")
    if len(values) == 1:
        return values[0], 0.0
    return statistics.fmean(values), statistics.stdev(values)


def fmt_mean_std(values: Sequence[float], scale: float = 1.0, digits: int = 2) -> str:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return "n/a"
    mean, std = mean_std([scale * v for v in values])
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def paired_verdict(a: Sequence[float], b: Sequence[float], higher_is_better: bool = True) -> dict[str, Any]:
    """Claim "A beats B": per-seed differences d = A - B (sign flipped when lower is better).

    Rule: *reproduced* if mean(d) > 0 and mean(d) > 2 std(d); *not reproduced* if mean(d) < 0 and |mean(d)| > 2 std(d)
    (significantly the other way); otherwise *inconclusive*. With one seed std(d) is unknown: always inconclusive.
    """
    if len(a) != len(b):
        raise ValueError("paired_verdict needs one value of each arm per seed")
    sign = 1.0 if higher_is_better else -1.0
    diffs = [sign * (float(x) - float(y)) for x, y in zip(a, b)]
    mean, std = mean_std(diffs)
    if len(diffs) < 2 or math.isnan(mean):
        verdict = "inconclusive"
    elif mean > 0 and mean > 2 * std:
        verdict = "reproduced"
    elif mean < 0 and -mean > 2 * std:
        verdict = "not reproduced"
    else:
        verdict = "inconclusive"
    return {"verdict": verdict, "mean_diff": mean, "std_diff": std, "n": len(diffs),
            "rule": "d = A - B per seed; reproduced if mean(d) > 0 and mean(d) > 2 std(d); not reproduced if "
                    "mean(d) < 0 and |mean(d)| > 2 std(d); else inconclusive (1 seed: inconclusive)"}


def equivalence_verdict(a: Sequence[float], b: Sequence[float], margin: float) -> dict[str, Any]:
    """Claim "A is about as good as B": per-seed differences d = A - B.

    Rule: *reproduced* if |mean(d)| + 2 std(d) <= margin (the whole ±2 std band inside the margin); *not reproduced*
    if |mean(d)| > margin and |mean(d)| > 2 std(d); otherwise *inconclusive*. One seed: inconclusive.
    """
    if len(a) != len(b):
        raise ValueError("equivalence_verdict needs one value of each arm per seed")
    diffs = [float(x) - float(y) for x, y in zip(a, b)]
    mean, std = mean_std(diffs)
    if len(diffs) < 2 or math.isnan(mean):
        verdict = "inconclusive"
    elif abs(mean) + 2 * std <= margin:
        verdict = "reproduced"
    elif abs(mean) > margin and abs(mean) > 2 * std:
        verdict = "not reproduced"
    else:
        verdict = "inconclusive"
    return {"verdict": verdict, "mean_diff": mean, "std_diff": std, "n": len(diffs), "margin": margin}
