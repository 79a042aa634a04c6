"""Toy instruction examples shaped like the benchmark's (``migu.data.cl_benchmark.Example``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Ex:
    """Stand-in for migu.data.cl_benchmark.Example."""

    task: str
    input: str
    sentence: str
    label: str
    options: tuple[str, ...]


SENTIMENT = ("positive", "negative")
TOPIC = ("World", "Sports", "Business")
LABEL_SPACE = (*SENTIMENT, *TOPIC)


def make_example(task: str, sentence: str, label: str) -> Ex:
    """An instruction prompt like the benchmark's: instruction, sentence, options, "Answer:"."""
    options = SENTIMENT if task == "sentiment" else TOPIC
    prompt = (  # the benchmark's layout: instruction, options, sentence, "Answer:"
        f"What is the {task} of the following text? Choose one from the option.\n"
        f"Option: {', '.join(options)} \n{sentence}\nAnswer:"
    )
    return Ex(task, prompt, sentence, label, options)


TOY_ROWS = [
    ("sentiment", "a wonderful, moving film", "positive"),
    ("sentiment", "dull and far too long", "negative"),
    ("sentiment", "i loved every minute of it", "positive"),
    ("sentiment", "the worst acting this year", "negative"),
    ("topic", "the striker scored twice in the final", "Sports"),
    ("topic", "shares fell after the earnings report", "Business"),
    ("topic", "leaders met for peace talks in geneva", "World"),
    ("topic", "the team won the championship game", "Sports"),
]
