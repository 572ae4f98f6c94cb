"""The train step against PyTorch Transformers: loss and every gradient, padding and -100,
gradient accumulation, mixed precision, the non-finite guard, packing, data iteration."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tests.conftest import assert_close_rel, make_hf_model, save_hf

LLAMA = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    hf = make_hf_model("LlamaConfig", "LlamaForCausalLM", **LLAMA)
    folder = save_hf(hf, tmp_path_factory.mktemp("tiny-llama"))
    from zoo import AutoModelForCausalLM

    return hf, folder, AutoModelForCausalLM.from_pretrained(folder)


def padded_batch(seed=0, batch=4, seq=10):
    """Row 0 full, row 1 right-padded, row 2 left-padded, row 3 with extra -100 labels."""
    rng = np.random.RandomState(seed)
    ids = rng.randint(3, LLAMA["vocab_size"], (batch, seq)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, :3] = 0
    ids[mask == 0] = 0
    labels = np.where(mask == 1, ids, -100)
    # A left-padded row's first real token is predicted from a padding position, whose output
    # Transformers' own attention implementations disagree on; like any trainer, leave it out.
    labels[2, 3] = -100
    labels[3, 2:5] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def hf_loss_and_grads(hf, batch):
    import torch

    hf.zero_grad()
    out = hf(**{k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()})
    out.loss.backward()
    return out.loss.item(), {k: v.grad.numpy().copy() for k, v in hf.named_parameters()}


def as_hf_tensors(model, tree):
    from zoo.conversion import iter_hf_tensors

    cls, fam, cfg = type(model), model.family, model.config
    rules = cls.rules_for(fam, cfg, cls.param_specs_for(fam, cfg))
    return dict(iter_hf_tensors(tree, rules, num_layers=cfg.num_hidden_layers, scan_layers=cfg.scan_layers))


def mean_loss(loss_fn):
    def f(params, batch):
        total, count = loss_fn(params, batch, None)
        return total / count

    return f


def keep_gradients() -> optax.GradientTransformation:
    """An 'optimizer' that leaves params alone and stores the last gradient as its state."""
    return optax.GradientTransformation(
        lambda params: jax.tree.map(jnp.zeros_like, params),
        lambda grads, state, params=None: (jax.tree.map(jnp.zeros_like, grads), grads),
    )


def test_loss_and_every_gradient_match_transformers(tiny):
    from zoo.train import causal_lm_loss_fn, create_train_state, make_train_step

    hf, _, model = tiny
    batch = padded_batch()
    ref_loss, ref_grads = hf_loss_and_grads(hf, batch)
    state = create_train_state(model, keep_gradients())
    state, metrics = make_train_step(causal_lm_loss_fn(model), keep_gradients())(state, batch)
    assert abs(float(metrics["loss"]) - ref_loss) <= 1e-5 * abs(ref_loss)
    assert int(metrics["tokens"]) == int((batch["labels"][:, 1:] != -100).sum())
    assert int(state.step) == 1 and int(metrics["skipped"]) == 0
    ours = as_hf_tensors(model, state.opt_state)
    assert set(ours) == set(ref_grads)
    for name, g in ours.items():
        assert_close_rel(g, ref_grads[name], 1e-4), name


def test_grad_accumulation_equals_one_big_batch(tiny):
    """Microbatches with very different token counts: the loss and update are those of the
    whole batch (one mean over every kept token), not a mean of microbatch means."""
    from zoo.train import causal_lm_loss_fn, create_train_state, make_train_step

    _, _, model = tiny
    batch = padded_batch(seed=1)
    batch["labels"][0, :] = -100  # microbatch of rows 0 and 2 has far fewer tokens than rows 1, 3
    batch["labels"][2, 1:8] = -100
    opt = optax.sgd(1.0)  # linear in the gradient, so the comparison measures the gradient itself
    loss_fn = causal_lm_loss_fn(model)
    results = []
    for accum in (1, 4):
        state = create_train_state(model, opt)
        state, metrics = make_train_step(loss_fn, opt, grad_accum_steps=accum, max_grad_norm=1.0)(state, batch)
        results.append((float(metrics["loss"]), float(metrics["grad_norm"]), state.params))
    for loss, norm, params in results[1:]:
        assert abs(loss - results[0][0]) < 1e-6 * abs(results[0][0])
        assert abs(norm - results[0][1]) < 1e-5 * results[0][1]
        for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(results[0][2])):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    with pytest.raises(ValueError, match="not divisible by grad_accum_steps"):
        make_train_step(loss_fn, opt, grad_accum_steps=3)(create_train_state(model, opt), batch)


def test_mixed_precision_bf16_compute_fp32_master(tiny):
    from zoo.train import causal_lm_loss_fn, create_train_state, make_train_step

    hf, _, model = tiny
    batch = padded_batch(seed=2)
    ref_loss, ref_grads = hf_loss_and_grads(hf, batch)
    state = create_train_state(model, keep_gradients())
    step = make_train_step(causal_lm_loss_fn(model, dtype="bfloat16"), keep_gradients(), compute_dtype=jnp.bfloat16)
    state, metrics = step(state, batch)
    assert abs(float(metrics["loss"]) - ref_loss) <= 2e-2 * ref_loss
    ours = as_hf_tensors(model, state.opt_state)
    for name in ("lm_head.weight", "model.layers.1.mlp.down_proj.weight", "model.embed_tokens.weight"):
        assert_close_rel(ours[name], ref_grads[name], 5e-2), name
    leaves = jax.tree.leaves(state.params) + jax.tree.leaves(state.opt_state)
    assert all(x.dtype == jnp.float32 for x in leaves), "master weights and gradients stay fp32"


def test_non_finite_gradient_skips_the_update(tiny):
    from zoo.train import LossScale, causal_lm_loss_fn, create_train_state, make_train_step

    _, _, model = tiny
    base = causal_lm_loss_fn(model)

    def poisoned(params, batch, rng):
        total, count = base(params, batch, rng)
        return total * jnp.where(batch["poison"][0] > 0, jnp.nan, 1.0), count

    opt = optax.adamw(1e-2)
    state = create_train_state(model, opt, loss_scale=LossScale.create(2.0**10), ema=True)
    step = make_train_step(poisoned, opt, ema_decay=0.9)
    batch = padded_batch(seed=3)
    before = jax.tree.map(np.asarray, (state.params, state.opt_state, state.ema))
    state, m = step(state, {**batch, "poison": np.ones(4, np.int32)})
    assert int(m["skipped"]) == 1 and int(state.step) == 1
    assert float(state.loss_scale.scale) == 2.0**9
    after = jax.tree.map(np.asarray, (state.params, state.opt_state, state.ema))
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
        np.testing.assert_array_equal(a, b)
    state, m = step(state, {**batch, "poison": np.zeros(4, np.int32)})
    assert int(m["skipped"]) == 0 and np.isfinite(float(m["loss"]))
    changed = [not np.array_equal(a, np.asarray(b)) for a, b in zip(jax.tree.leaves(before[0]),
                                                                    jax.tree.leaves(state.params))]
    assert all(changed)


def test_sequence_classification_loss_matches_transformers(tmp_path):
    import torch

    from zoo.tasks import DecoderForSequenceClassification
    from zoo.train import sequence_classification_loss_fn

    hf = make_hf_model("LlamaConfig", "LlamaForSequenceClassification", num_labels=3, **LLAMA)
    model = DecoderForSequenceClassification.from_pretrained(save_hf(hf, tmp_path))
    batch = padded_batch(seed=4)
    ids = batch["input_ids"].copy()
    ids[2] = np.roll(ids[2], -3)  # right padding: pooled at the last non-pad token
    labels = np.array([0, 2, 1, 2])
    out = hf(torch.tensor(ids, dtype=torch.long), labels=torch.tensor(labels))
    out.loss.backward()
    loss_fn = sequence_classification_loss_fn(model)
    loss, grads = jax.value_and_grad(mean_loss(loss_fn))(model.params, {"input_ids": ids, "labels": labels})
    assert abs(float(loss) - out.loss.item()) <= 1e-5 * out.loss.item()
    assert_close_rel(np.asarray(grads["score"]["kernel"]).T, hf.score.weight.grad.numpy(), 1e-4)


def test_per_layer_remat_gives_the_same_gradients(tiny):
    from zoo import AutoModelForCausalLM
    from zoo.train import causal_lm_loss_fn

    _, folder, model = tiny
    batch = jax.tree.map(jnp.asarray, padded_batch(seed=5))
    unrolled = AutoModelForCausalLM.from_pretrained(folder, scan_layers=False)
    ref = jax.grad(mean_loss(causal_lm_loss_fn(unrolled)))(unrolled.params, batch)
    remat = type(unrolled)(unrolled.config.replace(remat_policy=("full", None)), unrolled.params)
    got = jax.grad(mean_loss(causal_lm_loss_fn(remat)))(remat.params, batch)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    scanned = type(model)(model.config.replace(remat_policy=("full", None)), model.params)
    with pytest.raises(ValueError, match="per-layer remat_policy needs scan_layers=False"):
        causal_lm_loss_fn(scanned)(scanned.params, batch, None)


def test_packing_never_crosses_documents(tiny):
    from zoo.train.data import pack_documents

    _, _, model = tiny
    rng = np.random.RandomState(6)
    docs = [rng.randint(3, 128, n) for n in (5, 3, 7, 12, 4)]
    packed = pack_documents(docs, 12)
    # In order, a document that does not fit starts a new row: [5, 3], [7, 4]? no: [7], [12], [4].
    assert packed["input_ids"].shape == (4, 12)
    np.testing.assert_array_equal(packed["segment_ids"][0], [1] * 5 + [2] * 3 + [0] * 4)
    np.testing.assert_array_equal(packed["position_ids"][0, :8], [0, 1, 2, 3, 4, 0, 1, 2])
    np.testing.assert_array_equal(packed["labels"][0], [-100, *docs[0][1:], -100, *docs[1][1:]] + [-100] * 4)
    out = model(packed["input_ids"], attention_mask=packed["attention_mask"], position_ids=packed["position_ids"],
                segment_ids=jnp.asarray(packed["segment_ids"])).logits
    where = [(0, 0), (0, 5), (1, 0), (2, 0), (3, 0)]
    for doc, (row, start) in zip(docs, where):
        alone = model(doc[None]).logits[0]
        assert_close_rel(out[row, start:start + len(doc)], alone, 1e-5)
    # Without segment_ids the second document would see the first: the check can fail.
    mixed = model(packed["input_ids"], position_ids=packed["position_ids"]).logits
    assert np.abs(np.asarray(mixed[0, 5:8]) - np.asarray(model(docs[1][None]).logits[0])).max() > 1e-3
    with pytest.raises(ValueError, match="seq_len"):
        pack_documents(docs, 1)


def test_data_files_shuffle_and_resume(tmp_path):
    from zoo.train.data import PackedBatches, load_packed, read_texts

    (tmp_path / "a.txt").write_text("one two three\n\nfour five\n")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "six seven"}) + "\n" + json.dumps({"text": "eight"}) + "\n")
    assert read_texts(tmp_path) == ["one two three", "four five", "six seven", "eight"]
    (tmp_path / "bad.jsonl").write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(ValueError, match="no field 'text'"):
        read_texts(tmp_path / "bad.jsonl")
    with pytest.raises(FileNotFoundError):
        read_texts(tmp_path / "missing.txt")

    class WordTokenizer:  # any callable returning input_ids works
        bos_token_id, eos_token_id, pad_token_id = 1, 2, 0

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [3 + len(w) for w in text.split()]}

    packed = load_packed([tmp_path / "a.txt", tmp_path / "b.jsonl"], WordTokenizer(), 6)
    assert packed["input_ids"][0].tolist() == [1, 6, 6, 8, 2, 0]
    examples = {"x": np.arange(10)}
    a = PackedBatches(examples, 3, seed=7)
    seen = [next(a)["x"].tolist() for _ in range(5)]  # crosses into the second epoch
    assert sorted(sum(seen[:3], [])) != list(range(9)) or seen[:3] != seen[3:]  # shuffled per epoch
    assert [next(PackedBatches(examples, 3, seed=7))["x"].tolist()] == seen[:1]  # same seed, same order
    b = PackedBatches(examples, 3, seed=7)
    for _ in range(2):
        next(b)
    c = PackedBatches(examples, 3, seed=7)
    c.load_state_dict(b.state_dict())
    assert [next(c)["x"].tolist() for _ in range(3)] == seen[2:5]
    halves = [next(PackedBatches(examples, 4, seed=7, process_index=i, process_count=2))["x"] for i in range(2)]
    np.testing.assert_array_equal(np.concatenate(halves), next(PackedBatches(examples, 4, seed=7))["x"])


def test_short_training_run_drives_the_loss_down(tiny):
    from zoo.train import causal_lm_loss_fn, create_train_state, make_optimizer, make_train_step
    from zoo.train.data import PackedBatches, pack_documents

    _, _, model = tiny
    rng = np.random.RandomState(8)
    # Learnable structure: each document counts upwards from a random start.
    docs = [(s + np.arange(n)) % 120 + 3 for s, n in zip(rng.randint(0, 120, 64), rng.randint(4, 16, 64))]
    batches = PackedBatches(pack_documents(docs, 16), 8, seed=0)
    opt, sched = make_optimizer("adamw", 1e-2, schedule="cosine", warmup_steps=5, total_steps=40)
    state = create_train_state(model, opt)
    step = make_train_step(causal_lm_loss_fn(model), opt, max_grad_norm=1.0, lr_schedule=sched)
    losses = []
    for _ in range(40):
        state, m = step(state, next(batches))
        losses.append(float(m["loss"]))
    assert float(m["learning_rate"]) < 1e-2
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5]), losses
