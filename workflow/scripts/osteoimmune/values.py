"""What an input's expression values are: declared in the registry, checked against the data.

The registry's ``values:`` says what the authors' matrix holds:

- ``counts``: raw UMI or read counts (integers);
- ``normalized``: size-normalised, not log-transformed (e.g. counts per 10k, CP10k);
- ``log_normalized``: log1p of size-normalised values (e.g. scanpy's normalize_total + log1p,
  Seurat's LogNormalize);
- ``tpm``: transcripts per million, not log-transformed.

Every step takes the type from ``uns['osteoimmune']['value_type']`` and transforms the values
at most once: counts are size-normalised and log1p-transformed, normalized and TPM input only
log1p-transformed, log-normalised input used as is (:func:`osteoimmune.cluster.normalize`).

The values themselves say which of counts, size-normalised or log-normalised they are
(:func:`detect_value_type`; TPM cannot be told from other size-normalised values). A declared
type the data contradict is an error (:func:`check_value_type`): a log-normalised matrix
declared ``normalized`` would otherwise be log-transformed a second time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse

from osteoimmune.errors import ReaderError

VALUE_TYPES = ("counts", "normalized", "log_normalized", "tpm")
# The kinds the values can be told apart by; tpm is a size-normalised kind.
DETECTED = {
    "counts": "counts",
    "normalized": "normalized",
    "log_normalized": "log_normalized",
    "tpm": "normalized",
}

# log1p of 1e10: no size-normalised value (TPM at most 1e6) reaches it once logged, while
# CP10k or TPM matrices of real cells always have values far above it.
LOG_MAX = 25.0
# Per-cell totals that vary less than this (coefficient of variation) are a size
# normalisation's fixed target; raw library sizes vary by 20-130% (the mirror's datasets).
CONSTANT_CV = 0.05
# The totals are computed on this many cells, evenly spaced: enough, and cheap on atlases.
DETECT_CELLS = 2000

NAMES = {
    "counts": "raw counts",
    "normalized": "size-normalised values",
    "log_normalized": "log-normalised values",
    "tpm": "TPM values",
}
INPUT_NOTES = {
    "counts": "input raw counts",
    "normalized": "input size-normalised by the authors, not log-transformed (e.g. CP10k)",
    "log_normalized": (
        "input log-normalised by the authors (log1p of size-normalised values); used as is"
    ),
    "tpm": "input TPM by the authors, not log-transformed",
}


@dataclass(frozen=True)
class ValueEvidence:
    """What the values look like, and the kind they were detected as.

    ``kind`` is ``counts``, ``normalized`` (size-normalised, not logged, TPM included) or
    ``log_normalized``; ``strong`` is False when a log-normalised kind rests on the value
    range alone (per-cell totals of neither the values nor their expm1 are constant).
    """

    kind: str
    strong: bool
    max_value: float
    integer: bool
    total_cv: float
    expm1_total_cv: float

    def describe(self) -> str:
        """The evidence in words, e.g. "max 7.45, not integers, expm1 totals per cell ..."."""
        top = f"{self.max_value:,.0f}" if self.max_value >= 1000 else f"{self.max_value:.4g}"
        parts = [f"max {top}", "all integers" if self.integer else "not integers"]
        parts.append(f"per-cell totals {_spread(self.total_cv)}")
        if not np.isnan(self.expm1_total_cv):
            parts.append(f"per-cell totals of expm1(values) {_spread(self.expm1_total_cv)}")
        return ", ".join(parts)


def _spread(cv: float) -> str:
    if np.isnan(cv):
        return "not measured (too few cells)"
    return "vary < 0.1% (CV)" if cv < 1e-3 else f"vary {100 * cv:.2g}% (CV)"


def _total_cv(matrix: sparse.csr_matrix) -> float:
    totals = np.asarray(matrix.sum(axis=1), dtype=np.float64).ravel()
    totals = totals[totals > 0]
    return float(totals.std() / totals.mean()) if len(totals) >= 3 else np.nan


def _sample_rows(matrix: sparse.csr_matrix, n: int) -> sparse.csr_matrix:
    if matrix.shape[0] <= n:
        return matrix
    return matrix[np.unique(np.linspace(0, matrix.shape[0] - 1, n).astype(np.int64))]


def detect_value_type(matrix: sparse.spmatrix, *, n_cells: int = DETECT_CELLS) -> ValueEvidence:
    """Tell raw counts, size-normalised and log-normalised values apart by their values.

    Parameters
    ----------
    matrix
        Cells x genes, sparse, finite and non-negative.
    n_cells
        Per-cell totals are computed on at most this many cells, evenly spaced.

    Returns
    -------
    ValueEvidence
        ``counts`` when every value is an integer and per-cell totals vary (totals fixed
        by design make rounded normalised values); ``log_normalized`` when no value reaches
        :data:`LOG_MAX` (log1p of 1e10) and some are above 1, or when the totals of
        ``expm1(values)`` are constant (a size normalisation undone); else ``normalized``.
    """
    matrix = sparse.csr_matrix(matrix)
    sample = _sample_rows(matrix, n_cells)
    data = sample.data
    max_value = float(matrix.data.max()) if matrix.nnz else 0.0
    integer = bool(np.all(data == np.round(data)))
    total_cv = _total_cv(sample)
    expm1_cv = np.nan
    if max_value < LOG_MAX and not integer:  # expm1 of larger values overflows
        logged = sample.astype(np.float64)
        logged.data = np.expm1(logged.data)
        expm1_cv = _total_cv(logged)
    constant = total_cv < CONSTANT_CV
    if integer:
        kind, strong = ("normalized" if constant else "counts"), True
    elif expm1_cv < CONSTANT_CV and not constant:
        kind, strong = "log_normalized", True
    elif max_value < LOG_MAX and max_value > 1 and not constant:
        # Values of at most 1 are fractions as much as logs of them (log1p(x) ~ x).
        kind, strong = "log_normalized", False
    else:
        kind, strong = "normalized", True
    return ValueEvidence(kind, strong, max_value, integer, total_cv, expm1_cv)


SUGGEST = {
    "counts": "`values: counts`",
    "normalized": "`values: normalized` (or `values: tpm` for TPM)",
    "log_normalized": "`values: log_normalized`",
}
LOOKS = {
    "counts": "raw counts (integers whose per-cell totals vary)",
    "normalized": "size-normalised values, not log-transformed",
    "log_normalized": "log-transformed (log1p of size-normalised values)",
}


def check_value_type(matrix: sparse.spmatrix, *, declared: str, where: str) -> ValueEvidence:
    """Check the registry's ``values:`` against the data; returns the evidence.

    Parameters
    ----------
    matrix
        Cells x genes as read, sparse, finite and non-negative.
    declared
        The registry's ``values:``, one of :data:`VALUE_TYPES`.
    where
        Dataset, sample and file, for the message.

    Raises
    ------
    ReaderError
        When the values look like another type than ``declared`` (counts that are not
        integers, normalised values that look log-transformed, ...), naming the ``values:`` to
        set. Counts are checked on every value, the other types on the detection's cells.
    """
    evidence = detect_value_type(matrix)
    if declared == "counts":
        data = matrix.data
        fractional = data != np.round(data)
        if np.any(fractional):
            msg = (
                f"{where}: `values: counts` but {np.count_nonzero(fractional)} values are not "
                f"integers (e.g. {data[fractional][0]:g}), so these don't look like raw counts; "
                f"they look {LOOKS[evidence.kind]}: {evidence.describe()}. Set "
                f"{SUGGEST[evidence.kind]} in the registry, or point `layer:` at the raw counts."
            )
            raise ReaderError(msg)
        return evidence
    if DETECTED[declared] != evidence.kind:
        msg = (
            f"{where}: `values: {declared}` but the values look {LOOKS[evidence.kind]}: "
            f"{evidence.describe()}. Used as {declared} they would be "
            f"{_consequence(declared, evidence.kind)}. Set {SUGGEST[evidence.kind]} in the "
            "registry, or point `layer:` at the matrix the entry declares."
        )
        raise ReaderError(msg)
    return evidence


def _consequence(declared: str, detected: str) -> str:
    if detected == "log_normalized":
        return "log-transformed a second time"
    if declared == "log_normalized":
        return "never log-transformed" + (" nor size-normalised" if detected == "counts" else "")
    return "log-transformed but never size-normalised"  # counts declared normalized or tpm


def input_note(declared: str, evidence: ValueEvidence) -> str:
    """One sentence on the input's values and what they were checked to be, for the report."""
    return f"{INPUT_NOTES[declared]}; checked on the values: {evidence.describe()}"


def normalization_note(value_type: str, *, target_sum: float) -> str:
    """What normalisation did to ``X``, per input type, in words for the report."""
    if value_type == "counts":
        return (
            f"raw counts size-normalised to {target_sum:,.0f} per cell (normalize_total), then "
            "log1p-transformed"
        )
    if value_type == "log_normalized":
        return (
            "none: the input is log-normalised by the authors (log1p of size-normalised "
            "values) and used as is, neither size-normalised nor log-transformed again"
        )
    what = "TPM values" if value_type == "tpm" else "size-normalised values (not logged)"
    return f"log1p only: the authors' {what} were log1p-transformed once, not size-normalised again"


def count_figures_note(value_type: str) -> str:
    """Why the QC figures of counts are not drawn for non-count input, in one sentence."""
    return (
        "QC figures of counts (total counts, genes detected, % mitochondrial counts per cell) "
        f"are not drawn: the input is {NAMES.get(value_type, value_type)}, not raw counts, so "
        "per-cell totals of its values are not library sizes and count-based thresholds do "
        "not apply."
    )
