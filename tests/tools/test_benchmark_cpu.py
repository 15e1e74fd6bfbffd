"""benchmarks.cpu_description / describe_cpu: every benchmark records whether the CPU has the INT8
dot-product instructions (VNNI, AMX), since INT8's speed-up over float32 depends on them (1.2-1.9x
without, 2-3.6x with them on the same 2-core machine class: docs/deployment.md)."""
import os

from benchmarks import cpu_description, describe_cpu

FLAGS_AVX2 = "fpu vme sse sse2 avx avx2 fma avx512f avx512bw"


def _cpuinfo(tmp_path, flags: str) -> str:
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: {flags}\n\n"
                    f"processor\t: 1\nmodel name\t: Test CPU 9000\nflags\t\t: {flags}\n")
    return str(path)


def test_dot_product_flags_are_listed_in_a_fixed_order(tmp_path):
    info = cpu_description(_cpuinfo(tmp_path, FLAGS_AVX2 + " amx_int8 avx512_vnni avx512_bf16"))
    assert info == {"cpu": "Test CPU 9000", "cpu_count": os.cpu_count(),
                    "cpu_int8_dot_product": ["avx512_vnni", "amx_int8"]}
    assert describe_cpu(info) == f"Test CPU 9000 ({os.cpu_count()} cores; INT8 dot products: avx512_vnni, amx_int8)"


def test_a_cpu_without_them_says_none_and_an_unreadable_file_says_not_known(tmp_path):
    none = cpu_description(_cpuinfo(tmp_path, FLAGS_AVX2 + " avx512_vnnix"))  # whole flags only
    assert none["cpu_int8_dot_product"] == []
    assert describe_cpu(none).endswith("INT8 dot products: none (no VNNI or AMX))")
    missing = cpu_description(str(tmp_path / "absent"))
    assert missing["cpu_int8_dot_product"] is None
    assert describe_cpu(missing).endswith("INT8 dot products: not known)")
