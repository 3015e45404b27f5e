"""Errors kwheel raises on purpose: each carries a one-line message that says what and where."""


class KwheelError(Exception):
    """Base class; the CLI prints ``str(err)`` on one line and exits non-zero."""


class PipelineError(KwheelError):
    """The pipeline graph is invalid (unknown stream, no producer, partition mismatch...)."""


class ConfigError(KwheelError):
    """A configuration value is missing or malformed; ``field`` names the setting when one
    setting is to blame."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class LoadError(KwheelError):
    """A ``module:attribute`` reference could not be loaded."""


class BrokerError(KwheelError):
    """Kafka could not be reached or refused an operation we need."""


class TopicMismatchError(KwheelError):
    """An existing topic does not match what the pipeline needs; ``missing`` names the
    topics that do not exist at all (empty when one exists but differs)."""

    def __init__(self, message: str, missing: tuple[str, ...] = ()):
        super().__init__(message)
        self.missing = missing


class SerdeError(KwheelError):
    """A key or value could not be encoded or decoded."""


class RecordError(KwheelError):
    """Processing one input record failed; names computation, key, position and cause."""


class StateTooLargeError(KwheelError):
    """One key's state would not fit in a changelog record: an error of the record or timer
    that grew it, under the error policy (its changes are dropped with it)."""


class FencedError(KwheelError):
    """Another process took over a task: this one must stop processing it."""


class StateError(KwheelError):
    """A local state store cannot be used (e.g. another process holds it)."""


class RegistryError(KwheelError):
    """The schema registry is unreachable or refused a request: not the record's fault, so
    it stops the worker instead of going to a dead-letter stream."""
