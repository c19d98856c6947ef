"""On-disk caching of the umap-learn functions that numba would compile in every process.

scanpy's kNN connectivities and UMAP layout run numba functions of umap-learn that are not
cached, so each process compiles them again (~1-3 s). The workflow runs one process per job
(every sample's QC and the clustering), so it asks numba to cache them, as numba does for
functions declared with ``cache=True``: in ``__pycache__`` next to umap's source, or in
``NUMBA_CACHE_DIR``. The compiled code is the same; the first run on a new installation
compiles and stores it.

Importing umap imports pynndescent, which compiles its distance functions for their declared
signatures while it is imported, without ``cache=True``: ~3.5 of the ~5 s of ``import umap``
in every QC and clustering process and their workers. :func:`cache_umap_functions` imports
pynndescent with numba's cache on for those functions too (~1.5 s once cached).
"""

from __future__ import annotations

import functools
import importlib
import logging
import sys
from collections.abc import Callable

log = logging.getLogger(__name__)

# module -> numba functions (dispatchers) run by sc.pp.neighbors and sc.tl.umap
UMAP_FUNCTIONS = {
    "umap.umap_": ("smooth_knn_dist", "compute_membership_strengths"),
    "umap.layouts": ("_nb_optimize_layout_euclidean_single_epoch", "clip"),
    "umap.utils": ("tau_rand", "tau_rand_int"),
}


def caching(njit: Callable) -> Callable:
    """``numba.njit`` with ``cache=True`` unless the caller chose.

    Uncached where numba finds no cache location (it raises RuntimeError then).
    """

    @functools.wraps(njit)
    def decorate(*args, **kwargs):
        if "cache" in kwargs:
            return njit(*args, **kwargs)
        if args and callable(args[0]):  # bare @njit: the function itself
            try:
                return njit(*args, cache=True, **kwargs)
            except RuntimeError:
                return njit(*args, **kwargs)
        wrapper = njit(*args, cache=True, **kwargs)

        def apply(function):
            try:
                return wrapper(function)
            except RuntimeError as err:
                log.debug("numba cache for %s not enabled: %s", function.__qualname__, err)
                return njit(*args, **kwargs)(function)

        return apply

    return decorate


def import_pynndescent_cached() -> bool:
    """Import pynndescent with numba's on-disk cache on for the functions it compiles then.

    Returns False, changing nothing, when pynndescent or numba is missing or pynndescent was
    already imported in this process.
    """
    if "pynndescent" in sys.modules:
        return False
    try:
        import numba
    except ImportError:
        return False
    original = numba.njit
    numba.njit = caching(original)
    try:
        importlib.import_module("pynndescent")
    except ImportError:
        return False
    finally:
        numba.njit = original
    return True


def cache_umap_functions() -> list[str]:
    """Turn on numba's on-disk cache for umap-learn's uncached functions, before they run.

    Functions already compiled in this process, or missing from the installed umap-learn,
    are left alone; a cache that cannot be written (read-only installation and no
    ``NUMBA_CACHE_DIR``) only costs the compilation. Returns the functions now cached.
    pynndescent, which umap imports, is imported first by :func:`import_pynndescent_cached`.
    """
    import_pynndescent_cached()
    cached = []
    for module, names in UMAP_FUNCTIONS.items():
        try:
            loaded = importlib.import_module(module)
        except ImportError:
            continue
        for name in names:
            function = getattr(loaded, name, None)
            if not hasattr(function, "enable_caching") or function.signatures:
                continue
            try:
                function.enable_caching()
            except RuntimeError as err:  # numba found no writable cache location
                log.debug("numba cache for %s.%s not enabled: %s", module, name, err)
                continue
            cached.append(f"{module}.{name}")
    return cached
