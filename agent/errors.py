"""Typed errors. Each message names what was wrong, so it can be shown to the user as is."""


class EdgeError(Exception):
    """Base of every error this project raises on purpose."""


class PayloadError(EdgeError):
    """Bytes from the network are not the JSON they should be (encoding, syntax, nesting, size)."""


class ConfigError(EdgeError):
    """The configuration is invalid. ``problems`` holds one ``key: value: what`` line each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n  " + "\n  ".join(problems))


class ManifestError(EdgeError):
    """A model manifest is missing, unreadable or inconsistent."""


class ModelLoadError(EdgeError):
    """A model file cannot be loaded by the interpreter."""


class ModelMismatchError(EdgeError):
    """A model's tensors do not match its manifest."""


class DelegateError(EdgeError):
    """An external delegate could not be loaded and fallback was not allowed."""


class RuntimeNotFoundError(EdgeError):
    """No TFLite interpreter package is installed."""


class SampleError(EdgeError):
    """A sample for a sequence model was rejected."""


class FrameError(EdgeError):
    """A frame could not be preprocessed."""


class SourceError(EdgeError):
    """A capture source could not be opened or read."""


class CommandError(EdgeError):
    """A command was malformed or refused."""


class DeployError(EdgeError):
    """A model push was refused or failed."""


class ConversionError(EdgeError):
    """A model could not be converted or failed its checks."""
