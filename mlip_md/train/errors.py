"""Errors that end a training run before or instead of exporting a model."""


class TrainingError(ValueError):
    """Training cannot start or did not give a usable model; the message says why and what to change."""


class ResumeError(TrainingError):
    """A run directory holds a run of other data, split or settings; the message lists the differences."""
