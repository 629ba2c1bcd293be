"""The diagnostics' user error, importable without torch (``kernel_attention.cli`` maps it to exit code 4)."""


class DiagnosticsError(ValueError):
    """A run folder cannot be diagnosed (no checkpoint, wrong task for a role, ...). One line naming the fix."""
