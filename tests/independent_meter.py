"""An independent Modbus TCP meter: pymodbus's own server, not our simulator.

The agent's client and our simulator are written by the same hands; a
mistake they share would pass unnoticed. This meter is pymodbus's server
with a fixed register image computed here with ``struct`` (never with the
project's codec), and it records every function code it receives, so a test
can prove the agent never sent a write.
"""

from __future__ import annotations

import asyncio
import struct
import threading

from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice


def float32_words(value: float) -> list[int]:
    """IEEE 754 big-endian, high word first (the SDM630's encoding)."""
    raw = struct.pack(">f", value)
    return [int.from_bytes(raw[0:2], "big"), int.from_bytes(raw[2:4], "big")]


def int16_word(value: int) -> int:
    return struct.unpack(">H", struct.pack(">h", value))[0]


def _runs(addresses: list[int]) -> list[tuple[int, int]]:
    """Contiguous [start, end) runs of sorted register addresses."""
    runs: list[tuple[int, int]] = []
    for address in addresses:
        if runs and runs[-1][1] == address:
            runs[-1] = (runs[-1][0], address + 1)
        else:
            runs.append((address, address + 1))
    return runs


class IndependentMeter:
    """pymodbus TCP server on 127.0.0.1 serving given input-register images per unit."""

    def __init__(self, images: dict[int, dict[int, int]], port: int) -> None:
        self.port = port
        self.function_codes: list[int] = []
        devices = []
        for unit, image in images.items():
            top = max(image) + 1
            blocks = (
                [SimData(0, values=[False] * 8, datatype=DataType.BITS)],
                [SimData(0, values=[False] * 8, datatype=DataType.BITS)],
                [SimData(0, values=[0] * top, datatype=DataType.REGISTERS)],
                # Only the addresses in the image exist: a read touching any
                # other register is answered with exception 02, as real meters do.
                [SimData(start, values=[image[a] for a in range(start, end)], datatype=DataType.REGISTERS)
                 for start, end in _runs(sorted(image))],
            )
            devices.append(SimDevice(unit, simdata=blocks))
        self._devices = devices
        self._loop = asyncio.new_event_loop()
        self._server: ModbusTcpServer | None = None
        self._ready = threading.Event()
        self._error: Exception | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _trace(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if not sending:
            self.function_codes.append(pdu.function_code)
        return pdu

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def listen() -> None:
            # pymodbus builds its transport on the running loop: construct it inside.
            self._server = ModbusTcpServer(self._devices, address=("127.0.0.1", self.port),
                                           trace_pdu=self._trace)
            await self._server.serve_forever(background=True)

        try:
            self._loop.run_until_complete(listen())
        except Exception as exc:  # noqa: BLE001 - reported to the starting thread, not swallowed
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()

    def start(self) -> IndependentMeter:
        self._thread.start()
        if not self._ready.wait(10) or self._error is not None:
            raise RuntimeError(f"pymodbus server did not start: {self._error!r}")
        return self

    def stop(self) -> None:
        if self._server is not None:
            fut = asyncio.run_coroutine_threadsafe(self._server.shutdown(), self._loop)
            fut.result(timeout=5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
