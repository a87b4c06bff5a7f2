"""The Python PTB tokenization of captions gives what pycocoevalcap's Java tokenizer gives."""

import shutil

import pytest

from tasks.caption_tokenizer import ptb_tokenize

CAPTIONS = {
    "A man riding a wave on top of a surfboard.": "a man riding a wave on top of a surfboard",
    "Two dogs' toys, and the dog's bone (red)!": "two dogs toys and the dog 's bone -lrb- red -rrb-",
    "I don't think it's a \"good\" idea; can't you see? I'm sure...":
        "i do n't think it 's a good idea ca n't you see i 'm sure",
    "The black-and-white cat on a 3.5 inch mat, $5 or 50% and/or 1,000 & more.":
        "the black-and-white cat on a 3.5 inch mat $ 5 or 50 % and/or 1,000 & more",
    "'Quoted' text `here` Mr. Smith at 5 p.m. in the U.S.": "quoted text here mr. smith at 5 p.m. in the u.s.",
    "gonna cannot Won't shouldn't they're you've he'd o'clock":
        "gon na can not wo n't should n't they 're you 've he 'd o'clock",
    "There is a cat.The dog is here.  a pizza..  what?!  yes!!! 10:30 well--done":
        "there is a cat.the dog is here a pizza what ?! yes !!! 10:30 well done",
    "A plate of food with broccoli,carrots [and] {rice}":
        "a plate of food with broccoli carrots -lsb- and -rsb- -lcb- rice -rcb-",
    "e-mail: foo@bar.com http://x.org #tag": "e-mail foo@bar.com http://x.org #tag",
}


def test_tokens_as_the_coco_evaluation_leaves_them():
    for caption, expected in CAPTIONS.items():
        assert ptb_tokenize(caption) == expected, caption
    assert ptb_tokenize("") == "" and ptb_tokenize("...") == ""


@pytest.mark.skipif(shutil.which("java") is None, reason="the reference tokenizer is Stanford's Java PTBTokenizer")
def test_same_as_the_java_tokenizer():
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    java = PTBTokenizer().tokenize({i: [{"caption": c}] for i, c in enumerate(CAPTIONS)})
    assert [java[i][0] for i in range(len(CAPTIONS))] == [ptb_tokenize(c) for c in CAPTIONS]
