"""The threading layer under the parallel kernels, chosen so that they are
safe in fork children and from several Python threads.

numba runs ``parallel=True`` loops on one threading layer per process,
fixed at its first parallel launch. Its default picks TBB, else OpenMP,
else its own ``workqueue``. GNU OpenMP (Linux) is not fork-safe: a
``multiprocessing`` fork child of a process that ran a parallel loop is
killed at its own first one, and ``mp.Pool`` hangs. ``workqueue`` is
fork-safe but not thread-safe: two Python threads launching loops at once
abort the process.

When the first kernel module loads, :func:`threading_layer` keeps or launches:

- the layer already running, where the user's own code launched one first;
- the layer the user asked for, where ``NUMBA_THREADING_LAYER`` /
  ``numba.config.THREADING_LAYER`` (or the priority list) is set;
- otherwise numba's ``"safe"`` layer (TBB: fork-safe and thread-safe),
  and where TBB does not load, ``"workqueue"``.

On ``workqueue``, :func:`serialized` makes the kernels take one process-wide
lock per launch, so threads run them one at a time, and a fork waits for
the launch in progress (the child then starts with the lock free). The
user's own parallel numba functions do not take it.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from typing import Any

import numba
from numba.core import config

#: numba's defaults, which mean the user chose no layer
_DEFAULT_LAYER, _DEFAULT_PRIORITY = "default", ["tbb", "omp", "workqueue"]
#: held by a lowbit kernel launch on a layer that is not thread-safe
_launch_lock = threading.Lock()


def _launched() -> str | None:
    """The layer running in this process, None before the first launch."""
    try:
        return numba.threading_layer()
    except ValueError:
        return None


@functools.cache
def threading_layer() -> str:
    """The name of the layer lowbit's kernels run on ("tbb", "omp" or
    "workqueue"), launching it as described in the module's docstring."""
    running = _launched()
    if running is not None:
        return running
    if config.THREADING_LAYER != _DEFAULT_LAYER or list(config.THREADING_LAYER_PRIORITY) != _DEFAULT_PRIORITY:
        numba.get_num_threads()  # launches the layer the user chose
        return numba.threading_layer()
    try:
        config.THREADING_LAYER = "safe"
        try:
            numba.get_num_threads()
        except ValueError:  # TBB missing or too old
            config.THREADING_LAYER = "workqueue"
            numba.get_num_threads()
    finally:
        config.THREADING_LAYER = _DEFAULT_LAYER
    return numba.threading_layer()


@functools.cache
def _hold_lock_across_fork() -> None:
    """Fork only between launches: the child gets an idle pool and a free lock."""
    os.register_at_fork(before=_launch_lock.acquire, after_in_parent=_launch_lock.release,
                        after_in_child=_launch_lock.release)


def serialized(kernel: Callable[..., Any]) -> Callable[..., Any]:
    """``kernel`` itself where the layer is thread-safe; on ``workqueue``, a
    function that calls it holding the process-wide launch lock."""
    if threading_layer() != "workqueue":
        return kernel
    if hasattr(os, "register_at_fork"):
        _hold_lock_across_fork()

    @functools.wraps(kernel, updated=())
    def launch(*args: Any) -> Any:
        with _launch_lock:
            return kernel(*args)
    return launch
