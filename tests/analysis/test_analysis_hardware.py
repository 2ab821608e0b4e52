"""The peak table behind MFU (dsv3_jax/analysis/hardware.py): H100/H200/H800 dense BF16 and FP8, matched by
jax's device_kind; a device without an entry (a CPU) has no peak, so MFU reads "n/a"."""

import pytest

from dsv3_jax.analysis.hardware import peak_flops


@pytest.mark.parametrize("kind", ["NVIDIA H100 80GB HBM3", "NVIDIA H200", "NVIDIA H800"])
def test_hopper_peaks(kind):
    assert peak_flops(kind, "bf16") == pytest.approx(989e12)
    assert peak_flops(kind, "fp8") == pytest.approx(1979e12)


def test_unknown_device_has_no_peak_and_a_bad_dtype_is_named():
    assert peak_flops("cpu") is None and peak_flops("NVIDIA A100-SXM4-80GB", "bf16") is None
    with pytest.raises(ValueError, match="peak_flops: dtype must be 'bf16' or 'fp8', got 'fp16'"):
        peak_flops("NVIDIA H100", "fp16")
