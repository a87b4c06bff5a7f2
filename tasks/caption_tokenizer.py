"""Caption tokenization as the COCO caption evaluation does it, in Python.

pycocoevalcap's ``PTBTokenizer`` runs Stanford CoreNLP's PTBTokenizer (Java) with ``-lowerCase
-preserveLines`` and then drops the punctuation tokens of its list. No maintained Python package ships
that tokenizer (nltk's Treebank tokenizer is close, but it is not a dependency here and differs on
quotes and brackets), and requiring Java for BLEU / CIDEr would make scores depend on the machine. So
this module reproduces the Java tokenizer's output on caption-like text by hand: lowercase, split off
trailing punctuation and the clitics PTB splits ("don't" -> "do n't", "dog's" -> "dog 's"), brackets
as ``-lrb-`` ... tokens (the Java output is lowercased after escaping, so pycocoevalcap's ``-LRB-`` in
its removal list never matches and they stay), then drop the same punctuation tokens. The equality with
the Java tokenizer is tested on sample captions where Java is installed (tests/tasks/test_caption_tokenizer.py).

Known differences, all rare in captions: "y'all" and "rock'n'roll" (PTB splits them), "a,1" (PTB: "a ,1"),
and abbreviations outside ``_ABBREVIATIONS`` ending a word with a period (PTB keeps some more whole).
"""

from __future__ import annotations

import re

# pycocoevalcap.tokenizer.ptbtokenizer.PUNCTUATIONS as it acts on lowercased output ("-LRB-" etc. never match)
_DROPPED = {"''", "'", "``", "`", ".", "?", "!", ",", ":", "-", "--", "...", ";"}
_BRACKETS = {"(": " -lrb- ", ")": " -rrb- ", "[": " -lsb- ", "]": " -rsb- ", "{": " -lcb- ", "}": " -rcb- "}
# words PTB keeps whole with their final period
_ABBREVIATIONS = {"mr.", "mrs.", "ms.", "dr.", "st.", "jr.", "sr.", "vs.", "etc.", "inc.", "ltd.", "co.", "corp.",
                  "mt.", "ft.", "ave.", "prof.", "no.", "approx."}
# words PTB splits in two
_SPLIT_WORDS = {"cannot": ["can", "not"], "gonna": ["gon", "na"], "gotta": ["got", "ta"], "wanna": ["wan", "na"],
                "lemme": ["lem", "me"], "gimme": ["gim", "me"]}
_CLITICS = ("n't", "'ll", "'re", "'ve", "'s", "'m", "'d")
_COMMA = re.compile(r"(?<!\d),|,(?!\d)")  # a comma splits words unless inside a number ("1,000")
_DOTS = re.compile(r"\.\.+")
_TRAILING = re.compile(r"^(.*?)([,;:]|[?!]+|\.|'|%)$")  # one trailing punctuation unit


def ptb_tokenize(caption: str) -> str:
    """The caption as pycocoevalcap's Java PTBTokenizer + punctuation removal leaves it: lowercased tokens
    joined by single spaces, e.g. "A dog's toy, (red)." -> "a dog 's toy -lrb- red -rrb-".

    Args:
        caption: raw text.
    """
    text = caption.lower().replace("\n", " ")
    text = text.translate(str.maketrans({"\u201c": '"', "\u201d": '"', "\u2018": "'", "\u2019": "'"}))
    for bracket, escaped in _BRACKETS.items():
        text = text.replace(bracket, escaped)
    text = text.replace('"', " ").replace("`", " ").replace("--", " -- ")  # quotes become dropped tokens
    text = _COMMA.sub(" , ", text).replace(";", " ; ")
    text = _DOTS.sub(" ... ", text)  # "sure..." and "two..four": PTB splits dot runs off (then dropped)
    tokens: list[str] = []
    for word in text.split():
        tokens += _split_word(word)
    return " ".join(t for t in tokens if t not in _DROPPED)


def _split_word(word: str) -> list[str]:
    """One whitespace-separated word -> its PTB tokens (dropped punctuation included)."""
    head: list[str] = []
    if word.startswith("'") and len(word) > 1 and word not in _CLITICS:
        head, word = ["'"], word[1:]  # an opening single quote
    if word.startswith("$") and len(word) > 1:
        head, word = head + ["$"], word[1:]
    tail: list[str] = []
    while True:
        m = _TRAILING.match(word)
        if not m or not m.group(1):
            break
        stem, punct = m.groups()
        if punct == "." and (word in _ABBREVIATIONS or "." in stem):
            break  # "mr." and "u.s." keep their period
        tail.insert(0, punct)
        word = stem
    return head + _split_clitic(word) + tail


def _split_clitic(word: str) -> list[str]:
    if word in _SPLIT_WORDS:
        return list(_SPLIT_WORDS[word])
    for clitic in _CLITICS:
        if word.endswith(clitic) and len(word) > len(clitic):
            return [word[:-len(clitic)], clitic]
    return [word] if word else []
