"""VQA answer normalisation and the VQAv2 soft accuracy of one answer.

Written here because no maintained package ships it: the VQAv2 evaluation script (vqaEval.py) and its
copies (EvalAI, mmf's / lmms-eval's ``EvalAIAnswerProcessor``) are scripts, not libraries. This follows
``EvalAIAnswerProcessor``, which normalises prediction and human answers alike (the official script
normalises the human answers only when they disagree, relying on pre-cleaned annotation files, which
our data sets are not): lowercase, "," and "?" dropped and "'s" split off, punctuation removed or made
a space, periods not followed by a digit removed, number words to digits, articles dropped,
apostrophe-less contractions restored ("dont" -> "don't").
"""

from __future__ import annotations

import re

# number words the VQA eval maps to digits
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
            "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
# the VQA eval's contraction table, written "without=with"; its capitalised keys ("Im", "Ive") are left
# out: the text is lowercased before the lookup, so they never match there either
_CONTRACTIONS = dict(pair.split("=") for pair in """
aint=ain't arent=aren't cant=can't couldve=could've couldnt=couldn't couldn'tve=couldn't've
couldnt've=couldn't've didnt=didn't doesnt=doesn't dont=don't hadnt=hadn't hadnt've=hadn't've
hadn'tve=hadn't've hasnt=hasn't havent=haven't hed=he'd hed've=he'd've he'dve=he'd've hes=he's howd=how'd
howll=how'll hows=how's isnt=isn't itd=it'd itd've=it'd've it'dve=it'd've itll=it'll let's=let's maam=ma'am
mightnt=mightn't mightnt've=mightn't've mightn'tve=mightn't've mightve=might've mustnt=mustn't
mustve=must've neednt=needn't notve=not've oclock=o'clock oughtnt=oughtn't ow's'at='ow's'at
'ows'at='ow's'at 'ow'sat='ow's'at shant=shan't shed've=she'd've she'dve=she'd've she's=she's
shouldve=should've shouldnt=shouldn't shouldnt've=shouldn't've shouldn'tve=shouldn't've
somebody'd=somebodyd somebodyd've=somebody'd've somebody'dve=somebody'd've somebodyll=somebody'll
somebodys=somebody's someoned=someone'd someoned've=someone'd've someone'dve=someone'd've
someonell=someone'll someones=someone's somethingd=something'd somethingd've=something'd've
something'dve=something'd've somethingll=something'll thats=that's thered=there'd thered've=there'd've
there'dve=there'd've therere=there're theres=there's theyd=they'd theyd've=they'd've they'dve=they'd've
theyll=they'll theyre=they're theyve=they've twas='twas wasnt=wasn't wed've=we'd've we'dve=we'd've
weve=we've werent=weren't whatll=what'll whatre=what're whats=what's whatve=what've whens=when's
whered=where'd wheres=where's whereve=where've whod=who'd whod've=who'd've who'dve=who'd've wholl=who'll
whos=who's whove=who've whyll=why'll whyre=why're whys=why's wont=won't wouldve=would've
wouldnt=wouldn't wouldnt've=wouldn't've wouldn'tve=wouldn't've yall=y'all yall'll=y'all'll
y'allll=y'all'll yall'd've=y'all'd've y'alld've=y'all'd've y'all'dve=y'all'd've youd=you'd
youd've=you'd've you'dve=you'd've youll=you'll youre=you're youve=you've
""".split())
_PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
                "?", "!"]
_DIGIT_COMMA_DIGIT = re.compile(r"(?<=\d),+(?=\d)")
# the eval's pattern "(?!<=\d)(\.)(?!\d)" opens with a mistyped look-behind that never matters: it
# removes every period not followed by a digit, which is what this does
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")


def normalize_answer(answer: str) -> str:
    """``answer`` as the VQA evaluation compares it, e.g. "Two dogs!" -> "2 dogs", "The man's" -> "man 's".

    Args:
        answer: a predicted or human answer.
    """
    text = answer.lower().replace(",", "").replace("?", "").replace("'s", " 's")
    text = text.replace("\n", " ").replace("\t", " ").strip()
    # a punctuation mark next to a space (or any digit,digit in the answer) is deleted, else it becomes a
    # space ("black/white" -> "black white"); the test is on the text before any replacement, as in the eval
    glued = bool(_DIGIT_COMMA_DIGIT.search(text))
    out = text
    for p in _PUNCTUATION:
        out = out.replace(p, "" if (p + " " in text or " " + p in text or glued) else " ")
    out = _PERIOD_NOT_BEFORE_DIGIT.sub("", out)
    words = [_NUMBERS.get(w, w) for w in out.split()]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def vqa_soft_score(prediction: str, answers: list[str]) -> float:
    """VQAv2 accuracy of one normalised prediction against the normalised human answers.

    One answer: exact match. Several: min(1, matches / 3) against each leave-one-out subset of the human
    answers, averaged (with 10 answers: 3 or more matches score 1, fewer score about m / 3).

    Args:
        prediction: normalised predicted answer.
        answers: normalised human answers (at least one).
    """
    if not answers:
        raise ValueError("a question needs at least one reference answer")
    if len(answers) == 1:
        return float(prediction == answers[0])
    matches = sum(a == prediction for a in answers)
    # leaving out a matching answer leaves matches - 1 of them; leaving out another leaves all `matches`
    loo = [min(1.0, (matches - (a == prediction)) / 3) for a in answers]
    return sum(loo) / len(loo)
