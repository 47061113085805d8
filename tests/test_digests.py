"""The compact digest set, digest map and hex key list that pulls use for per-patient memory."""

from __future__ import annotations

import random
import tracemalloc

import pytest

from connections.adapters.digests import DigestMap, DigestSet, DigestTexts, HexKeys, digest

_BIG = 2**64 - 1


def _digests(count: int, seed: int = 7) -> list[int]:
    rng = random.Random(seed)
    return [rng.getrandbits(64) for _ in range(count)]


def test_digest_is_64_bits_stable_and_joins_parts_unambiguously() -> None:
    assert digest("a", "b") == digest("a", "b")
    assert digest("a", "b") != digest("ab") != digest("a\x1fb", "")
    assert 0 <= digest("patient-1") < 2**64


def test_a_set_answers_membership_before_and_after_merges() -> None:
    digests = DigestSet(merge_at=4)
    added = [5, 1, 9, 3, 7, 0, _BIG, 2, 8]
    for n, key in enumerate(added, start=1):
        digests.add(key)
        assert len(digests) == n
        assert all(k in digests for k in added[:n])
        assert not any(k in digests for k in added[n:])
    assert list(digests) == sorted(added)  # merged: one sorted array
    assert 4 not in digests and 10 not in digests and -1 not in digests and "1" not in digests


def test_adding_a_digest_twice_keeps_one_whether_pending_or_merged() -> None:
    digests = DigestSet(merge_at=3)
    for key in (10, 20, 10, 30, 20, 10, 40):
        digests.add(key)
    assert len(digests) == 4
    assert list(digests) == [10, 20, 30, 40]


def test_a_set_refuses_what_is_not_a_64_bit_digest() -> None:
    digests = DigestSet()
    with pytest.raises(ValueError, match="64-bit"):
        digests.add(2**64)
    with pytest.raises(ValueError, match="64-bit"):
        digests.add(-1)
    assert len(digests) == 0


def test_a_map_keeps_setdefault_semantics_across_merges() -> None:
    owners = DigestMap(merge_at=3)
    assert owners.setdefault(100, 1) == 1
    assert owners.setdefault(100, 2) == 1  # the first owner stays
    for key in (50, 150, 25, 175):  # a merge happens on the way
        assert owners.setdefault(key, key + 1) == key + 1
    assert owners.setdefault(100, 3) == 1
    assert owners.setdefault(25, 0) == 26
    assert owners.get(99) is None and owners.get(99, 7) == 7
    assert 100 in owners and 99 not in owners and "100" not in owners
    assert list(owners.items()) == [(25, 26), (50, 51), (100, 1), (150, 151), (175, 176)]


def test_a_map_overwrites_pending_and_merged_values_and_stores_zero_and_the_maximum() -> None:
    values = DigestMap(merge_at=2)
    values[1] = 10
    values[2] = 20  # merged
    values[3] = 30  # pending
    values[1] = 0
    values[3] = _BIG
    assert (values[1], values[2], values[3]) == (0, 20, _BIG)
    assert len(values) == 3
    with pytest.raises(KeyError):
        values[4]
    with pytest.raises(ValueError, match="64-bit"):
        values[5] = -1
    with pytest.raises(ValueError, match="64-bit"):
        values[2] = 2**64  # a merged entry refuses it too, and keeps its value
    assert values[2] == 20


def test_100k_entries_match_python_set_and_dict_in_a_fraction_of_their_memory() -> None:
    keys = _digests(100_000)
    absent = _digests(2_000, seed=8)
    tracemalloc.start()
    digests, mapping = DigestSet(), DigestMap()
    for n, key in enumerate(keys):
        digests.add(key)
        mapping.setdefault(key, n)
    compact, _ = tracemalloc.get_traced_memory()
    plain_set, plain_dict = set(keys), {key: n for n, key in enumerate(keys)}
    both, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(digests) == len(mapping) == len(plain_set) == len(plain_dict)
    assert all(key in digests and mapping[key] == plain_dict[key] for key in keys)
    assert not any(key in digests or key in mapping for key in absent if key not in plain_set)
    per_entry = compact / len(keys)
    python_per_entry = (both - compact) / len(keys)
    print(f"100k digests: {per_entry:.1f} bytes/entry (set + map) against {python_per_entry:.1f} for set + dict")
    # Set (8) + map (16) bytes an entry, with the arrays' slack and the bounded pending part.
    assert per_entry < 40 < python_per_entry


def test_texts_come_back_exactly_packed_or_kept_aside_and_overwrite_either_way() -> None:
    births = DigestTexts(merge_at=2)
    given = {1: "1980-05-02", 2: "", 3: "1980", 4: "1980-13", 5: "19x0-01-01", 6: "123456789012345", 7: "9" * 16}
    for key, text in given.items():
        births[key] = text
    assert {key: births.get(key) for key in given} == given
    assert births.get(8) is None and len(births) == len(given)
    births[5] = "2001-01-01"  # kept aside, now packed
    births[1] = "not a date"  # packed, now kept aside
    births[2] = "0"
    assert (births.get(5), births.get(1), births.get(2)) == ("2001-01-01", "not a date", "0")
    assert len(births) == len(given)


def test_hex_keys_count_every_entry_and_give_back_the_distinct_keys_sorted() -> None:
    keys = HexKeys(24)
    given = ["ff" * 12, "", "0a" * 12, "ff" * 12, "", "1234567890abcdef12345678"]
    for key in given:
        keys.append(key)
    assert len(keys) == 6
    assert keys.sorted_unique() == sorted(set(given) - {""})


@pytest.mark.parametrize("bad", ["ab" * 11, "ab" * 13, "AB" * 12, "zz" * 12, "ab cd ef 01 23 45 67 89 "])
def test_hex_keys_refuse_a_key_that_would_not_come_back_the_same(bad: str) -> None:
    keys = HexKeys(24)
    with pytest.raises(ValueError):
        keys.append(bad)
    assert len(keys) == 0 and keys.sorted_unique() == []
