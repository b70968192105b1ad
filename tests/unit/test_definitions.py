"""Pipeline files: the shipped ones load; a new vital is one file; bad files name file and key."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from monitorme.config import data_dir, load_pipelines
from monitorme.core.decode import decode_reading
from monitorme.core.definitions import ValueKind, parse_pipeline
from monitorme.core.model import RawMessage
from monitorme.errors import ConfigError, InputError

ETCO2 = """\
# End-tidal CO2 from a capnograph, every second.
vital = "etco2"
title = "EtCO2"
value = "number"
unit = "mm[Hg]"
period_s = 1
range = [0, 150]

[units.kPa]
scale = 7.50062
"""


@pytest.mark.parametrize("path", sorted(data_dir("pipelines").glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_pipeline_parses(path: Path) -> None:
    spec = parse_pipeline(path.read_text(), path.name)
    assert spec.vital == path.stem
    assert spec.period_s > 0


def test_a_ninth_vital_is_one_new_file(tmp_path: Path) -> None:
    for f in data_dir("pipelines").glob("*.toml"):
        (tmp_path / f.name).write_text(f.read_text())
    (tmp_path / "etco2.toml").write_text(ETCO2)
    registry = load_pipelines(tmp_path)
    assert "etco2" in registry and len(registry) == 9
    now = 1_796_306_400_000
    msg = RawMessage("monitorme/w1/p1/etco2", orjson.dumps({"ts": now, "value": 5.0, "unit": "kPa"}), now)
    assert decode_reading(msg, "w1", registry, now).value == pytest.approx(37.5031)
    bad = RawMessage("monitorme/w1/p1/etco2", orjson.dumps({"ts": now, "value": 200}), now)
    with pytest.raises(InputError, match="out_of_range"):
        decode_reading(bad, "w1", registry, now)


@pytest.mark.parametrize(("text", "key"), [
    ('vital = "x"\nvalue = "number"\nperiod_s = 1', "range"),
    ('vital = "x"\nvalue = "colour"\nperiod_s = 1', "value"),
    ('vital = "x"\nvalue = "number"\nperiod_s = 0\nrange = [0, 1]', "period_s"),
    ('vital = "x"\nvalue = "number"\nperiod_s = 1\nrange = [5, 1]', "range"),
    ('vital = "X Y"\nvalue = "number"\nperiod_s = 1\nrange = [0, 1]', "vital"),
    ('vital = "x"\nvalue = "number"\nperiod_s = 1\nrange = [0, 1]\nspeed = 3', "speed"),
    ('vital = "x"\nvalue = "enum"\nperiod_s = 1', "choices"),
    ('vital = "x"\nvalue = "object"\nperiod_s = 1', "fields"),
    ('vital = "x"\nvalue = "number"\nperiod_s = 1\nrange = [0, 1]\n[units.F]\noffset = 1', "units.F"),
    ('vital = "x"\nvalue = "number"\nperiod_s = "fast"\nrange = [0, 1]', "period_s"),
    ("vital = ", "x.toml"),
])
def test_bad_pipeline_files_name_file_and_key(text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_pipeline(text, "x.toml")
    assert "x.toml" in str(info.value)
    assert key in str(info.value)


def test_file_name_must_match_the_vital(tmp_path: Path) -> None:
    (tmp_path / "co2.toml").write_text(ETCO2)
    with pytest.raises(ConfigError, match=r"co2\.toml"):
        load_pipelines(tmp_path)


def test_object_fields_and_order() -> None:
    spec = load_pipelines()["blood_pressure"]
    assert spec.kind is ValueKind.OBJECT
    assert spec.primary == "systolic"
    assert spec.ordered == ("diastolic", "mean", "systolic")
    assert not spec.fields["mean"].required
