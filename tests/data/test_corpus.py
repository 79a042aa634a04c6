"""Domain corpora: reading and checks, run_mlm-style blocks, the tokenization cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from support.data import REAL_ROOT, needs_real_data, write_das
from support.models import save_tiny_tokenizer

from migu.data import DataError
from migu.data.corpus import corpus_blocks, group_blocks, load_domain


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(save_tiny_tokenizer(tmp_path_factory.mktemp("tok"))))


def test_group_blocks_concatenates_and_drops_the_remainder() -> None:
    ids, special = group_blocks([[1, 2, 3], [4, 5], [6, 7, 8, 9]], [[1, 0, 1], [0, 0], [1, 0, 0, 1]], 4)
    assert ids.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]  # token 9 (the remainder) dropped
    assert special.tolist() == [[True, False, True, False], [False, True, False, False]]


def test_file_corpus_blocks_and_cache(tmp_path: Path, tokenizer, monkeypatch: pytest.MonkeyPatch) -> None:
    root = write_das(tmp_path / "das")
    data = load_domain("restaurant", root)
    assert data.texts is None and data.files[0].path.name == "yelp_restaurant.txt"
    assert len(data.end_task.train) == 16 and data.end_task.labels == ("negative", "positive")
    assert data.end_task.train[0].input == data.end_task.train[0].sentence  # raw text, no instruction
    blocks = corpus_blocks(data, tokenizer, 16, tmp_path / "cache")
    assert data.info["blocks_cache"]["hit"] is False and blocks.input_ids.shape[1] == 16
    first = (root / "yelp_restaurant.txt").read_text().splitlines()[0]
    ids = tokenizer([first], add_special_tokens=True)["input_ids"][0]
    flat = blocks.input_ids.flatten().tolist()
    assert flat[: len(ids)] == ids  # the first document, with its [CLS]/[SEP], then the next one
    assert blocks.special_tokens_mask[0, 0] and not blocks.special_tokens_mask[0, 1]

    calls = []
    real = type(tokenizer).__call__
    monkeypatch.setattr(
        type(tokenizer), "__call__", lambda self, *a, **k: calls.append(1) or real(self, *a, **k)
    )
    again = corpus_blocks(load_domain("restaurant", root), tokenizer, 16, tmp_path / "cache")
    assert not calls and torch.equal(again.input_ids, blocks.input_ids)  # reused: no tokenization
    with (root / "yelp_restaurant.txt").open("a") as fh:
        fh.write("menu menu menu\n")
    changed = load_domain("restaurant", root)
    corpus_blocks(changed, tokenizer, 16, tmp_path / "cache")
    assert calls and changed.info["blocks_cache"]["hit"] is False  # a changed file is a new entry


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda r: (r / "yelp_restaurant.txt").write_text(""), r"yelp_restaurant\.txt: corpus file is empty"),
        (
            lambda r: (r / "yelp_restaurant.txt").write_bytes(b"caf\xe9 ok\n"),
            r"yelp_restaurant\.txt: not UTF-8",
        ),
        (
            lambda r: (r / "yelp_restaurant.txt").unlink(),
            r"domain 'restaurant': corpus file\(s\) not found: .*yelp",
        ),
        (
            lambda r: (r / "end_tasks/restaurant/labels.json").write_text('["negative"]'),
            r"train\.jsonl: labels \['positive'\] not among the task's labels \['negative'\]",
        ),
        (
            lambda r: (r / "end_tasks/restaurant/test.jsonl").write_text('{"text": "x"}\n'),
            r"test\.jsonl: line 1: needs a 'text' string and a 'label'",
        ),
    ],
)
def test_bad_domain_data_names_the_file(tmp_path: Path, damage, match: str) -> None:
    root = write_das(tmp_path / "das")
    damage(root)
    with pytest.raises(DataError, match=match):
        load_domain("restaurant", root)


def test_a_corpus_shorter_than_one_block(tmp_path: Path, tokenizer) -> None:
    root = write_das(tmp_path / "das")
    (root / "yelp_restaurant.txt").write_text("food\n")
    with pytest.raises(
        DataError,
        match=r"domain 'restaurant': corpus \(.*yelp_restaurant\.txt\) has \d+ tokens, "
        r"less than one block of 16",
    ):
        corpus_blocks(load_domain("restaurant", root), tokenizer, 16, tmp_path / "cache")


def test_unknown_domain() -> None:
    with pytest.raises(KeyError, match="Did you mean: restaurant"):
        load_domain("restaurnt", ".")


@needs_real_data
def test_proxy_corpora_are_disjoint_from_their_end_tasks() -> None:
    assert REAL_ROOT is not None
    for name in ("proxy_news", "proxy_encyclopedia", "proxy_reviews"):
        d = load_domain(name, REAL_ROOT, seed=7)
        end = {e.sentence for e in d.end_task.train} | {e.sentence for e in d.end_task.test}
        assert d.texts is not None and not set(d.texts) & end
        assert d.info["used"] == 3000 and d.info["disjoint_from_end_task"]
        assert len(d.end_task.train) == 400 and len(d.end_task.test) == 500
