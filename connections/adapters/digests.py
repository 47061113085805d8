"""Compact per-patient memory for pulls: 64-bit digests and fixed-width hex keys, a few bytes each.

A pull of a thousand patients remembers something per patient (ids seen, MRN owners, birth dates,
pseudonymous keys). As Python ints in sets and dicts that costs 60-130 bytes an entry; here an entry
costs 8 bytes (16 with a value) in sorted ``array('Q')`` storage, looked up by bisection. New entries
wait in a small Python set or dict that is merged into the arrays when it reaches ``merge_at``.
"""

from __future__ import annotations

import hashlib
from array import array
from bisect import bisect_left
from collections.abc import Iterator

# The pending part is the only one that costs Python objects (about 100 bytes an entry), and a pull
# holds several of these structures: kept small so that part is the same few kilobytes at 100 patients
# as at 1,000. A merge copies the arrays (memcpy of slices); at 64 that is still well under a
# millisecond per merge for 100k entries.
MERGE_AT = 64
_MAX = 2**64


def digest(*parts: str) -> int:
    """A 64-bit digest of strings (joined unambiguously), to remember ids without holding them."""
    return int.from_bytes(hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest(), "big")


def _check(key: int) -> int:
    if not 0 <= key < _MAX:
        raise ValueError(f"{key} is not a 64-bit unsigned digest.")
    return key


def _find(keys: array[int], key: int) -> int:
    """The index of ``key`` in the sorted ``keys``, or -1."""
    index = bisect_left(keys, key)
    return index if index < len(keys) and keys[index] == key else -1


def _cuts(keys: array[int], new: list[int]) -> list[int]:
    """Where each of the sorted ``new`` keys (none of them in ``keys``) goes in the sorted ``keys``."""
    cuts: list[int] = []
    start = 0
    for key in new:
        start = bisect_left(keys, key, start)
        cuts.append(start)
    return cuts


def _spliced(old: array[int], cuts: list[int], inserted: list[int]) -> array[int]:
    """A copy of ``old`` with ``inserted[i]`` placed before ``old[cuts[i]]``, copied slice by slice."""
    out: array[int] = array("Q")
    start = 0
    for cut, item in zip(cuts, inserted, strict=True):
        out.extend(old[start:cut])
        out.append(item)
        start = cut
    out.extend(old[start:])
    return out


class DigestSet:
    """A set of 64-bit digests at about 8 bytes each: sorted array storage plus a small pending set."""

    def __init__(self, *, merge_at: int = MERGE_AT) -> None:
        self._keys: array[int] = array("Q")
        self._pending: set[int] = set()
        self._merge_at = merge_at

    def add(self, key: int) -> None:
        """Add one digest (no-op when present)."""
        if key in self:
            return
        self._pending.add(_check(key))
        if len(self._pending) >= self._merge_at:
            self._merge()

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, int):
            return False
        return key in self._pending or _find(self._keys, key) >= 0

    def __len__(self) -> int:
        return len(self._keys) + len(self._pending)

    def __iter__(self) -> Iterator[int]:
        """The digests in ascending order."""
        self._merge()
        return iter(self._keys)

    def _merge(self) -> None:
        if self._pending:
            new = sorted(self._pending)
            self._keys = _spliced(self._keys, _cuts(self._keys, new), new)
            self._pending.clear()


class DigestMap:
    """A mapping of 64-bit digests to 64-bit values at about 16 bytes an entry, stored as ``DigestSet`` is."""

    def __init__(self, *, merge_at: int = MERGE_AT) -> None:
        self._keys: array[int] = array("Q")
        self._values: array[int] = array("Q")
        self._pending: dict[int, int] = {}
        self._merge_at = merge_at

    def get(self, key: int, default: int | None = None) -> int | None:
        """The value of ``key``, or ``default``."""
        found = self._pending.get(key)
        if found is not None:
            return found
        index = _find(self._keys, key)
        return self._values[index] if index >= 0 else default

    def setdefault(self, key: int, value: int) -> int:
        """The value of ``key``, first set to ``value`` when absent (as ``dict.setdefault``)."""
        found = self.get(key)
        if found is not None:
            return found
        self._put(key, value)
        return value

    def __setitem__(self, key: int, value: int) -> None:
        if key in self._pending:
            self._pending[key] = _check(value)
            return
        index = _find(self._keys, key)
        if index >= 0:
            self._values[index] = _check(value)
        else:
            self._put(key, value)

    def __getitem__(self, key: int) -> int:
        found = self.get(key)
        if found is None:
            raise KeyError(key)
        return found

    def __contains__(self, key: object) -> bool:
        return isinstance(key, int) and self.get(key) is not None

    def __len__(self) -> int:
        return len(self._keys) + len(self._pending)

    def items(self) -> Iterator[tuple[int, int]]:
        """(digest, value) pairs in ascending order of digest."""
        self._merge()
        return zip(self._keys, self._values, strict=True)

    def _put(self, key: int, value: int) -> None:
        self._pending[_check(key)] = _check(value)
        if len(self._pending) >= self._merge_at:
            self._merge()

    def _merge(self) -> None:
        if not self._pending:
            return
        new = sorted(self._pending)
        cuts = _cuts(self._keys, new)
        self._keys = _spliced(self._keys, cuts, new)
        self._values = _spliced(self._values, cuts, [self._pending[key] for key in new])
        self._pending.clear()


class HexKeys:
    """A list of fixed-width hex keys (or "" for none), packed as bytes: 12 bytes for a 24-character key."""

    def __init__(self, width: int) -> None:
        if width <= 0 or width % 2:
            raise ValueError("A hex key's width is a positive even number of characters.")
        self._size = width // 2
        self._packed = bytearray()
        self._count = 0

    def append(self, key: str) -> None:
        """Add one key; "" counts as an entry with no key."""
        if not key:
            self._count += 1
            return
        if len(key) != 2 * self._size:
            raise ValueError(f"A key here has {2 * self._size} hex characters, not {len(key)}.")
        raw = bytes.fromhex(key)
        if raw.hex() != key:
            # Upper case or spaces would not come back as they went in.
            raise ValueError(f"{key!r} is not lowercase hex.")
        self._packed += raw
        self._count += 1

    def __len__(self) -> int:
        """Every entry, including those with no key."""
        return self._count

    def sorted_unique(self) -> list[str]:
        """The distinct keys (never ""), sorted, as lowercase hex."""
        size, packed = self._size, self._packed
        return sorted({packed[i : i + size].hex() for i in range(0, len(packed), size)})


_SHORT_CHARS = "0123456789-"
_SHORT_NIBBLE = {char: n for n, char in enumerate(_SHORT_CHARS, start=1)}
_SHORT_MAX = 15  # nibbles: 60 bits, below the marker
_ELSEWHERE = 1 << 63  # the value of a text kept as it is, beside the packed ones


def _pack_short(text: str) -> int | None:
    """Up to 15 of "0-9" and "-" as nibbles 1-11 (0 for ""), or None for anything else."""
    if len(text) > _SHORT_MAX:
        return None
    packed = 0
    for char in text:
        nibble = _SHORT_NIBBLE.get(char)
        if nibble is None:
            return None
        packed = packed << 4 | nibble
    return packed


def _unpack_short(packed: int) -> str:
    chars = []
    while packed:
        chars.append(_SHORT_CHARS[(packed & 15) - 1])
        packed >>= 4
    return "".join(reversed(chars))


class DigestTexts:
    """A mapping of 64-bit digests to short texts such as dates: up to 15 digits and dashes packed in 64 bits.

    Any other text (rare: a malformed date, say) is kept as it is in a plain dict beside the packed ones.
    """

    def __init__(self, *, merge_at: int = MERGE_AT) -> None:
        self._packed = DigestMap(merge_at=merge_at)
        self._elsewhere: dict[int, str] = {}

    def __setitem__(self, key: int, text: str) -> None:
        packed = _pack_short(text)
        if packed is None:
            self._elsewhere[key] = text
            packed = _ELSEWHERE
        else:
            self._elsewhere.pop(key, None)
        self._packed[key] = packed

    def get(self, key: int) -> str | None:
        """The text of ``key``, or None."""
        packed = self._packed.get(key)
        if packed is None:
            return None
        return self._elsewhere[key] if packed == _ELSEWHERE else _unpack_short(packed)

    def __len__(self) -> int:
        return len(self._packed)
