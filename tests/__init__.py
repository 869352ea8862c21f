"""The test suite. Imported before any test module (and before NumPy or torch): every test worker, and every process
a test starts (stages under DVC, sweep jobs, servers: they inherit the environment), computes on one thread. `make
test` runs one pytest-xdist worker per core, each starting torch processes; with torch's default of one OpenMP
thread per core, two processes side by side on two cores put four threads there, spinning while they wait for each
other (figures: docs/benchmarks.md). NumPy's OpenBLAS and MKL keep one thread too, as joblib sets them in its workers
(a sweep's jobs): so those run in tests/warm.py's warm interpreter like the stages. The environment's own setting
wins."""

import os

for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(name, "1")
