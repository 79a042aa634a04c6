"""MIGU+Cluster (issue 15): rows grouped into clusters, masks made per cluster.

The cut is checked against a plain-Python reference (``ref_cluster_keep``), the co-magnitude
profile against the float64 loop reference of the statistic (``ref_example_stats``), weight
clusters of LoRA against the effective weight W0 + s B A computed here, and strict mode against
bit-identical masked clusters under AdamW.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from support.engine_reference import (
    capture_inputs,
    expected_masked,
    randomize_biases,
    ref_cluster_keep,
    ref_example_stats,
    ref_keep,
    rows_of,
)

import migu
from migu.engine import (
    ClusterConfig,
    ClusterLayout,
    MIGUConfig,
    cluster_split,
    comagnitude_clusters,
    comagnitude_profiles,
    make_keep_masks,
    weight_clusters,
)
from migu.engine.cluster import balanced_assign, cluster_rows, greedy_assign, target_rows

PARTIAL = ("fill", "drop", "whole")
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def _cfg(threshold: float = 0.5, **cluster) -> MIGUConfig:
    return MIGUConfig(threshold=threshold, cluster=ClusterConfig(**cluster))


def _backward(model, batch) -> None:
    model(**batch).last_hidden_state.pow(2).sum().backward()


# ---------------------------------------------------------------------------- config
def test_cluster_config_validation_names_the_field() -> None:
    for kwargs, field in [
        ({"strategy": "rows"}, "strategy"),
        ({"partial": "some"}, "partial"),
        ({"when": "always"}, "when"),
        ({"n_clusters": 0}, "n_clusters"),
        ({"n_clusters": 1.5}, "n_clusters"),
        ({"n_clusters": 0.0}, "n_clusters"),
        ({"n_clusters": True}, "n_clusters"),
        ({"balanced": 1}, "balanced"),
        ({"seed": -1}, "seed"),
        ({"n_init": 0}, "n_init"),
        ({"samples": 0}, "samples"),
    ]:
        with pytest.raises(ValueError, match=f"ClusterConfig.{field}"):
            ClusterConfig(**kwargs)
    with pytest.raises(ValueError, match="unknown MIGU cluster config key"):
        MIGUConfig.from_dict({"cluster": {"k": 3}})


def test_migu_config_takes_a_nested_mapping_and_round_trips() -> None:
    cfg = MIGUConfig.from_dict({"threshold": 0.6, "cluster": {"strategy": "comagnitude", "n_clusters": 4}})
    assert cfg.cluster == ClusterConfig(strategy="comagnitude", n_clusters=4)
    data = cfg.to_dict()
    assert data["cluster"]["strategy"] == "comagnitude" and data["cluster"]["partial"] == "fill"
    assert MIGUConfig.from_dict(data) == cfg
    assert MIGUConfig(cluster={"partial": "drop"}).cluster == ClusterConfig(partial="drop")
    assert MIGUConfig().to_dict()["cluster"] is None


def test_cluster_refuses_sparse_backward_and_the_quantile_cut() -> None:
    with pytest.raises(ValueError, match="sparse_backward"):
        MIGUConfig(cluster=ClusterConfig(), sparse_backward=True)
    with pytest.raises(ValueError, match="cut='topk'"):
        MIGUConfig(preset="official", cluster=ClusterConfig())
    assert MIGUConfig(preset="official", cut="topk", cluster=ClusterConfig()).cluster is not None


def test_n_clusters_above_d_out_fails_at_attach_naming_the_target(tiny_model) -> None:
    model = tiny_model("bert")  # d_out 16 (attention, FFN output) and 24 (FFN intermediate)
    with pytest.raises(ValueError, match=r"n_clusters=20 exceeds the 16 rows of target 'encoder\.layer\.0"):
        migu.attach(model, _cfg(n_clusters=20))
    assert ClusterConfig(n_clusters=0.25).clusters_for(24) == 6
    assert ClusterConfig(n_clusters=0.0625).clusters_for(8) == 1  # round half up, at least 1
    assert ClusterConfig(n_clusters=1.0).clusters_for(24) == 24


# ---------------------------------------------------------------------------- the cut
def _random_assign(n: int, d: int, c: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, c, (n, d), generator=g)


@pytest.mark.parametrize("partial", PARTIAL)
@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.7, 0.95])
def test_cluster_cut_matches_the_python_reference(partial: str, threshold: float) -> None:
    g = torch.Generator().manual_seed(1)
    for d, c in [(10, 3), (24, 6), (37, 5), (16, 16), (16, 1)]:
        stats = torch.randint(0, 5, (6, d), generator=g).float()  # exact ties in rows and clusters
        assign = _random_assign(6, d, c, seed=d + c)
        keep, drop = cluster_split(stats, ClusterLayout.build(assign), threshold, partial)
        for row in range(6):
            ref = ref_cluster_keep(stats[row], assign[row], threshold, partial)
            assert torch.equal(keep[row], ref), (d, c, row)
        k = d - expected_masked(threshold, d)
        counts = keep.sum(1)
        if partial == "fill":
            assert bool((counts == k).all())
        elif partial == "drop":
            assert bool((counts <= k).all())
        else:
            assert bool((counts >= k).all())
        if drop is not None:  # fixed count: the masked rows as indices (strict mode uses them)
            assert partial == "fill" and drop.shape == (6, d - k)
            for row in range(6):
                assert sorted(drop[row].tolist()) == (~keep[row]).nonzero().flatten().tolist()


@pytest.mark.parametrize("partial", PARTIAL)
def test_whole_clusters_are_kept_or_masked_except_the_partial_one(partial: str) -> None:
    g = torch.Generator().manual_seed(3)
    stats = torch.rand(8, 48, generator=g)
    assign = _random_assign(8, 48, 7, seed=5)
    keep, _ = cluster_split(stats, ClusterLayout.build(assign), 0.6, partial)
    for row in range(8):
        mixed = [
            c
            for c in range(7)
            if (assign[row] == c).any() and keep[row][assign[row] == c].unique().numel() > 1
        ]
        assert len(mixed) <= (1 if partial == "fill" else 0), (row, mixed)
        for c in mixed:  # the partial cluster gives its best rows
            rows = (assign[row] == c).nonzero().flatten()
            kept, masked = stats[row, rows][keep[row, rows]], stats[row, rows][~keep[row, rows]]
            assert float(kept.min()) >= float(masked.max())


@pytest.mark.parametrize("partial", PARTIAL)
def test_one_row_per_cluster_is_plain_migu(partial: str) -> None:
    g = torch.Generator().manual_seed(0)
    stats = torch.randint(0, 4, (5, 30), generator=g).float()  # heavy ties: the tie rule must agree
    identity = torch.arange(30).expand(5, 30)
    for threshold in (0.1, 0.5, 0.7, 0.9):
        keep, _ = cluster_split(stats, ClusterLayout.build(identity), threshold, partial)
        assert torch.equal(keep, make_keep_masks(stats, threshold)), (partial, threshold)


@pytest.mark.parametrize("threshold", [0.3, 0.7])
def test_one_cluster_updates_every_row_or_none(threshold: float) -> None:
    stats = torch.rand(4, 20, generator=torch.Generator().manual_seed(2))
    layout = ClusterLayout.build(torch.zeros(4, 20, dtype=torch.long))
    assert not cluster_split(stats, layout, threshold, "drop")[0].any()  # the one cluster does not fit
    assert cluster_split(stats, layout, threshold, "whole")[0].all()  # the one cluster is kept whole
    fill = cluster_split(stats, layout, threshold, "fill")[0]
    assert torch.equal(fill, make_keep_masks(stats, threshold))  # its best rows: plain MIGU


def test_equal_cluster_scores_break_to_the_lower_cluster_id() -> None:
    stats = torch.tensor([[1.0, 3.0, 2.0, 2.0, 1.0, 3.0]])  # clusters 0, 1, 2: all mean 2
    assign = torch.tensor([[2, 2, 1, 1, 0, 0]])
    keep, _ = cluster_split(stats, ClusterLayout.build(assign), 0.5, "fill")  # k = 3
    assert keep[0].nonzero().flatten().tolist() == [
        2,
        4,
        5,
    ]  # cluster 0 (rows 4, 5), then cluster 1's first row


def test_cluster_layout_pads_each_cluster_and_counts_unused_ids() -> None:
    assign = torch.tensor([[0, 2, 0, 2, 2]])  # id 1 is unused
    layout = ClusterLayout.build(assign)
    assert layout.sizes.tolist() == [[2, 0, 3]]
    assert layout.slots[0].tolist() == [[0, 2, 5], [5, 5, 5], [1, 3, 4]]  # 5 = the zero pad column


# ---------------------------------------------------------------------------- the masker
def _clusters_for(masker: migu.Masker, n_per_target: int, seed: int = 0) -> dict[str, torch.Tensor]:
    return {
        t.name: _random_assign(1, t.d_out, n_per_target, seed + i)[0] for i, t in enumerate(masker.targets)
    }


def test_apply_with_clusters_masks_per_cluster_and_unclustered_targets_stay_plain(
    tiny_model, make_batch
) -> None:
    model = randomize_biases(tiny_model("bert"))
    masker = migu.attach(model, _cfg(0.6, partial="drop"))
    clusters = _clusters_for(masker, 4)
    plain_name = masker.targets[0].name
    del clusters[plain_name]  # one target of the width-16 group keeps the plain cut
    masker.set_clusters(clusters)
    assert set(masker.clusters) == set(clusters)
    _backward(model, make_batch(3, 6, lengths=[6, 4, 2]))
    stats = masker.statistics()
    grads = {t.name: t.weight.grad.clone() for t in masker.targets}
    masks = masker.apply()
    for t in masker.targets:
        keep = masks[t.name]
        if t.name == plain_name:
            assert torch.equal(keep, ref_keep(stats[t.name].double(), 0.6))
        else:
            assert torch.equal(keep, ref_cluster_keep(stats[t.name], clusters[t.name], 0.6, "drop")), t.name
        assert torch.all(t.weight.grad[~keep] == 0) and torch.all(grads[t.name][~keep] != 0)
        assert torch.equal(t.weight.grad[keep], grads[t.name][keep])
        assert torch.all(t.bias.grad[~keep] == 0)  # mask_bias (paper preset)


def test_clusters_of_one_row_give_plain_migu_masks_in_the_masker(tiny_model, make_batch) -> None:
    model = tiny_model("bert")
    batch = make_batch(2, 6, lengths=[6, 3])
    plain = migu.attach(model, MIGUConfig(threshold=0.7))
    _backward(model, batch)
    expected = {k: v.clone() for k, v in plain.apply().items()}
    plain.detach()
    model.zero_grad()
    for partial in PARTIAL:
        masker = migu.attach(model, _cfg(0.7, partial=partial, n_clusters=1.0))
        masker.set_clusters(weight_clusters(masker, 1.0))  # d_out clusters: every row alone
        _backward(model, batch)
        masks = masker.apply()
        assert masks.keys() == expected.keys()
        assert all(torch.equal(masks[n], expected[n]) for n in expected), partial
        masker.detach()
        model.zero_grad()


def test_gradient_accumulation_cuts_clusters_from_the_accumulated_statistic(tiny_model, make_batch) -> None:
    model = tiny_model("bert")
    masker = migu.attach(model, _cfg(0.5, partial="fill"))
    clusters = _clusters_for(masker, 5, seed=9)
    masker.set_clusters(clusters)
    for seed in (1, 2, 3):  # three micro-batches, one optimizer step
        _backward(model, make_batch(2, 5, lengths=[5, 2 + seed % 3], seed=seed))
    stats = masker.statistics()
    masks = masker.apply()
    for name, keep in masks.items():
        assert torch.equal(keep, ref_cluster_keep(stats[name], clusters[name], 0.5, "fill")), name


def test_set_clusters_checks_its_input(tiny_model) -> None:
    model = tiny_model("bert")
    masker = migu.attach(model, _cfg())
    t = masker.targets[0]
    with pytest.raises(ValueError, match="unknown target"):
        masker.set_clusters({"nope": torch.zeros(4, dtype=torch.long)})
    with pytest.raises(ValueError, match="shape"):
        masker.set_clusters({t.name: torch.zeros(t.d_out + 1, dtype=torch.long)})
    with pytest.raises(ValueError, match="in \\[0, 16\\)"):
        masker.set_clusters({t.name: torch.full((t.d_out,), 16)})
    with pytest.raises(ValueError, match="integer"):
        masker.set_clusters({t.name: torch.zeros(t.d_out)})
    plain = migu.attach(tiny_model("bert"), MIGUConfig())
    with pytest.raises(ValueError, match=r"MIGUConfig\(cluster=\.\.\.\)"):
        plain.set_clusters({t.name: torch.zeros(t.d_out, dtype=torch.long)})
    masker.set_clusters({t.name: torch.zeros(t.d_out, dtype=torch.int32)})
    assert masker.clusters[t.name].dtype == torch.long
    masker.set_clusters({})
    assert masker.clusters == {}


@pytest.mark.parametrize("partial", PARTIAL)
def test_strict_mode_keeps_masked_clusters_bit_identical(tiny_model, make_batch, partial: str) -> None:
    model = randomize_biases(tiny_model("bert"))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    masker = migu.attach(model, MIGUConfig(threshold=0.5, mode="strict", cluster={"partial": partial}), opt)
    clusters = _clusters_for(masker, 4, seed=3)
    masker.set_clusters(clusters)
    for step in range(3):
        opt.zero_grad()
        _backward(model, make_batch(3, 6, lengths=[6, 5 - step, 3], seed=50 + step))
        before = {t.name: (t.weight.detach().clone(), t.bias.detach().clone()) for t in masker.targets}
        masks = {k: v.clone() for k, v in masker.apply().items()}
        opt.step()
        for t in masker.targets:
            keep, ids = masks[t.name], clusters[t.name]
            w0, b0 = before[t.name]
            assert torch.equal(t.weight.detach()[~keep], w0[~keep]), (step, t.name)
            assert torch.equal(t.bias.detach()[~keep], b0[~keep]), (step, t.name)
            assert bool((t.weight.detach()[keep] != w0[keep]).any(dim=1).all())
            if partial != "fill":  # whole clusters only
                for c in ids.unique():
                    assert keep[ids == c].unique().numel() == 1, (t.name, int(c))


# ---------------------------------------------------------------------------- clustering
def test_balanced_clusters_differ_in_size_by_at_most_one() -> None:
    g = torch.Generator().manual_seed(0)
    for d, k in [(10, 4), (16, 3), (24, 24), (24, 1), (37, 5), (64, 8), (100, 7)]:
        rows = torch.randn(d, 6, generator=g) * torch.rand(d, 1, generator=g) * 3  # uneven density
        ids = cluster_rows(rows, k, seed=0, n_init=2, balanced=True)
        sizes = torch.bincount(ids, minlength=k)
        assert sizes.numel() == k and int(sizes.sum()) == d
        assert set(sizes.tolist()) <= {d // k, -(-d // k)}, (d, k, sizes.tolist())
        assert int((sizes == -(-d // k)).sum()) == (d % k if d % k else k)


def test_balanced_assignment_recovers_separated_equal_blobs() -> None:
    g = torch.Generator().manual_seed(1)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    truth = torch.arange(4).repeat_interleave(6)[torch.randperm(24, generator=g)]  # 6 rows per blob
    rows = centres[truth] + 0.3 * torch.randn(24, 2, generator=g)
    ids = cluster_rows(rows, 4, seed=0, n_init=1, balanced=True)
    pairs = set(zip(truth.tolist(), ids.tolist(), strict=True))
    assert len(pairs) == 4  # a one-to-one relabelling of the blobs
    ids_np = balanced_assign(rows.double().numpy(), centres.double().numpy())
    assert ids_np.tolist() == truth.tolist()


def test_balanced_assignment_is_optimal_for_two_clusters_and_never_worse_than_greedy() -> None:
    g = np.random.default_rng(0)
    for trial in range(20):
        d = 10 + trial % 3
        rows, centroids = g.standard_normal((d, 3)), g.standard_normal((2, 3))
        dist = ((rows[:, None, :] - centroids[None]) ** 2).sum(-1)  # [d, 2]
        ids = balanced_assign(rows, centroids)
        assert sorted(np.bincount(ids, minlength=2).tolist()) == sorted([d // 2, d - d // 2])
        # Two clusters: the best is the rows that lose most by leaving cluster 0, in cluster 0.
        cost = dist[np.arange(d), ids].sum()
        n0 = int((ids == 0).sum())
        best = dist[:, 1].sum() - np.sort(dist[:, 1] - dist[:, 0])[::-1][:n0].sum()
        assert cost == pytest.approx(best, rel=1e-12), trial
    for _ in range(5):
        rows, centroids = g.standard_normal((60, 4)), g.standard_normal((7, 4))
        dist = ((rows[:, None, :] - centroids[None]) ** 2).sum(-1)
        greedy = greedy_assign(dist)
        ids = balanced_assign(rows, centroids)
        assert dist[np.arange(60), ids].sum() <= dist[np.arange(60), greedy].sum() + 1e-9


def test_cluster_ids_are_canonical_and_seeded() -> None:
    rows = torch.randn(40, 5, generator=torch.Generator().manual_seed(4))
    a = cluster_rows(rows, 6, seed=3, n_init=2, balanced=False)
    assert torch.equal(a, cluster_rows(rows, 6, seed=3, n_init=2, balanced=False))
    first = [int((a == c).nonzero()[0]) for c in range(int(a.max()) + 1)]
    assert first == sorted(first) and a[0] == 0  # clusters numbered by their lowest row
    assert torch.equal(cluster_rows(rows, 40), torch.arange(40))


def test_weight_clusters_cluster_the_rows_of_each_weight(tiny_model) -> None:
    model = tiny_model("gpt2")  # Conv1D: output rows are the weight's columns
    masker = migu.attach(model, _cfg())
    clusters = weight_clusters(masker, 4, seed=1, n_init=1, balanced=False)
    assert set(clusters) == {t.name for t in masker.targets}
    for t in masker.targets:
        assert torch.equal(clusters[t.name], cluster_rows(rows_of(t.weight, t.row_dim), 4, 1, 1, False))
        assert clusters[t.name].shape == (t.d_out,)


R, ALPHA = 4, 8


def _lora_bert(tiny_model):
    base = randomize_biases(tiny_model("bert"))
    cfg = LoraConfig(
        r=R, lora_alpha=ALPHA, target_modules=["query", "value"], lora_dropout=0.0, init_lora_weights=False
    )
    return get_peft_model(base, cfg)


def test_weight_clusters_on_lora_use_the_effective_weight(tiny_model) -> None:
    model = _lora_bert(tiny_model)
    modules = dict(model.named_modules())
    masker = migu.attach(model, _cfg())
    clusters = weight_clusters(masker, 4, seed=0, n_init=2, balanced=True)
    names = {t.name for t in masker.targets if t.weight.requires_grad}
    assert set(clusters) == names and all(".lora_" in n for n in names)  # W0 is frozen: not clustered
    for t in masker.targets:
        if not t.weight.requires_grad:
            continue
        layer, factor, adapter = t.name.rsplit(".", 2)
        lora = modules[layer]
        a = lora.lora_A[adapter].weight.detach().double()  # [r, d_in]
        b = lora.lora_B[adapter].weight.detach().double()  # [d_out, r]
        if factor == "lora_B":
            w0 = lora.base_layer.weight.detach().double()
            expected = torch.empty(b.shape[0], w0.shape[1], dtype=torch.float64)
            for i in range(b.shape[0]):  # row i of W0 + s B A, by explicit sums over r
                expected[i] = w0[i] + (ALPHA / R) * sum(b[i, j] * a[j] for j in range(R))
            assert not torch.allclose(expected, w0)  # non-vacuous: B A changes the rows
        else:
            expected = a
        assert torch.allclose(target_rows(t), expected, rtol=1e-12, atol=1e-12), t.name
        assert torch.equal(clusters[t.name], cluster_rows(expected, 4, 0, 2, True)), t.name


def test_comagnitude_profile_equals_the_loop_reference(tiny_model, make_batch) -> None:
    model = randomize_biases(tiny_model("bert"))
    model.train()
    masker = migu.attach(model, _cfg(strategy="comagnitude"))
    names = ["encoder.layer.0.attention.self.query", "encoder.layer.1.intermediate.dense"]
    batches = [make_batch(3, 6, lengths=[6, 4, 2], seed=1), make_batch(3, 5, lengths=[5, 5, 1], seed=2)]
    modules = dict(model.named_modules())
    with capture_inputs(model, names) as xs:
        profiles = comagnitude_profiles(masker, iter(batches), lambda b: model(**b), samples=5)
    assert model.training  # eval mode only while profiling
    assert masker.statistics() == {} or all(float(v.abs().sum()) == 0 for v in masker.statistics().values())
    assert set(profiles) == {t.name for t in masker.targets}
    for n in names:
        rows = rows_of(modules[n].weight)
        ref = torch.cat(
            [ref_example_stats(rows, x, b["attention_mask"]) for x, b in zip(xs[n], batches, strict=True)]
        )
        assert profiles[n].shape == (rows.shape[0], 5)  # 3 + 2 of the second batch's 3 examples
        assert torch.allclose(profiles[n].double(), ref[:5].t(), rtol=1e-5, atol=1e-7), n
        # Non-vacuous: padding tokens or the bias in the magnitude would change the profile.
        assert not torch.allclose(
            profiles[n].double()[:, :3], ref_example_stats(rows, xs[n][0], None).t(), rtol=1e-3
        )
        biased = ref_example_stats(rows, xs[n][0], batches[0]["attention_mask"], bias=modules[n].bias)
        assert not torch.allclose(profiles[n].double()[:, :3], biased.t(), rtol=1e-3)


def test_comagnitude_clusters_group_rows_with_the_same_profile() -> None:
    g = torch.Generator().manual_seed(0)
    base = torch.rand(3, 12, generator=g)  # three distinct profiles over 12 examples
    truth = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2])
    profiles = {"layer": base[truth] + 0.01 * torch.rand(9, 12, generator=g)}
    ids = comagnitude_clusters(profiles, 3, seed=0, n_init=1, balanced=True)["layer"]
    assert ids.tolist() == truth.tolist()  # canonical ids: the cluster of row 0 is 0, ...


def test_per_example_leaves_the_training_statistic_alone(tiny_model, make_batch) -> None:
    model = tiny_model("bert")
    masker = migu.attach(model, _cfg(strategy="comagnitude"))
    _backward(model, make_batch(2, 5, seed=1))
    before = masker.statistics()
    with torch.no_grad(), masker.per_example() as record:
        model(**make_batch(4, 5, seed=2))
    assert all(len(v) == 1 and v[0].shape[0] == 4 for v in record.values())
    after = masker.statistics()
    assert all(torch.equal(before[n], after[n]) for n in before)
