"""English prose that ships with every Python: the documentation topics of
``pydoc_data.topics`` (the pages ``help("topic")`` shows, about 450 KB in
Python 3.11), as text and sentences to calibrate and evaluate models on
with nothing to download. The text is what the running Python ships, so
it differs a little between Python versions."""

from __future__ import annotations

import functools
import re

#: characters a prose sentence is made of (letters aside)
PROSE_PUNCTUATION = frozenset(" ,.;:'-()!?")
#: characters of code, tables and grammar rules, which no prose sentence has
CODE_CHARACTERS = frozenset("=<>[]{}|_@`#$%^~\\/+*")


@functools.cache
def python_docs_topics() -> tuple[str, ...]:
    """The text of every documentation topic as Python ships it, in the
    order of the topics' names."""
    from pydoc_data.topics import topics

    return tuple(topics[name] for name in sorted(topics))


def python_docs_text() -> str:
    """The documentation topics joined by newlines in the order of their names."""
    return "\n".join(python_docs_topics())


@functools.cache
def python_docs_sentences(min_words: int = 8, max_words: int = 40) -> tuple[str, ...]:
    """The prose sentences of :func:`python_docs_text`, in order: whitespace
    runs made one space, split after ``.``, ``!`` or ``?`` followed by
    space, kept when a sentence starts with a capital letter, has
    ``min_words`` to ``max_words`` words, none of :data:`CODE_CHARACTERS`,
    and at least 95% of its characters are letters or
    :data:`PROSE_PUNCTUATION` (which drops code and grammar rules); a sentence that recurs (some topics repeat others'
    text) is kept where it first appears, so a split of the tuple never
    shares a sentence. About 800 sentences in Python 3.11."""
    for name, value in (("min_words", min_words), ("max_words", max_words)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if min_words > max_words:
        raise ValueError(f"min_words ({min_words}) must not exceed max_words ({max_words})")
    pieces = re.split(r"(?<=[.!?]) ", re.sub(r"\s+", " ", python_docs_text()))
    prose = (s for s in pieces if s[:1].isupper() and min_words <= len(s.split()) <= max_words
             and not CODE_CHARACTERS.intersection(s) and sum(c.isalpha() or c in PROSE_PUNCTUATION for c in s) >= 0.95 * len(s))
    return tuple(dict.fromkeys(prose))
