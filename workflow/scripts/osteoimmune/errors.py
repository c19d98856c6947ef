"""The exception types of the package, in one place.

Each one's message names the dataset, sample or file, and what to do about it. All but
:class:`RunInProgressError` are :class:`OsteoimmuneError` (bad input or configuration) and
``ValueError`` or ``RuntimeError``, so callers catch them either way. Modules raise them under
their old names too (``from osteoimmune.states import StateError`` still works).
"""


class OsteoimmuneError(Exception):
    """Base class of the errors this package raises on bad input or configuration."""


class RegistryError(OsteoimmuneError, ValueError):
    """A dataset registry or config entry is invalid."""


class FetchError(OsteoimmuneError, RuntimeError):
    """A file could not be fetched or failed verification."""


class ReaderError(OsteoimmuneError, ValueError):
    """A fetched file could not be read into the standard AnnData."""


class InputError(OsteoimmuneError, ValueError):
    """The data lacks what an earlier step adds: an obs column (the clusters), a neighbour graph."""


class QCError(OsteoimmuneError, ValueError):
    """Quality control left a dataset or sample without enough cells to analyse."""


class SignatureError(OsteoimmuneError, ValueError):
    """A gene signature or signature library is invalid or cannot be scored."""


class StateError(OsteoimmuneError, ValueError):
    """Input to the state calls, gene tables or ligand-receptor panel is invalid."""


class EnrichmentError(OsteoimmuneError, ValueError):
    """A marker table or gene-set collection cannot be used for enrichment."""


class ComparisonError(OsteoimmuneError, ValueError):
    """Cell metadata cannot be aggregated per donor or compared across conditions."""


class CompositionError(OsteoimmuneError, ValueError):
    """Cell metadata cannot be summarised per sample or tested across conditions."""


class PseudobulkError(OsteoimmuneError, ValueError):
    """Cells or pseudobulk samples cannot be summed or compared across conditions."""


class CommunicationError(OsteoimmuneError, ValueError):
    """Input to the communication analysis is invalid."""


# Not bad input: the machine's state. A RuntimeError only, as before, so nothing that catches
# OsteoimmuneError to report a config mistake swallows it.
class RunInProgressError(RuntimeError):
    """A Snakemake process, or a job of one, still runs in the working directory."""
