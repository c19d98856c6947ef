"""osteoimmune: osteoimmune cell states in public bone-marrow scRNA-seq data.

The library behind the Snakemake workflow: pure functions on AnnData and DataFrames, one module
per stage (registry, fetch, readers, qc, cluster, signatures, scoring, report).
"""

__version__ = "0.1.0"
