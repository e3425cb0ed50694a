"""The project's own exception tree: pages and the CLI show these as messages; anything else is a bug."""


class DallmiError(Exception):
    """Base of every error the user can cause and fix."""


class DataError(DallmiError):
    """An input file or corpus is unreadable or malformed (the message names file, row/column, fix)."""


class ConfigError(DallmiError):
    """A configuration value is invalid, or a model directory is not a usable model."""


class RunStateError(DallmiError):
    """A run is in a state that does not allow the requested action."""


class StoreError(DallmiError):
    """The project store cannot be read or written."""
