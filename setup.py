"""Build of rnnfast's compiled kernels.

OpenMP is detected by compiling a tiny program; without it the kernels build serially (with a warning),
unless RNNFAST_REQUIRE_OPENMP=1, which makes that a build error. RNNFAST_DEBUG=1 turns Cython's bounds
checks back on and builds without optimisation (for the debug/sanitiser test runs).
"""
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import textwrap

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("RNNFAST_DEBUG", "0") not in ("", "0")
REQUIRE_OPENMP = os.environ.get("RNNFAST_REQUIRE_OPENMP", "0") not in ("", "0")


def _compiler():
    return os.environ.get("CC") or sysconfig.get_config_var("CC").split()[0] or "cc"


def openmp_flags():
    """Compile and link a tiny OpenMP program; return the flag that works, or None."""
    src = textwrap.dedent("""
        #include <omp.h>
        #include <stdio.h>
        int main(void) {
            int n = 0;
            #pragma omp parallel reduction(+:n)
            n += 1;
            printf("%d %d\\n", n, omp_get_max_threads());
            return 0;
        }
    """)
    tmp = tempfile.mkdtemp()
    try:
        c_file = os.path.join(tmp, "omp_check.c")
        with open(c_file, "w") as f:
            f.write(src)
        for flag in ("-fopenmp",):
            exe = os.path.join(tmp, "omp_check")
            cmd = [_compiler(), flag, c_file, "-o", exe]
            try:
                subprocess.run(cmd, check=True, capture_output=True)
                subprocess.run([exe], check=True, capture_output=True)
                return flag
            except (OSError, subprocess.CalledProcessError):
                continue
        return None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


omp_flag = openmp_flags()
if omp_flag is None:
    msg = "rnnfast: the C compiler has no working OpenMP; building the kernels SERIAL (one thread)."
    if REQUIRE_OPENMP:
        sys.exit("error: " + msg + " RNNFAST_REQUIRE_OPENMP=1 makes this an error.")
    print("\n" + "*" * 78 + "\nWARNING: " + msg + "\n" + "*" * 78 + "\n", file=sys.stderr)

# -O3 but never -ffast-math (it would change the floating-point mode of the whole process) and never
# -march=native (the wheel must run on any x86-64; SIMD paths are chosen at run time via target_clones).
# -fno-math-errno only lets the compiler inline sqrt/exp without errno bookkeeping.
compile_args = ["-O0", "-g"] if DEBUG else ["-O3", "-fno-math-errno"]
# The baseline (non-AVX-512) clone uses 512-bit vector types in always-inlined helpers; GCC warns about the
# ABI such a call would have, but none crosses a function boundary.
compile_args += ["-Wno-psabi"]
link_args = []
macros = [("NPY_NO_DEPRECATED_API", "NPY_1_9_API_VERSION")]
if omp_flag:
    compile_args.append(omp_flag)
    link_args.append(omp_flag)
    macros.append(("RNNFAST_OPENMP", "1"))
if DEBUG:
    macros.append(("RNNFAST_DEBUG", "1"))

extensions = [
    Extension(
        "rnnfast._kernels",
        sources=["src_ext/_kernels.pyx", "src_ext/kernels.c"],
        include_dirs=["src_ext", numpy.get_include()],
        define_macros=macros,
        extra_compile_args=compile_args,
        extra_link_args=link_args,
        depends=[os.path.join("src_ext", f) for f in os.listdir("src_ext") if f.endswith((".h", ".pxd", ".pxi"))],
    )
]

directives = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": not DEBUG,
    "embedsignature": True,
}

setup(ext_modules=cythonize(extensions, compiler_directives=directives, compile_time_env={"DEBUG": DEBUG}))
