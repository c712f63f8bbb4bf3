"""LabelMap: sorting, index mapping, JSON round trip and bad input."""

import json

import numpy as np
import pytest

from solo_tf.data.label_map import LabelMap

CATEGORIES = [
    {"id": 90, "name": "toothbrush", "supercategory": "indoor"},
    {"id": 3, "name": "car"},
    {"id": 7, "name": "train"},
]


def test_from_coco_categories_sorts_by_id_and_maps_to_contiguous_indices():
    label_map = LabelMap.from_coco_categories(CATEGORIES)
    assert label_map.ids == (3, 7, 90)
    assert label_map.names == ("car", "train", "toothbrush")
    assert [label_map.index_of(i) for i in (3, 7, 90)] == [0, 1, 2]
    assert label_map.num_classes == len(label_map) == 3
    class_ids = label_map.class_ids
    assert class_ids.dtype == np.int32
    np.testing.assert_array_equal(class_ids, [3, 7, 90])
    # index -> id -> index is the identity
    assert [label_map.index_of(i) for i in class_ids] == [0, 1, 2]


def test_index_of_unknown_id_names_it():
    label_map = LabelMap.from_coco_categories(CATEGORIES)
    with pytest.raises(KeyError, match="category id 4 is not in the label map"):
        label_map.index_of(4)


def test_json_round_trip_writes_the_contract_format(tmp_path):
    label_map = LabelMap.from_coco_categories(CATEGORIES)
    path = str(tmp_path / "label_map.json")
    label_map.to_json(path)
    with open(path) as f:
        assert json.load(f) == {
            "categories": [
                {"id": 3, "name": "car"},
                {"id": 7, "name": "train"},
                {"id": 90, "name": "toothbrush"},
            ]
        }
    assert LabelMap.from_json(path) == label_map


def test_from_json_keeps_the_file_order(tmp_path):
    path = tmp_path / "label_map.json"
    path.write_text('{"categories": [{"id": 5, "name": "b"}, {"id": 2, "name": "a"}]}')
    label_map = LabelMap.from_json(str(path))
    assert label_map.ids == (5, 2)
    assert label_map.index_of(2) == 1


@pytest.mark.parametrize(
    "text, message",
    [
        ("not json", "not valid JSON"),
        ('[{"id": 1, "name": "a"}]', "categories"),
        ('{"categories": [{"id": 1}]}', "needs an 'id' and a 'name'"),
        ('{"categories": [{"id": 1, "name": "a"}, {"id": 1, "name": "b"}]}', "duplicate"),
    ],
)
def test_from_json_bad_file_names_the_path(tmp_path, text, message):
    path = tmp_path / "bad_label_map.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as error:
        LabelMap.from_json(str(path))
    assert str(path) in str(error.value)


def test_constructor_checks_lengths_and_duplicates():
    with pytest.raises(ValueError, match="2 ids but 1 names"):
        LabelMap(ids=(1, 2), names=("a",))
    with pytest.raises(ValueError, match=r"duplicate category ids \[2\]"):
        LabelMap(ids=(2, 2), names=("a", "b"))


def test_is_frozen_and_hashable():
    label_map = LabelMap.from_coco_categories(CATEGORIES)
    with pytest.raises(AttributeError):
        label_map.ids = (1,)
    assert hash(label_map) == hash(LabelMap.from_coco_categories(list(reversed(CATEGORIES))))
