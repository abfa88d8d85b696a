"""Error types that name what was expected, what was found and what to do."""


class ProtoLightningError(Exception):
    """Base class of every error this package raises on bad input."""


class DatasetLayoutError(ProtoLightningError, FileNotFoundError):
    """A dataset folder or one of its index files is missing or malformed."""


class CorruptImageError(ProtoLightningError, OSError):
    """An image file exists in the index but cannot be decoded."""


class IncompatibleWeightsError(ProtoLightningError, ValueError):
    """A weight file or checkpoint does not fit the architecture it is loaded into."""


class ConfigKeyError(ProtoLightningError, KeyError):
    """A command-line override names a configuration key that does not exist."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0])


class MissingArtifactError(ProtoLightningError, FileNotFoundError):
    """An output of an earlier stage is missing; the message names the stage that makes it."""


class UntrustedFileError(IncompatibleWeightsError):
    """A file holds pickled Python objects that could run code when read; it is refused unread."""


class DatasetExistsError(ProtoLightningError, FileExistsError):
    """A dataset would be written over an existing one without being asked to."""


class ConfigValueError(ProtoLightningError, ValueError):
    """A setting's value cannot work with the data or the run it is given; the message says the range."""


class ResourceError(ProtoLightningError, RuntimeError):
    """Not enough free memory or disk for the next step; the message says how much it needs and has."""


class RankFailedError(ProtoLightningError, RuntimeError):
    """Another DDP rank stopped with a mistake; every rank stops with its message instead of waiting."""
