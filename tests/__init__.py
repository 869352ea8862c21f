"""The test suite. Imported before any test module (and before NumPy or torch): every test worker, and every process
a test starts (stages under DVC, sweep jobs, servers: they inherit the environment), computes on one thread. `make
test` runs one pytest-xdist worker per core, each starting torch processes; with torch's default of one OpenMP
thread per core, two processes side by side on two cores put four threads there, spinning while they wait for each
other (figures: docs/benchmarks.md). The environment's own setting wins."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
