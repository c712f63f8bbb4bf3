"""What this machine's CPU can do, for choices that depend on it (the training precision).

bfloat16 is fast only where the hardware has it: GPUs, and CPUs with AVX-512 BF16 or AMX. On a
CPU without either, TensorFlow's bfloat16 convolutions fall back to slow kernels: the demo
recipe's training step took 41 s in bfloat16 against 1.9 s in float32 on a 2-core AVX2-only
AMD EPYC (docs/benchmarks.md, "Precision by CPU"). ``--mixed_precision=auto`` therefore means
bfloat16 where it is native and float32 elsewhere.
"""

from __future__ import annotations

import functools

import tensorflow as tf

NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def _first_cpu(cpuinfo: str = "/proc/cpuinfo") -> dict[str, str]:
    """``key: value`` lines of the first CPU block of ``cpuinfo`` (empty where there is no
    such file)."""
    fields = {}
    try:
        with open(cpuinfo) as f:
            for line in f:
                if not line.strip():
                    if fields:
                        break
                    continue
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


@functools.lru_cache(maxsize=1)
def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """The feature flags of the first CPU in ``cpuinfo`` (empty where there is no such file)."""
    return frozenset(_first_cpu(cpuinfo).get("flags", "").split())


def native_bfloat16(flags: frozenset[str] | None = None, has_accelerator: bool | None = None):
    """True on a GPU/TPU, or on a CPU with AVX-512 BF16 or AMX (``NATIVE_BF16_CPU_FLAGS``)."""
    if has_accelerator is None:
        has_accelerator = bool(
            tf.config.list_physical_devices("GPU") or tf.config.list_physical_devices("TPU")
        )
    if has_accelerator:
        return True
    flags = cpu_flags() if flags is None else flags
    return any(flag in flags for flag in NATIVE_BF16_CPU_FLAGS)


def resolve_mixed_precision(value: str, **kwargs) -> str:
    """``value`` unless it is ``auto``: then ``bfloat16`` where native, else ``''`` (float32)."""
    if value != "auto":
        return value
    return "bfloat16" if native_bfloat16(**kwargs) else ""


def describe_cpu() -> str:
    """One line: the CPU model and which of AVX2 / AVX-512 / AVX-512 BF16 / AMX it has."""
    model = _first_cpu().get("model name", "unknown CPU")
    flags = cpu_flags()
    have = [
        name
        for name, flag in (
            ("AVX2", "avx2"),
            ("AVX-512", "avx512f"),
            ("AVX-512 BF16", "avx512_bf16"),
            ("AMX", "amx_bf16"),
        )
        if flag in flags
    ]
    return f"{model} ({', '.join(have) or 'no AVX2'})"
