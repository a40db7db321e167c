"""The idle-stop period, written as a whole number and a unit: "30m", "72h", "2d" or "off"
(issue 14); the endpoint option ``idle_stop_after`` and the settings
``RDEPLOY_IDLE_STOP_AFTER_<TARGET>`` read it the same way."""

import re
from datetime import timedelta

MIN_IDLE_STOP_AFTER = timedelta(minutes=5)
MAX_IDLE_STOP_AFTER = timedelta(days=30)
_UNITS = {"m": "minutes", "h": "hours", "d": "days"}
_DURATION = re.compile(r"([1-9][0-9]{0,5})([mhd])")


def idle_stop_after_parse(value: object) -> timedelta | None:
    """The period, or None for "off"; ValueError with a message a user understands."""
    if value == "off":
        return None
    match = _DURATION.fullmatch(value) if isinstance(value, str) else None
    period = timedelta(**{_UNITS[match[2]]: int(match[1])}) if match else None
    if period is None or not MIN_IDLE_STOP_AFTER <= period <= MAX_IDLE_STOP_AFTER:
        raise ValueError(
            "'idle_stop_after' must be \"off\" or a whole number of minutes, hours or days "
            'from 5 minutes to 30 days, such as "30m", "72h" or "2d".'
        )
    return period
