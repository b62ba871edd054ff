"""What the CLI can fail with, and the exit codes scripts rely on."""

from __future__ import annotations

# Exit codes (README "The kubesky CLI"): a script can tell a refused command from a run that ended
# badly, and both from a detach.
OK = 0
RUN_NOT_SUCCEEDED = 1  # `run --follow` / `follow`: the run ended in any phase but Succeeded
USAGE = 2  # bad input: unknown beamline, plan, parameter or run, a malformed key=value (click's too)
UNAVAILABLE = 3  # the Kubernetes API (or, for `plot`, Kafka) could not be reached or refused us
DETACHED = 130  # Ctrl-C during `follow`: the run goes on


class CliError(Exception):
    """One line for the user, and the exit code."""

    def __init__(self, message: str, code: int = USAGE) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
