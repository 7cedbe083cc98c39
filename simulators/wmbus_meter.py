"""Simulated wireless M-Bus meters: real telegrams, real keys, a radio channel.

A ``SimulatedRadioMeter`` is an apartment water meter, heat meter or heat
cost allocator that integrates its own physics and, each time it transmits,
builds a complete EN 13757-4 telegram: link header, short (CI 0x7A) or long
(CI 0x72) transport header, OMS records, unencrypted or encrypted with its
own key in security mode 5 (AES-CBC, IV from address and access number) or
mode 7 (AFL with message counter and CMAC, key derived per message), frame
format A or B, block CRCs on or off. Every transmission carries its ground
truth (the values in the telegram), so tests compare a decoder's output
with what was sent, not with another decoder's opinion.

The telegrams are built here from the standards, independently of the
receive side (drivers/wmbus): only the CRC and the AES primitives are
shared. ``im871a_frame``/``amb8465_frame`` wrap a telegram the way the
sticks deliver it; ``RadioChannel`` schedules transmissions with their
intervals and jitter and damages some (collisions, bit errors);
``write_key_file`` writes the per-meter key file a vendor would deliver.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from pathlib import Path

from drivers.wmbus import amb8465, crypto, im871a
from drivers.wmbus.crc import crc16_en13757
from drivers.wmbus.link import FrameFormat, add_crcs, strip_crcs

C_SND_NR = 0x44
CI_SHORT = 0x7A
CI_LONG = 0x72
CI_NO_HEADER = 0x78
CI_SHORT_COMPACT = 0x7B
CI_LONG_COMPACT = 0x73
CI_NO_HEADER_COMPACT = 0x79
CI_AFL = 0x90
DEVICE_TYPES = {"water": 0x07, "warm_water": 0x06, "heat": 0x04, "hca": 0x08}
IDLE_FILLER = 0x2F
EPOCH = datetime(2025, 1, 1)
# Air time per byte, for collisions: T1 3-of-6 at 100 kchip/s, C1 NRZ at
# 100 kchip/s, S1 Manchester at 32.768 kchip/s.
AIRTIME_PER_BYTE_S = {"t1": 12 / 100_000, "c1": 8 / 100_000, "s1": 16 / 32_768}


class MeterKind(StrEnum):
    WATER = "water"
    WARM_WATER = "warm_water"
    HEAT = "heat"
    HCA = "hca"


def manufacturer_bytes(code: str) -> bytes:
    a, b, c = (ord(ch) - 64 for ch in code.upper())
    return ((a << 10) | (b << 5) | c).to_bytes(2, "little")


def bcd(value: int, length: int) -> bytes:
    digits = f"{value:0{2 * length}d}"
    if len(digits) > 2 * length:
        raise ValueError(f"{value} does not fit {length} BCD bytes")
    return bytes(int(digits[i : i + 2], 16) for i in range(0, 2 * length, 2))[::-1]


def date_g(day: date) -> bytes:
    """Type G date: day, month, year split over two bytes."""
    year = day.year % 100
    low = day.day | ((year & 0x07) << 5)
    high = day.month | ((year >> 3) << 4)
    return bytes([low, high])


def datetime_f(moment: datetime) -> bytes:
    """Type F date and time (minute resolution)."""
    year = moment.year % 100
    return bytes(
        [
            moment.minute & 0x3F,
            moment.hour & 0x1F,
            moment.day | ((year & 0x07) << 5),
            moment.month | ((year >> 3) << 4),
        ]
    )


@dataclass
class RadioMeterSpec:
    """How one radio meter is built and how it talks."""

    identification: int  # up to 8 decimal digits
    kind: MeterKind = MeterKind.WATER
    manufacturer: str = "ABC"
    version: int = 0x01
    security_mode: int = 0  # 0, 5 or 7
    key: crypto.MeterKey | None = None
    long_header: bool = False  # CI 0x72 (meter address in the TPL) instead of 0x7A
    frame_format: FrameFormat = FrameFormat.A
    with_crcs: bool = False  # as on air; sticks deliver telegrams without
    interval_s: float = 120.0
    mode: str = "t1"
    ell_encryption: bool = False  # ELL 0x8D with AES-CTR and no TPL header (Kamstrup C1 style)
    # 0: full frames only; N: a full frame, then N-1 compact frames (CI 0x79/0x7B/0x73:
    # values without their headers), as Kamstrup's water meters do
    compact_every: int = 0

    @property
    def id_text(self) -> str:
        return f"{self.identification:08d}"


@dataclass(frozen=True)
class Truth:
    """The values a telegram carries, in the units the records state."""

    meter: str
    kind: MeterKind
    values: dict[str, Decimal | int | date | datetime]
    access_number: int
    compact: bool = False  # sent as a compact frame: only a known format gives its values


@dataclass
class _Physics:
    """Counters that only ever rise, gauges that wander, all exact."""

    volume_l: int
    energy_kwh: int
    hca_units: int
    flow_lh: int = 0
    power_w: int = 0
    supply_dc: int = 550  # 0.1 Cel
    return_dc: int = 400
    set_date_value: int = 0
    set_date_volume_l: int | None = None  # a water meter's volume at the set date; None: half the volume

    def advance(self, rng: random.Random, seconds: float, kind: MeterKind) -> None:
        self.flow_lh = rng.choice((0, 0, 0, 120, 360, 540)) if kind is not MeterKind.HEAT else (
            rng.randint(40, 400)
        )
        self.volume_l += round(self.flow_lh * seconds / 3600)
        if kind is MeterKind.HEAT:
            self.supply_dc = rng.randint(450, 700)
            self.return_dc = self.supply_dc - rng.randint(50, 200)
            delta_k = (self.supply_dc - self.return_dc) / 10
            self.power_w = round(1.163 * self.flow_lh * delta_k)
            self.energy_kwh += round(self.power_w * seconds / 3600 / 1000)
        if kind is MeterKind.HCA:
            self.hca_units += rng.randint(0, 3)


class SimulatedRadioMeter:
    """One meter: its state, access number, message counter and telegrams."""

    def __init__(self, spec: RadioMeterSpec, seed: int = 0) -> None:
        if spec.security_mode not in (0, 5, 7):
            raise ValueError(f"security mode {spec.security_mode}: the simulator builds 0, 5 and 7")
        if (spec.security_mode or spec.ell_encryption) and spec.key is None:
            raise ValueError(f"meter {spec.id_text}: security mode {spec.security_mode} needs a key")
        self.spec = spec
        self._rng = random.Random(seed ^ spec.identification)
        self.access_number = self._rng.randrange(256)
        self.message_counter = self._rng.randrange(1, 1 << 20)
        self._physics = _Physics(
            volume_l=self._rng.randrange(1_000, 900_000),
            energy_kwh=self._rng.randrange(100, 90_000),
            hca_units=self._rng.randrange(0, 5_000),
        )
        self._physics.set_date_value = self._physics.hca_units // 2
        self._clock = EPOCH
        self.transmissions = 0

    # -- values ---------------------------------------------------------------------

    def _records(self, now: datetime) -> tuple[list[tuple[bytes, bytes]], dict[str, Decimal | int | date | datetime]]:
        p = self._physics
        set_date = date(now.year - 1 if now.month < 6 else now.year, 5, 31)
        moment = now.replace(second=0, microsecond=0)
        kind = self.spec.kind
        records: list[tuple[bytes, bytes]] = []  # (DIF..VIFE, data) per record
        truth: dict[str, Decimal | int | date | datetime] = {}
        if kind in (MeterKind.WATER, MeterKind.WARM_WATER):
            records.append((b"\x04\x13", p.volume_l.to_bytes(4, "little")))  # volume, litres
            truth["volume"] = Decimal(p.volume_l).scaleb(-3)
            records.append((b"\x02\x3b", p.flow_lh.to_bytes(2, "little", signed=True)))  # l/h
            truth["volume_flow"] = Decimal(p.flow_lh).scaleb(-3)
            at_set_date = p.volume_l // 2 if p.set_date_volume_l is None else p.set_date_volume_l
            records.append((b"\x44\x13", at_set_date.to_bytes(4, "little")))  # at set date
            truth["volume@1"] = Decimal(at_set_date).scaleb(-3)
            records.append((b"\x42\x6c", date_g(set_date)))
            truth["date@1"] = set_date
        elif kind is MeterKind.HEAT:
            records.append((b"\x04\x06", p.energy_kwh.to_bytes(4, "little")))  # kWh
            truth["energy"] = Decimal(p.energy_kwh) * 1000
            records.append((b"\x0c\x13", bcd(p.volume_l, 4)))  # litres, BCD
            truth["volume"] = Decimal(p.volume_l).scaleb(-3)
            records.append((b"\x02\x2b", p.power_w.to_bytes(2, "little", signed=True)))  # W
            truth["power"] = Decimal(p.power_w)
            records.append((b"\x02\x3b", p.flow_lh.to_bytes(2, "little", signed=True)))
            truth["volume_flow"] = Decimal(p.flow_lh).scaleb(-3)
            records.append((b"\x02\x5a", p.supply_dc.to_bytes(2, "little", signed=True)))  # 0.1 Cel
            truth["flow_temperature"] = Decimal(p.supply_dc).scaleb(-1)
            records.append((b"\x02\x5e", p.return_dc.to_bytes(2, "little", signed=True)))
            truth["return_temperature"] = Decimal(p.return_dc).scaleb(-1)
            records.append((b"\x44\x06", (p.energy_kwh // 2).to_bytes(4, "little")))
            truth["energy@1"] = Decimal(p.energy_kwh // 2) * 1000
            records.append((b"\x42\x6c", date_g(set_date)))
            truth["date@1"] = set_date
        else:
            records.append((b"\x0b\x6e", bcd(p.hca_units, 3)))
            truth["hca"] = p.hca_units
            records.append((b"\x4b\x6e", bcd(p.set_date_value, 3)))
            truth["hca@1"] = p.set_date_value
            records.append((b"\x42\x6c", date_g(set_date)))
            truth["date@1"] = set_date
        records.append((b"\x04\x6d", datetime_f(moment)))
        truth["date_time"] = moment
        records.append((b"\x02\xfd\x17", b"\x00\x00"))  # error flags: none
        truth["error_flags"] = 0
        return records, truth

    # -- telegram -------------------------------------------------------------------

    def _link_address(self) -> bytes:
        spec = self.spec
        return (
            manufacturer_bytes(spec.manufacturer)
            + bcd(spec.identification, 4)
            + bytes([spec.version, DEVICE_TYPES[spec.kind.value]])
        )

    def _tpl_header(self, configuration: int, extension: bytes, compact: bool = False) -> bytes:
        head = bytes([self.access_number, 0x00]) + configuration.to_bytes(2, "little") + extension
        if self.spec.long_header:
            address = self._link_address()
            ci = CI_LONG_COMPACT if compact else CI_LONG
            return bytes([ci]) + address[2:6] + address[0:2] + address[6:8] + head
        return bytes([CI_SHORT_COMPACT if compact else CI_SHORT]) + head

    def _compact_now(self) -> bool:
        every = self.spec.compact_every
        return every > 0 and self.transmissions % every != 0

    def build(self, now: datetime) -> tuple[bytes, Truth]:
        """The CRC-less telegram (L-field first) for this transmission, and its truth."""
        parts, values = self._records(now)
        compact = self._compact_now()
        records = compact_records(parts) if compact else b"".join(head + data for head, data in parts)
        mode = self.spec.security_mode
        if self.spec.ell_encryption:
            application, afl = self._ell(records, compact), b""
        elif mode == 0:
            application = self._tpl_header(0x0000, b"", compact) + records
            afl = b""
        else:
            plain = b"\x2f\x2f" + records
            plain += bytes([IDLE_FILLER]) * (-len(plain) % 16)
            blocks = len(plain) // 16
            if blocks > 15:
                raise ValueError("more than 15 encrypted blocks do not fit the configuration field")
            assert self.spec.key is not None
            if mode == 5:
                header = self._tpl_header(0x0500 | blocks << 4, b"", compact)
                iv = self._link_address() + bytes([self.access_number]) * 8
                application = header + crypto.cbc_encrypt(self.spec.key, iv, plain)
                afl = b""
            else:
                application, afl = self._mode7(plain, blocks, compact)
        link = bytes([C_SND_NR]) + self._link_address()
        body = link + afl + application
        telegram = bytes([len(body)]) + body
        truth = Truth(self.spec.id_text, self.spec.kind, values, self.access_number, compact)
        return telegram, truth

    def _ell(self, records: bytes, compact: bool) -> bytes:
        """ELL (CI 0x8D): CC, access number, session number; then CTR-encrypted CRC + CI 0x78 (0x79)."""
        assert self.spec.key is not None
        communication_control = 0x20  # slow response delay, nothing else
        session = (1 << 29) | (self.message_counter & 0x1FFFFFFF)  # ENC = 1: AES-CTR
        session_bytes = session.to_bytes(4, "little")
        inner = bytes([CI_NO_HEADER_COMPACT if compact else CI_NO_HEADER]) + records
        payload = crc16_en13757(inner).to_bytes(2, "little") + inner
        counter = self._link_address() + bytes([communication_control]) + session_bytes + bytes(3)
        encrypted = crypto.ctr_crypt(self.spec.key, counter, payload)
        return bytes([0x8D, communication_control, self.access_number]) + session_bytes + encrypted

    def _mode7(self, plain: bytes, blocks: int, compact: bool) -> tuple[bytes, bytes]:
        assert self.spec.key is not None
        counter = self.message_counter.to_bytes(4, "little")
        meter_id = bcd(self.spec.identification, 4)
        kenc = crypto.kdf_a(self.spec.key, crypto.DC_ENCRYPTION_FROM_METER, counter, meter_id)
        kmac = crypto.kdf_a(self.spec.key, crypto.DC_MAC_FROM_METER, counter, meter_id)
        header = self._tpl_header(0x0700 | blocks << 4, b"\x10", compact)  # CFE: KDF-A, key id 0
        tpdu = header + crypto.cbc_encrypt(kenc, bytes(16), plain)
        message_control = 0x25  # message counter present, AES-CMAC 8 bytes
        mac = crypto.cmac(kmac, bytes([message_control]) + counter + tpdu)[:8]
        fields = (0x2C00).to_bytes(2, "little") + bytes([message_control]) + counter + mac
        afl = bytes([CI_AFL, len(fields)]) + fields
        return tpdu, afl

    def on_air(self, telegram: bytes) -> bytes:
        """The telegram as transmitted: with block CRCs for the meter's frame format."""
        return add_crcs(telegram, self.spec.frame_format)

    def transmit(self, seconds_since_last: float, now: datetime) -> tuple[bytes, Truth]:
        """Advance the physics, build the next telegram (as the spec says: CRCs or not)."""
        self._physics.advance(self._rng, seconds_since_last, self.spec.kind)
        telegram, truth = self.build(now)
        self.access_number = (self.access_number + 1) & 0xFF
        self.message_counter += 1
        self.transmissions += 1
        out = self.on_air(telegram) if self.spec.with_crcs else telegram
        return out, truth


# -- receivers' framing ---------------------------------------------------------------------


def compact_records(parts: Sequence[tuple[bytes, bytes]]) -> bytes:
    """A compact frame's application data (EN 13757-3): format signature, full-frame CRC, values.

    The signature is the CRC-16 of the records' headers run together, the
    frame CRC that of the full records; both least significant byte first.
    """
    headers = b"".join(head for head, _ in parts)
    full = b"".join(head + data for head, data in parts)
    values = b"".join(data for _, data in parts)
    return (crc16_en13757(headers).to_bytes(2, "little") + crc16_en13757(full).to_bytes(2, "little")
            + values)


def strip_to_crcless(meter: SimulatedRadioMeter, telegram: bytes) -> bytes:
    """What a stick makes of an on-air telegram: the CRC-less form (L-field recomputed)."""
    if not meter.spec.with_crcs:
        return telegram
    return strip_crcs(telegram, meter.spec.frame_format)


def rssi_raw_im871a(dbm: float) -> int:
    return max(0, min(255, round((dbm + 380.0 / 3.0) * 15.0 / 8.0)))


def rssi_raw_amb8465(dbm: float) -> int:
    raw = round((dbm + 74) * 2)
    return max(-128, min(127, raw)) & 0xFF


def im871a_frame(crcless: bytes, rssi_dbm: float = -70.0, timestamp: int | None = 0) -> bytes:
    return im871a.telegram_indication(crcless, rssi_raw_im871a(rssi_dbm), timestamp)


def amb8465_frame(crcless: bytes, rssi_dbm: float = -70.0) -> bytes:
    return amb8465.telegram_indication(crcless, rssi_raw_amb8465(rssi_dbm))


def rtl_wmbus_line(telegram: bytes, mode: str = "T1", rssi: float = 40.0) -> str:
    stamp = "2025-01-01 00:00:00.000"
    return f"{mode};1;1;{stamp};{rssi:.0f};0;00000000;0x{telegram.hex()}"


# -- keys -----------------------------------------------------------------------------------


def generate_keys(count: int, seed: int = 0) -> list[crypto.MeterKey]:
    rng = random.Random(seed)
    return [crypto.MeterKey(rng.randbytes(16)) for _ in range(count)]


def write_key_file(meters: Iterable[SimulatedRadioMeter], path: Path) -> Path:
    """The key file a vendor delivers: header, comment, ``meter_id;key`` lines, mode 600."""
    lines = ["# simulated building: per-meter AES-128 keys (retrofit-sim)", "meter_id;key"]
    for meter in meters:
        if meter.spec.key is not None:
            lines.append(f"{meter.spec.id_text};{meter.spec.key.secret().hex().upper()}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path


# -- radio channel ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Transmission:
    """One telegram sent: when, by whom, its bytes, its truth, and what the air did to it."""

    time_s: float
    meter: SimulatedRadioMeter
    telegram: bytes  # as the meter's spec says (with or without CRCs)
    truth: Truth
    damage: str | None = None  # "collision", "bit_error" or None

    @property
    def intact(self) -> bool:
        return self.damage is None

    @property
    def airtime_s(self) -> float:
        return len(self.telegram) * AIRTIME_PER_BYTE_S.get(self.meter.spec.mode, 12e-5)


@dataclass
class RadioChannel:
    """Meters transmitting on their intervals with jitter; collisions and bit errors.

    ``run(seconds)`` returns every transmission in time order. Two that
    overlap in the air both arrive damaged (no capture effect); with
    ``bit_error_rate`` a telegram gets one flipped bit. A damaged telegram
    keeps its bytes (a receiver with the CRCs will reject it; a stick does
    not deliver it).
    """

    meters: Sequence[SimulatedRadioMeter]
    jitter: float = 0.1
    bit_error_rate: float = 0.0
    collisions: bool = True
    seed: int = 0
    _rng: random.Random = field(init=False)
    _next: dict[int, float] = field(init=False)
    _now: float = field(init=False, default=0.0)
    _last: dict[int, float] = field(init=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._next = {i: self._rng.uniform(0, m.spec.interval_s) for i, m in enumerate(self.meters)}
        self._last = dict.fromkeys(range(len(self.meters)), 0.0)
        self._hit: set[int] = set()  # meters whose next telegram an earlier one overlaps

    def next_due(self) -> float:
        """Channel time of the next transmission."""
        return min(self._next.values())

    def run(self, seconds: float) -> list[Transmission]:
        end = self._now + seconds
        sent = self.run_until(end)
        self._now = end
        return sent

    def run_until(self, t: float) -> list[Transmission]:
        """Every transmission due up to channel time ``t``, in time order, each
        built when it is asked for: a receiver paced by another clock (a
        building's simulated time) calls this as its clock advances, and a
        meter whose values follow that clock sends what it has at its turn.

        Collisions are found from the schedule, across calls: when a telegram
        is sent the next one on air is already known.
        """
        sent: list[Transmission] = []
        while True:
            index, due = min(self._next.items(), key=lambda item: item[1])
            if due > t:
                break
            meter = self.meters[index]
            moment = EPOCH + timedelta(seconds=due)
            telegram, truth = meter.transmit(due - self._last[index], moment)
            self._last[index] = due
            damage = None
            if self.bit_error_rate and self._rng.random() < self.bit_error_rate:
                telegram = _flip_bit(telegram, self._rng)
                damage = "bit_error"
            interval = meter.spec.interval_s
            self._next[index] = due + interval * (1 + self._rng.uniform(-self.jitter, self.jitter))
            transmission = Transmission(due, meter, telegram, truth, damage)
            if self.collisions:
                next_index, next_due = min(self._next.items(), key=lambda item: item[1])
                overlapped = index in self._hit
                self._hit.discard(index)
                if next_due < due + transmission.airtime_s:  # no capture effect: both are lost
                    self._hit.add(next_index)
                    overlapped = True
                if overlapped:
                    transmission = Transmission(due, meter, telegram, truth, "collision")
            sent.append(transmission)
        self._now = max(self._now, t)
        return sent


def _flip_bit(telegram: bytes, rng: random.Random) -> bytes:
    damaged = bytearray(telegram)
    position = rng.randrange(1, len(damaged))  # the L-field is left: the length stays
    damaged[position] ^= 1 << rng.randrange(8)
    return bytes(damaged)
