"""Wired M-Bus, pure code: link-layer frames (EN 13757-2) and telegram decoding (EN 13757-3).

No I/O lives here; the serial worker feeds bytes in and gets frames,
telegrams and records out.
"""

from drivers.mbus.datafield import DataCoding
from drivers.mbus.decode_json import parse_hex, telegram_json, telegram_to_json
from drivers.mbus.frame import (
    BROADCAST_NO_REPLY,
    BROADCAST_WITH_REPLY,
    FIRST_PRIMARY_ADDRESS,
    LAST_PRIMARY_ADDRESS,
    NETWORK_LAYER_ADDRESS,
    Frame,
    LongFrame,
    ShortFrame,
    SingleChar,
    build_application_reset,
    build_req_ud2,
    build_select_secondary,
    build_snd_nke,
    bytes_needed,
    checksum,
    frame_length,
    is_rsp_ud,
    parse_frame,
    split_frame,
)
from drivers.mbus.records import DataRecord, RecordFunction, decode_records
from drivers.mbus.telegram import Telegram, TelegramHeader, decode_telegram, decode_user_data

__all__ = [
    "BROADCAST_NO_REPLY",
    "BROADCAST_WITH_REPLY",
    "FIRST_PRIMARY_ADDRESS",
    "LAST_PRIMARY_ADDRESS",
    "NETWORK_LAYER_ADDRESS",
    "DataCoding",
    "DataRecord",
    "Frame",
    "LongFrame",
    "RecordFunction",
    "ShortFrame",
    "SingleChar",
    "Telegram",
    "TelegramHeader",
    "build_application_reset",
    "build_req_ud2",
    "build_select_secondary",
    "build_snd_nke",
    "bytes_needed",
    "checksum",
    "decode_records",
    "decode_telegram",
    "decode_user_data",
    "frame_length",
    "is_rsp_ud",
    "parse_frame",
    "parse_hex",
    "split_frame",
    "telegram_json",
    "telegram_to_json",
]
