"""On-disk caching of the umap-learn functions that numba would compile in every process.

scanpy's kNN connectivities and UMAP layout run numba functions of umap-learn that are not
cached, so each process compiles them again (~1-3 s). The workflow runs one process per job
(every sample's QC and the clustering), so it asks numba to cache them, as numba does for
functions declared with ``cache=True``: in ``__pycache__`` next to umap's source, or in
``NUMBA_CACHE_DIR``. The compiled code is the same; the first run on a new installation
compiles and stores it.
"""

from __future__ import annotations

import importlib
import logging

log = logging.getLogger(__name__)

# module -> numba functions (dispatchers) run by sc.pp.neighbors and sc.tl.umap
UMAP_FUNCTIONS = {
    "umap.umap_": ("smooth_knn_dist", "compute_membership_strengths"),
    "umap.layouts": ("_nb_optimize_layout_euclidean_single_epoch", "clip"),
    "umap.utils": ("tau_rand", "tau_rand_int"),
}


def cache_umap_functions() -> list[str]:
    """Turn on numba's on-disk cache for umap-learn's uncached functions, before they run.

    Functions already compiled in this process, or missing from the installed umap-learn,
    are left alone; a cache that cannot be written (read-only installation and no
    ``NUMBA_CACHE_DIR``) only costs the compilation. Returns the functions now cached.
    """
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
