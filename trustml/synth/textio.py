"""Reading text files whose encoding is not guaranteed (the SNIPS ``_full`` files mix encodings)."""

from __future__ import annotations

import logging
from pathlib import Path

from trustml.errors import DataError

log = logging.getLogger(__name__)


def read_text(path: str | Path, encoding: str = "auto") -> str:
    """The text of ``path``.

    ``encoding="auto"`` tries UTF-8; then UTF-8 with surrogate pairs encoded as two 3-byte sequences
    (CESU-8, as in the SNIPS ``train_PlayMusic_full.json`` emoji), re-joined into real characters; then
    Latin-1 (logged as a warning). Any other ``encoding`` is used strictly; a file that does not decode
    raises :class:`DataError` naming the file, the byte offset and the fix.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise DataError(f"file {path} does not exist; check the path") from exc
    if encoding != "auto":
        try:
            return raw.decode(encoding)
        except (UnicodeDecodeError, LookupError) as exc:
            raise DataError(
                f"{path} cannot be decoded as {encoding} ({exc}); set the encoding to 'auto' or to the file's "
                "actual encoding (e.g. latin-1)"
            ) from exc
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    try:
        text = raw.decode("utf-8", errors="surrogatepass")
        return text.encode("utf-16", errors="surrogatepass").decode("utf-16")
    except UnicodeError:
        log.warning("%s is not UTF-8; decoding it as Latin-1", path)
        return raw.decode("latin-1")
