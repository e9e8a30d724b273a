"""The two ways a solve can fail on purpose, so callers can tell them from bugs."""


class ProblemError(ValueError):
    """The problem is malformed: bad shapes, ranks, settings, or non-finite inputs."""


class DivergenceError(FloatingPointError):
    """The solve went non-finite."""
