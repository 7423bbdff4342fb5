"""composer's exception hierarchy. Every message says what went wrong, where, and what to do."""

from __future__ import annotations


class ComposerError(Exception):
    """Base class for errors composer raises on purpose."""


class ConfigError(ComposerError):
    """A registry file is invalid. Carries the file, line and field so a person can fix it."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 field: str | None = None):
        self.file, self.line, self.field, self.detail = file, line, field, message
        where = ":".join(str(p) for p in (file, line) if p is not None)
        parts = [p for p in (where, f"field '{field}'" if field else None) if p]
        super().__init__(f"{' '.join(parts)}: {message}" if parts else message)


class OutcomeFormatError(ComposerError):
    """An outcome table file could not be read (names file, row and column)."""


class BackendError(ComposerError):
    """A backend call failed. `retryable` says whether trying again may help."""

    def __init__(self, message: str, *, expert: str | None = None, retryable: bool = False):
        self.expert, self.retryable = expert, retryable
        super().__init__(f"expert '{expert}': {message}" if expert else message)


class ExpertLoadError(BackendError):
    """An expert could not be loaded (missing file, server did not become ready, ...)."""


class ContextOverflowError(BackendError):
    """The prompt (plus max_tokens) does not fit the expert's context window."""


class ExpertTimeoutError(BackendError):
    """An expert call exceeded its timeout."""

    def __init__(self, message: str, *, expert: str | None = None):
        super().__init__(message, expert=expert, retryable=True)


class RoutingError(ComposerError):
    """A router could not produce a decision (unfitted, unknown expert, bad input)."""


class NotFittedError(RoutingError, ValueError):
    """A router or specialist was used before fit() (scikit-learn's contract)."""


class BadRequestError(ComposerError, ValueError):
    """A request is malformed; the message names the field."""
