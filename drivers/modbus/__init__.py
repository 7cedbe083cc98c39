"""Modbus RTU (RS-485) and Modbus TCP.

Pure code: codec.py (register encodings), plan.py (which blocks to read),
values.py (answers to point values), profile.py (the profile record). I/O:
link.py, the one module that calls pymodbus. reader.py is one device as the
pipeline polls it, commission.py probe, scan and bus load, and protocol.py
registers all of it. Nothing is imported here: a gateway that only parses
its config must not load pymodbus.
"""
