"""``dataflow doctor``: which numeric kernels this machine runs, and the known ways they
run slower than the machine allows.

It reports the BLAS libraries loaded with numpy (vendor, version, the kernel
architecture they run, their thread count), OpenMP runtimes, the CPU's vector
extensions, the cores this process may use and the environment variables that steer
all of these. It flags two known slowdowns:

- a kernel older than the CPU supports, forced by an environment variable (OpenBLAS's
  ``OPENBLAS_CORETYPE``, usually set with ``OPENBLAS_L2_SIZE`` where an older build
  fails to detect a newer CPU; MKL's ``MKL_ENABLE_INSTRUCTIONS``/``MKL_DEBUG_CPU_TYPE``).
  A quick probe measures the gain: a float32 matmul timed in two fresh interpreters,
  one with the environment as it is and one without the forcing variables; those are
  removed from that subprocess's environment only;
- oversubscription: more BLAS or OpenMP threads than cores.

It reports and advises; it never changes these variables (some builds need them).
``python -m dataflow.bench`` prints the same header above its tables.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# Variables that force a BLAS's kernel choice, per vendor; the probe unsets a vendor's
# together (OPENBLAS_L2_SIZE only makes sense with the core type it was set for).
KERNEL_VARIABLES: dict[str, tuple[str, ...]] = {
    "openblas": ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"),
    "mkl": ("MKL_ENABLE_INSTRUCTIONS", "MKL_DEBUG_CPU_TYPE"),
}
# Always listed, set or not; any other variable with one of STEERING_PREFIXES is
# listed when set.
STEERING_VARIABLES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS",
                      "OMP_NUM_THREADS", "MKL_NUM_THREADS")
STEERING_PREFIXES = ("OPENBLAS_", "GOTO_", "OMP_", "KMP_", "MKL_", "BLIS_")
THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS",
                    "MKL_NUM_THREADS", "BLIS_NUM_THREADS")

# The vector extensions worth naming (from /proc/cpuinfo's flags, or Features on ARM).
VECTOR_EXTENSIONS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512cd", "avx512bw",
                     "avx512dq", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16",
                     "avx_vnni", "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve", "sve2")
# x86 kernel levels: what a CPU supports, from its flags, against what a kernel uses.
LEVELS = ("SSE", "AVX", "AVX2", "AVX-512")
LEVEL_FLAGS = ((3, {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"}),
               (2, {"avx2", "fma"}), (1, {"avx"}))
# OpenBLAS's x86 core names (as openblas_get_corename reports them, lower-cased) by the
# level of their kernels; a name not listed is not compared.
OPENBLAS_CORE_LEVELS = {
    "skylakex": 3, "cooperlake": 3, "sapphirerapids": 3,
    "haswell": 2, "zen": 2,
    "sandybridge": 1, "bulldozer": 1, "piledriver": 1, "steamroller": 1, "excavator": 1,
    "nehalem": 0, "core2": 0, "penryn": 0, "dunnington": 0, "atom": 0, "opteron": 0,
    "opteron_sse3": 0, "barcelona": 0, "bobcat": 0, "prescott": 0, "katmai": 0,
    "coppermine": 0, "northwood": 0, "banias": 0, "yonah": 0, "nano": 0,
}
# The probe: a float32 matmul of the MLP's first layer (batch 256, 784 -> 512), on one
# BLAS thread in both subprocesses so that only the kernel differs.
PROBE_SHAPE = (256, 784, 512)
PROBE_CODE = """
import json, time
import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits
m, k, n = {shape}
rng = np.random.default_rng(0)
a = rng.standard_normal((m, k), dtype=np.float32)
b = rng.standard_normal((k, n), dtype=np.float32)
with threadpool_limits(limits=1):
    a @ b
    best = float("inf")
    for _ in range({reps}):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
blas = [lib for lib in threadpool_info() if lib["user_api"] == "blas"]
print(json.dumps({{"seconds": best,
                  "architecture": blas[0].get("architecture") if blas else None}}))
"""


@dataclass
class Library:
    """One loaded BLAS or OpenMP library, as threadpoolctl sees it."""
    user_api: str  # "blas" | "openmp"
    internal_api: str  # "openblas" | "mkl" | "blis" | "openmp"
    version: str | None
    num_threads: int
    architecture: str | None = None
    threading_layer: str | None = None
    filepath: str = ""


@dataclass
class Machine:
    cores: int
    cpu_model: str
    extensions: list[str]
    cpu_level: int | None  # index into LEVELS, None when not x86
    libraries: list[Library]
    environment: dict[str, str]  # the steering variables that are set, sorted
    platform: str = ""
    versions: str = ""


@dataclass
class Probe:
    """One probe run: the matmul's best time and the kernel it ran (None if it failed)."""
    seconds: float | None
    architecture: str | None
    error: str | None = None


@dataclass
class Finding:
    kind: str  # "old kernel" | "oversubscription" | "kernel variables needed"
    message: str
    advice: str
    gain: float | None = None
    details: dict = field(default_factory=dict)


def inspect(env: Mapping[str, str] | None = None, cpuinfo: str | None = None,
            libraries: Sequence[Library] | None = None, cores: int | None = None) -> Machine:
    """What this machine runs; each argument replaces what would be read (for tests)."""
    env = os.environ if env is None else env
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    if libraries is None:
        libraries = loaded_libraries()
    if cores is None:
        from scheduler.blas import cores as usable_cores

        cores = usable_cores()
    model, flags = _parse_cpuinfo(cpuinfo)
    extensions = [x for x in VECTOR_EXTENSIONS if x in flags]
    level = None
    if "sse2" in flags:  # x86: its kernels are compared by level
        level = next((lv for lv, need in LEVEL_FLAGS if need <= flags), 0)
    steering = {k: env[k] for k in sorted(env)
                if k in STEERING_VARIABLES or k.startswith(STEERING_PREFIXES)}
    import numpy as np

    versions = f"Python {platform.python_version()}, numpy {np.__version__}"
    return Machine(cores, model, extensions, level, list(libraries), steering,
                   platform.machine(), versions)


def loaded_libraries() -> list[Library]:
    import numpy  # noqa: F401 - loads the BLAS to be described
    from threadpoolctl import threadpool_info

    return [Library(info["user_api"], info["internal_api"], info.get("version"),
                    info["num_threads"], info.get("architecture"),
                    info.get("threading_layer"), info.get("filepath", ""))
            for info in threadpool_info()]


def _parse_cpuinfo(text: str) -> tuple[str, set[str]]:
    model, flags = "", set[str]()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model", "hardware") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return model, flags


def kernel_level(lib: Library) -> int | None:
    if lib.internal_api != "openblas" or not lib.architecture:
        return None
    return OPENBLAS_CORE_LEVELS.get(lib.architecture.lower())


def header(machine: Machine) -> list[str]:
    """The report's lines: the machine, its kernels, and the variables steering them."""
    cpu = machine.cpu_model or "unknown CPU"
    lines = [f"machine: {machine.platform}, {cpu}, {machine.cores} cores, {machine.versions}"]
    level = f" (up to {LEVELS[machine.cpu_level]} kernels)" if machine.cpu_level is not None \
        else ""
    lines.append(f"cpu vector extensions: {' '.join(machine.extensions) or 'none found'}{level}")
    blas = [lib for lib in machine.libraries if lib.user_api == "blas"]
    for lib in blas:
        kl = kernel_level(lib)
        arch = lib.architecture or "not reported"
        arch += f" ({LEVELS[kl]})" if kl is not None else ""
        lines.append(f"blas: {lib.internal_api} {lib.version or '(version unknown)'}, kernel "
                     f"{arch}, {lib.num_threads} threads"
                     + (f", {lib.threading_layer}" if lib.threading_layer else "")
                     + (f" [{Path(lib.filepath).name}]" if lib.filepath else ""))
    if not blas:
        lines.append("blas: none found by threadpoolctl (numpy's own fallback, or a build "
                     "threadpoolctl does not know)")
    for lib in machine.libraries:
        if lib.user_api == "openmp":
            lines.append(f"openmp: {lib.internal_api} {lib.version or ''}, "
                         f"{lib.num_threads} threads [{Path(lib.filepath).name}]")
    env = machine.environment
    shown = [f"{k}={env[k]}" for k in env]
    unset = [k for k in STEERING_VARIABLES if k not in env]
    lines.append("environment: " + (" ".join(shown) or "none of the steering variables set")
                 + (f" (unset: {' '.join(unset)})" if unset else ""))
    return lines


def run_probe(unset: Sequence[str] = (), reps: int = 20, timeout: float = 120) -> Probe:
    """Time the probe matmul in a fresh interpreter whose environment lacks ``unset``
    (this process's environment is not touched)."""
    env = {k: v for k, v in os.environ.items() if k not in unset}
    site = str(Path(__file__).resolve().parent.parent)  # the same numpy and threadpoolctl
    code = PROBE_CODE.format(shape=PROBE_SHAPE, reps=reps)
    try:
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True, timeout=timeout, cwd=site)
    except subprocess.TimeoutExpired:
        return Probe(None, None, f"no answer in {timeout:g} s")
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [""])[-1]
        return Probe(None, None, f"exit status {done.returncode}{': ' + last if last else ''}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return Probe(result["seconds"], result["architecture"])


ProbeFn = Callable[[Sequence[str]], Probe]


def findings(machine: Machine, probe: ProbeFn | None = run_probe) -> list[Finding]:
    """The known slowdowns on ``machine``; ``probe`` (None: no probe) measures the gain of
    running without the variables that force an older kernel."""
    return _old_kernels(machine, probe) + _oversubscription(machine)


def _old_kernels(machine: Machine, probe: ProbeFn | None) -> list[Finding]:
    out = []
    env = machine.environment
    for vendor, variables in KERNEL_VARIABLES.items():
        forcing = [v for v in variables if v in env]
        libs = [lib for lib in machine.libraries
                if lib.user_api == "blas" and lib.internal_api == vendor]
        if not forcing or not libs:
            continue
        lib = libs[0]
        kl = kernel_level(lib)
        if vendor == "openblas" and kl is not None and machine.cpu_level is not None \
                and kl >= machine.cpu_level:
            continue  # the forced kernel is as new as the CPU allows
        setting = " ".join(f"{v}={env[v]}" for v in forcing)
        what = f"{lib.internal_api} runs its {lib.architecture or 'forced'} kernel"
        if kl is not None:
            what += f" ({LEVELS[kl]})"
        cpu = f"on a CPU with {LEVELS[machine.cpu_level]}" if machine.cpu_level is not None \
            else "on this CPU"
        message = f"{setting}: {what} {cpu}"
        advice = (f"where this build of {vendor} runs without them, unset "
                  f"{' and '.join(forcing)} (older builds fail to detect newer CPUs and "
                  "need them; dataflow never changes them)")
        finding = Finding("old kernel", message, advice, details={"variables": forcing})
        if probe is not None:
            now, native = probe(()), probe(forcing)
            finding.details.update(now=now, native=native)
            if native.error is not None:
                out.append(Finding(
                    "kernel variables needed",
                    f"{message}; without {' and '.join(forcing)} the probe failed "
                    f"({native.error})", f"keep {' and '.join(forcing)}: this build needs them",
                    details=finding.details))
                continue
            if now.seconds is not None and native.seconds:
                finding.gain = now.seconds / native.seconds
                m, k, n = PROBE_SHAPE
                finding.message += (
                    f"; without {' and '.join(forcing)} it picks "
                    f"{native.architecture or 'its own kernel'}: a {m}x{k} @ {k}x{n} float32 "
                    f"matmul takes {native.seconds * 1e3:.2f} ms instead of "
                    f"{now.seconds * 1e3:.2f} ms ({finding.gain:.2f}x faster, 1 thread)")
                same = native.architecture == now.architecture
                if same and (native.architecture or finding.gain < 1.1):
                    continue  # the variables change nothing here after all
        out.append(finding)
    return out


def _oversubscription(machine: Machine) -> list[Finding]:
    out = []
    cores = machine.cores
    for lib in machine.libraries:
        if lib.num_threads > cores:
            out.append(Finding(
                "oversubscription",
                f"{lib.internal_api} runs {lib.num_threads} threads on {cores} cores",
                f"set its threads to at most {cores} (threadpoolctl, or the *_NUM_THREADS "
                "variables before numpy loads); an Engine of W workers uses "
                f"max(1, {cores} // W) per worker unless intra_op_threads says otherwise",
                details={"threads": lib.num_threads}))
    for var in THREAD_VARIABLES:
        value = machine.environment.get(var, "")
        first = value.split(",")[0].strip()
        if first.isdigit() and int(first) > cores:
            out.append(Finding("oversubscription", f"{var}={value} asks for more threads "
                               f"than the {cores} cores", f"set {var} to at most {cores}",
                               details={"variable": var}))
    return out


def report(machine: Machine, found: Sequence[Finding]) -> str:
    lines = header(machine)
    lines.append(f"engine default: an Engine of W workers (default W: the {machine.cores} "
                 f"cores) runs BLAS on max(1, {machine.cores} // W) threads per worker "
                 "(Engine(intra_op_threads=k) to choose)")
    if not found:
        lines.append("no known slowdowns found")
    for f in found:
        lines.append(f"! {f.kind}: {f.message}")
        lines.append(f"  advice: {f.advice}")
    return "\n".join(lines)


def main(probe: bool = True) -> int:
    machine = inspect()
    print(report(machine, findings(machine, run_probe if probe else None)))
    return 0
