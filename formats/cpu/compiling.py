"""Compiling the CPU kernels: :func:`jit`, numba's ``njit`` with an on-disk
cache that cannot serve stale machine code.

numba's own cache keys a compiled function by its own source file only, so
a kernel that inlines a helper of another file (``fast32``, ``reductions``,
``scalar``) or freezes a constant of :mod:`lowbit.formats.abi` kept running
the old machine code after that file changed, until the cache was deleted.
Here every kernel is cached in one directory per version of all the
sources a kernel can depend on: :func:`source_key` hashes numba's version,
every ``.py`` of this package and every ``lowbit.formats`` module they
import, so a change to any of them reads and writes a fresh directory. A
kernel's constants must therefore be defined in those files.

The directory, ``lowbit-kernels-<key>``, lies in the first writable of:
``NUMBA_CACHE_DIR`` (``numba.config.CACHE_DIR``) if set, this package's
``__pycache__``, and ``$XDG_CACHE_HOME/lowbit`` (``~/.cache/lowbit``).
Where none is writable the kernels compile in every process, uncached
(never into numba's default place, which is keyed per file). Each process
marks its directory as used; it deletes the other ``lowbit-kernels-*``
directories beside it that are neither among the :data:`KEEP` most recently
used nor used in the last :data:`KEEP_SECONDS` (a process still running
on a deleted directory would fail to save its next compile).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numba
from numba.core import config
from numba.core.dispatcher import Dispatcher

from .threads import serialized

#: how many directories of other source versions a cache location keeps at least
KEEP = 8
#: how long an unused directory of another version is kept at least
KEEP_SECONDS = 24 * 3600
_PACKAGE = Path(__file__).resolve().parent
_PREFIX = "lowbit-kernels-"
#: an import statement: (from-module, its names, or the modules of a plain import)
_IMPORT = re.compile(r"^[ \t]*(?:from[ \t]+([.\w]+)[ \t]+import[ \t]+(\([^)]*\)|.*)|import[ \t]+(.*))", re.M)
#: numba's cache settings are process-wide: one kernel at a time sets them
_config_lock = threading.Lock()


def _module_file(name: str) -> Path | None:
    """The source file of the lowbit.formats module ``name``, None for other modules."""
    parts = name.split(".")
    if parts[:2] != ["lowbit", "formats"]:
        return None
    path = _PACKAGE.parent.joinpath(*parts[2:])
    return next((f for f in (path.with_suffix(".py"), path / "__init__.py") if f.is_file()), None)


def _imports(source: Path) -> set[Path]:
    """The lowbit.formats modules that ``source`` (a file of this package)
    imports directly: the module of each ``from M import n`` and ``n`` where
    it is a module too, and each ``import M``. (A scan of the text, 30 times
    faster than parsing: an import it matches in a string only adds a file.)"""
    names = set()
    for module, imported, plain in _IMPORT.findall(source.read_text(encoding="utf-8")):
        if module:
            module = importlib.util.resolve_name(module, __package__)
            names |= {module} | {f"{module}.{name}" for name in _names(imported)}
        else:
            names |= set(_names(plain))
    return {f for f in map(_module_file, names) if f is not None}


def _names(imported: str) -> list[str]:
    """The names of an import's list: ``a as b, (c, d)`` -> a, c, d."""
    parts = re.sub(r"#.*", "", imported).strip("()\n ").split(",")
    return [part.split()[0] for part in parts if part.strip()]


def source_files() -> list[Path]:
    """Every file a kernel can depend on: the ``.py`` files of this package
    and the lowbit.formats modules they import."""
    own = sorted(_PACKAGE.glob("*.py"))
    return sorted(set(own).union(*map(_imports, own)))


def source_key() -> str:
    """A hash of numba's version and the contents of :func:`source_files`."""
    digest = hashlib.sha256(numba.__version__.encode())
    for path in source_files():
        digest.update(path.relative_to(_PACKAGE.parent).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:20]


def _writable(directory: Path) -> bool:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=directory).close()
        return True
    except OSError:
        return False


def _last_used(directory: Path) -> float:
    try:
        return directory.stat().st_mtime
    except OSError:  # deleted meanwhile
        return float("inf")


def _mark_used_and_prune(directory: Path) -> None:
    """Mark ``directory`` used now; delete the old directories beside it (see the module's docstring)."""
    os.utime(directory)
    others = sorted((d for d in directory.parent.glob(_PREFIX + "*") if d != directory and d.is_dir()),
                    key=_last_used, reverse=True)
    for old in others[KEEP:]:
        if time.time() - _last_used(old) > KEEP_SECONDS:
            shutil.rmtree(old, ignore_errors=True)


@functools.cache
def cache_directory() -> Path | None:
    """The directory this process caches its kernels in, None if no
    location is writable (see the module's docstring)."""
    cache_home = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    roots = ([config.CACHE_DIR] if config.CACHE_DIR else []) + [_PACKAGE / "__pycache__", Path(cache_home) / "lowbit"]
    name = _PREFIX + source_key()
    for root in roots:
        directory = Path(root) / name
        if _writable(directory):
            _mark_used_and_prune(directory)
            return directory
    return None


@contextlib.contextmanager
def _numba_caches_in(directory: Path) -> Iterator[None]:
    """numba's cache settings pointing at ``directory`` (and its default
    locators) for the duration, restored after."""
    settings = {"CACHE_DIR": str(directory), "CACHE_LOCATOR_CLASSES": ""}
    with _config_lock:
        saved = {name: getattr(config, name) for name in settings if hasattr(config, name)}
        try:
            for name in saved:
                setattr(config, name, settings[name])
            yield
        finally:
            for name, value in saved.items():
                setattr(config, name, value)


def jit(**options: Any) -> Callable[[Callable[..., Any]], Any]:
    """``numba.njit(**options)`` for lowbit's kernels (``cache`` is not an
    option: they are always cached in :func:`cache_directory`, where there
    is one). Parallel kernels come back wrapped by
    :func:`~lowbit.formats.cpu.threads.serialized` where the threading layer
    needs it."""
    def compile_kernel(function: Callable[..., Any]) -> Any:
        kernel = numba.njit(**options)(function)
        directory = cache_directory()
        if directory is not None and isinstance(kernel, Dispatcher):  # not under NUMBA_DISABLE_JIT
            with _numba_caches_in(directory):
                kernel.enable_caching()
        return serialized(kernel) if options.get("parallel") else kernel
    return compile_kernel


#: A kernel's per-task function (what one iteration of its parallel loop
#: runs), compiled as a function of its own and called from the loop, not
#: inlined into it. numba compiles a parallel loop's body a second time as
#: a function of its own, copying and re-analysing it whole, so a body that
#: inlines large helpers (several times, once per constant it is
#: specialised on) takes most of a kernel's compile time. The helpers are
#: still inlined into the task, and a call with constant arguments (a block
#: length, a rounding mode) compiles a specialisation on those constants,
#: as inlining into the loop did. What the call loses: numba compiles a
#: parallel loop's body with its arrays marked as not aliasing, and a
#: separately compiled task has no such mark, so a task whose loops need
#: it to vectorize is slower called than inlined (measured in
#: docs/performance.md, "Compile time of the CPU kernels"). Pass a task
#: its loop index as ``np.int64(g)``: numba types a ``prange`` index as
#: int64 and lowers the loop with a uint64 one, so a task given ``g`` itself
#: compiles twice for every signature.
task = jit()
