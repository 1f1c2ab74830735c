"""The one exception type that the CLI prints as a single actionable line."""


class HybridCLError(ValueError):
    """Bad input or configuration: the message names the problem and the fix."""
