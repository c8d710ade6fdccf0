"""The one error type for a user's configuration mistakes.

Constructors, DataModules and checkpoint loading raise `ConfigError` for what a user can
fix in a YAML file or a flag; the CLI prints it as one line and exits with status 2. Any
other exception is a bug and keeps its traceback. It subclasses ValueError, so code that
calls litlab directly can still catch a bad value as a ValueError.
"""


class ConfigError(ValueError):
    """A configuration mistake, stated as one sentence that names the setting and the fix."""


class NonFiniteLoss(ConfigError):
    """The loss became NaN or infinite: almost always a learning rate, warmup or precision to change."""


def check_positive(owner: str, **values: float) -> None:
    """One ConfigError for the first of `values` that is not above zero (a width, a count, a size)."""
    for name, value in values.items():
        if value <= 0:
            raise ConfigError(f"{owner} {name} must be positive; got {value}.")


def check_fraction(owner: str, **values: float) -> None:
    """One ConfigError for the first of `values` outside [0, 1) (a dropout rate, a smoothing)."""
    for name, value in values.items():
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"{owner} {name} must be in [0, 1); got {value}.")
