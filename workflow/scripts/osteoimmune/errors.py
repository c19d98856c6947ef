"""Exceptions for bad input: each message names the dataset or file and what to do."""


class OsteoimmuneError(Exception):
    """Base class of the errors this package raises on bad input or configuration."""


class RegistryError(OsteoimmuneError, ValueError):
    """A dataset registry or config entry is invalid."""


class FetchError(OsteoimmuneError, RuntimeError):
    """A file could not be fetched or failed verification."""


class ReaderError(OsteoimmuneError, ValueError):
    """A fetched file could not be read into the standard AnnData."""


class SignatureError(OsteoimmuneError, ValueError):
    """A gene signature or signature library is invalid or cannot be scored."""


class QCError(OsteoimmuneError, ValueError):
    """Quality control left a dataset or sample without enough cells to analyse."""
