"""Exceptions raised by tfprec.  Every error names what is wrong."""


class TfprecError(Exception):
    """Base class of every error tfprec raises on bad input."""


class UnsupportedModelError(TfprecError):
    """The model (or one of its layers) cannot be analyzed or quantized."""


class InvalidDataError(TfprecError):
    """Calibration or evaluation data is empty, non-finite or mis-shaped."""


class PlanError(TfprecError):
    """A precision plan is invalid, malformed or does not match a model."""


class UnattainableTargetError(TfprecError):
    """No plan within the allowed bit-widths meets the requested target."""


class ExportError(TfprecError):
    """A model or plan cannot be exported (or an output cannot be written)."""


class TfprecWarning(UserWarning):
    """Doubtful input that tfprec accepts (wrong scale, few examples, labels)."""


class CliError(Exception):
    """A problem with the command line or its inputs; exit status ``code``
    (2: a usage error, the flags or the files they name; 1: a failure while
    running)."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code
