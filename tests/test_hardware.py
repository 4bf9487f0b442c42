"""Device profiles: datasheet peaks, precision-dependent effective peaks, auto-detection, override."""

import math

import pytest

from mamba2_jax import hardware as hw

SMALL = dict(matmul_n=64, bandwidth_bytes=1 << 20, reps=2, measure_bf16=False)


@pytest.mark.parametrize("desc,name", [
    ({"platform": "tpu", "device_kind": "TPU v6 lite"}, "tpu_v6e"),
    ({"platform": "tpu", "device_kind": "TPU v6e"}, "tpu_v6e"),
    ({"platform": "tpu", "device_kind": "TPU v5 lite"}, "unknown"),
    ({"platform": "gpu", "device_kind": "NVIDIA H100 80GB HBM3"}, "h100_sxm"),
    ({"platform": "gpu", "device_kind": "NVIDIA H100 PCIe"}, "unknown"),
    ({"platform": "gpu", "device_kind": "NVIDIA L40S"}, "l40s"),
    ({"platform": "gpu", "device_kind": "NVIDIA A100-SXM4-80GB"}, "unknown"),
    ({"platform": "cpu", "device_kind": "cpu"}, "cpu"),
])
def test_detect_profile_name(desc, name):
    assert hw.detect_profile_name(desc) == name


def test_datasheet_numbers():
    t, l, h = hw.PROFILES["tpu_v6e"], hw.PROFILES["l40s"], hw.PROFILES["h100_sxm"]
    ap = pytest.approx
    assert (t.peak["bfloat16"], t.bandwidth, t.memory_bytes) == ap((918e12, 1638e9, 32e9))
    assert (l.peak["bfloat16"], l.peak["float32"], l.bandwidth) == ap((362.05e12, 91.6e12, 864e9))
    assert (h.peak["bfloat16"], h.peak["float32"], h.bandwidth) == ap((989.4e12, 66.9e12, 3.35e12))
    assert all(p.source for p in (t, l, h))


def test_effective_peak_depends_on_precision():
    t = hw.PROFILES["tpu_v6e"]
    assert t.peak_flops("bfloat16")[0] == 918e12
    assert t.peak_flops("float32", "default")[0] == 918e12          # 1 bf16 pass
    assert t.peak_flops("float32", "high")[0] == pytest.approx(918e12 / 3)
    assert t.peak_flops("float32", "highest")[0] == pytest.approx(918e12 / 6)
    assert t.peak_flops("float32", None)[0] == pytest.approx(918e12 / 6)  # library parity policy
    assert "6 bf16 pass" in t.peak_flops("float32", "highest")[1]
    g = hw.PROFILES["h100_sxm"]
    assert g.peak_flops("float32", "highest")[0] == pytest.approx(66.9e12)
    assert g.peak_flops("float32", "default")[0] == pytest.approx(494.7e12)          # TF32
    assert g.peak_flops("bfloat16")[0] == pytest.approx(989.4e12)
    assert hw.matmul_passes("tpu", "highest") == 6 and hw.matmul_passes("gpu", "highest") == 1


def test_cpu_profile_is_measured():
    p = hw.measure_cpu_profile(**SMALL)
    assert p.measured and p.kind == "cpu" and p.name == "cpu"
    assert p.peak["float32"] > 1e8 and p.bandwidth > 1e8
    assert p.details["bandwidth"]["bytes_per_call"] == 2 * (1 << 20)
    assert p.peak_flops("float32")[0] == p.peak["float32"]
    assert hw.measure_cpu_profile(**SMALL) is p  # cached per process


def test_resolve_auto_on_this_machine():
    r = hw.resolve_profile("auto", **SMALL)
    assert r["detected"] == "cpu" and r["matches_device"] and r["profile"].measured


def test_resolve_override_records_mismatch():
    r = hw.resolve_profile("tpu_v6e", desc={"platform": "cpu", "device_kind": "cpu"})
    assert r["profile"].name == "tpu_v6e" and not r["matches_device"] and r["detected"] == "cpu"
    r = hw.resolve_profile("h100", desc={"platform": "gpu", "device_kind": "NVIDIA H100 80GB HBM3"})
    assert r["profile"].name == "h100_sxm" and r["matches_device"]
    with pytest.raises(ValueError, match="unknown hardware profile"):
        hw.resolve_profile("a100", desc={"platform": "cpu", "device_kind": "cpu"})


def test_unknown_accelerator_has_no_peaks():
    r = hw.resolve_profile("auto", desc={"platform": "gpu", "device_kind": "NVIDIA A100"})
    assert r["profile"].name == "unknown" and math.isnan(r["profile"].peak_flops("float32")[0])
    from mamba2_jax.eval.bench import utilisation

    assert utilisation(1e9, 1.0, r["profile"].peak_flops("float32")[0]) is None
