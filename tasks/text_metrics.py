"""Scores of generated text: captioning (BLEU, CIDEr-D, ROUGE-L, METEOR), VQA accuracy, ASR WER / CER,
each with the baseline a trivial model reaches."""

from __future__ import annotations

import shutil
import threading
from collections import Counter
from typing import Iterable

from tasks.caption_tokenizer import ptb_tokenize
from tasks.vqa_answers import normalize_answer, vqa_soft_score  # normalize_answer: also for callers


def captioning_scores(predictions: dict, references: dict, meteor: bool = True,
                      meteor_timeout_s: float = 300.0) -> dict:
    """COCO caption metrics with pycocoevalcap's scorers, on captions tokenized by ``ptb_tokenize``
    (the Java PTB tokenizer's output, made in Python: BLEU / CIDEr-D / ROUGE-L never need Java).

    BLEU-4 is the headline; BLEU-n is corpus-level (clipped n-gram counts and the brevity penalty over
    all items, pycocoevalcap's "closest" reference length). CIDEr-D takes its IDF from the evaluated
    references themselves: scores depend on the evaluated set, and a one-item set scores 0 (every n-gram
    then occurs in all of the set's 1 documents: log(1/1) = 0).

    Args:
        predictions: id -> generated caption.
        references: id -> reference captions (at least one each); the same ids as ``predictions``.
        meteor: also compute METEOR (pycocoevalcap's Meteor, a Java process) when ``java`` is on PATH;
            any failure of it is recorded, never raised.
        meteor_timeout_s: give METEOR up after this long.
    Returns:
        ``bleu1`` .. ``bleu4``, ``cider`` (CIDEr-D: the variant the COCO evaluation reports as CIDEr),
        ``rouge_l``, ``n`` (floats), ``meteor`` (float, or None when it did not run), ``meteor_ran`` (bool),
        and ``per_item``: id -> {"bleu4", "cider", "rouge_l"}.
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    if set(predictions) != set(references):
        missing = sorted(set(references) ^ set(predictions), key=str)[:5]
        raise ValueError(f"predictions and references must have the same ids; e.g. not in both: {missing}")
    if not references:
        raise ValueError("no items to score")
    ids = list(references)
    res = {i: [ptb_tokenize(predictions[i])] for i in ids}  # scorers take id -> [one caption]
    gts = {i: [ptb_tokenize(r) for r in references[i]] for i in ids}
    if any(not refs for refs in gts.values()):
        raise ValueError("every item needs at least one reference caption")
    bleu, bleu_items = Bleu(4).compute_score(gts, res, verbose=0)  # 4 floats; 4 lists of per-item scores
    cider, cider_items = Cider().compute_score(gts, res)
    rouge, rouge_items = Rouge().compute_score(gts, res)
    out = {f"bleu{n + 1}": float(bleu[n]) for n in range(4)}
    out.update(cider=float(cider), rouge_l=float(rouge), meteor=None, meteor_ran=False, n=float(len(ids)))
    if meteor and shutil.which("java"):
        out["meteor"] = _meteor(gts, res, meteor_timeout_s)
        out["meteor_ran"] = out["meteor"] is not None
    out["per_item"] = {i: {"bleu4": float(bleu_items[3][j]), "cider": float(cider_items[j]),
                           "rouge_l": float(rouge_items[j])} for j, i in enumerate(ids)}
    return out


def _meteor(gts: dict, res: dict, timeout_s: float) -> float | None:
    """pycocoevalcap's METEOR, or None when Java or the jar fails or hangs."""
    from pycocoevalcap.meteor.meteor import Meteor

    result: list = []

    def run(scorer):
        try:
            result.append(float(scorer.compute_score(gts, res)[0]))
        except Exception:  # a dead or broken Java process: METEOR is optional
            pass

    try:
        scorer = Meteor()
    except Exception:
        return None
    worker = threading.Thread(target=run, args=(scorer,), daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive() or not result:
        scorer.meteor_p.kill()  # unblocks the worker's read
        worker.join(5)
        # compute_score holds its lock when it raised; Meteor.__del__ takes that lock and would hang
        if scorer.lock.locked():
            scorer.lock.release()
        return None
    return result[0]


def most_frequent_caption(train_captions: Iterable[str]) -> str:
    """The most frequent training caption (tokenized by ``ptb_tokenize``; the first seen wins ties): the
    constant prediction of the captioning baseline.

    Args:
        train_captions: the training split's captions.
    """
    counts = Counter(ptb_tokenize(c) for c in train_captions)
    if not counts:
        raise ValueError("no training captions")
    return counts.most_common(1)[0][0]


def captioning_baseline(train_captions: Iterable[str], references: dict, meteor: bool = False) -> dict:
    """``captioning_scores`` of predicting the most frequent training caption for every item, with
    ``prediction`` (that caption) added.

    Args:
        train_captions: the training split's captions.
        references: id -> reference captions of the evaluated split.
        meteor: also run METEOR (Java) for the baseline.
    """
    caption = most_frequent_caption(train_captions)
    out = captioning_scores({i: caption for i in references}, references, meteor=meteor)
    out["prediction"] = caption
    return out


def most_frequent_answer(answers: Iterable[str]) -> str:
    """The most frequent normalised answer (the first seen wins ties), e.g. of the training split: the
    constant prediction of the VQA majority baseline, ``vqa_accuracy([answer] * n, answers)``.

    Args:
        answers: answers (raw); pass every human answer of every question, or one per question.
    """
    counts = Counter(normalize_answer(a) for a in answers)
    if not counts:
        raise ValueError("no answers")
    return counts.most_common(1)[0][0]


def vqa_scores(predictions: list[str], answers: list[list[str]]) -> list[float]:
    """VQAv2 accuracy of each question: every answer normalised (``normalize_answer``), then an exact
    match with a single reference answer, or with several the mean over leave-one-out subsets of
    min(1, matches / 3) (``vqa_soft_score``).

    Args:
        predictions: one predicted answer per question.
        answers: the human answers of each question (at least one).
    """
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions for {len(answers)} questions")
    return [vqa_soft_score(normalize_answer(p), [normalize_answer(a) for a in human])
            for p, human in zip(predictions, answers)]


def vqa_accuracy(predictions: list[str], answers: list[list[str]]) -> float:
    """Mean VQAv2 accuracy over the questions (``vqa_scores``). The majority baseline is the same call
    with the constant ``most_frequent_answer`` of the training answers as every prediction.

    Args:
        predictions: one predicted answer per question.
        answers: the human answers of each question (at least one).
    """
    scores = vqa_scores(predictions, answers)
    if not scores:
        raise ValueError("no questions to score")
    return sum(scores) / len(scores)


def asr_scores(predictions: list[str], references: list[str]) -> dict:
    """Corpus WER and CER (total edits / total reference words or characters) with jiwer, after the same
    normalisation of both sides: lowercase, punctuation removed, whitespace collapsed. CER counts the
    single spaces between words as characters (jiwer's convention).

    An empty transcript (the baseline, or a model that said nothing) is scored without jiwer: all of the
    reference is deleted (WER 1.0), because jiwer versions differ on whether they accept an empty
    hypothesis.

    Args:
        predictions: one transcript per utterance.
        references: the reference transcripts (non-empty after normalisation).
    Returns:
        ``wer``, ``cer``, ``n``, ``reference_words``, ``reference_chars`` (floats), ``per_utterance_wer`` (list).
    """
    import jiwer

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    clean = jiwer.Compose([jiwer.ToLowerCase(), jiwer.RemovePunctuation(), jiwer.RemoveMultipleSpaces(),
                           jiwer.Strip()])
    hyps = [clean(p) for p in predictions]
    refs = [clean(r) for r in references]
    if not refs or any(not r for r in refs):
        raise ValueError("every utterance needs a non-empty reference (after normalisation)")
    ref_words = [len(r.split()) for r in refs]
    word_errors = list(ref_words)  # empty hypotheses: every reference word deleted
    char_errors = [len(r) for r in refs]
    spoken = [i for i, h in enumerate(hyps) if h]
    if spoken:
        words = jiwer.process_words([refs[i] for i in spoken], [hyps[i] for i in spoken])
        chars = jiwer.process_characters([refs[i] for i in spoken], [hyps[i] for i in spoken])
        for i, w, c in zip(spoken, words.alignments, chars.alignments):
            word_errors[i], char_errors[i] = _edits(w), _edits(c)
    n_chars = sum(len(r) for r in refs)
    return {"wer": sum(word_errors) / sum(ref_words), "cer": sum(char_errors) / n_chars, "n": float(len(refs)),
            "reference_words": float(sum(ref_words)), "reference_chars": float(n_chars),
            "per_utterance_wer": [e / n for e, n in zip(word_errors, ref_words)]}


def _edits(alignment) -> int:
    """Substitutions + deletions + insertions of one utterance's jiwer alignment chunks."""
    edits = 0
    for chunk in alignment:
        if chunk.type in ("substitute", "delete"):
            edits += chunk.ref_end_idx - chunk.ref_start_idx
        elif chunk.type == "insert":
            edits += chunk.hyp_end_idx - chunk.hyp_start_idx
    return edits


def asr_baseline(references: list[str]) -> dict:
    """``asr_scores`` of the empty transcript for every utterance (WER and CER 1.0 by definition).

    Args:
        references: the reference transcripts.
    """
    return asr_scores([""] * len(references), references)
