"""How a started training run can end other than well; below the registry, the trackers and the
backends, which all raise or catch these."""


class TrainingFailedError(RuntimeError):
    """Training started and failed; the message carries the end of the failing process's log."""


class TrainingStoppedError(TrainingFailedError):
    """A stop request (SIGTERM) ended the run before its end, with its state saved to resume from."""
