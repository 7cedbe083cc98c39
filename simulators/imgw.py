"""Daily mean temperatures from IMGW-PIB's public data files (danepubliczne.imgw.pl).

The Polish national weather service publishes daily station data as CSV,
one file per month or year, without a header, in Windows-1250, fields
separated by commas and texts in double quotes. Four daily layouts carry a
mean temperature (the layouts as the service's own format files describe
them, ``*_format.txt`` beside the data):

| file | layout (first fields) | mean temperature |
|---|---|---|
| ``k_d_*.csv`` climate stations | code, name, year, month, day, TMAX, status, TMIN, status, STD, status, ... (18 fields) | STD, field 10 |
| ``s_d_*.csv`` synoptic stations | code, name, year, month, day, TMAX, status, TMIN, status, STD, status, ... (65 fields) | STD, field 10 |
| ``k_d_t_*.csv`` climate, terms | code, name, year, month, day, TEMP, status, ... (13 fields) | TEMP, field 6 |
| ``s_d_t_*.csv`` synoptic, terms | code, name, year, month, day, NOS, status, FWS, status, TEMP, status, ... (23 fields) | TEMP, field 10 |

A status of ``8`` means no measurement (the value is missing), ``9`` no
phenomenon (for temperatures, never). The date is the station's
climatological day as published; the verification uses it as the local day.

No network at run time: the file is downloaded by a person (or a job) and
given with ``retrofit-sim verify --weather-csv FILE --station NAME|CODE``.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from dataclasses import dataclass
from pathlib import Path

from drivers.core.errors import RetrofitError

NO_MEASUREMENT = "8"


@dataclass(frozen=True)
class Layout:
    name: str
    fields: int  # at least this many fields per row
    mean_at: int  # 0-based index of the mean temperature; its status follows it
    what: str


LAYOUTS = {
    "k_d": Layout("k_d", 18, 9, "climate station daily data (STD)"),
    "s_d": Layout("s_d", 60, 9, "synoptic station daily data (STD)"),
    "k_d_t": Layout("k_d_t", 13, 5, "climate station daily term data (TEMP)"),
    "s_d_t": Layout("s_d_t", 23, 9, "synoptic station daily term data (TEMP)"),
}


def layout_of(path: Path) -> Layout:
    """The layout from the file name as IMGW names its files (k_d_t_01_2024.csv,
    s_d_2024.csv ...), longest prefix first."""
    name = path.name.lower()
    for key in ("k_d_t", "s_d_t", "k_d", "s_d"):
        if name.startswith(key + "_"):
            return LAYOUTS[key]
    raise RetrofitError(f"{path}: not an IMGW daily file name (k_d_*, s_d_*, k_d_t_*, s_d_t_*.csv); "
                        f"give --weather-layout {'|'.join(LAYOUTS)}")


def daily_means(path: Path, station: str, layout: Layout | None = None) -> dict[str, float | None]:
    """Date (ISO) -> the station's daily mean temperature in degC, None where
    the file says no measurement. ``station`` is the 9-digit code or the name."""
    layout = layout or layout_of(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RetrofitError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("cp1250")  # IMGW's own encoding
    wanted = station.strip().upper()
    out: dict[str, float | None] = {}
    stations: set[str] = set()
    for number, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or not "".join(row).strip():
            continue
        if len(row) < max(layout.fields, layout.mean_at + 2):
            raise RetrofitError(f"{path}:{number}: {len(row)} fields; an IMGW {layout.name} row has "
                                f"{layout.fields} ({layout.what})")
        code, name = row[0].strip(), row[1].strip().upper()
        stations.add(f"{code} {name}")
        if wanted not in (code, name):
            continue
        try:
            day = dt.date(int(row[2]), int(row[3]), int(row[4])).isoformat()
        except ValueError:
            raise RetrofitError(f"{path}:{number}: no date in fields 3-5: {row[2:5]}") from None
        value, status = row[layout.mean_at].strip(), row[layout.mean_at + 1].strip()
        if status == NO_MEASUREMENT or not value:
            out[day] = None
            continue
        try:
            out[day] = float(value.replace(",", "."))
        except ValueError:
            raise RetrofitError(f"{path}:{number}: mean temperature {value!r} is not a number") from None
    if not out:
        known = ", ".join(sorted(stations)[:8]) or "none"
        raise RetrofitError(f"{path}: no rows for station {station!r}; stations in the file: {known}")
    return out
