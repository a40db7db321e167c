"""Periods written as a whole number and a unit: "30m", "72h", "2d". The idle-stop period
(issue 14: also "off"; the endpoint option ``idle_stop_after`` and the settings
``RDEPLOY_IDLE_STOP_AFTER_<TARGET>`` read it the same way) and a shadow's duration."""

import re
from datetime import timedelta

MIN_IDLE_STOP_AFTER = timedelta(minutes=5)
MAX_IDLE_STOP_AFTER = timedelta(days=30)
_UNITS = {"m": "minutes", "h": "hours", "d": "days"}
_DURATION = re.compile(r"([1-9][0-9]{0,5})([mhd])")


def duration_parse(value: object, *, name: str, minimum: timedelta, maximum: timedelta) -> timedelta:
    """The period; ValueError naming ``name`` and the range, in words a user understands."""
    match = _DURATION.fullmatch(value) if isinstance(value, str) else None
    period = timedelta(**{_UNITS[match[2]]: int(match[1])}) if match else None
    if period is None or not minimum <= period <= maximum:
        raise ValueError(
            f"{name!r} must be a whole number of minutes, hours or days from {_spoken(minimum)} to "
            f'{_spoken(maximum)}, such as "30m", "72h" or "2d".'
        )
    return period


def idle_stop_after_parse(value: object) -> timedelta | None:
    """The period, or None for "off"; ValueError with a message a user understands."""
    if value == "off":
        return None
    try:
        return duration_parse(value, name="idle_stop_after", minimum=MIN_IDLE_STOP_AFTER, maximum=MAX_IDLE_STOP_AFTER)
    except ValueError:
        raise ValueError(
            "'idle_stop_after' must be \"off\" or a whole number of minutes, hours or days "
            'from 5 minutes to 30 days, such as "30m", "72h" or "2d".'
        ) from None


def _spoken(period: timedelta) -> str:
    seconds = int(period.total_seconds())
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds} seconds"
