"""``dataflow doctor``: the report (vendor, kernel, threads, vector extensions, cores,
steering variables) and its flags, on faked machines and environments; the probe that
measures a forced kernel's cost is faked too, except for one real run with the
environment as it is. Nothing here changes a BLAS variable."""

from __future__ import annotations

import os

import pytest

from dataflow import doctor
from dataflow.cli import main
from dataflow.doctor import Library, Probe

AVX512_CPU = """processor\t: 0
model name\t: Fake CPU 9000
flags\t\t: fpu sse sse2 sse4_1 sse4_2 avx avx2 fma avx512f avx512cd avx512bw avx512dq avx512vl
"""
AVX2_CPU = """processor\t: 0
model name\t: Older CPU
flags\t\t: fpu sse sse2 sse4_2 avx avx2 fma
"""
FORCED = {"OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_L2_SIZE": "512", "HOME": "/root"}


def openblas(arch: str = "Haswell", threads: int = 2) -> Library:
    return Library("blas", "openblas", "0.3.31", threads, arch, "pthreads",
                   "/x/libscipy_openblas64_.so")


class FakeProbe:
    """Answers like ``run_probe``: the forced kernel with the variables, the CPU's own
    without; records what it was asked to unset."""

    def __init__(self, native: Probe | None = None):
        self.native = native or Probe(0.86e-3, "SkylakeX")
        self.calls: list[tuple[str, ...]] = []

    def __call__(self, unset):
        self.calls.append(tuple(unset))
        return self.native if unset else Probe(1.68e-3, "Haswell")


def machine(env=FORCED, cpuinfo=AVX512_CPU, libs=None, cores=2):
    return doctor.inspect(env=env, cpuinfo=cpuinfo,
                          libraries=[openblas()] if libs is None else libs, cores=cores)


def test_header_names_vendor_kernel_threads_extensions_cores_and_variables():
    env = {**FORCED, "MKL_CBWR": "AVX2", "OMP_NUM_THREADS": "1"}
    lines = doctor.header(machine(env=env))
    text = "\n".join(lines)
    assert lines[0].startswith("machine: ") and "Fake CPU 9000" in lines[0]
    assert "2 cores" in lines[0]
    assert "blas: openblas 0.3.31, kernel Haswell (AVX2), 2 threads, pthreads" in text
    assert "avx2 fma avx512f" in text and "(up to AVX-512 kernels)" in text
    assert "OPENBLAS_CORETYPE=Haswell OPENBLAS_L2_SIZE=512" in text
    assert "MKL_CBWR=AVX2" in text and "OMP_NUM_THREADS=1" in text
    assert "HOME" not in text  # only the variables that steer the kernels
    assert "unset: OPENBLAS_NUM_THREADS MKL_NUM_THREADS" in text


def test_forced_older_kernel_is_flagged_with_the_measured_gain():
    probe = FakeProbe()
    (found,) = doctor.findings(machine(), probe)
    assert found.kind == "old kernel"
    assert probe.calls == [(), ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")]
    assert found.gain == pytest.approx(1.68 / 0.86)
    assert "OPENBLAS_CORETYPE=Haswell" in found.message and "AVX-512" in found.message
    assert "picks SkylakeX" in found.message and "0.86 ms instead of 1.68 ms" in found.message
    assert "1.95x" in found.message
    assert "unset OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE" in found.advice


def test_without_a_probe_the_flag_stands_without_a_gain():
    (found,) = doctor.findings(machine(), probe=None)
    assert found.kind == "old kernel" and found.gain is None


@pytest.mark.parametrize("case", ["no variable", "kernel as new as the cpu",
                                  "cpu has no avx-512", "variables change nothing"])
def test_no_flag_when_nothing_is_forced_below_the_cpu(case):
    probe = FakeProbe()
    if case == "no variable":
        m = machine(env={"HOME": "/root"}, libs=[openblas("SkylakeX")])
    elif case == "kernel as new as the cpu":
        m = machine(libs=[openblas("SkylakeX")])
    elif case == "cpu has no avx-512":
        m = machine(cpuinfo=AVX2_CPU)
    else:
        probe = FakeProbe(native=Probe(1.7e-3, "Haswell"))
        m = machine()
    assert doctor.findings(m, probe) == []
    if case != "variables change nothing":
        assert probe.calls == []  # nothing to measure: no subprocess


def test_a_build_that_needs_the_variables_is_told_to_keep_them():
    probe = FakeProbe(native=Probe(None, None, "exit status -4: Illegal instruction"))
    (found,) = doctor.findings(machine(), probe)
    assert found.kind == "kernel variables needed"
    assert "Illegal instruction" in found.message
    assert found.advice.startswith("keep OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE")


def test_oversubscription_is_flagged():
    m = machine(env={"OMP_NUM_THREADS": "16"}, libs=[openblas("SkylakeX", threads=8)], cores=2)
    found = doctor.findings(m, FakeProbe())
    assert [f.kind for f in found] == ["oversubscription", "oversubscription"]
    assert "openblas runs 8 threads on 2 cores" in found[0].message
    assert "OMP_NUM_THREADS=16" in found[1].message
    m = machine(env={"OMP_NUM_THREADS": "2"}, libs=[openblas("SkylakeX", threads=2)], cores=2)
    assert doctor.findings(m, FakeProbe()) == []


def test_real_probe_reports_the_running_kernel_and_leaves_the_environment_alone():
    before = dict(os.environ)
    result = doctor.run_probe((), reps=3)
    assert os.environ == before
    assert result.error is None and result.seconds > 0
    blas = [lib for lib in doctor.loaded_libraries() if lib.user_api == "blas"]
    if blas:
        assert result.architecture == blas[0].architecture


def test_cli_doctor_prints_the_report_and_the_flags(monkeypatch, capsys):
    probe = FakeProbe()
    monkeypatch.setattr(doctor, "run_probe", probe)
    faked = machine()
    monkeypatch.setattr(doctor, "inspect", lambda: faked)
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("machine: ")
    assert "! old kernel: OPENBLAS_CORETYPE=Haswell" in out and "1.95x" in out
    assert "advice: " in out
    assert main(["doctor", "--no-probe"]) == 0
    assert "1.95x" not in capsys.readouterr().out
    assert len(probe.calls) == 2


def test_cli_doctor_on_this_machine_without_probe(capsys):
    assert main(["doctor", "--no-probe"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("machine: ")
    assert "environment: " in out and "engine default: " in out
