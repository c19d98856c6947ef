"""Kernels: faster or leaner re-implementations of upstream functions, apart from domain logic.

Each module mirrors one upstream function, names its version and where it differs, and is
pinned to it by an equality test (tests/test_kernels.py); the domain function that uses it has
a switch back to the upstream function (``implementation=``).

========================  ===============================================================
module                    mirrors
========================  ===============================================================
``scrublet``              scanpy 1.11 ``sc.pp.scrublet`` (mean_center=True), sparse
``hvg``                   scanpy 1.11 ``sc.pp.highly_variable_genes(flavor="seurat")``
``wilcoxon``              scanpy 1.11 ``sc.tl.rank_genes_groups(method="wilcoxon")``
``score_genes``           scanpy 1.11 ``sc.tl.score_genes`` (ctrl_as_ref=False), all sets at once
``ranks``                 UCell (Andreatta & Carmona 2021) and AUCell (Aibar et al. 2017)
``sparse_ranks``          ``scipy.stats.rankdata(method="average")`` of sparse rows or columns
``chunks``                nothing upstream: the checked CSR input and row blocks of the scores
========================  ===============================================================
"""

IMPLEMENTATIONS = ("osteoimmune", "scanpy")


def check_implementation(implementation: str, choices: tuple[str, ...] = IMPLEMENTATIONS) -> None:
    """Raise ValueError unless ``implementation`` is one of ``choices``."""
    if implementation not in choices:
        msg = f"implementation must be one of {', '.join(choices)}, not {implementation!r}."
        raise ValueError(msg)
