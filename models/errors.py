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
