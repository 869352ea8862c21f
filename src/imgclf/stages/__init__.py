"""Thin Hydra entry points, one per DVC stage: read config, call library functions, write outputs."""

import atexit
import gc
import sys

# `python -m imgclf.stages.<stage>` (DVC's commands, torchrun's workers): while Python locates the module it sets
# sys.argv[0] to "-m" and imports this package first. Such a process imports torch, MLflow and the rest (about a
# million objects) before anything else, and the cyclic garbage collector walks them again and again as they arrive,
# then once more at exit: seconds of every stage. It stays off through the imports; the stage's main turns it back on
# (settle_imports). Imported as a library (tests, notebooks), nothing changes.
if sys.argv[:1] == ["-m"]:
    gc.disable()


def settle_imports() -> None:
    """In a stage's own process (collection left off for its imports, above; `imgclf STAGE` does the same): move
    everything imported so far to the collector's permanent generation, so that no later collection walks it, turn
    collection back on for what the stage allocates, and freeze again at exit, where Python would walk the whole heap
    once more before the operating system frees it anyway. Only cyclic garbage made during the imports (little) is
    never freed, and a file left for the collector to close at exit is not: ours are closed by `with`."""
    if gc.isenabled():  # imported as a library, or already settled
        return
    gc.freeze()
    gc.enable()
    atexit.register(gc.freeze)
