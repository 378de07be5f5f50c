"""Strict JSON for headers that come over the wire, and canonical JSON for signed transcripts.

Python's :func:`json.loads` is lenient in ways a hostile peer can use: it accepts duplicate keys
(the last one wins, so two readers may disagree on a value), ``NaN`` and ``Infinity``, floats
that overflow to ``inf``, UTF-16/UTF-32 byte strings, and it recurses once per nesting level
(``RecursionError``) and converts integers of any length (``ValueError`` past 4300 digits), and
it decodes an escaped surrogate that pairs with no other (``"\\ud800"``) to a string no UTF-8 can
carry, which fails later, far from the parser, or is read differently by another implementation.
:func:`loads_strict` refuses all of these, each with a :class:`MalformedPayloadError` that names
what was parsed and why it was refused, and lets no other exception type out. Stdlib only and
torch-free: edge clients use it.
"""

from __future__ import annotations

import json
import math
import re
from itertools import accumulate
from typing import Any

from cola_fed.errors import MalformedPayloadError

#: Most digits of a JSON integer: every signed 64-bit value fits, Python's int-size cap is far.
MAX_INT_DIGITS = 19

# A JSON string from its opening quote to its closing one, or to the end of the text when it is
# unterminated. Each alternative consumes input, and the closing quote is optional, so a match
# never backtracks and the whole scan is linear even in hostile text.
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_DEPTH_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}
# An escape that can decode to a surrogate (U+D800..U+DFFF); only text holding one can parse to
# a string with an unpaired surrogate (raw surrogates never survive strict UTF-8).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


class _Refused(Exception):
    """Raised inside the parser's hooks; turned into a MalformedPayloadError by the caller."""


def loads_strict(
    data: bytes | bytearray | memoryview | str,
    *,
    what: str,
    max_bytes: int,
    max_depth: int = 16,
) -> Any:
    """Parse JSON that came over the wire, refusing anything two parsers could read differently.

    Parameters
    ----------
    data : bytes, bytearray, memoryview or str
        The JSON text; bytes must be strict UTF-8 without a byte-order mark.
    what : str
        What the text is (``"the payload header"``), named in every error message.
    max_bytes : int
        Largest accepted size of the UTF-8 text, checked before anything else.
    max_depth : int, optional
        Deepest accepted nesting of arrays and objects, checked without recursion before
        parsing.

    Returns
    -------
    Any
        The parsed value: dicts, lists, str, int, finite float, bool or None.

    Raises
    ------
    MalformedPayloadError
        For any input that is not strict JSON within the limits (oversize, not UTF-8, a BOM,
        NUL bytes, too deep, duplicate keys, NaN/Infinity, floats overflowing to inf, integers
        of more than 19 digits, strings holding an unpaired surrogate escape, or any syntax
        error). No other exception type escapes.
    """
    try:
        text = _as_text(data, what, max_bytes)
        _check_depth(text, what, max_depth)
        return _parse(text, what)
    except MalformedPayloadError:
        raise
    except Exception as err:  # the contract: one error family, whatever happens
        raise MalformedPayloadError(
            f"{what} could not be parsed: {type(err).__name__}: {str(err)[:200]}"
        ) from None


def dumps_canonical(value: Any) -> bytes:
    """One byte string per value, so that signer and verifier hash the same transcript.

    Parameters
    ----------
    value : Any
        JSON-serialisable value: dicts with str keys, lists, str, int, finite float, bool, None.

    Returns
    -------
    bytes
        UTF-8 JSON with sorted keys, no whitespace and non-ASCII characters kept as they are.

    Raises
    ------
    ValueError
        If ``value`` holds NaN or an infinity, or a string that is not valid Unicode.
    TypeError
        If ``value`` holds something JSON cannot represent.
    """
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)
    return text.encode("utf-8")


# --------------------------------------------------------------------------------------------
# the stages of loads_strict


def _as_text(data: bytes | bytearray | memoryview | str, what: str, max_bytes: int) -> str:
    """``data`` as text, refusing oversize input, non-UTF-8 bytes, a BOM and NUL characters
    (NULs are what UTF-16/UTF-32 text of ASCII JSON looks like when read as UTF-8)."""
    if isinstance(data, str):
        if len(data) > max_bytes:  # a character is at least one UTF-8 byte
            raise MalformedPayloadError(f"{what} of {len(data)} characters exceeds the cap "
                                        f"of {max_bytes} bytes")
        raw = _encode(data, what)
    elif isinstance(data, (bytes, bytearray, memoryview)):
        raw = _raw_bytes(data, what)
    else:
        raise MalformedPayloadError(f"{what} must be bytes or str, got {type(data).__name__}")
    if len(raw) > max_bytes:
        raise MalformedPayloadError(f"{what} of {len(raw)} bytes exceeds the cap of "
                                    f"{max_bytes} bytes")
    if raw.startswith(b"\xef\xbb\xbf"):
        raise MalformedPayloadError(f"{what} starts with a byte-order mark; send plain UTF-8")
    if b"\x00" in raw:
        raise MalformedPayloadError(f"{what} holds NUL bytes: UTF-16 or UTF-32, not UTF-8?")
    try:
        return raw.decode("utf-8", errors="strict")
    except UnicodeDecodeError as err:
        raise MalformedPayloadError(f"{what} is not valid UTF-8: {err.reason} at byte "
                                    f"{err.start}") from None


def _encode(text: str, what: str) -> bytes:
    """``text`` as UTF-8, refusing lone surrogates (which no UTF-8 byte string can carry)."""
    try:
        return text.encode("utf-8", errors="strict")
    except UnicodeEncodeError as err:
        raise MalformedPayloadError(f"{what} is not valid Unicode: {err.reason} at character "
                                    f"{err.start}") from None


def _raw_bytes(data: bytes | bytearray | memoryview, what: str) -> bytes:
    """The bytes of a buffer; a memoryview of wider items is read as its raw bytes."""
    if isinstance(data, memoryview):
        try:
            return data.tobytes()
        except (TypeError, ValueError) as err:
            raise MalformedPayloadError(f"{what}: unreadable buffer ({err})") from None
    return bytes(data)


def _check_depth(text: str, what: str, max_depth: int) -> None:
    """Refuse nesting deeper than ``max_depth`` without recursing and before parsing.

    Strings are removed first (brackets inside them do not nest), then the running count of
    opening minus closing brackets is the parser's recursion depth at each point it can reach
    without a syntax error. Linear time, a few milliseconds for a megabyte."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    if not brackets:
        return
    depth = max(accumulate(map(_DEPTH_STEP.__getitem__, brackets)))
    if depth > max_depth:
        raise MalformedPayloadError(f"{what} nests {depth} levels deep; at most {max_depth} "
                                    "are accepted")


def _parse(text: str, what: str) -> Any:
    """:func:`json.loads` with hooks that refuse what strict JSON must not hold."""
    try:
        value = json.loads(text, object_pairs_hook=_unique_object, parse_constant=_no_constant,
                           parse_float=_finite_float, parse_int=_bounded_int)
    except _Refused as err:
        raise MalformedPayloadError(f"{what} is refused: {err}") from None
    except json.JSONDecodeError as err:
        raise MalformedPayloadError(f"{what} is not valid JSON: {err}") from None
    if _SURROGATE_ESCAPE.search(text):
        _refuse_lone_surrogates(value, what)
    return value


def _refuse_lone_surrogates(value: Any, what: str) -> None:
    """Refuse a parsed value holding a string (key or value) with an unpaired surrogate.

    Python joins an escaped pair (``"\\ud83d\\ude00"``) into one character, so any surrogate
    left in a parsed string is unpaired. No recursion: the depth was bounded before parsing,
    and a stack keeps it flat anyway."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            found = _SURROGATE.search(item)
            if found:
                raise MalformedPayloadError(
                    f"{what} is refused: a string holds the unpaired surrogate escape "
                    f"\\u{ord(found.group()):04x}; send valid Unicode (a surrogate pair, or the "
                    "character itself)")
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object, unless a key repeats (readers disagree on which value wins)."""
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        duplicate = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise _Refused(f"duplicate key {duplicate[:80]!r}")
    return result


def _no_constant(name: str) -> Any:
    """``NaN``, ``Infinity`` and ``-Infinity`` are not JSON."""
    raise _Refused(f"{name} is not a JSON number")


def _finite_float(literal: str) -> float:
    """A float literal, unless it overflows to an infinity (``1e999``)."""
    value = float(literal)
    if not math.isfinite(value):
        raise _Refused(f"number {literal[:40]}... overflows a float" if len(literal) > 40
                       else f"number {literal} overflows a float")
    return value


def _bounded_int(literal: str) -> int:
    """An integer literal of at most :data:`MAX_INT_DIGITS` digits, checked before converting
    (Python refuses to convert past 4300 digits, and converting is quadratic up to there)."""
    digits = len(literal) - literal.startswith("-")
    if digits > MAX_INT_DIGITS:
        raise _Refused(f"an integer of {digits} digits; at most {MAX_INT_DIGITS} are accepted")
    return int(literal)
