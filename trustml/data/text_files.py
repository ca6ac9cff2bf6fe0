"""The text of a data file, decoded by a declared encoding: the one place where every reader decodes bytes.

Every reader of text data (``data=text_classification`` JSONL/CSV, Topical-Chat JSON, the SNIPS, Rasa, text
and JSONL utterance files of ``trustml-synth``, canary training files) reads through :func:`read_text`, so a
file that is not in the expected encoding gives one :class:`~trustml.errors.DataError` naming the file, the
line, the offending byte and the option to set, never a bare ``UnicodeDecodeError``.

``encoding`` is a Python codec name (``utf-8``, ``latin-1``, ``cp1252``, ...) used strictly, or ``auto``:

1. UTF-16 when the file starts with its byte-order mark, else UTF-8;
2. UTF-8 whose characters outside the Basic Multilingual Plane are written as two 3-byte surrogates (CESU-8,
   e.g. the emoji of the SNIPS ``train_PlayMusic_full.json``), re-joined into real characters;
3. Latin-1, which decodes any byte sequence (logged as a warning naming the file and the option, because a
   file in another 8-bit encoding would be decoded with some wrong characters).

A leading byte-order mark is dropped with UTF-8 and ``auto``. The data plugins default to ``utf-8`` (a
non-UTF-8 training file is refused until ``data.encoding`` says what it is); ``trustml-synth`` defaults to
``auto`` because the SNIPS benchmark files mix UTF-8, CESU-8 and Latin-1.
"""

from __future__ import annotations

import codecs
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from trustml.errors import DataError

log = logging.getLogger(__name__)

#: The ``encoding`` value that detects UTF-8, CESU-8 and falls back to Latin-1.
AUTO = "auto"
_BOM = "\ufeff"
_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


def check_encoding(encoding: str, option: str = "data.encoding") -> str:
    """``encoding`` when it is ``auto`` or a codec Python knows, else a :class:`DataError` naming ``option``."""
    if encoding == AUTO:
        return encoding
    try:
        codecs.lookup(encoding)
    except (LookupError, TypeError):
        raise DataError(
            f"{option}={encoding!r} is not a known text encoding; use utf-8, latin-1, cp1252 (any Python codec "
            f"name) or auto"
        ) from None
    return encoding


def _is_utf8(encoding: str) -> bool:
    return codecs.lookup(encoding).name in ("utf-8", "utf-8-sig")


def _position(raw: bytes, offset: int) -> tuple[int, int]:
    """1-based line and byte column of byte ``offset`` of ``raw``."""
    line = raw.count(b"\n", 0, offset) + 1
    column = offset - (raw.rfind(b"\n", 0, offset) + 1) + 1
    return line, column


def _is_surrogate(raw: bytes, start: int) -> bool:
    """Whether ``raw[start:]`` begins a UTF-16 surrogate encoded like a UTF-8 character (``ED A0..BF xx``)."""
    return raw[start : start + 1] == b"\xed" and start + 1 < len(raw) and 0xA0 <= raw[start + 1] <= 0xBF


def _undecodable(source: str, raw: bytes, exc: UnicodeDecodeError, encoding: str, option: str) -> DataError:
    """The error for ``raw`` not decoding: file, line, the bytes, what they probably are, and the option to set."""
    line, column = _position(raw, exc.start)
    where = f"{source}:{line}: not valid {encoding} text"
    start = exc.start
    if _is_utf8(encoding) and _is_surrogate(raw, start):
        surrogate = raw[start : start + 3].hex(" ")
        return DataError(
            f"{where} (bytes {surrogate} at byte {column} of the line are a UTF-16 surrogate written as UTF-8, "
            f"i.e. CESU-8); set {option}=auto, which re-joins such pairs into characters"
        )
    detail = f"byte 0x{raw[start]:02x} at byte {column} of the line"
    if raw.startswith(_UTF16_BOMS):
        return DataError(f"{where} ({detail}); the file starts with a UTF-16 byte-order mark: set {option}=utf-16")
    if _is_utf8(encoding):
        return DataError(
            f"{where} ({detail}; the file is probably Latin-1 or Windows-1252); set {option}=latin-1 or "
            f"{option}=cp1252 (or the file's actual encoding), or {option}=auto to decode UTF-8 and fall back to "
            f"Latin-1"
        )
    return DataError(
        f"{where} ({detail}); set {option} to the file's actual encoding (e.g. utf-8 or latin-1), or {option}=auto"
    )


def _decode_auto(raw: bytes, source: str, option: str) -> str:
    if raw.startswith(_UTF16_BOMS):
        try:
            return raw.decode("utf-16")
        except UnicodeDecodeError:
            pass
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    try:  # CESU-8: surrogate pairs as two 3-byte sequences; a lone surrogate fails the UTF-16 round trip
        text = raw.decode("utf-8", errors="surrogatepass")
        return text.encode("utf-16", errors="surrogatepass").decode("utf-16")
    except UnicodeError:
        log.warning(
            "%s is not UTF-8; decoding it as Latin-1 (set %s to its actual encoding to be explicit)", source, option
        )
        return raw.decode("latin-1")


def decode_text(raw: bytes, source: str | Path, encoding: str = "utf-8", option: str = "data.encoding") -> str:
    """``raw`` decoded by ``encoding`` (a codec name, or ``auto``: see the module doc).

    ``source`` (the file) and ``option`` (the setting that chooses the encoding, e.g. ``data.encoding``) go
    into the :class:`DataError` raised for bytes that do not decode.
    """
    check_encoding(encoding, option)
    if encoding == AUTO:
        text = _decode_auto(raw, str(source), option)
    else:
        try:
            text = raw.decode(encoding)
        except UnicodeDecodeError as exc:
            raise _undecodable(str(source), raw, exc, encoding, option) from None
        if not _is_utf8(encoding):
            return text
    return text[1:] if text.startswith(_BOM) else text


def read_text(path: str | Path, encoding: str = "utf-8", option: str = "data.encoding") -> str:
    """The text of the file ``path`` decoded by ``encoding`` (see :func:`decode_text`).

    A missing or unreadable file is a :class:`DataError` naming it; so is text that does not decode, with the
    line and the ``option`` to set.
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path} is a folder, not a data file; give the path of the file")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path} does not exist; check the path") from None
    except OSError as exc:
        raise DataError(f"{path} cannot be read ({exc.strerror or exc}); check the path and its permissions") from None
    return decode_text(raw, path, encoding, option)


def jsonl_rows(path: str | Path, encoding: str = "utf-8", option: str = "data.encoding") -> Iterator[tuple[int, Any]]:
    """``(line number, parsed value)`` of each non-blank line of a JSONL file (decoded by :func:`read_text`);
    a line that is not JSON is one :class:`DataError` naming the file and line."""
    for line_no, line in enumerate(read_text(path, encoding, option).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield line_no, json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{line_no}: malformed JSON ({exc.msg})") from None
