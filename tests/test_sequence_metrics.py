"""Known answers of the sequence metrics on hand-made accuracy matrices, and on the MTIL notebook's own output."""
import numpy as np
import pytest

from forgetbench.errors import SpecError
from forgetbench.evaluate.sequences import (backward_transfer, forgetting, forward_transfer, heldout_metrics,
                                            mtil_per_dataset, sequence_metrics)

# R[t, j]: accuracy on dataset j after step t. Column 0 is forgotten and partly recovered, column 2 never learned well.
R = np.array([[80.0, 30.0, 20.0],
              [95.0, 90.0, 25.0],
              [50.0, 70.0, 85.0]])
B = [10.0, 20.0, 15.0]  # accuracies before the sequence


def test_every_metric_by_hand():
    m = sequence_metrics(R, B)
    assert m["avg"] == pytest.approx((80 + 30 + 20 + 95 + 90 + 25 + 50 + 70 + 85) / 9)
    assert m["last"] == pytest.approx((50 + 70 + 85) / 3)
    assert m["average_accuracy"] == m["last"]  # A_T and MTIL's Last are one number under two names
    assert m["transfer"] == pytest.approx((30 + (20 + 25) / 2) / 2)  # only entries above the diagonal
    assert m["average_incremental_accuracy"] == pytest.approx((80 + (95 + 90) / 2 + (50 + 70 + 85) / 3) / 3)
    assert m["bwt"] == pytest.approx(((50 - 80) + (70 - 90)) / 2)
    assert m["fwt"] == pytest.approx(((30 - 20) + (25 - 15)) / 2)
    assert m["forgetting"] == pytest.approx(((95 - 50) + (90 - 70)) / 2)  # the max over rows, not the diagonal
    assert set(m) == {"avg", "last", "average_accuracy", "transfer", "average_incremental_accuracy", "bwt", "fwt",
                      "forgetting"}


def test_forgetting_is_not_clamped_and_ignores_rows_before_learning():
    improving = np.array([[50.0, 99.0], [60.0, 40.0]])  # 99 comes before dataset 1 is learned: not a maximum of it
    assert forgetting(improving) == pytest.approx(50 - 60)  # negative: the dataset got better (mammoth says 0)
    assert backward_transfer(improving) == pytest.approx(60 - 50)


def test_fwt_needs_the_reference_and_one_step_leaves_multi_step_metrics_out():
    assert "fwt" not in sequence_metrics(R)
    assert forward_transfer(R, [0, 0, 0]) == pytest.approx((30 + 25) / 2)
    one = sequence_metrics([[42.0]], [10.0])
    assert one == {"avg": 42.0, "last": 42.0, "average_accuracy": 42.0, "average_incremental_accuracy": 42.0}
    with pytest.raises(SpecError, match="one entry per step"):
        forward_transfer(R, [1.0, 2.0])
    with pytest.raises(SpecError, match="square"):
        sequence_metrics(np.zeros((2, 3)))
    with pytest.raises(SpecError, match="NaN"):
        sequence_metrics([[1.0, np.nan], [1.0, 1.0]])


def test_heldout_summary_by_hand():
    H = [[90.0, 50.0], [80.0, 45.0]]  # two datasets never trained on, after each of two steps
    assert heldout_metrics(H, [95.0, 50.0]) == pytest.approx(
        {"heldout_last": (80 + 45) / 2, "heldout_delta_mean": ((80 - 95) + (45 - 50)) / 2, "heldout_delta_worst": -15})
    assert heldout_metrics(np.zeros((2, 0)), []) == {}


# The first result cell of Thunderbeee/ZSCL mtil/results.ipynb (exp_wc_fair.npy after `statistics` deleted the
# CIFAR10 column), as the notebook displays it, and what the notebook printed for it.
MTIL_NOTEBOOK = np.array([
    [1.770177, 74.481567, 45.47, 36.436170, 39.648148, 4.732477, 35.445545, 39.87, 16.244208, 30.257431, 56.310055],
    [0.990099, 62.039171, 25.90, 22.978723, 33.166667, 2.862254, 19.659406, 65.80, 13.082584, 6.703146, 23.125374],
    [0.960096, 36.175115, 13.55, 16.436170, 23.388889, 2.130428, 9.172277, 52.59, 9.648406, 3.693570, 11.475334],
    [0.690069, 38.536866, 21.47, 16.648936, 9.666667, 4.342169, 12.574257, 47.62, 12.101390, 5.521701, 14.403935],
    [0.720072, 43.778802, 17.60, 15.212766, 3.370370, 7.985038, 10.859406, 32.87, 14.445353, 3.656262, 15.967082],
    [2.040204, 35.195853, 8.88, 7.819149, 10.796296, 1.707595, 7.073267, 43.44, 12.373944, 2.959831, 10.771919],
    [1.380138, 40.725806, 12.89, 11.648936, 15.000000, 1.349813, 9.184158, 51.44, 15.944399, 2.910086, 13.047676],
    [1.440144, 19.297235, 2.05, 8.297872, 12.574074, 0.992031, 3.398020, 10.12, 3.161624, 1.019774, 9.043262],
    [1.110111, 40.149770, 13.10, 6.808511, 12.518519, 0.845666, 7.192079, 8.11, 4.142818, 2.362890, 13.314330],
    [1.350135, 44.124424, 16.20, 6.808511, 12.425926, 0.764352, 9.635644, 18.97, 6.650313, 0.820793, 15.875132],
    [0.930093, 33.928571, 12.25, 7.074468, 13.592593, 1.366076, 8.249505, 34.84, 5.342055, 1.280935, 0.836743],
])
PRINTED = {"transfer": 26.7, "avg": 16.0, "last": 10.9}
PRINTED_PER_DATASET = {
    "transfer": [74.5, 35.7, 25.3, 26.5, 4.4, 15.8, 47.7, 12.1, 6.6, 18.3],
    "avg": [1.2, 42.6, 17.2, 14.2, 16.9, 2.6, 12.0, 36.9, 10.3, 5.6, 16.7],
    "last": [0.9, 33.9, 12.2, 7.1, 13.6, 1.4, 8.2, 34.8, 5.3, 1.3, 0.8],
}


def test_mtil_definitions_reproduce_the_notebook_output():
    m = sequence_metrics(MTIL_NOTEBOOK)
    assert {k: round(m[k], 1) for k in PRINTED} == PRINTED
    per = mtil_per_dataset(MTIL_NOTEBOOK)
    assert {k: [round(x, 1) for x in v] for k, v in per.items()} == PRINTED_PER_DATASET
