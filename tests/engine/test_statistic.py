"""The magnitude statistic (issue 2, points 1, 7, 10) against a float64 reference from captured inputs.

Paper preset: per token n_i = |w_i . x| / sum_j |w_j . x| (bias left out), averaged over real
tokens only; T5 decoder tokens are real by decoder_attention_mask or labels != -100, T5
cross-attention K/V read encoder tokens; a 2-D input averages over the batch; micro-batches
accumulate (fp32) until apply() resets.
"""

from __future__ import annotations

import re

import pytest
import torch
from support.engine_reference import (
    assert_keep_matches,
    capture_inputs,
    randomize_biases,
    ref_stat,
    rows_of,
)

import migu

RTOL = 1e-4


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = RTOL) -> bool:
    return torch.allclose(a.double(), b.double(), rtol=rtol, atol=rtol * float(b.abs().max()))


def _module(model: torch.nn.Module, name: str) -> torch.nn.Module:
    return dict(model.named_modules())[name]


def test_bert_statistic_excludes_bias_and_padding(tiny_model, make_batch) -> None:
    model = randomize_biases(tiny_model("bert"))
    masker = migu.attach(model, migu.MIGUConfig(threshold=0.5))
    names = [t.name for t in masker.targets]
    assert len(names) == 12
    batch = make_batch(3, 6, lengths=[6, 4, 2])
    with capture_inputs(model, names) as xs:
        out = model(**batch)
    out.last_hidden_state.pow(2).mean().backward()
    stats = masker.statistics()
    mask = batch["attention_mask"]
    for name in names:
        lin = _module(model, name)
        assert lin.bias is not None  # BERT linears have biases: leaving them out must matter
        rows = rows_of(lin.weight)
        ref = ref_stat(rows, xs[name], [mask])
        assert stats[name].dtype == torch.float32
        assert _close(stats[name], ref), name
        # The test discriminates: including padding or the bias gives a different statistic.
        assert not _close(ref_stat(rows, xs[name], None), ref, rtol=1e-3)
        assert not _close(ref_stat(rows, xs[name], [mask], bias=lin.bias), ref, rtol=1e-3)
    masks = masker.apply()
    for name in names:
        assert_keep_matches(
            masks[name], ref_stat(rows_of(_module(model, name).weight), xs[name], [mask]), 0.5
        )


def test_gpt2_conv1d_statistic_uses_transposed_weight(tiny_model, make_batch) -> None:
    model = randomize_biases(tiny_model("gpt2"))
    masker = migu.attach(model, migu.MIGUConfig(threshold=0.25))
    names = [t.name for t in masker.targets]
    assert {n.split(".", 2)[-1] for n in names} == {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"}
    batch = make_batch(2, 7, lengths=[7, 3])
    with capture_inputs(model, names) as xs:
        out = model(**batch)
    out.last_hidden_state.sum().backward()
    stats = masker.statistics()
    for name in names:
        conv = _module(model, name)
        rows = rows_of(conv.weight, row_dim=1)  # Conv1D weight is [d_in, d_out]
        assert stats[name].shape == (conv.weight.shape[1],)
        ref = ref_stat(rows, xs[name], [batch["attention_mask"]])
        assert _close(stats[name], ref), name
        assert not _close(ref_stat(rows, xs[name], [batch["attention_mask"]], bias=conv.bias), ref, rtol=1e-3)
    masks = masker.apply()
    for name in names:
        conv = _module(model, name)
        ref = ref_stat(rows_of(conv.weight, 1), xs[name], [batch["attention_mask"]])
        assert_keep_matches(masks[name], ref, 0.25)
        # Conv1D rows are columns of the weight: masked output units have zero gradient columns.
        assert torch.equal(
            conv.weight.grad[:, ~masks[name]], torch.zeros_like(conv.weight.grad[:, ~masks[name]])
        )


_CROSS_KV = re.compile(r"EncDecAttention\.[kv]$")


def _t5_token_mask(name: str, enc: torch.Tensor, dec: torch.Tensor) -> torch.Tensor:
    """Which tokens a T5 linear reads: encoder ones (incl. cross-attention K/V) or decoder ones."""
    if name.startswith("encoder.") or _CROSS_KV.search(name):
        return enc
    assert name.startswith("decoder.")
    return dec


def _t5_batch(s_enc: int, s_dec: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2, 60, (3, s_enc), generator=g)
    enc = torch.ones(3, s_enc, dtype=torch.long)
    enc[0, s_enc - 2 :] = 0
    enc[2, 2:] = 0
    labels = torch.randint(2, 60, (3, s_dec), generator=g)
    dec = torch.ones(3, s_dec, dtype=torch.long)
    dec[1, 1:] = 0  # decoder padding differs from the encoder's
    dec[2, s_dec - 1 :] = 0
    labels = labels.masked_fill(dec == 0, -100)
    return {"input_ids": ids.masked_fill(enc == 0, 0), "attention_mask": enc, "labels": labels}, dec


def _check_t5(model, masker, batch, dec_mask) -> None:
    names = [t.name for t in masker.targets]
    assert any(_CROSS_KV.search(n) for n in names)
    with capture_inputs(model, names) as xs:
        model(**batch).loss.backward()
    stats = masker.statistics()
    enc = batch["attention_mask"]
    for name in names:
        rows = rows_of(_module(model, name).weight)
        ref = ref_stat(rows, xs[name], [_t5_token_mask(name, enc, dec_mask)])
        assert _close(stats[name], ref), name
    # Non-vacuous: the decoder mask matters for some decoder target.
    dec_names = [n for n in names if n.startswith("decoder.") and not _CROSS_KV.search(n)]
    assert any(
        not _close(ref_stat(rows_of(_module(model, n).weight), xs[n], None), stats[n], rtol=1e-3)
        for n in dec_names
    )


@pytest.mark.parametrize(("s_enc", "s_dec"), [(7, 5), (6, 6)])
def test_t5_decoder_tokens_from_labels_and_cross_kv_from_encoder_mask(tiny_model, s_enc, s_dec) -> None:
    model = tiny_model("t5", head="seq2seq-lm")
    masker = migu.attach(model, migu.MIGUConfig(threshold=0.5))
    batch, dec = _t5_batch(s_enc, s_dec)
    _check_t5(model, masker, batch, dec)


def test_t5_decoder_attention_mask_is_used(tiny_model) -> None:
    model = tiny_model("t5", head="seq2seq-lm")
    masker = migu.attach(model, migu.MIGUConfig(threshold=0.5))
    batch, _ = _t5_batch(7, 5)
    dec = torch.ones(3, 5, dtype=torch.long)
    dec[0, 3:] = 0
    labels = batch["labels"].clone()
    labels[labels == -100] = 5  # labels say every position is real: the explicit mask must win
    batch = {**batch, "labels": labels, "decoder_attention_mask": dec}
    _check_t5(model, masker, batch, dec)


@pytest.mark.parametrize("s_dec", [5, 7])
def test_t5_collator_style_batch_with_decoder_input_ids(tiny_model, s_dec) -> None:
    """DataCollatorForSeq2Seq passes decoder_input_ids next to labels: labels != -100 still decide."""
    model = tiny_model("t5", head="seq2seq-lm")
    masker = migu.attach(model, migu.MIGUConfig(threshold=0.5))
    batch, dec = _t5_batch(7, s_dec)
    batch["decoder_input_ids"] = model.prepare_decoder_input_ids_from_labels(labels=batch["labels"])
    _check_t5(model, masker, batch, dec)


@pytest.mark.parametrize(("s_enc", "s_dec"), [(7, 5), (6, 6), (4, 6)])
def test_t5_lm_head_reads_the_decoder_tokens(tiny_model, s_enc, s_dec) -> None:
    """Issue 11.8: with targets="all-linear" the LM head (outside both stacks) averages over the
    decoder's real tokens, never the encoder mask (equal lengths) or every position (unequal)."""
    model = tiny_model("t5", head="seq2seq-lm")
    masker = migu.attach(model, migu.MIGUConfig(threshold=0.5, targets="all-linear"))
    assert "lm_head" in [t.name for t in masker.targets]
    batch, dec = _t5_batch(s_enc, s_dec)
    with capture_inputs(model, ["lm_head"]) as xs:
        model(**batch).loss.backward()
    rows = rows_of(model.lm_head.weight)
    ref = ref_stat(rows, xs["lm_head"], [dec])
    assert _close(masker.statistics()["lm_head"], ref)
    # Non-vacuous: the decoder's padding changes the lm_head statistic.
    assert not _close(ref_stat(rows, xs["lm_head"], None), ref, rtol=1e-3)


def test_streams_follow_the_encoder_subtree_not_names(tiny_model) -> None:
    """Every target outside the encoder of an encoder-decoder reads the decoder stream, except the
    cross-attention K/V; decoder-only and encoder-only models read the main stream only."""
    cfg = migu.MIGUConfig(threshold=0.5, targets="all-linear")
    t5 = migu.attach(tiny_model("t5", head="seq2seq-lm"), cfg)
    for t in t5.targets:
        expected = "main" if t.name.startswith("encoder.") or _CROSS_KV.search(t.name) else "decoder"
        assert t.stream == expected, t.name
    for kind, head in (("llama", "causal-lm"), ("bert", "masked-lm")):
        masker = migu.attach(tiny_model(kind, head=head), cfg)
        assert {t.stream for t in masker.targets} == {"main"}, kind


def test_two_dim_input_averages_over_batch(tiny_model, make_batch) -> None:
    """BERT's pooler reads [B, H] (no token axis): every batch row counts once."""
    model = tiny_model("bert")
    masker = migu.attach(model, migu.MIGUConfig(threshold=0.5, targets=["pooler.dense"]))
    assert [t.name for t in masker.targets] == ["pooler.dense"]
    batch = make_batch(4, 6, lengths=[6, 1, 3, 2])
    with capture_inputs(model, ["pooler.dense"]) as xs:
        model(**batch).pooler_output.sum().backward()
    assert xs["pooler.dense"][0].shape == (4, 16)
    ref = ref_stat(rows_of(model.pooler.dense.weight), xs["pooler.dense"], None)
    assert _close(masker.statistics()["pooler.dense"], ref)
    assert_keep_matches(masker.apply()["pooler.dense"], ref, 0.5)


def test_micro_batches_accumulate_into_one_mask_and_apply_resets(tiny_model, make_batch) -> None:
    model = randomize_biases(tiny_model("bert"))
    masker = migu.attach(model, migu.MIGUConfig(threshold=0.6))
    names = [t.name for t in masker.targets]
    mb1 = make_batch(2, 6, lengths=[6, 3], seed=1)
    mb2 = make_batch(3, 4, lengths=[4, 2, 1], seed=2)
    with capture_inputs(model, names) as xs:
        for mb in (mb1, mb2):
            model(**mb).last_hidden_state.pow(2).sum().backward()  # gradients accumulate too
    masks_arg = [mb1["attention_mask"], mb2["attention_mask"]]
    stats = masker.statistics()
    refs = {}
    for name in names:
        rows = rows_of(_module(model, name).weight)
        refs[name] = ref_stat(rows, xs[name], masks_arg)  # one mean over the 16 real tokens
        assert _close(stats[name], refs[name]), name
        mean_of_means = (
            ref_stat(rows, xs[name][:1], masks_arg[:1]) + ref_stat(rows, xs[name][1:], masks_arg[1:])
        ) / 2
        assert not _close(mean_of_means, refs[name], rtol=1e-3)
    grads = {n: _module(model, n).weight.grad.clone() for n in names}
    masks = masker.apply()
    for name in names:
        assert_keep_matches(masks[name], refs[name], 0.6)
        g = _module(model, name).weight.grad
        assert torch.equal(g[masks[name]], grads[name][masks[name]])
        assert torch.all(g[~masks[name]] == 0)
    # apply() resets: the next step sees only its own tokens.
    assert all(torch.all(s == 0) for s in masker.statistics().values())
    model.zero_grad()
    mb3 = make_batch(2, 5, lengths=[2, 5], seed=3)
    with capture_inputs(model, names) as xs3:
        model(**mb3).last_hidden_state.sum().backward()
    stats = masker.statistics()
    for name in names:
        ref = ref_stat(rows_of(_module(model, name).weight), xs3[name], [mb3["attention_mask"]])
        assert _close(stats[name], ref), name


def test_bf16_model_accumulates_in_fp32(tiny_model, make_batch) -> None:
    model = tiny_model("llama").to(torch.bfloat16)
    model32 = tiny_model("llama").to(torch.bfloat16).float()  # identical weights, fp32 compute
    masker = migu.attach(model, migu.MIGUConfig(threshold=0.5))
    masker32 = migu.attach(model32, migu.MIGUConfig(threshold=0.5))
    names = [t.name for t in masker.targets]
    batches = [make_batch(2, 6, lengths=[6, 4], seed=s) for s in range(6)]
    with capture_inputs(model, names) as xs:
        for b in batches:
            model(**b).last_hidden_state.float().pow(2).mean().backward()
            model32(**b).last_hidden_state.pow(2).mean().backward()
    assert masker._flat is not None and masker._flat.dtype == torch.float32
    stats, stats32 = masker.statistics(), masker32.statistics()
    for name in names:
        assert stats[name].dtype == torch.float32
        ref = ref_stat(rows_of(_module(model, name).weight), xs[name], [b["attention_mask"] for b in batches])
        assert _close(stats[name], ref, rtol=1e-2), name
        assert _close(stats[name], stats32[name], rtol=5e-2), name
    masks = masker.apply()
    for name in names:
        g = _module(model, name).weight.grad
        assert g.dtype == torch.bfloat16
        assert torch.all(g[~masks[name]] == 0) and int(masks[name].sum()) == masks[name].numel() // 2


def test_t5_inside_a_data_parallel_wrapper_still_uses_labels(tiny_model) -> None:
    """attach() to a wrapper (DataParallel/DDP keep the model in .module): same decoder tokens."""
    inner = tiny_model("t5", head="seq2seq-lm")
    wrapped = torch.nn.DataParallel(inner)  # on CPU it just calls .module
    masker = migu.attach(wrapped, migu.MIGUConfig(threshold=0.5))
    batch, dec = _t5_batch(7, 5)
    names = [t.name for t in masker.targets]
    assert all(n.startswith("module.") for n in names)
    with capture_inputs(wrapped, names) as xs:
        wrapped(**batch).loss.backward()
    stats = masker.statistics()
    for name in names:
        rows = rows_of(_module(wrapped, name).weight)
        ref = ref_stat(
            rows, xs[name], [_t5_token_mask(name.removeprefix("module."), batch["attention_mask"], dec)]
        )
        assert _close(stats[name], ref), name


def test_decoder_only_model_with_decoder_in_names_uses_attention_mask(make_batch) -> None:
    """OPT names its blocks model.decoder.layers.N: its tokens are the attention_mask's."""
    import transformers

    cfg = transformers.AutoConfig.for_model(
        "opt", vocab_size=64, hidden_size=16, ffn_dim=24, num_hidden_layers=1, num_attention_heads=2,
        word_embed_proj_dim=16, max_position_embeddings=32, dropout=0.0, attention_dropout=0.0,
    )  # fmt: skip
    model = transformers.AutoModel.from_config(cfg)
    masker = migu.attach(model, migu.MIGUConfig(threshold=0.5))
    names = [t.name for t in masker.targets]
    assert len(names) == 6 and all(n.startswith("decoder.layers.0.") for n in names)
    batch = make_batch(2, 6, lengths=[6, 3], pad_id=1)
    with capture_inputs(model, names) as xs:
        model(**batch).last_hidden_state.sum().backward()
    stats = masker.statistics()
    for name in names:
        ref = ref_stat(rows_of(_module(model, name).weight), xs[name], [batch["attention_mask"]])
        assert _close(stats[name], ref), name


@pytest.mark.parametrize("chunk_bytes", [1, 700])  # one token per chunk; a few tokens, ragged tail
@pytest.mark.parametrize("sparse", [False, True])  # into the flat buffer directly; via a per-forward sum
def test_chunked_statistic_matches_reference(
    tiny_model, make_batch, monkeypatch, chunk_bytes, sparse
) -> None:
    """Outputs larger than the chunk budget are read in token chunks: same statistic, also accumulated."""
    import migu.engine.masker as masker_module

    monkeypatch.setattr(masker_module, "_CHUNK_BYTES_CPU", chunk_bytes)
    model = randomize_biases(tiny_model("bert"))
    masker = migu.attach(model, migu.MIGUConfig(threshold=0.5, sparse_backward=sparse))
    names = [t.name for t in masker.targets]
    batches = [make_batch(3, 6, lengths=[6, 4, 2], seed=0), make_batch(2, 5, lengths=[5, 1], seed=1)]
    captured = []
    for batch in batches:  # two micro-batches before one apply(): statistics accumulate
        with capture_inputs(model, names) as xs:
            out = model(**batch)
        out.last_hidden_state.pow(2).mean().backward()
        captured.append(xs)
    stats = masker.statistics()
    for name in names:
        rows = rows_of(_module(model, name).weight)
        # Mean over the real tokens of both micro-batches, from the float64 reference sums.
        sums = [
            ref_stat(rows, xs[name], [b["attention_mask"]]) * b["attention_mask"].sum()
            for xs, b in zip(captured, batches, strict=True)
        ]
        ref = (sums[0] + sums[1]) / sum(float(b["attention_mask"].sum()) for b in batches)
        assert _close(stats[name], ref), name
