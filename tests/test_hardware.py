"""Tests for solo_tf.hardware: the precision that --mixed_precision=auto picks."""

import pytest

from solo_tf import hardware

CPUINFO = """processor\t: 0
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx2 fma {extra}

processor\t: 1
flags\t\t: fpu
"""


@pytest.mark.parametrize(
    "extra, native",
    [
        ("", False),
        ("avx512f avx512_vnni", False),
        ("avx512f avx512_bf16", True),
        ("amx_bf16", True),
    ],
)
def test_cpu_flags_and_auto_precision(tmp_path, extra, native):
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO.format(extra=extra))
    flags = hardware.cpu_flags.__wrapped__(str(path))  # the first CPU's line only
    assert "avx2" in flags and ("fpu" in flags)
    assert hardware.native_bfloat16(flags, has_accelerator=False) is native
    chosen = hardware.resolve_mixed_precision("auto", flags=flags, has_accelerator=False)
    assert chosen == ("bfloat16" if native else "")


def test_accelerator_means_bfloat16_and_explicit_choices_pass_through():
    none = frozenset()
    assert hardware.resolve_mixed_precision("auto", flags=none, has_accelerator=True) == "bfloat16"
    for value in ("", "bfloat16", "float16"):
        assert hardware.resolve_mixed_precision(value, flags=none, has_accelerator=False) == value


def test_missing_cpuinfo_means_no_flags(tmp_path):
    assert hardware.cpu_flags.__wrapped__(str(tmp_path / "absent")) == frozenset()
