"""Wired M-Bus (EN 13757-2 link layer, EN 13757-3 application layer).

Pure decoding lives in frame.py, telegram.py, records.py, vif.py and
datafield.py (no I/O; the wireless package decodes its application layer
with them too); link.py is the serial master, reader.py one meter as the
pipeline polls it, commission.py probe, scan and `mbus decode`, and
protocol.py registers all of it. Nothing is imported here: a gateway that
only parses its config must not load the decoder.
"""
