"""The machine a benchmark ran on: versions and hardware, peak memory, measured memory bandwidth and
the roofline of an autoregressive step."""
from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import jax

from .settings import AR


def peak_host_mb() -> float | None:
    """Peak resident memory of this whole process so far, in MiB."""
    try:
        import resource
    except ImportError:  # Windows: psutil's current RSS is the best available
        try:
            import psutil
        except ImportError:
            return None
        return psutil.Process().memory_info().rss / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def peak_device_mb() -> float | None:
    """Peak memory of the first accelerator, when its runtime reports one (CPU reports nothing)."""
    stats = jax.devices()[0].memory_stats()
    if not stats or "peak_bytes_in_use" not in stats:
        return None
    return stats["peak_bytes_in_use"] / 2**20


def machine_info() -> dict[str, Any]:
    def version(package):
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return None

    cpu = platform.processor() or None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    device = jax.devices()[0]
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            **{name: version(name) for name in ("jax", "jaxlib", "flax", "transformers", "torch")},
            "backend": jax.default_backend(), "device_kind": device.device_kind, "device_count": jax.device_count()}


def measure_bandwidth(megabytes: int = 512, repeats: int = 5) -> dict[str, float]:
    """Memory bandwidth as XLA sees it here: a float32 reduction and a matrix-vector product."""
    import jax
    import jax.numpy as jnp

    n = megabytes * 2**20 // 4
    cols = 4096
    matrix = jnp.ones((n // cols, cols), jnp.float32)
    vector = jnp.ones((cols,), jnp.float32)
    kernels = {"reduction_gb_s": jax.jit(jnp.sum), "matvec_gb_s": jax.jit(lambda m: m @ vector)}
    out = {}
    for name, kernel in kernels.items():
        kernel(matrix).block_until_ready()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            kernel(matrix).block_until_ready()
            times.append(time.perf_counter() - start)
        out[name] = matrix.nbytes / min(times) / 1e9
    return out


def roofline(model, rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Autoregressive step time against weight bytes / bandwidth (a decode step reads every weight)."""
    import jax

    ar = [r for r in rows if r["method"] == AR and r["tokens_per_s"]]
    if not ar or ar[0]["batch_size"] != 1:
        return None
    weight_bytes = sum(x.nbytes for x in jax.tree.leaves(model.params))
    bandwidth = measure_bandwidth()
    step_ms = 1000 / ar[0]["tokens_per_s"]
    best = max(bandwidth.values())
    return {"weight_bytes": weight_bytes, **bandwidth, "ar_step_ms": step_ms,
            "roofline_step_ms": weight_bytes / best / 1e6,
            "ar_step_over_roofline": step_ms / (weight_bytes / best / 1e6)}
