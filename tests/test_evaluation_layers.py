"""The layer sets of the thesis, for the depths that occur: 12-layer teacher, 6-layer students, tiny models."""
from mdist.evaluation.layers import layer_sets, representations


def test_layer_sets_of_base_teacher_and_students():
    assert layer_sets(12) == {
        "all": list(range(1, 13)),
        "every_second_odd": [1, 3, 5, 7, 9, 11],  # the thesis's "1th, 3th, ..., 11th", 1-based
        "every_second_even": [2, 4, 6, 8, 10, 12],
        "top4": [9, 10, 11, 12],
        "middle4": [5, 6, 7, 8],
        "bottom4": [1, 2, 3, 4],
    }
    assert layer_sets(6) == {
        "all": [1, 2, 3, 4, 5, 6],
        "every_second_odd": [1, 3, 5],
        "every_second_even": [2, 4, 6],
        "top4": [3, 4, 5, 6],
        "middle4": [2, 3, 4, 5],
        "bottom4": [1, 2, 3, 4],
    }


def test_shallow_models_clamp_sets_and_list_layer_0_first():
    assert layer_sets(3) == {"all": [1, 2, 3], "every_second_odd": [1, 3], "every_second_even": [2], "top4": [1, 2, 3], "middle4": [1, 2, 3], "bottom4": [1, 2, 3]}
    assert layer_sets(2) == {"all": [1, 2], "every_second_odd": [1], "every_second_even": [2], "top4": [1, 2], "middle4": [1, 2], "bottom4": [1, 2]}
    assert layer_sets(1)["every_second_odd"] == [1] and layer_sets(1)["every_second_even"] == [1]
    assert list(representations(2)) == ["layer_0", "layer_1", "layer_2", "all", "every_second_odd", "every_second_even", "top4", "middle4", "bottom4"]
