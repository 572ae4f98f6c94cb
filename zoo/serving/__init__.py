"""zoo.serving: an OpenAI-compatible server with continuous batching on a paged KV cache.

``Engine`` (zoo/serving/engine.py) owns the model and runs one thread; ``build_app``
(zoo/serving/app.py) is the Starlette ASGI app in front of it; ``serve`` loads a
checkpoint and runs both under uvicorn (what ``zoo serve`` calls).
"""
from __future__ import annotations

from typing import Any

from zoo.serving.engine import Delta, Engine, Finished, QueueFull, SamplingParams


def build_app(engine: Engine, model_name: str, **limits: Any):
    from zoo.serving.app import build_app as _build

    return _build(engine, model_name, **limits)


def load_engine(model: str, *, dtype: Any = None, **engine_kwargs: Any) -> Engine:
    """Model + tokenizer from a folder or Hub repo id, ready to ``start()``."""
    from zoo import AutoModelForCausalLM
    from zoo.tokenization import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    lm = AutoModelForCausalLM.from_pretrained(model, dtype=dtype, scan_layers=False)
    return Engine(lm, tok, **engine_kwargs)


def serve(model: str, *, host: str = "127.0.0.1", port: int = 8000, model_name: str | None = None,
          dtype: Any = None, warmup: bool = True, log_level: str = "info", limits: dict | None = None,
          **engine_kwargs: Any) -> None:
    """Load, warm up (compile), and serve until interrupted."""
    import uvicorn

    engine = load_engine(model, dtype=dtype, **engine_kwargs)
    if warmup:
        engine.warmup((1, 16, 32, 64))
    engine.start()
    app = build_app(engine, model_name or model, **(limits or {}))
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=2)
    finally:
        engine.shutdown()


__all__ = ["Engine", "SamplingParams", "QueueFull", "Delta", "Finished", "build_app", "load_engine", "serve"]
