"""Request deadlines: when a caller stops waiting, and the typed error for work dropped because of it.

A deadline is fixed once, at the ingress, from the configuration (``overload.deadline_s``) or from
the caller's headers, bounded by ``overload.max_deadline_s``, and travels with the request through
every stage. Times are wall-clock Unix seconds, so a deadline means the same on every node of a
cluster (whose clocks NTP keeps within milliseconds); no Ray here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime

from skyrender.errors import SkyRenderError

__all__ = [
    "Budget",
    "DEADLINE_HEADER",
    "TIMEOUT_HEADER",
    "Deadline",
    "InvalidDeadline",
    "Shed",
    "deadline_from_headers",
]

#: An absolute deadline: Unix time in seconds (``1764446400.25``), RFC 3339 or an HTTP-date.
DEADLINE_HEADER = "x-request-deadline"
#: A relative deadline: seconds from the moment the request arrives (``2.5``).
TIMEOUT_HEADER = "request-timeout"


class InvalidDeadline(SkyRenderError):
    """A deadline header that cannot be read (400)."""


class Shed(Exception):
    """A request dropped without computing it: refused at admission or by a stage (503 + Retry-After).

    Parameters
    ----------
    stage : str
        Where it was dropped: ``arrival`` (the ingress, before reading the body), ``ingress``,
        ``fetch``, ``compose`` or ``encode``.
    reason : str
        ``deadline_passed`` (the caller has given up), ``would_miss_deadline`` (the estimated
        completion is after the deadline) or ``queue_full`` (a Serve queue limit refused it).
    retry_after_s : int
        Whole seconds after which a retry has a fair chance (the ``Retry-After`` header).
    estimate_s : float
        The estimated time to finish that decided it [s] (0 when no estimate was involved).
    remaining_s : float
        Time left before the deadline when it was dropped [s] (negative once passed).
    """

    def __init__(
        self, stage: str, reason: str, retry_after_s: int, estimate_s: float = 0.0, remaining_s: float = 0.0
    ):
        super().__init__(
            f"{stage}: {reason} (estimate {estimate_s:.3f} s, remaining {remaining_s:.3f} s)"
        )
        self.stage, self.reason = stage, reason
        self.retry_after_s = max(1, int(retry_after_s))
        self.estimate_s, self.remaining_s = float(estimate_s), float(remaining_s)

    def __reduce__(self):  # crosses Ray process boundaries: keep every field
        return type(self), (self.stage, self.reason, self.retry_after_s, self.estimate_s, self.remaining_s)

    def as_dict(self) -> dict[str, object]:
        """The fields for the response body and the log line."""
        return {
            "stage": self.stage,
            "reason": self.reason,
            "retry_after_s": self.retry_after_s,
            "estimate_s": round(self.estimate_s, 4),
            "remaining_s": round(self.remaining_s, 4),
        }


@dataclass(frozen=True)
class Deadline:
    """When the caller stops waiting for a request.

    Attributes
    ----------
    start : float
        When the ingress received the request (Unix time) [s].
    expires : float
        When the caller stops waiting (Unix time) [s].
    source : str
        ``config`` (the default) or the header it came from.
    """

    start: float
    expires: float
    source: str = "config"

    @property
    def budget_s(self) -> float:
        """The whole time the request was given [s]."""
        return self.expires - self.start

    def remaining(self, now: float | None = None) -> float:
        """Seconds left before the deadline (negative once it has passed)."""
        return self.expires - (time.time() if now is None else now)

    def expired(self, now: float | None = None) -> bool:
        return self.remaining(now) <= 0.0

    def extended(self, grace_s: float) -> Deadline:
        """The deadline for work already taken on: ``grace_s`` [s] later when it is the configured
        one (below the caller's own timeout), unchanged when the caller sent it (its timeout)."""
        if self.source != "config" or grace_s <= 0:
            return self
        return Deadline(self.start, self.expires + grace_s, self.source)

    def check(self, stage: str, need_s: float = 0.0, now: float | None = None) -> None:
        """Raise `Shed` unless ``need_s`` seconds of work still fit before the deadline.

        Parameters
        ----------
        stage : str
            The stage asking (for the error and the metrics).
        need_s : float
            The stage's measured time for this request [s]; 0 checks only that the deadline
            has not passed.
        """
        left = self.remaining(now)
        if left <= 0.0:
            raise Shed(stage, "deadline_passed", 1, need_s, left)
        if need_s > left:
            raise Shed(stage, "would_miss_deadline", math.ceil(need_s - left), need_s, left)


@dataclass(frozen=True)
class Budget:
    """What travels with a render through the stages: its deadline and its size.

    Attributes
    ----------
    deadline : Deadline
    work : float
        The render's work [megapixels of output] (see `deployments.admission.work_units`).
    sent_at : float
        When the ingress sent it to the first stage (Unix time) [s]: the first queue wait.
    """

    deadline: Deadline
    work: float
    sent_at: float


def _parse_absolute(value: str) -> float:
    """Unix seconds, RFC 3339 (with a zone) or an HTTP-date, as Unix seconds."""
    try:
        number = float(value)
    except ValueError:
        pass
    else:
        if math.isfinite(number):
            return number
        raise InvalidDeadline(f"{DEADLINE_HEADER}: {value!r} is not a finite time")
    when: datetime | None = None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            when = None
    if when is None or when.tzinfo is None:
        raise InvalidDeadline(
            f"{DEADLINE_HEADER}: {value[:64]!r} is neither Unix seconds, RFC 3339 with a time zone, "
            "nor an HTTP-date"
        )
    return when.timestamp()


def deadline_from_headers(
    headers: Mapping[str, str], default_s: float, max_s: float, now: float | None = None
) -> Deadline:
    """The request's deadline: the caller's, bounded by ``max_s``, else ``default_s`` from now.

    ``Request-Timeout`` gives seconds from now; ``X-Request-Deadline`` an absolute time. When
    both are given the earlier wins. A deadline already past is kept as it is (the request is
    then dropped, not computed); one beyond ``max_s`` is cut to ``max_s``.

    Parameters
    ----------
    headers : Mapping[str, str]
        The request's headers (lower-case names, as Starlette gives them).
    default_s, max_s : float
        The configured default and longest deadline [s].
    now : float, optional
        Unix time of arrival [s] (default: now).

    Raises
    ------
    InvalidDeadline
        A header that is not a number or a date, or a negative or non-finite timeout.
    """
    now = time.time() if now is None else now
    candidates: list[tuple[float, str]] = []
    timeout = headers.get(TIMEOUT_HEADER)
    if timeout is not None:
        try:
            seconds = float(timeout)
        except ValueError:
            raise InvalidDeadline(f"{TIMEOUT_HEADER}: {timeout[:64]!r} is not a number of seconds") from None
        if not math.isfinite(seconds) or seconds < 0:
            raise InvalidDeadline(f"{TIMEOUT_HEADER}: {timeout[:64]!r} must be a finite number >= 0")
        candidates.append((now + seconds, "Request-Timeout"))
    absolute = headers.get(DEADLINE_HEADER)
    if absolute is not None:
        candidates.append((_parse_absolute(absolute.strip()), "X-Request-Deadline"))
    if not candidates:
        return Deadline(now, now + default_s, "config")
    expires, source = min(candidates)
    return Deadline(now, min(expires, now + max_s), source)
