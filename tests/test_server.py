"""The OpenAI-compatible server (zoo/serving), driven by the official ``openai`` client.

One uvicorn server per module, in a thread on a free port, in front of one engine (continuous
batching over a paged KV cache) on the tiny chat checkpoint. The oracle for generated text is
``model.generate`` on the same checkpoint (the static-cache path)."""
from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
import time

import pytest

import openai  # the test extra installs it: the issue asks for the official client

MODEL = "tiny-chat"
MAX_MODEL_LEN = 96  # < MAX_PROMPT + MAX_TOKENS, so their sum can be refused on its own
MAX_PROMPT = 64
MAX_TOKENS = 48
MAX_QUEUED = 40
CHUNK = 32  # chunked prefill (pieces padded to 16 or 32): longer prompts here span two chunks


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Running:
    def __init__(self, engine, tok, model, port):
        self.engine, self.tok, self.model, self.port = engine, tok, model, port
        self.base_url = f"http://127.0.0.1:{port}/v1"

    def client(self, **kw):
        return openai.OpenAI(base_url=self.base_url, api_key="unused", max_retries=0, timeout=120, **kw)

    def raw(self, method: str, path: str, body: bytes | str | None = None, headers: dict | None = None):
        """(status, parsed JSON body) for a hand-written request."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read() or b"null")
        finally:
            conn.close()

    def wait_idle(self, timeout: float = 30.0) -> dict:
        """Engine snapshot once nothing runs or waits (all pages back in the pool)."""
        deadline = time.monotonic() + timeout
        while True:
            snap = self.engine.snapshot()
            if snap["running"] == 0 and snap["waiting"] == 0 and snap["free_pages"] == snap["total_pages"]:
                return snap
            if time.monotonic() > deadline:
                raise AssertionError(f"engine did not go idle: {snap}")
            time.sleep(0.02)


@pytest.fixture(scope="module")
def server(tiny_chat_dir):
    import uvicorn

    from zoo import AutoModelForCausalLM
    from zoo.serving import build_app
    from zoo.serving.engine import Engine
    from zoo.tokenization import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_chat_dir))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_chat_dir), scan_layers=False)
    engine = Engine(model, tok, max_batch=8, page_size=16, max_model_len=MAX_MODEL_LEN, max_queued=MAX_QUEUED,
                    prefill_chunk_size=CHUNK)
    engine.warmup((8, 16, 32))
    engine.start()
    app = build_app(engine, MODEL, max_prompt_tokens=MAX_PROMPT, max_tokens=MAX_TOKENS)
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                        timeout_graceful_shutdown=1))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield Running(engine, tok, model, port)
    srv.should_exit = True
    thread.join(10)
    engine.shutdown()


def chat_ids(tok, messages):
    return [int(t) for t in tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)]


def reference(server, prompt_ids, max_new: int, ignore_eos: bool = False) -> tuple[str, int, str]:
    """(text, completion tokens, finish reason) of static-cache greedy ``generate``."""
    eos = server.engine.eos
    out = server.model.generate([prompt_ids], max_new_tokens=max_new, do_sample=False,
                                **({"eos_token_id": None} if ignore_eos else {}))
    new = out[0, len(prompt_ids):].tolist()
    for i, t in enumerate(new):
        if not ignore_eos and t in eos:
            return server.tok.decode(new[:i], skip_special_tokens=True), i + 1, "stop"
    return server.tok.decode(new, skip_special_tokens=True), len(new), "length"


MESSAGES = [{"role": "system", "content": "You count pages."}, {"role": "user", "content": "Hello there, how are you?"}]


# ---------------------------------------------------------------- plain routes
def test_models_and_health(server):
    models = server.client().models.list()
    assert [m.id for m in models.data] == [MODEL]
    status, body = server.raw("GET", "/health")
    assert status == 200 and body["status"] == "ok" and body["model"] == MODEL
    assert body["max_batch"] == 8 and body["free_pages"] == body["total_pages"]


# ---------------------------------------------------------------- chat completions
def test_chat_greedy_matches_generate_with_usage(server):
    client = server.client()
    for ignore_eos in (False, True):
        r = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12, temperature=0,
                                           extra_body={"ignore_eos": ignore_eos})
        prompt = chat_ids(server.tok, MESSAGES)
        text, n, reason = reference(server, prompt, 12, ignore_eos)
        assert r.object == "chat.completion" and r.model == MODEL and len(r.choices) == 1
        assert r.choices[0].message.role == "assistant"
        assert r.choices[0].message.content == text
        assert r.choices[0].finish_reason == reason
        assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(prompt), n)
        assert r.usage.total_tokens == len(prompt) + n
    assert reason == "length" and n == 12


def test_chat_streaming_equals_non_streaming(server):
    client = server.client()
    kw = dict(model=MODEL, messages=MESSAGES, max_tokens=20, temperature=0, extra_body={"ignore_eos": True})
    plain = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content and text
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 20
    assert chunks[-1].usage.prompt_tokens == plain.usage.prompt_tokens


def test_sampling_seed_top_p_temperature_and_n(server):
    client = server.client()
    kw = dict(model=MODEL, messages=MESSAGES, max_tokens=16, extra_body={"ignore_eos": True})
    greedy = client.chat.completions.create(temperature=0, **kw).choices[0].message.content
    a = client.chat.completions.create(temperature=1.5, seed=7, **kw).choices[0].message.content
    b = client.chat.completions.create(temperature=1.5, seed=7, **kw).choices[0].message.content
    others = {client.chat.completions.create(temperature=1.5, seed=s, **kw).choices[0].message.content
              for s in (8, 9, 10)}
    assert a == b, "the same seed gives the same sample"
    assert len(others | {a}) > 1 and a != greedy, "different seeds give different samples"
    # a nucleus so small it holds only the most likely token is greedy decoding
    assert client.chat.completions.create(temperature=1.5, top_p=1e-6, seed=3, **kw).choices[0].message.content \
        == greedy
    # n choices: seeds seed, seed+1, ...; choice 0 is the single request with that seed
    many = client.chat.completions.create(temperature=1.5, seed=7, n=3, **kw)
    assert [c.index for c in many.choices] == [0, 1, 2]
    assert many.choices[0].message.content == a
    assert many.choices[1].message.content == client.chat.completions.create(
        temperature=1.5, seed=8, **kw).choices[0].message.content
    assert many.usage.completion_tokens == 3 * 16
    # n with streaming: every index streams its own text and finishes once
    stream = client.chat.completions.create(temperature=1.5, seed=7, n=2, stream=True, **kw)
    texts, finished = ["", ""], []
    for c in stream:
        for ch in c.choices:
            texts[ch.index] += ch.delta.content or ""
            if ch.finish_reason:
                finished.append(ch.index)
    assert texts == [m.message.content for m in many.choices[:2]] and sorted(finished) == [0, 1]


# ---------------------------------------------------------------- completions
def test_completions_plain_stream_stop_and_echo(server):
    client = server.client()
    prompt = "Tell me a story about a small llama"
    ids = [int(t) for t in server.tok.encode(prompt)]
    text, n, reason = reference(server, ids, 24, ignore_eos=True)
    kw = dict(model=MODEL, prompt=prompt, max_tokens=24, temperature=0, extra_body={"ignore_eos": True})
    r = client.completions.create(**kw)
    assert r.object == "text_completion" and r.choices[0].text == text and r.choices[0].finish_reason == "length"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(ids), 24)
    streamed = list(client.completions.create(stream=True, **kw))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == text
    assert [c.choices[0].finish_reason for c in streamed if c.choices and c.choices[0].finish_reason] == ["length"]
    # token ids as the prompt give the same completion
    assert client.completions.create(**{**kw, "prompt": ids}).choices[0].text == text
    # a stop string cuts the text before it, in both modes, and finishes with "stop"
    stop = text.strip()[4:7]
    assert stop and stop in text
    cut = text[: text.find(stop)]
    r = client.completions.create(stop=[stop, "never-there"], **kw)
    assert r.choices[0].text == cut and r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens < 24
    streamed = list(client.completions.create(stop=stop, stream=True, **kw))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == cut
    assert streamed[-1].choices[0].finish_reason == "stop"
    # echo puts the prompt in front
    assert client.completions.create(echo=True, **kw).choices[0].text == prompt + text


def test_finish_reason_stop_on_eos(server):
    """Greedy until the model emits its end-of-turn token (or 48 tokens): the reason and the token
    count agree with generate's."""
    client = server.client()
    for content in ("Hello there", "Tell me a story", "I am fine, thank you"):
        msgs = [{"role": "user", "content": content}]
        text, n, reason = reference(server, chat_ids(server.tok, msgs), MAX_TOKENS)
        r = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=MAX_TOKENS, temperature=0)
        assert (r.choices[0].message.content, r.usage.completion_tokens, r.choices[0].finish_reason) \
            == (text, n, reason)


# ---------------------------------------------------------------- load
def test_32_concurrent_requests_all_answered(server):
    async def main():
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120)
        words = ["Hello", "Tell me a story", "pages", "how are you today?", "the scheduler", "llama"]

        async def one(i):
            msgs = [{"role": "user", "content": f"{words[i % len(words)]} {i}"}]
            if i % 2:
                stream = await client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=8 + i % 5,
                                                              temperature=0, stream=True)
                return i, "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            r = await client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=8 + i % 5, temperature=0)
            return i, r.choices[0].message.content

        try:
            return dict(await asyncio.gather(*(one(i) for i in range(32))))
        finally:
            await client.close()

    prefills_before = server.engine.stats["prefills"]
    answers = asyncio.run(main())
    assert sorted(answers) == list(range(32))
    assert server.engine.stats["prefills"] - prefills_before == 32
    # batching did not change anyone's answer: each equals the same request made alone
    client = server.client()
    words = ["Hello", "Tell me a story", "pages", "how are you today?", "the scheduler", "llama"]
    for i in (0, 5, 13, 30, 31):
        msgs = [{"role": "user", "content": f"{words[i % len(words)]} {i}"}]
        alone = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=8 + i % 5, temperature=0)
        assert answers[i] == alone.choices[0].message.content
    server.wait_idle()


def test_chunked_prefill_answers_equal_generate_and_compile_nothing_new(server):
    """Prompts shorter than a chunk, exactly one, and up to two chunks with ragged ends (1, 16, 17,
    32, 33, 50, 64 tokens, against pages of 16) come out as ``generate``'s, sent together so
    their chunks interleave with each other's decoding; the warmup compiled every chunk shape."""
    from zoo.generation import paged

    compiles = paged.prefill_chunk_compiles()
    chunks_before = server.engine.stats["prefill_chunks"]
    lengths = (1, 16, 17, CHUNK, CHUNK + 1, 50, MAX_PROMPT)
    prompts = {n: [3 + (7 * i + n) % 250 for i in range(n)] for n in lengths}

    async def main():
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120)
        try:
            async def one(n):
                r = await client.completions.create(model=MODEL, prompt=prompts[n], max_tokens=6, temperature=0,
                                                    extra_body={"ignore_eos": True})
                return n, r.choices[0].text
            return dict(await asyncio.gather(*(one(n) for n in lengths)))
        finally:
            await client.close()

    answers = asyncio.run(main())
    for n in lengths:
        assert answers[n] == reference(server, prompts[n], 6, ignore_eos=True)[0], f"prompt of {n} tokens"
    assert paged.prefill_chunk_compiles() == compiles, "a prompt length compiled a new chunk shape"
    assert server.engine.stats["prefill_chunks"] - chunks_before >= sum(-(-n // CHUNK) for n in lengths)
    server.wait_idle()


# ---------------------------------------------------------------- bad input
def assert_openai_error(status, body, expected_status, code=None, param=None):
    assert status == expected_status, body
    err = body["error"]
    assert set(err) >= {"message", "type", "param", "code"} and err["message"]
    if code is not None:
        assert err["code"] == code, err
    if param is not None:
        assert err["param"] == param, err


@pytest.mark.parametrize("body, status, code, param", [
    ("{not json", 400, "invalid_json", None),
    ("[1, 2]", 400, "invalid_json", None),
    ({"messages": MESSAGES}, 400, "missing_required_parameter", "model"),
    ({"model": "gpt-9", "messages": MESSAGES}, 404, "model_not_found", "model"),
    ({"model": MODEL, "messages": "hi"}, 400, "invalid_type", "messages"),
    ({"model": MODEL, "messages": []}, 400, "invalid_type", "messages"),
    ({"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}, 400, "invalid_value", "messages[0].role"),
    ({"model": MODEL, "messages": [{"role": "user", "content": 5}]}, 400, "invalid_type", "messages[0].content"),
    ({"model": MODEL, "messages": MESSAGES, "max_tokens": "ten"}, 400, "invalid_type", "max_tokens"),
    ({"model": MODEL, "messages": MESSAGES, "max_tokens": 2.5}, 400, "invalid_type", "max_tokens"),
    ({"model": MODEL, "messages": MESSAGES, "max_tokens": -3}, 400, "invalid_value", "max_tokens"),
    ({"model": MODEL, "messages": MESSAGES, "max_tokens": 0}, 400, "invalid_value", "max_tokens"),
    ({"model": MODEL, "messages": MESSAGES, "max_tokens": 10**12}, 400, "invalid_value", "max_tokens"),
    ({"model": MODEL, "messages": MESSAGES, "temperature": "hot"}, 400, "invalid_type", "temperature"),
    ({"model": MODEL, "messages": MESSAGES, "temperature": True}, 400, "invalid_type", "temperature"),
    ({"model": MODEL, "messages": MESSAGES, "temperature": 7}, 400, "invalid_value", "temperature"),
    ({"model": MODEL, "messages": MESSAGES, "top_p": 0}, 400, "invalid_value", "top_p"),
    ({"model": MODEL, "messages": MESSAGES, "n": 0}, 400, "invalid_value", "n"),
    ({"model": MODEL, "messages": MESSAGES, "seed": "x"}, 400, "invalid_type", "seed"),
    ({"model": MODEL, "messages": MESSAGES, "stop": [1]}, 400, "invalid_type", "stop"),
    ({"model": MODEL, "messages": MESSAGES, "stream": "yes"}, 400, "invalid_type", "stream"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "llama " * 200}]}, 400, "context_length_exceeded",
     "messages"),
])
def test_bad_chat_requests_get_openai_errors(server, body, status, code, param):
    raw = body if isinstance(body, str) else json.dumps(body)
    assert_openai_error(*server.raw("POST", "/v1/chat/completions", raw), status, code, param)


@pytest.mark.parametrize("body, status, code, param", [
    ({"model": MODEL}, 400, "missing_required_parameter", "prompt"),
    ({"model": MODEL, "prompt": {"a": 1}}, 400, "invalid_type", "prompt"),
    ({"model": MODEL, "prompt": [1, 99999]}, 400, "invalid_value", "prompt"),
    ({"model": MODEL, "prompt": ""}, 400, "invalid_value", "prompt"),
    ({"model": MODEL, "prompt": "x", "echo": 1}, 400, "invalid_type", "echo"),
    ({"model": MODEL, "prompt": "pages " * 100}, 400, "context_length_exceeded", "prompt"),
    # fits the prompt limit, but prompt + max_tokens does not fit the context
    ({"model": MODEL, "prompt": list(range(10, 10 + MAX_PROMPT)), "max_tokens": MAX_TOKENS}, 400,
     "context_length_exceeded", "max_tokens"),
])
def test_bad_completion_requests_get_openai_errors(server, body, status, code, param):
    assert_openai_error(*server.raw("POST", "/v1/completions", json.dumps(body)), status, code, param)


def test_unknown_routes_and_methods(server):
    assert_openai_error(*server.raw("GET", "/v1/nothing"), 404, "not_found")
    assert_openai_error(*server.raw("GET", "/v1/chat/completions"), 405, "method_not_allowed")


def test_openai_client_sees_errors_and_server_keeps_serving(server):
    client = server.client()
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="gpt-9", messages=MESSAGES)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=-1)
    assert info.value.status_code == 400 and "max_tokens" in str(info.value)
    with pytest.raises(openai.BadRequestError, match="at most"):
        client.completions.create(model=MODEL, prompt="llama " * 200, stream=True)
    r = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=3, temperature=0)
    assert r.choices[0].finish_reason in ("stop", "length")
    assert server.raw("GET", "/health")[0] == 200
    server.wait_idle()


def test_queue_full_answers_503(server):
    from zoo.serving.engine import SamplingParams

    engine = server.engine
    engine.pause(wait=True)  # parked: nothing leaves the queue while we fill it
    fillers = []
    try:
        while len(engine.waiting) < MAX_QUEUED - 1:
            fillers.append(engine.submit([5, 6, 7], SamplingParams(max_tokens=2), lambda e: None))
        # one place left: n=2 does not fit, and none of its choices stays queued
        assert server.raw("POST", "/v1/completions", json.dumps(
            {"model": MODEL, "prompt": "hi", "n": 2, "max_tokens": 2}))[0] == 503
        assert len(engine.waiting) == MAX_QUEUED - 1
        fillers.append(engine.submit([5, 6, 7], SamplingParams(max_tokens=2), lambda e: None))
        status, body = server.raw("POST", "/v1/chat/completions", json.dumps(
            {"model": MODEL, "messages": MESSAGES, "max_tokens": 2}))
        assert_openai_error(status, body, 503, "server_overloaded")
        assert "at capacity" in body["error"]["message"] and f"max_queued={MAX_QUEUED}" in body["error"]["message"]
        with pytest.raises(openai.InternalServerError, match="retry later"):
            server.client().completions.create(model=MODEL, prompt="hi", max_tokens=2)
    finally:
        for s in fillers:
            engine.cancel(s)
        engine.resume()
    server.wait_idle()
    r = server.client().chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2, temperature=0)
    assert r.choices[0].finish_reason in ("stop", "length")


# ---------------------------------------------------------------- disconnects
@pytest.mark.parametrize("path, body", [
    ("/v1/chat/completions", {"messages": MESSAGES}),
    ("/v1/completions", {"prompt": "Tell me a story"}),
])
def test_client_disconnect_mid_stream_frees_slot_and_pages(server, monkeypatch, path, body):
    engine = server.engine
    server.wait_idle()
    real_decode = engine._decode

    def slow_decode():  # slow the model down so the request is surely still running when the client leaves
        time.sleep(0.02)
        real_decode()

    monkeypatch.setattr(engine, "_decode", slow_decode)
    cancelled = engine.stats["finished_cancelled"]
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    payload = {"model": MODEL, "max_tokens": MAX_TOKENS, "stream": True, "ignore_eos": True, **body}
    conn.request("POST", path, body=json.dumps(payload), headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200
    seen = b""
    while seen.count(b"data: ") < 3:
        seen += resp.read1(4096)
    snap = engine.snapshot()
    assert snap["running"] == 1 and snap["free_pages"] < snap["total_pages"]
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    snap = server.wait_idle(timeout=10)
    assert engine.stats["finished_cancelled"] == cancelled + 1
    assert engine.stats["decode_steps"] > 0
    # the server goes on serving
    r = server.client().chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2, temperature=0)
    assert r.choices[0].finish_reason in ("stop", "length")


def test_client_disconnect_while_waiting_non_streaming(server):
    """A non-streaming request whose client goes away is cancelled too (checked between events)."""
    engine = server.engine
    server.wait_idle()
    cancelled = engine.stats["finished_cancelled"]
    engine.pause(wait=True)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        conn.request("POST", "/v1/completions", body=json.dumps({"model": MODEL, "prompt": "hi", "max_tokens": 4}),
                     headers={"Content-Type": "application/json"})
        deadline = time.monotonic() + 10
        while not engine.waiting:
            assert time.monotonic() < deadline, "the request never reached the queue"
            time.sleep(0.01)
        conn.sock.shutdown(socket.SHUT_RDWR)
        conn.close()
        deadline = time.monotonic() + 10
        while not all(s.cancelled for s in list(engine.waiting)):
            assert time.monotonic() < deadline, "the queued request was not cancelled"
            time.sleep(0.02)
    finally:
        engine.resume()
    server.wait_idle()
    assert engine.stats["finished_cancelled"] == cancelled + 1


def test_engine_failure_answers_500_and_server_recovers(server, monkeypatch):
    """A step that raises fails the requests it touched (OpenAI-style 500, an error event when
    streaming), gives their pages back, and the engine goes on."""
    from zoo.generation import paged

    server.wait_idle()

    def broken(*args, **kwargs):
        raise RuntimeError("simulated device failure")

    with monkeypatch.context() as patched:  # whole-prompt and chunked prefill alike
        patched.setattr(paged, "prefill_into_pages", broken)
        patched.setattr(paged, "prefill_chunk_into_pages", broken)
        check_failures_answer_500(server)
    r = server.client().chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4, temperature=0,
                                                extra_body={"ignore_eos": True})
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 4


def check_failures_answer_500(server):
    status, body = server.raw("POST", "/v1/chat/completions", json.dumps(
        {"model": MODEL, "messages": MESSAGES, "max_tokens": 4}))
    assert_openai_error(status, body, 500, "engine_error")
    assert "simulated device failure" in body["error"]["message"]
    with pytest.raises(openai.APIError, match="simulated device failure"):
        list(server.client().chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4, stream=True))
    with pytest.raises(openai.APIError, match="simulated device failure"):
        list(server.client().completions.create(model=MODEL, prompt="hi", max_tokens=4, stream=True))
    server.wait_idle()
