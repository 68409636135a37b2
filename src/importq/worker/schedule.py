"""When the periodic ``reconcile`` runs: a cron that procrastinate reads with croniter.

croniter reads a sixth field as *seconds*, and puts it *last*: ``minute hour day month
weekday second``. The form other tools use, seconds first, means something else here:
``*/30 * * * * *`` fires every second of minutes :00 and :30, and not at all in between.
Recovery then waits up to half an hour. So a reconcile cron must fire at least once a
minute, and at most once a second. Anything else is refused at start, with the form that
was probably meant.
"""

from __future__ import annotations

from croniter import croniter  # type: ignore[import-untyped]

DEFAULT_RECONCILE_CRON = "* * * * * */15"
_EVERY = ("*", "*/1")
_FIELDS = "minute hour day month weekday second"


def check_reconcile_cron(cron: str) -> str:
    """Return ``cron`` when it fires at least once a minute and at most once a second.

    The first five fields must be ``*``, so that the seconds field, last, picks seconds of
    every minute. A second is croniter's finest step, so no such cron fires more often.
    Raises ValueError with the reason and the seconds-last form.
    """
    fields = cron.split()
    if len(fields) != 6 or not croniter.is_valid(cron):
        raise ValueError(_refusal(cron, "is not a six-field cron"))
    if any(field not in _EVERY for field in fields[:5]):
        raise ValueError(_refusal(cron, "does not fire in every minute"))
    return cron


def _refusal(cron: str, problem: str) -> str:
    return (
        f"IMPORTQ_RECONCILE_CRON {cron!r} {problem}; reconcile must run at least once a "
        f"minute and at most once a second. The cron has six fields, seconds LAST "
        f"({_FIELDS}): every 15 s is {DEFAULT_RECONCILE_CRON!r}, every 30 s is "
        f"'* * * * * */30'."
    )
