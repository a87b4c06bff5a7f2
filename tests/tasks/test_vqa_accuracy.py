"""VQA answer normalisation and VQAv2's leave-one-out min(1, matches / 3), worked out by hand."""

import pytest

from tasks.text_metrics import most_frequent_answer, vqa_accuracy, vqa_scores
from tasks.vqa_answers import normalize_answer, vqa_soft_score


@pytest.mark.parametrize("raw, normalised", [
    ("Two dogs!", "2 dogs"),  # punctuation dropped, number word -> digit
    ("The man's hat", "man 's hat"),  # article dropped, "'s" split off
    ("black/white", "black white"),  # a glued mark becomes a space...
    ("black / white", "black white"),  # ...one next to a space disappears
    ("3.5", "3.5"), ("yes.", "yes"),  # periods go unless a digit follows
    ("1,000", "1000"), ("None", "0"),
    ("dont", "don't"), ("Its RED", "its red"),
    ("  an apple\n", "apple"),
])
def test_normalisation(raw, normalised):
    assert normalize_answer(raw) == normalised


def test_leave_one_out_soft_score_by_hand():
    # 10 human answers, m of them "2": leaving out one of the m leaves m - 1 matches, leaving out
    # another leaves m; each subset scores min(1, matches / 3)
    def answers(m):
        return ["2"] * m + ["3"] * (10 - m)

    assert vqa_soft_score("2", answers(0)) == 0.0
    assert vqa_soft_score("2", answers(1)) == pytest.approx((1 * 0 + 9 * (1 / 3)) / 10)  # 0.3
    assert vqa_soft_score("2", answers(2)) == pytest.approx((2 * (1 / 3) + 8 * (2 / 3)) / 10)  # 0.6
    assert vqa_soft_score("2", answers(3)) == pytest.approx((3 * (2 / 3) + 7 * 1) / 10)  # 0.9
    assert vqa_soft_score("2", answers(4)) == 1.0
    # a single reference answer: exact match
    assert vqa_soft_score("2", ["2"]) == 1.0 and vqa_soft_score("2", ["3"]) == 0.0


def test_vqa_accuracy_and_majority_baseline():
    preds = ["Two", "yes", "a dog"]
    answers = [["2", "2", "two", "three", "3", "3", "3", "3", "3", "3"],  # "two" normalises to "2": m = 3
               ["Yes"], ["cat"]]
    assert vqa_scores(preds, answers) == pytest.approx([0.9, 1.0, 0.0])
    assert vqa_accuracy(preds, answers) == pytest.approx(1.9 / 3)
    majority = most_frequent_answer(["yes", "no", "Yes!", "2"])
    assert majority == "yes"
    assert vqa_accuracy([majority] * 3, answers) == pytest.approx(1 / 3)  # right on question 2 only
    with pytest.raises(ValueError):
        vqa_accuracy(["x"], [[]])
    with pytest.raises(ValueError):
        vqa_accuracy(["x", "y"], [["x"]])
