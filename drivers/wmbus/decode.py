"""One telegram in, one result out: link, transport, security, application.

``decode_wmbus`` never raises for bad input. Its result always says what
could be read (the link header, at least, once the CRCs are good), what
protected the data and whether it could be opened (``security.state``),
and either the records or an ``error``. A telegram that could not be
decrypted has no records: a caller cannot take a value from it by mistake.

The application layer is the same EN 13757-3 decoder as the wired bus
(drivers.mbus.records), and ``to_json`` gives records the shape of
``retrofit-agent mbus decode``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from drivers.core.errors import DecodeError
from drivers.mbus.decode_json import record_to_json
from drivers.mbus.records import DataRecord, decode_records
from drivers.mbus.telegram import APPLICATION_ERRORS
from drivers.wmbus.compact import KNOWN_FORMATS, FormatBook, UnknownFormat
from drivers.wmbus.keys import EMPTY, KeyRing
from drivers.wmbus.link import FrameFormat, LinkAddress, LinkFrame, parse_link
from drivers.wmbus.transport import (
    ALARM,
    APPLICATION_ERROR,
    COMPACT_FRAME,
    FORMAT_FRAME,
    FULL_FRAME,
    NO_APPLICATION,
    AuthenticationLayer,
    ExtendedLinkLayer,
    Security,
    SecurityState,
    TransportHeader,
    unwrap,
)
from drivers.wmbus.vendors import vendor_data


@dataclass(frozen=True)
class WmbusResult:
    """What one telegram said. ``error`` is set when it could not be read to the end."""

    link: LinkFrame | None
    security: Security
    ell: ExtendedLinkLayer | None = None
    afl: AuthenticationLayer | None = None
    tpl: TransportHeader | None = None
    records: tuple[DataRecord, ...] = ()
    more_records_follow: bool = False
    manufacturer_data: bytes = b""
    error: str | None = None
    notes: tuple[str, ...] = field(default=())
    awaiting_format: bool = False  # a compact frame whose format no full frame has shown yet

    @property
    def meter(self) -> LinkAddress | None:
        """The meter's address: the long transport header's, else the link layer's."""
        if self.tpl is not None and self.tpl.address is not None:
            return self.tpl.address
        return self.link.address if self.link is not None else None

    @property
    def ok(self) -> bool:
        return self.error is None and self.security.readable

    def to_json(self) -> dict[str, object]:
        return result_to_json(self)


_NOT_DECODED = Security(SecurityState.NONE)


def decode_wmbus(
    frame: bytes,
    keys: KeyRing = EMPTY,
    frame_format: FrameFormat | None = None,
    formats: FormatBook | None = None,
    crcs: bool | None = None,
) -> WmbusResult:
    """Decode one telegram (from its L-field, with or without block CRCs).

    ``formats`` remembers the record formats of full frames, so that a
    meter's later compact frames can be read; without one, only the
    formats known up front are.
    """
    try:
        link = parse_link(frame, frame_format, crcs)
    except DecodeError as exc:
        return WmbusResult(None, _NOT_DECODED, error=str(exc))
    try:
        layers = unwrap(link, keys)
    except DecodeError as exc:
        return WmbusResult(link, _NOT_DECODED, error=str(exc))
    notes: tuple[str, ...] = ()
    if link.missing:
        notes = ((f"telegram {link.missing} byte(s) shorter than its L-field says (a receiver that counts its "
                  "RSSI byte in L, or dropped the last byte): read as far as it goes"),)
    result = WmbusResult(link, layers.security, layers.ell, layers.afl, layers.tpl, notes=notes)
    if not layers.security.readable or layers.tpl is None:
        return result
    return _application(result, layers.tpl.ci, layers.application,
                        FormatBook(KNOWN_FORMATS) if formats is None else formats)


def _replace(result: WmbusResult, **changes: object) -> WmbusResult:
    return replace(result, **changes)  # type: ignore[arg-type]


def _application(result: WmbusResult, ci: int, data: bytes, formats: FormatBook) -> WmbusResult:
    notes: tuple[str, ...] = ()
    compact = ci in COMPACT_FRAME
    if compact:
        try:
            data = formats.expand(data)
        except UnknownFormat as exc:
            return _replace(result, error=str(exc), awaiting_format=True)
        except DecodeError as exc:
            return _replace(result, error=str(exc))
        notes = ("compact frame, rebuilt from a known format",)
    if ci in FULL_FRAME or compact:
        block = decode_records(data, lenient=True)
        if block.problem is not None and not block.records:
            return _replace(result, error=block.problem)
        if block.problem is not None:
            notes += (
                (f"the last {len(block.undecoded)} byte(s) are not records this decoder can read "
                 f"({block.problem}); the {len(block.records)} record(s) before them are read"),
            )
        records = block.records
        meter = result.meter
        if block.problem is None and not compact and meter is not None:
            formats.remember(meter.raw.hex(), data)
        extra = vendor_data(meter, ci, data, block.manufacturer_data, len(records)) if meter else None
        if extra is not None:
            records += extra.records
            notes += (extra.note,)
        return _replace(
            result,
            records=records,
            more_records_follow=block.more_records_follow,
            manufacturer_data=block.manufacturer_data,
            notes=result.notes + notes,
        )
    if ci in NO_APPLICATION:
        return result  # a transport-only message (ACC-NR, acknowledgement): no data
    if ci in APPLICATION_ERROR:
        code = data[0] if data else None
        reason = APPLICATION_ERRORS.get(code, "reserved error code") if code is not None else "no code"
        return _replace(result, error=f"meter reports an application error: {reason}")
    if ci in ALARM:
        alarm = data[0] if data else None
        return _replace(result, notes=result.notes + (f"alarm 0x{alarm:02X}" if alarm is not None else "alarm",))
    if ci in FORMAT_FRAME:
        return _replace(result, error=f"format frame (CI 0x{ci:02X}) carries no values")
    if 0xA0 <= ci <= 0xB7:
        meter = result.meter
        extra = vendor_data(meter, ci, data, b"", 0) if meter else None
        if extra is not None and extra.records:
            return _replace(result, records=extra.records, notes=result.notes + (extra.note,))
        return _replace(
            result,
            error=extra.note if extra is not None else (
                f"manufacturer-specific application layer (CI 0x{ci:02X}): not decoded"),
        )
    return _replace(result, error=f"CI 0x{ci:02X} is not a meter message this decoder reads")


# --- JSON --------------------------------------------------------------------------------


def _address_json(address: LinkAddress) -> dict[str, object]:
    return {
        "identification": address.identification,
        "manufacturer": address.manufacturer,
        "version": address.version,
        "medium": address.medium,
        "medium_code": address.device_type,
    }


def header_json(result: WmbusResult) -> dict[str, object]:
    """The meter's identity and the transport fields, one flat object plus the layers."""
    header: dict[str, object] = {}
    meter = result.meter
    if meter is not None:
        header.update(_address_json(meter))
    link = result.link
    tpl = result.tpl
    ell = result.ell
    if tpl is not None:
        header["ci"] = tpl.ci
    elif link is not None:
        header["ci"] = link.ci
    access = tpl.access_number if tpl is not None else None
    if access is None and ell is not None:
        access = ell.access_number
    header["access_number"] = access
    header["status"] = tpl.status if tpl is not None else None
    header["configuration"] = tpl.configuration if tpl is not None else None
    if link is not None:
        header["c_field"] = link.c_field
        header["message_type"] = link.message_type
        header["frame_format"] = link.frame_format.value if link.frame_format else None
        header["link"] = _address_json(link.address)
    if ell is not None:
        ell_json: dict[str, object] = {
            "ci": ell.ci,
            "communication_control": ell.communication_control,
            "access_number": ell.access_number,
        }
        if ell.session_number is not None:
            ell_json["session_number"] = ell.session_number
        if ell.receiver is not None:
            ell_json["receiver"] = _address_json(ell.receiver)
        header["ell"] = ell_json
    if result.afl is not None:
        afl = result.afl
        header["afl"] = {
            "fragmentation_control": afl.fragmentation_control,
            "message_control": afl.message_control,
            "message_counter": (
                int.from_bytes(afl.message_counter, "little") if afl.message_counter else None
            ),
            "mac_length": len(afl.mac) if afl.mac else 0,
        }
    header["more_records_follow"] = result.more_records_follow
    header["manufacturer_data"] = result.manufacturer_data.hex(" ").upper()
    return header


def security_json(security: Security) -> dict[str, object]:
    return {
        "mode": security.mode,
        "state": security.state.value,
        "layer": security.layer,
        "encrypted_bytes": security.encrypted_bytes,
        "reason": security.reason,
    }


def result_to_json(result: WmbusResult) -> dict[str, object]:
    out: dict[str, object] = {
        "header": header_json(result),
        "security": security_json(result.security),
        "records": [record_to_json(record) for record in result.records],
    }
    if result.notes:
        out["notes"] = list(result.notes)
    if result.error is not None:
        out["error"] = result.error
    return out
