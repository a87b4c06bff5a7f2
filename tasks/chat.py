"""The chat template: conversations -> token ids and a per-token loss mask, in one pass.

One object, ``ChatTemplate``, formats every conversation omniway trains on or prompts with. The default is
mPLUG-Owl2's ``conv_mplug_owl2``: ``USER: {prompt} ASSISTANT: {response}</s>`` with turns joined by a space.
``encode`` tokenizes the template piece by piece, in order, and writes the loss mask as it goes: the ids are
the concatenation of the pieces' ids, so the mask is right by construction; nothing is tokenized a second
time to find where the answers start (the re-tokenize-and-compare approach is what makes LLaVA print
"tokenization mismatch" and silently mask whole samples).

    template = ChatTemplate()
    enc = template.encode([("user", "<image>\\nwhat shape is it?"), ("assistant", "a circle")], sp.encode,
                          bos_id=2, eos_id=3)
    enc.ids          # [bos, USER: ... ASSISTANT:, a, circle, eos]
    enc.loss_mask    # False on the prompt, True on the answer's tokens and its eos
    enc.response_start  # index of the first answer token: the prefix-LM's text_causal_start
    ids, causal_start = template.encode_prompt(turns_ending_with_a_user_turn, sp.encode, bos_id=2, eos_id=3)
    # for generation: causal_start = the first earlier answer's first token (None for one turn)

Media placeholders (``<image>``, ``<audio>``) stay in the text as the tokenizer's special tokens; the media
themselves go to their own segments of the multiway sequence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

ROLES = ("system", "user", "assistant")
# the role names of LLaVA's conversations ("from") and OpenAI's messages ("role")
ROLE_ALIASES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                "system": "system"}
PLACEHOLDERS = {"image": "<image>", "audio": "<audio>"}


class ConversationError(ValueError):
    """A conversation the template cannot encode; ``reason`` is the reject reason."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass
class Encoded:
    """A formatted, tokenized conversation.

    Args:
        ids: token ids of the whole conversation.
        loss_mask: one flag per id: True where the id is an assistant token (or its eos) to predict.
        response_start: index of the first assistant token (the prefix-LM's causal start).
        prompt: the last user turn's text (for evaluation and generation logs).
        answer: the last assistant turn's text (the reference).
    """

    ids: list[int]
    loss_mask: list[bool]
    response_start: int
    prompt: str
    answer: str


def normalize_turns(turns: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """Map role aliases to ``system`` / ``user`` / ``assistant`` and check the turn structure.

    Raises:
        ConversationError: ``unknown_role``, ``turns_not_alternating`` (an optional system turn first,
            then user / assistant alternating, starting with user and ending with assistant) or
            ``empty_response`` (an assistant turn with no text).
    """
    out = []
    for role, text in turns:
        canonical = ROLE_ALIASES.get(str(role).strip().lower())
        if canonical is None:
            raise ConversationError("unknown_role", f"role {role!r} (known: {', '.join(sorted(ROLE_ALIASES))})")
        out.append((canonical, "" if text is None else str(text)))
    body = out[1:] if out and out[0][0] == "system" else out
    expected = ["user", "assistant"] * (len(body) // 2 + 1)
    if not body or len(body) % 2 or [r for r, _ in body] != expected[:len(body)]:
        raise ConversationError("turns_not_alternating", "roles " + " ".join(r for r, _ in out))
    for i, (role, text) in enumerate(body):
        if role == "assistant" and not text.strip():
            raise ConversationError("empty_response", f"assistant turn {i // 2 + 1} has no text")
    return out


def count_placeholders(turns: Sequence[tuple[str, str]]) -> dict[str, int]:
    """modality -> how many of its placeholders the user and system turns hold."""
    return {m: sum(text.count(p) for role, text in turns if role != "assistant") for m, p in PLACEHOLDERS.items()}


@dataclass
class ChatTemplate:
    """How a conversation becomes one text (mPLUG-Owl2's template by default).

    Args:
        system: text put before the first turn when the conversation has no system turn ("" for none).
        user: prefix of a user turn.
        assistant: what follows a user turn's text and precedes the answer.
        separator: put before every user turn but the first (after the previous answer's eos).
    """

    system: str = ""
    user: str = "USER: "
    assistant: str = " ASSISTANT: "
    separator: str = " "

    def _pieces(self, turns: list[tuple[str, str]]) -> list[tuple[str, bool]]:
        """(text, supervised) pieces in order; an assistant piece is followed by eos (added by ``encode``)."""
        pieces: list[tuple[str, bool]] = []
        system = self.system
        if turns and turns[0][0] == "system":
            system, turns = turns[0][1], turns[1:]
        first = True
        pending = system + (" " if system else "")
        for role, text in turns:
            if role == "user":
                pending += ("" if first else self.separator) + self.user + text + self.assistant
                first = False
            else:
                pieces.append((pending, False))
                pieces.append((text, True))
                pending = ""
        if pending:
            pieces.append((pending, False))
        return pieces

    def encode(self, turns: Sequence[tuple[str, str]], tokenize: Callable[[str], list[int]], *, bos_id: int,
               eos_id: int, max_tokens: int = 0) -> Encoded:
        """Format and tokenize ``turns`` ((role, text), LLaVA / OpenAI role names accepted), marking the
        assistant tokens and each answer's eos in the loss mask, cut to ``max_tokens`` (0: no cut).

        Raises:
            ConversationError: the turn-structure reasons of ``normalize_turns``, or
                ``no_supervised_tokens`` when the cut leaves no answer token.
        """
        turns = normalize_turns(turns)
        ids, mask = [bos_id], [False]
        start = -1
        for text, supervised in self._pieces(turns):
            piece = list(tokenize(text)) if text else []
            if supervised:
                piece.append(eos_id)
                if start < 0:
                    start = len(ids)
            ids += piece
            mask += [supervised] * len(piece)
        if max_tokens and len(ids) > max_tokens:
            ids, mask = ids[:max_tokens], mask[:max_tokens]
        if not any(mask):
            raise ConversationError("no_supervised_tokens",
                                    f"{len(ids)} tokens after the cut to {max_tokens}, none of them an answer's")
        users = [t for r, t in turns if r == "user"]
        answers = [t for r, t in turns if r == "assistant"]
        return Encoded(ids, mask, start, users[-1], answers[-1])

    def encode_prompt(self, turns: Sequence[tuple[str, str]], tokenize: Callable[[str], list[int]], *,
                      bos_id: int, eos_id: int) -> "Prompt":
        """The ids a model is prompted with to answer the last turn, a user turn: exactly the ids ``encode``
        gives the same conversation before that answer's first token, and where training's causal part
        starts in them (the first earlier answer's first token; None for one user turn: all bidirectional)."""
        turns = list(turns)
        if not turns or ROLE_ALIASES.get(str(turns[-1][0]).strip().lower()) != "user":
            raise ConversationError("turns_not_alternating", "a prompt ends with a user turn")
        full = self.encode([*turns, ("assistant", "x")], tokenize, bos_id=bos_id, eos_id=eos_id)
        last = max(i for i, m in enumerate(full.loss_mask) if not m) + 1  # the final answer starts here
        return Prompt(full.ids[:last], full.response_start if full.response_start < last else None)


class Prompt(NamedTuple):
    """What ``ChatTemplate.encode_prompt`` returns (unpacks as ``ids, causal_start``).

    Args:
        ids: the prompt's token ids, bos first, ending where the answer starts.
        causal_start: index of the first token of the earliest answer inside the prompt (a multi-turn
            prompt): generation's ``text_causal_start``, as training's; None when the prompt holds no answer.
    """

    ids: list[int]
    causal_start: int | None
