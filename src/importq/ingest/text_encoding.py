"""Text encodings of uploaded files: given, declared by a BOM, or detected.

A file that does not decode is refused with ``400 bad_encoding``. The refusal names the
byte offset and the physical line of the first bad byte.

A file is read in the encoding the client named. Without one, it is read in the encoding
its BOM declares, else as UTF-8. A file that is not UTF-8 is read as Windows-1252 when
its bytes look like such text. :func:`choose_encoding` applies these rules, and
:func:`importq.ingest.csv_reader.read_csv` lists them in full.
"""

from __future__ import annotations

import codecs
import encodings.aliases
import re
from dataclasses import dataclass
from typing import IO

from importq.errors import Refusal

# Longest first: the UTF-32 LE BOM starts with the UTF-16 LE one.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
_FAMILIES = {
    "utf-8": "utf-8",
    "utf-8-sig": "utf-8",
    "utf-16": "utf-16",
    "utf-16-le": "utf-16",
    "utf-16-be": "utf-16",
    "utf-32": "utf-32",
    "utf-32-le": "utf-32",
    "utf-32-be": "utf-32",
}
# The codec for a family name that gives no byte order, when the file has no BOM.
# UTF-16 and UTF-32 are then little-endian, as Windows writes them and as Python reads
# them on the usual machines.
_WITHOUT_BOM = {"utf-8-sig": "utf-8", "utf-16": "utf-16-le", "utf-32": "utf-32-le"}
_LABELS = {
    "utf-8": "UTF-8",
    "utf-16-le": "UTF-16LE",
    "utf-16-be": "UTF-16BE",
    "utf-32-le": "UTF-32LE",
    "utf-32-be": "UTF-32BE",
    "cp1252": "Windows-1252",
    "iso8859-1": "Latin-1",
}
# Bytes that Windows-1252 text does not contain. They are the five undefined bytes, the
# controls other than TAB, LF and CR, and the rarely typed characters that stray bytes
# decode to: ƒ ˆ ˜ ¤ ¦ ¨ ¬ ¯ ¸ Ð Þ ð þ ÿ and the soft hyphen. 0xFE and 0xFF never occur
# in UTF-8, and binary junk and UTF-16 fragments are made of them. A file holding one of
# these bytes is not detected as Windows-1252, but ``encoding=windows-1252`` still reads
# it.
_NOT_CP1252 = re.compile(
    b"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\x81\x83\x88\x8d\x8f\x90\x98\x9d"
    b"\xa4\xa6\xa8\xac\xad\xaf\xb8\xd0\xde\xf0\xfe\xff]"
)


@dataclass(frozen=True)
class BadByte:
    """Where a file stops decoding.

    ``offset`` is the bad byte's offset in the file. ``line`` is its physical line,
    counted from 1, where CR, LF and CRLF each end a line. ``bad`` holds the bytes that
    do not decode. It is empty when the file ends inside a character.
    """

    offset: int
    line: int
    bad: bytes


def _line_at(binary: IO[bytes], codec: str, start: int, offset: int, block_size: int) -> int:
    """The physical line of byte ``offset``, counted from 1. CR, LF and CRLF each end one.

    Lines are counted on the decoded text. So an encoded newline counts whatever its
    bytes are, two in UTF-16 and four in UTF-32, and a 0x0A byte inside a character
    never counts. Only a refusal needs the line, so the pass that finds the bad byte
    does not count lines.
    """
    binary.seek(start)
    decoder = codecs.getincrementaldecoder(codec)(errors="replace")
    line = 1
    after_cr = False
    left = offset - start
    while left > 0 and (block := binary.read(min(block_size, left))):
        left -= len(block)
        text = decoder.decode(block)
        line += text.count("\n") + text.count("\r") - text.count("\r\n")
        if after_cr and text.startswith("\n"):
            line -= 1  # the LF of a CRLF cut between two blocks
        after_cr = text.endswith("\r") if text else after_cr
    return line


def find_bad_byte(
    binary: IO[bytes], codec: str, *, start: int = 0, block_size: int = 1 << 20
) -> BadByte | None:
    """The first place, from byte ``start`` on, where the file does not decode in ``codec``.

    None when all of it decodes. The file is read in one streaming pass, and a second
    pass up to the bad byte names its line. The caller rewinds the file.
    """
    binary.seek(start)
    decoder = codecs.getincrementaldecoder(codec)(errors="strict")
    offset = start
    while block := binary.read(block_size):
        try:
            decoder.decode(block)
        except UnicodeDecodeError as error:
            # error.object is this block, after the bytes of an unfinished character
            # that the decoder held back from the last block.
            bad = offset - max(len(error.object) - len(block), 0) + error.start
            return BadByte(
                bad,
                _line_at(binary, codec, start, bad, block_size),
                error.object[error.start : max(error.end, error.start + 1)],
            )
        offset += len(block)
    try:
        decoder.decode(b"", final=True)
    except UnicodeError:
        return BadByte(offset, _line_at(binary, codec, start, offset, block_size), b"")
    return None


def _bad_encoding(label: str, bad: BadByte, hint: str = "") -> Refusal:
    if not bad.bad:
        detail = f"The file is not valid {label}: it ends inside a character (offset {bad.offset})."
    else:
        shown = " ".join(f"0x{byte:02x}" for byte in bad.bad)
        detail = (
            f"The file is not valid {label}: {'byte' if len(bad.bad) == 1 else 'bytes'} "
            f"{shown} at offset {bad.offset} (line {bad.line}) cannot be decoded."
        )
    return Refusal(400, "bad_encoding", detail + hint, line=bad.line, offset=bad.offset)


def check_encoding(
    binary: IO[bytes], codec: str = "utf-8", *, start: int = 0, block_size: int = 1 << 20
) -> None:
    """Refuse a file that does not decode in ``codec``, else rewind it to ``start``.

    The refusal names the byte offset and the line. Decoding runs in C, so this extra
    pass is cheap next to parsing, and it lets the refusal say exactly where the bad
    byte is.
    """
    bad = find_bad_byte(binary, codec, start=start, block_size=block_size)
    if bad is not None:
        raise _bad_encoding(_LABELS.get(codec, codec), bad)
    binary.seek(start)


def looks_like_cp1252(binary: IO[bytes], *, block_size: int = 1 << 20) -> bool:
    """Whether a file that is not UTF-8 reads as Windows-1252 text.

    Two things must hold. The file holds no byte that such text does not contain
    (``_NOT_CP1252``). And it holds more bytes that are invalid as UTF-8 than non-ASCII
    characters that are valid UTF-8. The second test keeps a UTF-8 file with a stray
    byte as UTF-8, so that it is refused at that byte. :func:`choose_encoding` tries
    this last.
    """
    binary.seek(0)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
    invalid = valid = 0
    final = False
    while not final:
        block = binary.read(block_size)
        final = not block
        if _NOT_CP1252.search(block):
            return False
        text = decoder.decode(block, final=final)
        escaped = len(text.encode("utf-8", "surrogateescape")) - len(text.encode("utf-8", "ignore"))
        invalid += escaped
        valid += len(text) - len(text.encode("ascii", "ignore")) - escaped
    return invalid > valid


def _bom(head: bytes, family: str | None = None) -> tuple[str, int] | None:
    """The codec a BOM at the start of ``head`` declares, and the BOM's length.

    When ``family`` is named, only a BOM of that family counts.
    """
    for bom, codec in _BOMS:
        if head.startswith(bom) and family in (None, _FAMILIES[codec]):
            return codec, len(bom)
    return None


#: The codecs a client may name, by Python's canonical name; any alias of one is taken
#: too (``latin-1``, ``windows-1252``, ``sjis``…). Each decodes in linear time in C.
#: Shift-JIS includes cp932, the Windows form Excel writes.
ALLOWED_ENCODINGS = (
    "utf-8",
    "utf-8-sig",
    "utf-16",
    "utf-16-le",
    "utf-16-be",
    "utf-32",
    "utf-32-le",
    "utf-32-be",
    "ascii",
    *(f"cp{number}" for number in range(1250, 1259)),
    *(f"iso8859-{number}" for number in range(1, 17) if number != 12),
    "shift_jis",
    "cp932",
    "euc_jp",
    "gb18030",
    "big5",
    "koi8-r",
)


def encoding_names() -> list[str]:
    """Every name :func:`resolve_encoding` takes, lower-case (it also ignores case and
    the spaces around a name): the allowed codecs and Python's aliases of them, each
    also with hyphens for underscores (``latin-1`` as well as ``latin_1``)."""
    names = set(ALLOWED_ENCODINGS)
    for alias, module in encodings.aliases.aliases.items():
        names.update((alias, module))
    names |= {n.replace("_", "-") for n in names} | {n.replace("-", "_") for n in names}
    return sorted(n for n in names if _codec(n) in ALLOWED_ENCODINGS)


def _codec(name: str) -> str | None:
    try:
        return codecs.lookup(name.strip()).name
    except (LookupError, ValueError):
        return None


def resolve_encoding(name: str) -> str:
    """The Python codec name for an encoding a client named.

    A name outside :data:`ALLOWED_ENCODINGS` and their aliases is refused with
    ``400 unknown_encoding``, which lists the allowed ones. Other codecs are refused
    even when Python has them: some decode in quadratic time (punycode), others are
    not text encodings at all (base64, zlib).
    """
    codec = _codec(name)
    if codec is None or codec not in ALLOWED_ENCODINGS:
        raise Refusal(
            400,
            "unknown_encoding",
            f"{name!r} is not an encoding importq reads; use one of "
            f"{', '.join(ALLOWED_ENCODINGS)} (or an alias such as latin-1 or windows-1252).",
            accepted=list(ALLOWED_ENCODINGS),
        )
    return codec


def choose_encoding(binary: IO[bytes], encoding: str | None) -> tuple[str, int]:
    """The codec to read the file with, and how many bytes of BOM to skip.

    A file that does not decode in that codec is refused. The file is left at the first
    byte to read.
    """
    binary.seek(0)
    head = binary.read(4)
    if encoding is not None:
        codec = resolve_encoding(encoding)
        family = _FAMILIES.get(codec)
        bom = _bom(head, family) if family else None
        if bom is not None and codec in (family, "utf-8-sig", bom[0]):
            codec, start = bom  # the BOM tells the byte order; it is not text
        else:
            # No BOM, or a BOM of the other byte order than the one the client named.
            codec, start = _WITHOUT_BOM.get(codec, codec), 0
        check_encoding(binary, codec, start=start)
        return codec, start
    bom = _bom(head)
    if bom is not None:
        codec, start = bom
        if (
            codec == "utf-32-le"
            and find_bad_byte(binary, codec, start=start) is not None
            and find_bad_byte(binary, "utf-16-le", start=2) is None
        ):
            # FF FE 00 00 is the UTF-32LE BOM, or the UTF-16LE BOM and a NUL. Take the
            # reading that decodes.
            codec, start = "utf-16-le", 2
        check_encoding(binary, codec, start=start)
        return codec, start
    bad = find_bad_byte(binary, "utf-8")
    if bad is not None and not looks_like_cp1252(binary):
        raise _bad_encoding(
            "UTF-8",
            bad,
            " If the file is in another encoding, name it (for example encoding=windows-1252).",
        )
    binary.seek(0)
    return ("utf-8" if bad is None else "cp1252"), 0
