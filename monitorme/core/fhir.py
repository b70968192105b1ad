"""Readings -> a FHIR R4 Bundle of vital-sign Observations (CLINICAL.md §7: LOINC codes, UCUM units); no HTTP."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np

from monitorme.core.model import Reading, Waveform

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
SNOMED = "http://snomed.info/sct"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
MDC = "urn:oid:2.16.840.1.113883.6.24"

# vital -> (codings, UCUM code, display unit, category)
CODES: dict[str, tuple[list[dict[str, str]], str, str, str]] = {
    "heart_rate": ([{"system": LOINC, "code": "8867-4", "display": "Heart rate"}], "/min", "/min", "vital-signs"),
    "respiration": ([{"system": LOINC, "code": "9279-1", "display": "Respiratory rate"}], "/min", "/min",
                    "vital-signs"),
    "spo2": ([{"system": LOINC, "code": "2708-6", "display": "Oxygen saturation in Arterial blood"},
              {"system": LOINC, "code": "59408-5",
               "display": "Oxygen saturation in Arterial blood by Pulse oximetry"}], "%", "%", "vital-signs"),
    "temperature": ([{"system": LOINC, "code": "8310-5", "display": "Body temperature"}], "Cel", "Cel",
                    "vital-signs"),
    "glucose": ([{"system": LOINC, "code": "2339-0", "display": "Glucose [Mass/volume] in Blood"}], "mg/dL",
                "mg/dL", "laboratory"),
}
BP_PANEL = {"system": LOINC, "code": "85354-9", "display": "Blood pressure panel with all children optional"}
BP_PARTS = {"systolic": ("8480-6", "Systolic blood pressure"), "diastolic": ("8462-4", "Diastolic blood pressure"),
            "mean": ("8478-0", "Mean blood pressure")}
SLEEP = {"asleep": ("248220008", "Asleep"), "awake": ("248218005", "Awake")}


def iso(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _base(patient: str, category: str, coding: list[dict[str, str]], text: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation", "status": "final",
        "category": [{"coding": [{"system": CATEGORY, "code": category}]}],
        "code": {"coding": coding, "text": text},
        "subject": {"identifier": {"system": "urn:monitorme:patient", "value": patient}},
    }


def _quantity(value: float, unit: str) -> dict[str, Any]:
    return {"value": round(float(value), 3), "unit": unit, "system": UCUM, "code": unit}


def observations(patient: str, vital: str, readings: Sequence[Reading], from_ms: int,
                 to_ms: int) -> list[dict[str, Any]]:
    """The latest value of a vital, plus for numbers the mean over the range with min, max and count."""
    if not readings:
        return []
    last = max(readings, key=lambda r: r.ts_ms)
    out: list[dict[str, Any]] = []
    if vital in CODES:
        coding, ucum, unit, category = CODES[vital]
        numbers = [(r.ts_ms, r.value) for r in readings if isinstance(r.value, float)]
        if not numbers:
            return []
        last_ts, last_value = max(numbers)
        latest = _base(patient, category, coding, f"{vital} (latest)")
        latest["effectiveDateTime"] = iso(last_ts)
        latest["valueQuantity"] = _quantity(last_value, unit)
        values = np.array([v for _, v in numbers])
        summary = _base(patient, category, coding, f"{vital} (mean over the range)")
        summary["effectivePeriod"] = {"start": iso(from_ms), "end": iso(to_ms)}
        summary["valueQuantity"] = _quantity(float(values.mean()), unit)
        summary["note"] = [{"text": f"{len(values)} readings; min {values.min():g}, max {values.max():g} {ucum}"}]
        out += [latest, summary]
    elif vital == "blood_pressure" and isinstance(last.value, dict):
        panel = _base(patient, "vital-signs", [BP_PANEL], "blood pressure (latest)")
        panel["effectiveDateTime"] = iso(last.ts_ms)
        panel["component"] = [
            {"code": {"coding": [{"system": LOINC, "code": BP_PARTS[k][0], "display": BP_PARTS[k][1]}]},
             "valueQuantity": _quantity(v, "mm[Hg]")}
            for k, v in last.value.items() if k in BP_PARTS
        ]
        out.append(panel)
    elif vital == "ecg" and isinstance(last.value, Waveform):
        samples = np.frombuffer(last.value.samples, dtype="<f4")
        strip = _base(patient, "vital-signs", [{"system": MDC, "code": "131328", "display": "MDC_ECG_ELEC_POTL"}],
                      "ECG strip (latest chunk)")
        strip["effectiveDateTime"] = iso(last.ts_ms)
        strip["valueSampledData"] = {
            "origin": {"value": 0, "unit": "mV", "system": UCUM, "code": "mV"},
            "period": round(1000 / last.value.hz, 6), "factor": 1, "dimensions": 1,
            "data": " ".join(f"{x:.3f}" for x in samples.tolist()),
        }
        out.append(strip)
    elif vital == "sleep" and isinstance(last.value, str) and last.value in SLEEP:
        code, display = SLEEP[last.value]
        obs = _base(patient, "survey", [{"system": SNOMED, "code": code, "display": display}], "sleep status")
        obs["effectiveDateTime"] = iso(last.ts_ms)
        obs["valueCodeableConcept"] = {"coding": [{"system": SNOMED, "code": code, "display": display}]}
        out.append(obs)
    return out


def snapshot_bundle(snapshot_id: str, patient: str, by_vital: Mapping[str, Sequence[Reading]], from_ms: int,
                    to_ms: int) -> dict[str, Any]:
    """A FHIR R4 transaction Bundle; Observation ids derive from the snapshot id, so a retry is identical.

    >>> b = snapshot_bundle("s1", "p1", {}, 0, 1)
    >>> (b["resourceType"], b["type"], b["entry"])
    ('Bundle', 'transaction', [])
    """
    entries = []
    for vital in sorted(by_vital):
        for i, obs in enumerate(observations(patient, vital, by_vital[vital], from_ms, to_ms)):
            full = uuid.uuid5(uuid.NAMESPACE_URL, f"monitorme/{snapshot_id}/{vital}/{i}")
            entries.append({"fullUrl": f"urn:uuid:{full}", "resource": obs,
                            "request": {"method": "POST", "url": "Observation"}})
    return {"resourceType": "Bundle", "id": snapshot_id, "type": "transaction", "timestamp": iso(to_ms),
            "entry": entries}
