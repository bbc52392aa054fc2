"""Exceptions that mean "the user's input is wrong" (as opposed to a bug).

The CLI turns any exception into one line on stderr; these classes exist so library
code can state clearly that the problem is an input, a missing file or a missing weight.
"""


class RefSRError(Exception):
    """Base class of every error refsr raises on purpose."""


class InputError(RefSRError, ValueError):
    """An input file or value is unusable; the message names the file or value."""


class OptionError(InputError):
    """A setting is unusable or does not go with another one. ``option`` names it as the
    library spells it (``ca_levels``); the message reads ``"ca_levels: <reason>"``, and the
    CLI reports ``reason`` as a usage error of the option (``--ca-levels``)."""

    def __init__(self, option: str, reason: str):
        super().__init__(f"{option}: {reason}")
        self.option, self.reason = option, reason

    def __reduce__(self):  # picklable across worker processes despite the two arguments
        return type(self), (self.option, self.reason)


class ManifestError(InputError):
    """A JSON Lines manifest is malformed; the message names the file and the line."""


class MissingWeightsError(RefSRError, FileNotFoundError):
    """Pretrained weights are not available offline; the message says how to supply them."""


class OutputError(RefSRError, OSError):
    """An output cannot be written (full disk, no permission); the message names the file."""


class WorkerError(RefSRError, RuntimeError):
    """A worker process died (killed, out of memory); the work finished so far is kept and
    a rerun of the same command resumes."""


class BadWeightsError(MissingWeightsError):
    """A weights file exists but cannot be loaded safely (corrupt, of the wrong network, or
    needing unpickling); the message names the file. A kind of missing weights: the
    published weights are not available."""
