"""Shared fixtures: tiny random checkpoints made with PyTorch Transformers (the oracle)."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
# In-process `zoo` commands must not switch JAX's persistent compile cache on for the rest of a
# test worker (nor use the user's folder); tests of the cache pass their own folder.
os.environ.setdefault("ZOO_COMPILE_CACHE", "off")
# Eight host devices so sharding tests run in-process (set before JAX initialises).
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import numpy as np
import pytest


def make_hf_model(config_cls_name: str, model_cls_name: str, seed: int = 0, **config):
    """A random PyTorch model with small weights (std 0.1 keeps logits informative)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    cfg = getattr(transformers, config_cls_name)(**config)
    model = getattr(transformers, model_cls_name)(cfg).eval()
    return model


def save_hf(model, folder) -> str:
    model.save_pretrained(str(folder))
    return str(folder)


def torch_logits(model, ids, mask=None):
    import torch

    with torch.no_grad():
        out = model(
            torch.tensor(np.asarray(ids)), attention_mask=None if mask is None else torch.tensor(np.asarray(mask))
        )
    return out.logits.float().numpy()


def assert_close_rel(ours, ref, rtol, where=None):
    """Max abs error relative to the reference's scale (the 'within X relative' of the issues)."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    if where is not None:
        ours, ref = ours[where], ref[where]
    err = np.max(np.abs(ours - ref))
    scale = np.max(np.abs(ref))
    assert err <= rtol * scale, f"max abs err {err:.3g} > {rtol} x max|ref| {scale:.3g}"


def left_padded_batch(vocab: int, batch: int = 3, seq: int = 9, seed: int = 0):
    rng = np.random.RandomState(seed)
    ids = rng.randint(3, vocab, (batch, seq)).astype(np.int64)
    mask = np.ones((batch, seq), np.int64)
    for b in range(1, batch):
        mask[b, : 2 * b] = 0  # row 0 full, others left-padded
        ids[b, : 2 * b] = 0
    return ids, mask


@pytest.fixture
def rng():
    return np.random.RandomState(0)


def check_decoder_parity(tmp_path, config_cls: str, model_cls: str, config: dict, *, dtype: str = "float32",
                         layouts=(True, False), seq: int = 9, check_resave: bool = True, check_cache: bool = True,
                         prepare=None):
    """Our logits == Transformers' on a left-padded batch, for each layer layout; our saved
    checkpoint loads back into Transformers with the same logits; cached decoding agrees.
    ``prepare(hf)`` may edit the torch model before it is saved (e.g. give norms non-trivial weights)."""
    import jax.numpy as jnp
    import torch
    import transformers

    from zoo import AutoModelForCausalLM

    hf = make_hf_model(config_cls, model_cls, **config)
    if prepare is not None:
        prepare(hf)
    src = save_hf(hf, tmp_path / "hf")
    ids, mask = left_padded_batch(config["vocab_size"], seq=seq)
    valid = mask.astype(bool)
    rtol = 1e-4 if dtype == "float32" else 2e-2
    if dtype != "float32":
        hf = hf.to(getattr(torch, dtype))
    ref = torch_logits(hf, ids, mask)
    model = None
    for scan in layouts:
        model = AutoModelForCausalLM.from_pretrained(src, dtype=dtype, scan_layers=scan)
        out = np.asarray(model(ids, attention_mask=mask).logits)
        assert out.shape == ref.shape
        assert_close_rel(out, ref, rtol, valid)
    if check_resave:
        model.save_pretrained(tmp_path / "ours")
        back = getattr(transformers, model_cls).from_pretrained(str(tmp_path / "ours"), dtype=getattr(torch, dtype)).eval()
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


@pytest.fixture(scope="session")
def tiny_chat_dir(tmp_path_factory):
    """A tiny random Llama with a byte-level BPE tokenizer and a chat template, in HF format
    (tests/tiny_chat.py); shared by the serving, paged-cache and CLI tests."""
    from tiny_chat import build_checkpoint

    return build_checkpoint(tmp_path_factory.mktemp("tiny_chat"))
