"""English prose from Python's own documentation topics: what the methods'
and the evaluations' calibration and held-out text comes from."""

import pytest

from lowbit.analysis import python_docs_sentences, python_docs_text


def test_the_text_is_every_topic_in_order_of_name():
    from pydoc_data.topics import topics

    text = python_docs_text()
    assert len(text) == sum(map(len, topics.values())) + len(topics) - 1
    assert text.startswith(topics[min(topics)])


def test_sentences_are_prose_of_the_asked_length_each_once_in_text_order():
    sentences = python_docs_sentences()
    assert len(sentences) > 500  # about 800 in Python 3.11
    assert len(set(sentences)) == len(sentences)  # a split shares no sentence
    flat = " ".join(python_docs_text().split())
    position = 0
    for s in sentences:
        assert 8 <= len(s.split()) <= 40 and s[0].isupper() and s == " ".join(s.split())
        assert not any(marker in s for marker in (">>>", "::=", "{", "}", "[", "]", "=")), s
        position = flat.index(s, position)  # every sentence is a piece of the text, in order
    assert python_docs_sentences() is sentences  # built once


def test_shorter_bounds_give_a_subset():
    short = python_docs_sentences(min_words=8, max_words=12)
    assert short and set(short) <= set(python_docs_sentences()) and all(len(s.split()) <= 12 for s in short)


@pytest.mark.parametrize("kwargs,message", [({"min_words": 0}, "min_words"), ({"max_words": 2.5}, "max_words"),
                                            ({"min_words": 9, "max_words": 8}, "must not exceed")])
def test_bad_bounds_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        python_docs_sentences(**kwargs)
