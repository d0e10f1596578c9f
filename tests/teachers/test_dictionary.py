"""Class dictionary: exact texts, blocks and id maps of docs/method.md "Class dictionary and label maps"."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from afov_ray.errors import DataError
from afov_ray.teachers.dictionary import ClassDictionary

BLOCKS = [8, 7, 3, 4, 4, 4, 5, 4, 5, 4, 3, 6, 2, 2, 4, 5, 6, 3, 5, 2, 3, 4, 3, 8, 4, 6, 4, 47, 4, 5, 1]

# (category, first text, last text, raw lidarseg id, eval id) -- rows of the section 3 table.
TABLE = [
    (0, 0, 7, 17, 4), (1, 8, 14, 23, 10), (2, 15, 17, 15, 3), (3, 18, 21, 16, 3), (4, 22, 25, 18, 5),
    (5, 26, 29, 21, 6), (6, 30, 34, 14, 2), (7, 35, 38, 13, 0), (8, 39, 43, 22, 9), (9, 44, 47, 20, 0),
    (10, 48, 50, 19, 0), (11, 51, 56, 2, 7), (12, 57, 58, 3, 7), (13, 59, 60, 4, 7), (14, 61, 64, 7, 0),
    (15, 65, 69, 8, 0), (16, 70, 75, 5, 0), (17, 76, 78, 6, 7), (18, 79, 83, 1, 0), (19, 84, 85, 12, 8),
    (20, 86, 88, 9, 1), (21, 89, 92, 11, 0), (22, 93, 95, 10, 0), (23, 96, 103, 24, 11),
    (24, 104, 107, 26, 13), (25, 108, 113, 27, 14), (26, 114, 117, 25, 12), (27, 118, 164, 28, 15),
    (28, 165, 168, 30, 16), (29, 169, 173, 29, 0), (30, 174, 174, 31, 0),
]
RAW_TO_EVAL = {0: 0, 1: 0, 2: 7, 3: 7, 4: 7, 5: 0, 6: 7, 7: 0, 8: 0, 9: 1, 10: 0, 11: 0, 12: 8, 13: 0, 14: 2,
               15: 3, 16: 3, 17: 4, 18: 5, 19: 0, 20: 0, 21: 6, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13,
               27: 14, 28: 15, 29: 0, 30: 16, 31: 0}


@pytest.fixture(scope="module")
def nus() -> ClassDictionary:
    return ClassDictionary.load("nuscenes")


def test_counts_and_spot_checks(nus):
    assert nus.num_texts == 175 and nus.num_categories == 31
    t = nus.texts
    assert t[0] == "car"
    assert t[28] == "scooter" and t[74] == "scooter"
    assert t[111] == " rolling hills"
    assert t[149] == "pavilion" and t[161] == "pavilion"
    assert t[174] == "bonnet under the picture"
    assert t[124] == "windowspane" and t[158] == "generater"
    assert t[69] == "a person on a electric wheelchair"
    assert t[113] == "ground level horizontal vegetation (< 20 cm tall)"
    assert t[35] == "bicycle_rack" and t[76] == "police_officer"


def test_block_sizes_and_same_category_matrix(nus):
    assert list(nus.block_sizes) == BLOCKS
    m = nus.same_category_matrix()
    assert m.shape == (175, 175) and set(np.unique(m)) == {0.0, 1.0}
    start = 0
    expect = np.zeros((175, 175))
    for b in BLOCKS:
        expect[start:start + b, start:start + b] = 1
        start += b
    np.testing.assert_array_equal(m, expect)
    assert m[28, 74] == 0  # the two "scooter" texts are in different categories


def test_table_rows(nus):
    for cat, first, last, raw, ev in TABLE:
        idx = np.arange(first, last + 1)
        assert (nus.text_to_category[idx] == cat).all(), cat
        assert (nus.text_to_raw[idx] == raw).all(), cat
        assert (nus.text_to_eval[idx] == ev).all(), cat
        assert nus.category_to_raw[cat] == raw
    assert nus.text_to_eval.dtype == np.uint8 and nus.text_to_eval.shape == (175,)
    assert sorted(nus.category_to_raw.tolist()) == list(range(1, 32))


def test_raw_to_eval_matches_standard_map(nus):
    for raw, ev in nus.raw_to_eval.items():
        assert RAW_TO_EVAL[raw] == ev
    assert set(nus.raw_to_eval) == set(range(1, 32))


def test_eval_names_and_hash(nus):
    assert nus.num_eval_classes == 17 and nus.ignore_index == 0
    assert nus.eval_class_names[1] == "barrier" and nus.eval_class_names[16] == "vegetation"
    expect = hashlib.sha256(json.dumps(list(nus.texts), ensure_ascii=False, separators=(",", ":")).encode()).hexdigest()
    assert nus.vocabulary_hash() == expect
    assert ClassDictionary.load("nuscenes").vocabulary_hash() == expect
    assert nus.texts_of_eval_class(8) == [84, 85]


def test_kitti_dictionary():
    k = ClassDictionary.load("kitti")
    assert k.num_eval_classes == 20 and k.eval_class_names[19] == "traffic-sign"
    learning_map = {10: 1, 11: 2, 13: 5, 15: 3, 16: 5, 18: 4, 20: 5, 30: 6, 31: 7, 32: 8, 40: 9, 44: 10,
                    48: 11, 49: 12, 50: 13, 51: 14, 52: 0, 60: 9, 70: 15, 71: 16, 72: 17, 80: 18, 81: 19,
                    99: 0, 0: 0}
    for raw, ev in k.raw_to_eval.items():
        assert learning_map[raw] == ev, raw
    assert set(k.text_to_eval.tolist()) == set(range(20))  # every eval class has at least one text
    assert len(set(k.texts)) == k.num_texts
    assert k.text_to_eval[k.texts.index("a person on a bicycle")] == 7
    assert k.vocabulary_hash() != ClassDictionary.load("nuscenes").vocabulary_hash()


def test_bad_dictionary_names_field(tmp_path):
    p = tmp_path / "d.yaml"
    p.write_text("name: x\neval_classes: [ignore, a]\ncategories:\n  - {name: c, raw_id: 1, eval_id: 5, texts: [t]}\n")
    with pytest.raises(DataError) as e:
        ClassDictionary.load(p)
    assert "categories[0].eval_id" in e.value.item
    with pytest.raises(DataError):
        ClassDictionary.load(tmp_path / "missing.yaml")
