"""The packaged task/order registry: contents, validity, lookups."""

from __future__ import annotations

import pytest

from migu.data import (
    OrderSpec,
    RegistryError,
    TaskSpec,
    UnknownOrderError,
    UnknownTaskError,
    get_domain,
    get_order,
    get_task,
    list_domains,
    list_orders,
    list_sets,
    list_tasks,
)
from migu.data.registry import _parse, _parse_domains

CL_TASKS = {
    "dbpedia", "amazon", "yahoo", "agnews", "yelp", "mnli", "cb", "wic",
    "copa", "qqp", "boolqa", "rte", "imdb", "sst-2", "multirc",
}  # fmt: skip
DAS_TASKS = ["restaurant", "acl", "ai", "phone", "pubmed", "camera"]
# The orders as method.md gives them.
PAPER_ORDERS = {
    "order1": "dbpedia amazon yahoo agnews",
    "order2": "dbpedia amazon agnews yahoo",
    "order3": "yahoo amazon agnews dbpedia",
    "order4": "mnli cb wic copa qqp boolqa rte imdb yelp amazon sst-2 dbpedia agnews multirc yahoo",
    "order5": "multirc boolqa wic mnli cb copa qqp rte imdb sst-2 dbpedia agnews yelp amazon yahoo",
    "order6": "yelp amazon mnli cb copa qqp rte imdb sst-2 dbpedia agnews yahoo multirc boolqa wic",
}
UNAVAILABLE_OFFLINE = {"yahoo"}


def test_registry_holds_the_15_cl_tasks_and_the_das_domains() -> None:
    assert set(list_tasks()) == CL_TASKS
    assert list_domains()[:6] == DAS_TASKS
    for name in DAS_TASKS:
        spec = get_domain(name)
        assert spec.corpus.files and spec.end_task.path and spec.end_task.epochs >= 5
    assert get_domain("pubmed").end_task.metric == "micro_f1"  # ContinualLM reports micro-F1 on ChemProt
    assert get_order("order7").tasks == tuple(DAS_TASKS) and get_order("order7").regime == "pretrain"
    for name in get_order("das_proxy").tasks:
        spec = get_domain(name)
        assert spec.corpus.from_task == spec.end_task.task  # corpus and end task from one source


def test_every_order_names_registered_tasks_and_has_a_description() -> None:
    names = {"finetune": set(list_tasks()), "pretrain": set(list_domains()), "instruct": set(list_sets())}
    for name in list_orders():
        order = get_order(name)
        assert isinstance(order, OrderSpec) and order.name == name
        assert order.description
        assert order.tasks and set(order.tasks) <= names[order.regime]
        assert len(set(order.tasks)) == len(order.tasks)


@pytest.mark.parametrize(("name", "tasks"), PAPER_ORDERS.items())
def test_paper_orders_match_the_method_spec(name: str, tasks: str) -> None:
    assert get_order(name).tasks == tuple(tasks.split())


def test_long_orders_cover_all_15_tasks() -> None:
    for name in ("order4", "order5", "order6"):
        assert set(get_order(name).tasks) == CL_TASKS


def test_proxy_orders_use_only_available_tasks_in_paper_sequence() -> None:
    assert get_order("standard_proxy").tasks == ("dbpedia", "amazon", "agnews")
    for proxy, paper in (("standard_proxy", "order1"), ("long_proxy", "order4")):
        tasks = get_order(proxy).tasks
        assert not set(tasks) & UNAVAILABLE_OFFLINE
        full = get_order(paper).tasks
        assert [t for t in full if t in tasks] == list(tasks)  # relative order kept
    assert 4 <= len(get_order("long_proxy").tasks) <= 6


def test_instructions_are_the_o_lora_texts() -> None:
    assert get_task("agnews").instruction == (
        "What is the topic of the following paragraph? Choose one from the option."
    )
    assert get_task("mnli").instruction == (
        'What is the logical relationship between the "sentence 1" and the "sentence 2"? '
        "Choose one from the option."
    )
    assert get_task("copa").instruction == ""  # COPA's sentence carries its own question
    for name in CL_TASKS - {"copa"}:
        assert get_task(name).instruction.endswith("Choose one from the option.")


def test_paths_and_categories() -> None:
    assert get_task("mnli") == TaskSpec("mnli", "NLI", "NLI/MNLI", get_task("mnli").instruction)
    assert get_task("sst-2").path == "SC/SST-2"
    assert get_task("boolqa").path == "BoolQA/BoolQA"
    for name in CL_TASKS:
        spec = get_task(name)
        assert spec.path is not None and spec.path.split("/")[0] == spec.category


def test_lookups_are_case_insensitive() -> None:
    assert get_task("SST-2") is get_task("sst-2")
    assert get_order(" Order1 ") is get_order("order1")


def test_unknown_names_suggest_close_matches() -> None:
    with pytest.raises(UnknownTaskError, match="sst-2") as err:
        get_task("sst2")
    assert isinstance(err.value, KeyError)
    assert "Did you mean" in str(err.value) and not str(err.value).startswith("'")
    with pytest.raises(UnknownOrderError, match="order1"):
        get_order("ordr1")
    with pytest.raises(KeyError):
        get_order("nothing-like-it")


def _minimal(**orders: list[str]) -> dict:
    return {
        "tasks": {
            "a": {"category": "TC", "path": "TC/a", "instruction": "x"},
            "d": {"category": "TC", "path": "TC/d", "instruction": ""},
        },
        "orders": {k: {"tasks": v, "description": "d"} for k, v in orders.items()},
    }


def test_parse_rejects_inconsistent_registries() -> None:
    tasks, orders = _parse(_minimal(o=["a"]), "t.yaml")
    assert tasks["d"].instruction == ""
    assert orders["o"].tasks == ("a",) and orders["o"].regime == "finetune"
    with pytest.raises(RegistryError, match="unknown tasks"):
        _parse(_minimal(o=["a", "b"]), "t.yaml")
    with pytest.raises(RegistryError, match="repeats"):
        _parse(_minimal(o=["a", "a"]), "t.yaml")
    bad = _minimal()
    bad["tasks"]["a"]["path"] = None
    with pytest.raises(RegistryError, match="needs a data path"):
        _parse(bad, "t.yaml")
    bad = _minimal()
    del bad["tasks"]["a"]["path"]
    with pytest.raises(RegistryError, match="lacks path"):
        _parse(bad, "t.yaml")


def test_parse_domains_rejects_inconsistent_entries() -> None:
    tasks, _ = _parse(_minimal(), "t.yaml")

    def reg(**domain: object) -> dict:
        base = {"corpus": {"from_task": "a", "rows": 10}, "end_task": {"task": "a"}}
        return {"domains": {"x": {**base, **domain}}, "orders": {"o": {"domains": ["x"], "description": "d"}}}

    domains, orders = _parse_domains(reg(), "d.yaml", tasks)
    assert domains["x"].corpus.rows == 10 and orders["o"].regime == "pretrain"
    with pytest.raises(RegistryError, match="exactly one of 'files' or 'from_task'"):
        _parse_domains(reg(corpus={"files": ["c.txt"], "from_task": "a"}), "d.yaml", tasks)
    with pytest.raises(RegistryError, match="exactly one of 'path' or 'task'"):
        _parse_domains(reg(end_task={}), "d.yaml", tasks)
    with pytest.raises(RegistryError, match="unknown CL_Benchmark task 'zzz'"):
        _parse_domains(reg(end_task={"task": "zzz"}), "d.yaml", tasks)
    with pytest.raises(RegistryError, match=r"unknown key\(s\) \['colour'\]"):
        _parse_domains(reg(corpus={"from_task": "a", "colour": 1}), "d.yaml", tasks)
