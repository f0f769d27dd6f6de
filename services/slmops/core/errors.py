"""Domain errors. Services raise these; one interceptor maps them to gRPC codes."""

from __future__ import annotations


class SlmopsError(Exception):
    """Base of every error the platform raises on purpose."""


class InvalidSpec(SlmopsError):
    """A request field is missing or wrong. Maps to INVALID_ARGUMENT."""

    def __init__(self, field: str, problem: str, *more: tuple[str, str]):
        self.problems = [(field, problem), *more]
        super().__init__("; ".join(f"{f}: {p}" for f, p in self.problems))

    @property
    def field(self) -> str:
        return self.problems[0][0]

    def __reduce__(self):  # crosses process boundaries (Ray workers) intact
        return (InvalidSpec, (*self.problems[0], *self.problems[1:]))


class NotFound(SlmopsError):
    """An unknown job, deployment or artifact. Maps to NOT_FOUND."""

    def __init__(self, what: str, key: str):
        self.what, self.key = what, key
        super().__init__(f"{what} {key!r} not found")

    def __reduce__(self):
        return (NotFound, (self.what, self.key))


class Conflict(SlmopsError):
    """The request contradicts current state (e.g. cancel a finished job). FAILED_PRECONDITION."""


class AlreadyExists(SlmopsError):
    """A resource with that name exists. Maps to ALREADY_EXISTS."""


class Unavailable(SlmopsError):
    """A dependency (Ray, a teacher, a predictor) cannot be reached. Maps to UNAVAILABLE."""


class JobCancelled(BaseException):
    """Raised in a job's main thread when it is asked to stop (SIGTERM): a job may keep what it has
    finished before it exits. A BaseException, so that no `except Exception` swallows it."""


def _under(field: str, pending: str) -> bool:
    return field == pending or field.startswith((pending + ".", pending + "["))


def validate_pending(check, spec, pending: list[str] | tuple[str, ...] = ()):
    """check(spec), except that problems under a pending field (one that an earlier pipeline
    stage fills) are not reported; None when only such problems were found."""
    try:
        return check(spec)
    except InvalidSpec as exc:
        left = [p for p in exc.problems if not any(_under(p[0], f) for f in pending)]
        if left or not pending:
            raise InvalidSpec(*left[0], *left[1:]) from None
        return None


def collect(problems: list[tuple[str, str]]) -> None:
    """Raise one InvalidSpec reporting every problem at once, if there are any."""
    if problems:
        raise InvalidSpec(*problems[0], *problems[1:])
