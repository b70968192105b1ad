"""NEWS2 (Royal College of Physicians 2017, CLINICAL.md §1) from a patient's smoothed vitals."""

from __future__ import annotations

from dataclasses import dataclass, field


def score_rr(rr: float) -> int:
    """Respiration rate: <=8 -> 3, 9-11 -> 1, 12-20 -> 0, 21-24 -> 2, >=25 -> 3."""
    if rr <= 8:
        return 3
    if rr <= 11:
        return 1
    if rr <= 20:
        return 0
    if rr <= 24:
        return 2
    return 3


def score_spo2(spo2: float, *, scale: int = 1, on_oxygen: bool = False) -> int:
    """SpO2 scale 1 (<=91 -> 3 ... >=96 -> 0) or scale 2 for hypercapnic respiratory failure."""
    if scale == 1:
        if spo2 <= 91:
            return 3
        if spo2 <= 93:
            return 2
        if spo2 <= 95:
            return 1
        return 0
    if spo2 <= 83:
        return 3
    if spo2 <= 85:
        return 2
    if spo2 <= 87:
        return 1
    if spo2 <= 92 or not on_oxygen:
        return 0  # 88-92, or >=93 on air
    if spo2 <= 94:
        return 1
    if spo2 <= 96:
        return 2
    return 3


def score_sbp(sbp: float) -> int:
    """Systolic BP: <=90 -> 3, 91-100 -> 2, 101-110 -> 1, 111-219 -> 0, >=220 -> 3."""
    if sbp <= 90:
        return 3
    if sbp <= 100:
        return 2
    if sbp <= 110:
        return 1
    if sbp <= 219:
        return 0
    return 3


def score_pulse(hr: float) -> int:
    """Pulse: <=40 -> 3, 41-50 -> 1, 51-90 -> 0, 91-110 -> 1, 111-130 -> 2, >=131 -> 3."""
    if hr <= 40:
        return 3
    if hr <= 50:
        return 1
    if hr <= 90:
        return 0
    if hr <= 110:
        return 1
    if hr <= 130:
        return 2
    return 3


def score_temperature(temp: float) -> int:
    """Temperature: <=35.0 -> 3, 35.1-36.0 -> 1, 36.1-38.0 -> 0, 38.1-39.0 -> 1, >=39.1 -> 2."""
    if temp <= 35.0:
        return 3
    if temp <= 36.0:
        return 1
    if temp <= 38.0:
        return 0
    if temp <= 39.0:
        return 1
    return 2


# Band edges of the chart are integers (one decimal for temperature); round smoothed inputs
# the way a nurse would chart them, so 90.5 bpm is charted 91 and scores like the chart says.
def _chart(value: float, decimals: int = 0) -> float:
    return float(round(value, decimals))


@dataclass(frozen=True, slots=True)
class News2:
    """A NEWS2 result: the total over the parameters present, each part, and what is missing."""

    total: int
    parts: dict[str, int] = field(default_factory=dict)
    missing: tuple[str, ...] = ()
    partial: bool = True  # O2 flag and/or consciousness were defaulted, or parameters are missing

    @property
    def max_part(self) -> int:
        return max(self.parts.values(), default=0)

    @property
    def band(self) -> str:
        """RCP Chart 4 clinical risk: low, low-medium (a single 3), medium, high."""
        if self.total >= 7:
            return "high"
        if self.total >= 5:
            return "medium"
        if self.max_part >= 3:
            return "low-medium"
        return "low"


def news2(
    *,
    rr: float | None,
    spo2: float | None,
    sbp: float | None,
    pulse: float | None,
    temperature: float | None,
    on_oxygen: bool | None = None,
    spo2_scale: int = 1,
    consciousness: str | None = None,
) -> News2:
    """Score what is known; a parameter that is None is reported missing, never scored 0.

    Sleep is not reduced consciousness: callers pass the nurse-entered ACVPU level or None.

    >>> r = news2(rr=22, spo2=93, sbp=105, pulse=112, temperature=38.4)
    >>> (r.total, r.max_part, r.partial, r.band)
    (8, 2, True, 'high')
    """
    parts: dict[str, int] = {}
    missing: list[str] = []
    inputs = {"respiration": rr, "spo2": spo2, "systolic_bp": sbp, "pulse": pulse, "temperature": temperature}
    for name, value in inputs.items():
        if value is None:
            missing.append(name)
    if rr is not None:
        parts["respiration"] = score_rr(_chart(rr))
    if spo2 is not None:
        parts["spo2"] = score_spo2(_chart(spo2), scale=spo2_scale, on_oxygen=bool(on_oxygen))
    if sbp is not None:
        parts["systolic_bp"] = score_sbp(_chart(sbp))
    if pulse is not None:
        parts["pulse"] = score_pulse(_chart(pulse))
    if temperature is not None:
        parts["temperature"] = score_temperature(_chart(temperature, 1))
    parts["air_or_oxygen"] = 2 if on_oxygen else 0
    parts["consciousness"] = 3 if consciousness not in (None, "A") else 0
    partial = on_oxygen is None or consciousness is None or bool(missing)
    return News2(sum(parts.values()), parts, tuple(missing), partial)
