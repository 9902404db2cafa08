"""One steering intervention on one dictionary latent, and its wire format in `extra_body`."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

Mode = Literal["add", "clamp"]
MODES: tuple[str, ...] = ("add", "clamp")


@dataclass(frozen=True)
class Intervention:
    """`add`: latent k += value (h += value * W_dec[k]). `clamp`: latent k = value (0 ablates)."""

    latent: int
    value: float
    mode: Mode = "add"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"intervention mode {self.mode!r} is unknown: use one of {MODES}")
        if int(self.latent) < 0:
            raise ValueError(f"latent index {self.latent} is negative: latents are numbered from 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Intervention":
        return cls(latent=int(data["latent"]), value=float(data["value"]), mode=data.get("mode", "add"))


def steering_to_extra_body(
    interventions: list[Intervention], dictionary: str | None = None
) -> dict[str, Any]:
    """The `GenerateConfig.extra_body` that carries a request's steering (it is in Inspect's cache key)."""
    body: dict[str, Any] = {"steering": [i.to_dict() for i in interventions]}
    if dictionary is not None:
        body["dictionary"] = dictionary
    return body


def steering_from_extra_body(extra_body: dict[str, Any] | None) -> tuple[list[Intervention], str | None]:
    if not extra_body:
        return [], None
    steering = [Intervention.from_dict(d) for d in extra_body.get("steering", [])]
    return steering, extra_body.get("dictionary")
