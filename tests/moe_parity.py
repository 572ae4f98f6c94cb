"""Checks shared by the mixture-of-experts test files (Mixtral, Qwen3-MoE), each against
PyTorch Transformers: logits for every layer layout and expert implementation, the saved
checkpoint loaded back, cached decoding, the router's load-balancing loss, greedy
generation and expert parallelism on the 8 host devices."""
from __future__ import annotations

import numpy as np
from conftest import assert_close_rel, left_padded_batch, make_hf_model, save_hf, torch_logits

MOE_IMPLS = ("dense", "ragged")


def check_moe_parity(tmp_path, config_cls: str, model_cls: str, config: dict, *, dtype: str = "float32",
                     layouts=(True, False), impls=MOE_IMPLS, seq: int = 9, check_resave: bool = True,
                     check_cache: bool = True):
    """Our logits == Transformers' on a left-padded batch for every (layout, moe_implementation);
    our saved checkpoint loads back into Transformers with the same logits; a prefix then the
    rest through the KV cache gives the full forward's logits."""
    import torch
    import transformers

    from zoo import AutoModelForCausalLM

    hf = make_hf_model(config_cls, model_cls, **config)
    src = save_hf(hf, tmp_path / "hf")
    ids, mask = left_padded_batch(config["vocab_size"], seq=seq)
    valid = mask.astype(bool)
    rtol = 1e-4 if dtype == "float32" else 2e-2
    if dtype != "float32":
        hf = hf.to(getattr(torch, dtype))
        valid &= ~near_tie_tokens(hf, ids, mask, config["num_experts_per_tok"])
    ref = torch_logits(hf, ids, mask)
    model = None
    for scan in layouts:
        for impl in impls:
            model = AutoModelForCausalLM.from_pretrained(src, dtype=dtype, scan_layers=scan, moe_implementation=impl)
            assert model.config.moe_implementation == impl
            out = np.asarray(model(ids, attention_mask=mask).logits)
            assert out.shape == ref.shape
            assert_close_rel(out, ref, rtol, valid)
    if check_resave:
        model.save_pretrained(tmp_path / "ours")
        saved = (tmp_path / "ours" / "config.json").read_text()
        assert "moe_implementation" not in saved  # a runtime choice, not part of the checkpoint
        back = getattr(transformers, model_cls).from_pretrained(str(tmp_path / "ours"),
                                                                 dtype=getattr(torch, dtype)).eval()
        assert_close_rel(torch_logits(back, ids, mask), ref, 1e-6 if dtype == "float32" else 1e-2, valid)
    if check_cache:
        full = np.asarray(model(ids, attention_mask=mask).logits)
        cache = model.init_cache(ids.shape[0], seq + 4)
        split = seq - 3
        out1 = model(ids[:, :split], attention_mask=mask[:, :split], past_key_values=cache)
        out2 = model(ids[:, split:], attention_mask=mask, past_key_values=out1.past_key_values)
        stepped = np.concatenate([np.asarray(out1.logits), np.asarray(out2.logits)], axis=1)
        assert_close_rel(stepped, full, 1e-5 if dtype == "float32" else 2e-2, valid)
    return model


def near_tie_tokens(hf, ids, mask, top_k: int, margin: float = 2e-3, most: int = 3) -> np.ndarray:
    """[batch, seq] True where some layer's router nearly ties between its k-th and (k+1)-th
    expert. In bf16 one rounding there (XLA may keep excess precision inside a fusion,
    PyTorch rounds every op) picks another expert and moves that token's logits by far more
    than 2e-2, a legitimate tie-break, not a bug, so those few tokens are left out."""
    import torch

    with torch.no_grad():
        out = hf(torch.tensor(ids), attention_mask=torch.tensor(mask), output_router_logits=True)
    probs = torch.softmax(torch.stack(list(out.router_logits)).float(), -1).numpy()
    top = -np.sort(-probs, axis=-1)
    gap = top[..., top_k - 1] - top[..., top_k] if top_k < probs.shape[-1] else np.ones(top.shape[:-1])
    ties = (gap < margin).any(0).reshape(ids.shape) & mask.astype(bool)
    assert ties.sum() <= most, f"{ties.sum()} near-tie tokens: pick another seed for a meaningful check"
    return ties


def check_aux_loss(hf, folder, *, scan_layers: bool = True, moe_implementation: str = "dense"):
    """With labels and output_router_logits=True: loss, aux_loss and router logits equal
    Transformers' (the coefficient from the config, padding excluded through the mask)."""
    import torch

    from zoo import AutoModelForCausalLM

    ids, mask = left_padded_batch(hf.config.vocab_size)
    # A left-padded row's first real token is predicted from a padding position, whose logits
    # are arbitrary (no key to attend to) and differ between implementations: leave it out.
    predicted_from_real = np.concatenate([np.zeros_like(mask[:, :1]), mask[:, :-1]], axis=1) == 1
    labels = np.where((mask == 1) & predicted_from_real, ids, -100)
    with torch.no_grad():
        ref = hf(torch.tensor(ids), attention_mask=torch.tensor(mask), labels=torch.tensor(labels),
                 output_router_logits=True)
    model = AutoModelForCausalLM.from_pretrained(folder, scan_layers=scan_layers,
                                                 moe_implementation=moe_implementation)
    out = model(ids, attention_mask=mask, labels=labels, output_router_logits=True)
    ref_router = np.stack([r.float().numpy() for r in ref.router_logits])
    assert out.router_logits.shape == ref_router.shape
    valid = np.broadcast_to(mask.reshape(1, -1).astype(bool), ref_router.shape[:2])  # padding rows differ
    assert_close_rel(out.router_logits, ref_router, 1e-4, valid)
    np.testing.assert_allclose(float(out.aux_loss), float(ref.aux_loss), rtol=1e-5)
    np.testing.assert_allclose(float(out.loss), float(ref.loss), rtol=1e-5)
    # The loss really includes the coefficient times the aux loss.
    plain = model(ids, attention_mask=mask, labels=labels, output_router_logits=False)
    assert plain.aux_loss is None and plain.router_logits is None
    np.testing.assert_allclose(float(out.loss) - float(plain.loss),
                               hf.config.router_aux_loss_coef * float(out.aux_loss), rtol=1e-4)


def check_greedy_generate(hf, folder, *, scan_layers: bool, max_new_tokens: int = 8):
    import torch

    from zoo import AutoModelForCausalLM

    ids, mask = left_padded_batch(hf.config.vocab_size, seq=7)
    with torch.no_grad():
        ref = hf.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=max_new_tokens,
                          do_sample=False).numpy()
    model = AutoModelForCausalLM.from_pretrained(folder, scan_layers=scan_layers)
    ours = model.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False)
    np.testing.assert_array_equal(np.asarray(ours), ref)


def check_expert_parallel(folder, num_experts: int, *, scan_layers: bool, moe_implementation: str = "auto"):
    """The "ep" rules on a data x expert mesh of the 8 host devices: every expert tensor is split
    over its expert axis (one slice of experts per device) and the logits equal the unsharded ones."""
    import jax

    from zoo import AutoModelForCausalLM, make_mesh
    from zoo.sharding import use_mesh

    assert len(jax.devices()) == 8
    mesh = make_mesh({"data": 2, "expert": 4})
    assert num_experts % 4 == 0
    ref_model = AutoModelForCausalLM.from_pretrained(folder, scan_layers=scan_layers,
                                                     moe_implementation="dense")
    model = AutoModelForCausalLM.from_pretrained(folder, scan_layers=scan_layers, mesh=mesh, rules="ep",
                                                 moe_implementation=moe_implementation)
    layers = model.params["layers"]
    moe_params = [layers["moe"]] if scan_layers else [lp["moe"] for lp in layers if "moe" in lp]
    assert moe_params
    lead = 1 if scan_layers else 0  # stacked params carry the layer axis first
    for moe in moe_params:
        for name in ("gate_proj", "up_proj", "down_proj"):
            w = moe[name]["kernel"]
            spec = tuple(w.sharding.spec) + (None,) * (w.ndim - len(w.sharding.spec))
            assert spec[lead] == "expert", (name, w.sharding.spec)
            assert all(s is None for i, s in enumerate(spec) if i != lead), (name, w.sharding.spec)
            shard = w.addressable_shards[0].data
            assert shard.shape[lead] == num_experts // 4
        assert all(s is None for s in moe["router"]["kernel"].sharding.spec)  # every device routes
    ids, mask = left_padded_batch(model.config.vocab_size, batch=4)
    ref = np.asarray(ref_model(ids, attention_mask=mask).logits)
    with use_mesh(mesh, "ep"):
        out = np.asarray(model(ids, attention_mask=mask).logits)
    assert_close_rel(out, ref, 1e-5, mask.astype(bool))
