"""An app's quota: five limits, each a positive integer or None for "unlimited"."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True, slots=True)
class QuotaLimits:
    """Requests per second, per minute and per UTC day, tokens per minute, and requests ever.

    `None` means unlimited. A limit is at least 1: an app that may make no requests at all is
    disabled (error 15), not given a zero quota. Zero does appear in two places, always meaning
    "unlimited" as it does to the qianfan SDK: in the settings (`from_config`) and in a per-app
    override (`overridden`), where `None` instead means "keep the default".
    """

    qps: int | None = None
    rpm: int | None = None
    tpm: int | None = None
    daily: int | None = None
    total: int | None = None

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if value is not None and (isinstance(value, bool) or value < 1):
                raise ValueError(f"quota {field.name} must be None or at least 1, not {value!r}")

    @classmethod
    def from_config(
        cls, *, qps: int = 0, rpm: int = 0, tpm: int = 0, daily: int = 0, total: int = 0
    ) -> QuotaLimits:
        """The settings' defaults, where 0 means unlimited."""
        return cls(
            qps=_limit("qps", qps),
            rpm=_limit("rpm", rpm),
            tpm=_limit("tpm", tpm),
            daily=_limit("daily", daily),
            total=_limit("total", total),
        )

    def overridden(
        self,
        *,
        qps: int | None = None,
        rpm: int | None = None,
        tpm: int | None = None,
        daily: int | None = None,
        total: int | None = None,
    ) -> QuotaLimits:
        """These limits with an app's overrides: None keeps the default, 0 lifts the limit."""
        return QuotaLimits(
            qps=self.qps if qps is None else _limit("qps", qps),
            rpm=self.rpm if rpm is None else _limit("rpm", rpm),
            tpm=self.tpm if tpm is None else _limit("tpm", tpm),
            daily=self.daily if daily is None else _limit("daily", daily),
            total=self.total if total is None else _limit("total", total),
        )

    @property
    def unlimited(self) -> bool:
        return all(getattr(self, field.name) is None for field in fields(self))


def _limit(name: str, value: int) -> int | None:
    if value < 0:
        raise ValueError(f"quota {name} must be 0 (unlimited) or positive, not {value}")
    return value or None
