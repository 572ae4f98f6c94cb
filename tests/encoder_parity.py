"""Parity checks shared by the encoder test files: every head of a family against Transformers,
on a padded batch, then our saved checkpoint loaded back into Transformers."""
from __future__ import annotations

import numpy as np
from conftest import assert_close_rel, make_hf_model, save_hf

SUFFIX = {
    "base": "Model",
    "masked_lm": "ForMaskedLM",
    "sequence_classification": "ForSequenceClassification",
    "token_classification": "ForTokenClassification",
    "question_answering": "ForQuestionAnswering",
}
ALL_TASKS = tuple(SUFFIX)


def auto_class(task: str):
    import zoo

    return getattr(zoo, "AutoModel" + ("" if task == "base" else SUFFIX[task]))


def padded_batch(vocab: int, pad: int, batch: int = 3, seq: int = 10, seed: int = 0):
    """Row 0 full, row 1 right-padded, row 2 left-padded (ids = pad where masked)."""
    rng = np.random.RandomState(seed)
    ids = rng.randint(3, vocab, (batch, seq)).astype(np.int64)
    ids[ids == pad] = pad + 1 if pad + 1 < vocab else 3
    mask = np.ones((batch, seq), np.int64)
    mask[1, seq - 4:] = 0
    if batch > 2:
        mask[2, :3] = 0
    ids[mask == 0] = pad
    return ids, mask


def task_inputs(task: str, ids: np.ndarray, mask: np.ndarray, vocab: int, n_labels: int, seed: int = 1) -> dict:
    """Labels in Transformers' conventions for the task's loss (-100: ignored)."""
    rng = np.random.RandomState(seed)
    b, t = ids.shape
    if task == "masked_lm":
        labels = np.where(rng.rand(b, t) < 0.5, rng.randint(0, vocab, (b, t)), -100)
        return {"labels": np.where(mask == 1, labels, -100)}
    if task == "token_classification":
        return {"labels": np.where(mask == 1, rng.randint(0, n_labels, (b, t)), -100)}
    if task == "sequence_classification":
        return {"labels": rng.randint(0, n_labels, (b,))}
    if task == "question_answering":  # one position past the end: Transformers ignores it
        return {"start_positions": np.array([1, 4, t + 5])[:b], "end_positions": np.array([3, t - 1, 2])[:b]}
    return {}


def torch_outputs(model, ids, mask, token_type_ids=None, **labels):
    import torch

    kwargs = {"attention_mask": torch.tensor(mask)}
    if token_type_ids is not None:
        kwargs["token_type_ids"] = torch.tensor(token_type_ids)
    kwargs.update({k: torch.tensor(v) for k, v in labels.items()})
    with torch.no_grad():
        out = model(torch.tensor(ids), **kwargs)
    return {k: (None if v is None else v.float().numpy()) for k, v in out.items() if hasattr(v, "float")}


def ours_outputs(model, ids, mask, token_type_ids=None, **labels):
    out = model(ids, attention_mask=mask, token_type_ids=token_type_ids, **labels)
    return {k: np.asarray(getattr(out, k), np.float32) for k in out.keys()}


def compare(ours: dict, ref: dict, mask: np.ndarray, rtol: float, what: str) -> None:
    valid = mask.astype(bool)
    for key, value in ref.items():
        if key in ("hidden_states", "attentions"):
            continue
        assert key in ours, f"{what}: we return no '{key}' (Transformers does)"
        assert ours[key].shape == value.shape, f"{what}.{key}: shape {ours[key].shape} != {value.shape}"
        # per-token outputs are compared where the token is real; pooled ones everywhere
        where = valid if value.ndim >= 2 and value.shape[:2] == mask.shape else None
        try:
            assert_close_rel(ours[key], value, rtol, where)
        except AssertionError as err:
            raise AssertionError(f"{what}.{key}: {err}") from None
    extra = [k for k in ours if k not in ref and k != "pooler_output"]
    assert not extra, f"{what}: we return {extra} that Transformers does not"


def check_encoder(tmp_path, hf_prefix: str, config: dict, *, tasks=ALL_TASKS, dtype: str = "float32",
                  layouts=(True, False), pad: int = 0, token_types: bool = False, resave: bool = True,
                  n_labels: int = 3, seed: int = 0):
    """For each task: HF model -> save -> our Auto class -> same outputs (and loss) on a padded
    batch, for each layer layout; ours saved -> HF loads it -> same outputs again."""
    import torch
    import transformers

    ids, mask = padded_batch(config["vocab_size"], pad)
    tt = None
    if token_types:
        tt = np.zeros_like(ids)
        tt[:, 5:] = 1
    rtol = 1e-4 if dtype == "float32" else 2e-2
    models = {}
    for task in tasks:
        hf_cls = hf_prefix + SUFFIX[task]
        cfg = dict(config)
        if task in ("sequence_classification", "token_classification"):
            cfg["num_labels"] = n_labels
        hf = make_hf_model(hf_prefix + "Config", hf_cls, seed=seed, **cfg)
        _randomize_zero_params(hf, seed)
        src = save_hf(hf, tmp_path / f"hf-{task}")
        labels = task_inputs(task, ids, mask, config["vocab_size"], n_labels)
        if dtype != "float32":
            hf = hf.to(getattr(torch, dtype))
        ref = torch_outputs(hf, ids, mask, tt, **labels)
        model = None
        for scan in layouts:
            model = auto_class(task).from_pretrained(src, dtype=dtype, scan_layers=scan)
            assert type(model).__name__.endswith(SUFFIX[task]) or task == "base"
            compare(ours_outputs(model, ids, mask, tt, **labels), ref, mask, rtol, f"{hf_cls}[scan={scan}]")
        if resave:
            out_dir = tmp_path / f"ours-{task}"
            model.save_pretrained(out_dir)
            back = getattr(transformers, hf_cls).from_pretrained(str(out_dir), dtype=getattr(torch, dtype)).eval()
            compare(torch_outputs(back, ids, mask, tt, **labels), ref, mask, 1e-6 if dtype == "float32" else 1e-2,
                    f"{hf_cls} resaved")
        models[task] = model
    return models


def _randomize_zero_params(model, seed: int) -> None:
    """Transformers initialises biases to 0 and norms to 1; random values make a mix-up of
    tensors visible (e.g. two biases swapped) instead of cancelling out."""
    import torch

    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name.lower():
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
