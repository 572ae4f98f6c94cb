"""Streamers: TextStreamer / TextIteratorStreamer against Transformers' on the same tokenizer files, and
streaming from generate (chunks handed to the host while the compiled loop runs, stop strings honoured)."""
import re
import threading
from queue import Empty

import numpy as np
import pytest
import transformers
from tiny_chat import build_checkpoint

from zoo import AutoModelForCausalLM, AutoTokenizer
from zoo.generation import TextIteratorStreamer, TextStreamer

TEXT = ("Hello there, how are you today?\nI am fine 日本語 thank you, and you? 😀 pages\n\n"
        "tokens and sequences<|end|> in a paged cache.")


@pytest.fixture(scope="module")
def chat(tmp_path_factory):
    folder = build_checkpoint(tmp_path_factory.mktemp("chat"))
    return (AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder),
            transformers.AutoTokenizer.from_pretrained(str(folder)))


def non_words(tok) -> list[int]:
    """Ids whose text is not plain letters and spaces: suppressing them makes the random model write words."""
    return [i for i in range(tok.vocab_size) if not re.fullmatch(r" ?[A-Za-z]+", tok.decode([i]))]


def recording(cls):
    """A streamer class that records what it would show, as Transformers users subclass it."""

    class Recording(cls):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.pieces, self.ended = [], 0

        def on_finalized_text(self, text, stream_end=False):
            self.pieces.append(text)
            self.ended += stream_end

    return Recording


@pytest.mark.parametrize("skip_prompt,decode_kwargs", [(False, {}), (True, {"skip_special_tokens": True})])
def test_text_streamer_matches_transformers(chat, skip_prompt, decode_kwargs):
    _, tok, hf_tok = chat
    ids = hf_tok(TEXT, add_special_tokens=False)["input_ids"]
    ours = recording(TextStreamer)(tok, skip_prompt=skip_prompt, **decode_kwargs)
    ref = recording(transformers.TextStreamer)(hf_tok, skip_prompt=skip_prompt, **decode_kwargs)
    rng = np.random.RandomState(0)
    prompt, cuts = ids[:3], np.sort(rng.choice(np.arange(4, len(ids)), 12, replace=False))
    for s in (ours, ref):
        s.put(np.array([prompt]))  # the prompt first, [1, n] as generate passes it
        for a, b in zip([3, *cuts], [*cuts, len(ids)]):
            s.put(np.array(ids[a:b]))
        s.end()
    assert ours.pieces == ref.pieces
    assert ours.ended == 1 and len([p for p in ours.pieces if p]) > 5
    shown = ids[3:] if skip_prompt else ids
    assert "".join(ours.pieces) == tok.decode(shown, **decode_kwargs)


def test_text_streamer_prints_and_rejects_batches(chat, capsys):
    _, tok, _ = chat
    s = TextStreamer(tok)
    s.put(np.array(tok.encode("Hello there, how", add_special_tokens=False)))
    s.end()
    assert capsys.readouterr().out == "Hello there, how\n"
    with pytest.raises(ValueError, match="batch size 1"):
        s.put(np.zeros((2, 3), int))


def test_generate_streams_chunks_that_join_to_the_output(chat):
    model, tok, _ = chat
    prompt = np.array([tok.encode("Hello there, how are", add_special_tokens=False)])
    words = dict(eos_token_id=None, suppress_tokens=non_words(tok))
    plain = model.generate(prompt, max_new_tokens=20, **words)

    class Chunks(recording(TextStreamer)):
        def put(self, value):
            self.sizes = getattr(self, "sizes", []) + [np.asarray(value).size]
            super().put(value)

    s = Chunks(tok, skip_prompt=True)
    out = model.generate(prompt, max_new_tokens=20, streamer=s, stream_chunk_size=4, **words)
    np.testing.assert_array_equal(out, plain)  # streaming does not change the tokens
    assert s.sizes[0] == prompt.shape[1] and sum(s.sizes[1:]) == 20
    assert len(s.sizes) >= 5 and max(s.sizes[1:]) <= 5  # chunks of 4 decode steps (+ the prefill token)
    assert "".join(s.pieces) == tok.decode(out[0, prompt.shape[1]:]) and s.ended == 1
    assert len([p for p in s.pieces if p]) >= 4  # words are shown as their chunk arrives
    # assisted decoding streams too
    a = recording(TextStreamer)(tok, skip_prompt=True)
    out_a = model.generate(prompt, max_new_tokens=20, streamer=a, prompt_lookup_num_tokens=3,
                           stream_chunk_size=4, **words)
    np.testing.assert_array_equal(out_a, plain)
    assert "".join(a.pieces) == tok.decode(out_a[0, prompt.shape[1]:])


def test_stop_strings_end_the_stream(chat):
    model, tok, _ = chat
    prompt = np.array([tok.encode("Tell me a story", add_special_tokens=False)])
    t = prompt.shape[1]
    words = dict(eos_token_id=None, suppress_tokens=non_words(tok))
    free = model.generate(prompt, max_new_tokens=24, **words)
    text = tok.decode(free[0, t:])
    stop = text[len(text) // 3: len(text) // 3 + 3]
    s = recording(TextStreamer)(tok, skip_prompt=True)
    out = model.generate(prompt, max_new_tokens=24, stop_strings=stop, tokenizer=tok, streamer=s,
                         stream_chunk_size=3, **words)
    streamed = "".join(s.pieces)
    assert streamed == tok.decode(out[0, t:])
    assert out.shape[1] < free.shape[1] and np.array_equal(out[0], free[0, : out.shape[1]])
    # the last token completes the stop string; one token fewer does not hold it
    assert stop in tok.decode(out[0, t:]) and stop not in tok.decode(out[0, t:-1])


def test_iterator_streamer_yields_while_generate_runs(chat):
    model, tok, _ = chat
    prompt = np.array([tok.encode("Hello there, how are", add_special_tokens=False)])
    first_taken = threading.Event()

    class Gated(TextIteratorStreamer):
        """Holds generation after its first non-empty piece until the reader has it: no timing involved."""

        def on_finalized_text(self, text, stream_end=False):
            super().on_finalized_text(text, stream_end)
            if text and not first_taken.is_set():
                assert first_taken.wait(timeout=60)

    streamer = Gated(tok, skip_prompt=True, timeout=60)
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("out", model.generate(
        prompt, max_new_tokens=24, eos_token_id=None, suppress_tokens=non_words(tok), streamer=streamer,
        stream_chunk_size=2)))
    thread.start()
    pieces = []
    for piece in streamer:
        if piece and not first_taken.is_set():
            assert thread.is_alive() and "out" not in result  # generation is still running
            first_taken.set()
        pieces.append(piece)
    thread.join(60)
    out = result["out"]
    assert "".join(pieces) == tok.decode(out[0, prompt.shape[1]:])
    assert len([p for p in pieces if p]) >= 2


def test_iterator_timeout_and_bad_streaming_options(chat):
    model, tok, _ = chat
    with pytest.raises(Empty):
        next(TextIteratorStreamer(tok, timeout=0.05))
    ids = np.array([[5, 6, 7]])
    with pytest.raises(ValueError, match="beam search"):
        model.generate(ids, max_new_tokens=3, num_beams=2, streamer=TextStreamer(tok))
    with pytest.raises(ValueError, match="batch size 1"):
        model.generate(np.array([[5, 6, 7], [5, 6, 8]]), max_new_tokens=3, streamer=TextStreamer(tok))
    with pytest.raises(ValueError, match="stream_chunk_size"):
        model.generate(ids, max_new_tokens=3, streamer=TextStreamer(tok), stream_chunk_size=0)
