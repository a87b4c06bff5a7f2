"""What the evaluate stage scores, by hand: retrieval items and positives (CLIP_benchmark's semantics, with
captions repeated across images), and the prompt of a multi-turn row."""

from __future__ import annotations

import pytest

from pipelines.evaluation.embedding_suites import _transpose, pair_items
from pipelines.evaluation.workers import last_answer_start


def test_images_with_several_captions_and_captions_under_several_images():
    # image A has "cat" and "kitty", image B has "cat", image C has "dog"; A appears twice (two rows)
    rows = [{"img": "A", "txt": "cat"}, {"img": "A", "txt": "kitty"}, {"img": "B", "txt": "cat"},
            {"img": "C", "txt": "dog"}]
    first_img, first_txt, pos = pair_items(rows, "image", "text", lambda r, m: r["img" if m == "image" else "txt"])
    assert [rows[i]["img"] for i in first_img] == ["A", "B", "C"]          # one query per image
    assert [rows[i]["txt"] for i in first_txt] == ["cat", "kitty", "dog"]  # one candidate per distinct caption
    assert pos == [[0, 1], [0], [2]]            # A: cat, kitty; B: cat (A and B stay two items); C: dog
    assert _transpose(pos, 3) == [[0, 1], [0], [2]]  # cat: A, B; kitty: A; dog: C


def test_the_digits_caption_is_one_candidate_with_every_image_of_its_class():
    rows = [{"img": f"d{i}", "txt": f"a handwritten digit {i % 2}"} for i in range(6)]
    first_img, first_txt, pos = pair_items(rows, "image", "text", lambda r, m: r["img" if m == "image" else "txt"])
    assert len(first_img) == 6 and len(first_txt) == 2
    assert pos == [[0], [1], [0], [1], [0], [1]]
    assert _transpose(pos, 2) == [[0, 2, 4], [1, 3, 5]]


def test_the_prompt_of_a_row_ends_before_its_last_answer():
    # bos USER a1 a1 eos USER a2 a2 eos: answers at 2-4 and 6-8 (eos included)
    mask = [False, False, True, True, True, False, True, True, True]
    assert last_answer_start(mask) == 6
    assert last_answer_start([False, False, True, True]) == 2
    with pytest.raises(ValueError, match="without an answer"):
        last_answer_start([False, False])
