"""`tern serve` driven by the official `openai` Python client.

Starts the server on a free 127.0.0.1 port with an API key, then checks non-streaming and streaming
chat and text completions (usage counts, the stream equal to the whole reply), OpenAI error types
(a wrong API key, an unknown role, an unknown model, a prompt too long), every request field beyond
those (top_k, min_p, the repetition / presence / frequency penalties, logit_bias, logprobs checked
against `tern logits`, refused response_format and tools, /v1/models, --alias, the default
max_tokens of chats), and the continuous
batching under load (`--parallel 8`): three rounds of 32 different requests at once — chat and text
completions, streamed and whole, greedy and seeded sampling, mixed prompt lengths and budgets, one
in eight hanging up midway. Every completed reply must equal the same request served alone, /metrics
must account for them, a queue overflow must get 503 + Retry-After while the server keeps serving,
and its resident memory must stay flat over the rounds and over 1000 short requests with hang-ups.
Prints the load-test figures.

    python3 -m venv /tmp/venv-openai && /tmp/venv-openai/bin/pip install -r tests/serve/requirements.txt
    /tmp/venv-openai/bin/python tests/serve/test_openai_client.py --tern target/debug/tern \
        --model tests/fixtures/bitnet-2b4t
"""

import argparse
import array
import json
import math
import os
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai

MESSAGES = ["Hello", "Tell me a story", "What is 2+2?", "Bonjour", "Write a haiku"]
MAX_TOKENS = 20
API_KEY = "test-key"
PARALLEL = 8
QUEUE = 40
ALIAS = "tern-test-alias"
DEFAULT_MAX_TOKENS = 24


def start_server(tern, model, options=None):
    """`tern serve` on a free port with `options` (default: the load test's); returns the process,
    its base URL and its log lines."""
    if options is None:
        # The queue holds every client of the load test.
        options = ["--context", "256", "--parallel", str(PARALLEL), "--queue", str(QUEUE),
                   "--alias", ALIAS, "--max-tokens-default", str(DEFAULT_MAX_TOKENS)]
    env = dict(
        os.environ,
        XDG_RUNTIME_DIR=os.environ.get("XDG_RUNTIME_DIR", "/tmp"),
        TERN_API_KEY=API_KEY,
    )
    server = subprocess.Popen(
        [tern, "serve", "--model", model, "--port", "0", *options],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    log = []
    address = None
    for line in server.stderr:
        log.append(line)
        if " on http://" in line:
            address = line.split(" on http://")[1].strip().removesuffix("/v1")
            break
    if address is None:
        raise SystemExit("tern serve did not start:\n" + "".join(log))
    # Keep draining stderr so that the server never blocks on a full pipe.
    threading.Thread(target=lambda: log.extend(server.stderr), daemon=True).start()
    return server, "http://" + address, log


def resident_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def chat(client, model, message, max_tokens=MAX_TOKENS):
    return client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": message}],
        max_tokens=max_tokens,
        temperature=0,
    )


def stream_chat(client, model, message, max_tokens=MAX_TOKENS, hang_up_after=None):
    """The streamed text and usage, or None if the client hangs up after `hang_up_after` chunks."""
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": message}],
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage, finish = [], None, None
    for count, chunk in enumerate(stream):
        if hang_up_after is not None and count == hang_up_after:
            stream.close()
            return None
        assert chunk.object == "chat.completion.chunk"
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert finish in ("stop", "length"), finish
    return "".join(text), usage


def check_basics(client, model):
    assert [m.id for m in client.models.list()] == [model]

    reply = chat(client, model, "Hello")
    content = reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == MAX_TOKENS
    assert reply.usage.prompt_tokens > 1
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + MAX_TOKENS

    streamed, usage = stream_chat(client, model, "Hello")
    assert streamed == content, (streamed, content)
    assert usage.completion_tokens == MAX_TOKENS
    assert usage.prompt_tokens == reply.usage.prompt_tokens

    completion = client.completions.create(model=model, prompt="The", max_tokens=8, temperature=0)
    assert completion.usage.completion_tokens == 8
    pieces = client.completions.create(
        model=model, prompt="The", max_tokens=8, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in pieces) == completion.choices[0].text

    seeded = [
        client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=12,
            temperature=0.9,
            top_p=0.95,
            seed=7,
        )
        .choices[0]
        .message.content
        for _ in range(2)
    ]
    assert seeded[0] == seeded[1], seeded

    try:
        chat(client, "no-such-model", "Hello")
        raise AssertionError("an unknown model was accepted")
    except openai.NotFoundError as error:
        assert error.status_code == 404
    try:
        client.completions.create(model=model, prompt="word " * 400)
        raise AssertionError("a prompt longer than the context was accepted")
    except openai.BadRequestError as error:
        assert error.code == "context_length_exceeded", error

    developer = client.chat.completions.create(
        model=model,
        messages=[
            {"role": "developer", "content": "Answer briefly."},
            {"role": "user", "content": "Hello"},
        ],
        max_tokens=4,
    )
    assert developer.usage.completion_tokens == 4
    try:
        client.chat.completions.create(
            model=model, messages=[{"role": "narrator", "content": "Hello"}], max_tokens=4
        )
        raise AssertionError("an unknown role was accepted")
    except openai.BadRequestError as error:
        assert "narrator" in error.message, error
    print("openai client: chat, completions, streaming, usage and errors OK")


def expect_400(param, call):
    """`call` must fail with 400 naming the field `param`."""
    try:
        call()
    except openai.BadRequestError as error:
        assert error.param == param, (param, error)
        return error
    raise AssertionError(f"a bad `{param}` was accepted")


REPEATING = "one two three one two three one two three one two three one"


def complete(client, model, prompt=REPEATING, max_tokens=16, **fields):
    fields.setdefault("temperature", 0)
    return client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, **fields)


def check_sampling_fields(client, model):
    greedy = complete(client, model).choices[0].text
    assert len(greedy) > 0
    # top_k = 1 under sampling is greedy; min_p and a unit repetition penalty change nothing.
    for extra in ({"top_k": 1}, {"top_k": 1, "min_p": 0.5}, {"repeat_penalty": 1.0}):
        same = complete(client, model, temperature=1.0, seed=3, extra_body=extra).choices[0].text
        if "top_k" not in extra:
            same = complete(client, model, extra_body=extra).choices[0].text
        assert same == greedy, (extra, same, greedy)
    # The greedy reply to a repeating prompt repeats; each penalty breaks the repetition.
    for fields in (
        {"frequency_penalty": 2.0},
        {"presence_penalty": 2.0},
        {"extra_body": {"repetition_penalty": 1.5}},
        {"extra_body": {"repeat_penalty": 1.5}},
    ):
        penalized = complete(client, model, **fields).choices[0].text
        assert penalized != greedy, (fields, penalized)
    # A +100 bias makes the biased token the only one generated.
    one = complete(client, model, max_tokens=1, logit_bias={"1000": 100})
    five = complete(client, model, max_tokens=5, logit_bias={"1000": 100})
    assert five.usage.completion_tokens == 5
    assert five.choices[0].text == one.choices[0].text * 5, (one, five)
    chat_biased = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=3,
        temperature=0.8, logit_bias={"1000": 100},
    )
    assert chat_biased.choices[0].message.content == one.choices[0].text * 3, chat_biased

    for param, extra in [
        ("top_k", {"top_k": -1}),
        ("min_p", {"min_p": 1.5}),
        ("repeat_penalty", {"repeat_penalty": 0}),
        ("repetition_penalty", {"repetition_penalty": -1}),
        ("top_p", {"top_p": 0}),
    ]:
        expect_400(param, lambda: complete(client, model, extra_body=extra))
    expect_400("presence_penalty", lambda: complete(client, model, presence_penalty=2.5))
    expect_400("frequency_penalty", lambda: complete(client, model, frequency_penalty=-3))
    expect_400("logit_bias", lambda: complete(client, model, logit_bias={"999999999": 1}))
    expect_400("logit_bias", lambda: complete(client, model, logit_bias={"word": 1}))
    expect_400("logit_bias", lambda: complete(client, model, logit_bias={"1000": 101}))
    print("openai client: top_k, min_p, repetition / presence / frequency penalties, logit_bias OK")


def tern_logits_row(tern, model, ids):
    """The last row of `tern logits` for `ids`: the model's logits after them."""
    out = f"/tmp/tern-logits-{os.getpid()}.safetensors"
    subprocess.run([tern, "logits", "--model", model, "--ids", ",".join(map(str, ids)),
                    "--out", out], check=True, capture_output=True)
    with open(out, "rb") as f:
        data = f.read()
    os.remove(out)
    header_len = struct.unpack("<Q", data[:8])[0]
    info = json.loads(data[8:8 + header_len])["logits"]
    rows, vocab = info["shape"]
    start = 8 + header_len + info["data_offsets"][0]
    row = array.array("f")
    row.frombytes(data[start + (rows - 1) * vocab * 4:start + rows * vocab * 4])
    return list(row)


def log_softmax(row):
    top = max(row)
    log_z = top + math.log(sum(math.exp(v - top) for v in row))
    return [v - log_z for v in row]


PROMPT_IDS = [1, 300, 301, 302, 303, 304]


def check_logprobs(client, model, tern):
    """Log-probabilities are the model's own (log-softmax of the raw logits), as `tern logits`
    computes them, whatever the sampling."""
    whole = complete(client, model, prompt=PROMPT_IDS, max_tokens=3, logprobs=5,
                     frequency_penalty=1.0, temperature=0)
    lp = whole.choices[0].logprobs
    n = len(lp.tokens)
    # Every token has an entry, but an end of turn (no part of the text).
    ended = whole.choices[0].finish_reason == "stop"
    assert n == whole.usage.completion_tokens - ended and len(lp.token_logprobs) == n, lp
    assert len(lp.top_logprobs) == n and len(lp.text_offset) == n, lp
    ids = list(PROMPT_IDS)
    for k in range(n):
        want = log_softmax(tern_logits_row(tern, model, ids))
        ranked = sorted(range(len(want)), key=lambda i: (-want[i], i))
        top = sorted(lp.top_logprobs[k].values(), reverse=True)
        assert len(lp.top_logprobs[k]) <= 5
        for got, i in zip(top, ranked):
            assert abs(got - want[i]) < 1e-4, (k, got, want[i])
        # The penalty may change the choice, not the log-probabilities: find the chosen token
        # among those whose log-probability matches.
        chosen = [i for i in range(len(want)) if abs(want[i] - lp.token_logprobs[k]) < 1e-4]
        assert chosen, (k, lp.token_logprobs[k])
        ids.append(chosen[0])
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset), lp.text_offset

    streamed = complete(client, model, prompt=PROMPT_IDS, max_tokens=3, logprobs=5,
                        frequency_penalty=1.0, stream=True)
    got = [c.choices[0].logprobs for c in streamed if c.choices and c.choices[0].logprobs]
    assert [g.tokens[0] for g in got] == lp.tokens, (got, lp)
    assert [g.token_logprobs[0] for g in got] == lp.token_logprobs
    assert [g.text_offset[0] for g in got] == lp.text_offset

    def chat_logprobs(**fields):
        return client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Hello"}], max_tokens=6,
            temperature=0, logprobs=True, **fields)
    reply = chat_logprobs(top_logprobs=3)
    content = reply.choices[0].logprobs.content
    ended = reply.choices[0].finish_reason == "stop"
    assert len(content) == reply.usage.completion_tokens - ended, reply
    assert "".join(e.token for e in content) == reply.choices[0].message.content, content
    for entry in content:
        assert entry.bytes == list(entry.token.encode()), entry
        values = [t.logprob for t in entry.top_logprobs]
        assert len(values) == 3 and values == sorted(values, reverse=True), entry
        # Greedy: the chosen token is the most likely one.
        assert entry.top_logprobs[0].token == entry.token, entry
        assert abs(entry.top_logprobs[0].logprob - entry.logprob) < 1e-6, entry
    pieces = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Hello"}], max_tokens=6,
        temperature=0, logprobs=True, top_logprobs=3, stream=True)
    streamed = [e for c in pieces if c.choices and c.choices[0].logprobs
                for e in c.choices[0].logprobs.content]
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in content]
    assert chat_logprobs().choices[0].logprobs.content[0].top_logprobs == []
    # An end of turn (forced here by a bias on the fixture's <|eot_id|>) gets no entry.
    ended = chat_logprobs(logit_bias={"1021": 100})
    assert ended.choices[0].finish_reason == "stop" and ended.usage.completion_tokens == 1, ended
    assert ended.choices[0].logprobs.content == [], ended
    plain = chat(client, model, "Hello")
    assert plain.choices[0].logprobs is None
    expect_400("top_logprobs", lambda: client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=2, top_logprobs=2))
    expect_400("top_logprobs", lambda: chat_logprobs(top_logprobs=21))
    expect_400("logprobs", lambda: complete(client, model, logprobs=21))
    print("openai client: logprobs (chat and completions, whole and streamed) match tern logits")


def check_refused_fields(client, model):
    """Fields that would change the reply's form are refused, never silently ignored."""
    def ask(**fields):
        return client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=2, **fields)
    assert ask(response_format={"type": "text"}).usage.completion_tokens == 2
    for kind in ("json_object", "json_schema"):
        fmt = {"type": kind}
        if kind == "json_schema":
            fmt["json_schema"] = {"name": "x", "schema": {"type": "object"}}
        error = expect_400("response_format", lambda: ask(response_format=fmt))
        assert "not supported yet" in error.message, error
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    expect_400("tools", lambda: ask(tools=[tool]))
    expect_400("tool_choice", lambda: ask(tool_choice="required"))
    expect_400("functions", lambda: ask(functions=[tool["function"]]))
    # Empty lists and "none" ask for nothing.
    assert ask(tools=[], tool_choice="none").usage.completion_tokens == 2
    print("openai client: response_format json_* and tools refused (400), text accepted")


def check_models(client, model):
    """/v1/models describes the model; --alias names it too; --max-tokens-default bounds chats."""
    (listed,) = client.models.list().data
    for described in (listed, client.models.retrieve(model), client.models.retrieve(ALIAS)):
        assert described.id == model and described.owned_by == "tern", described
        extra = described.model_extra
        assert extra["context_length"] == 256, extra
        assert extra["quantization"] == "ternary b1.58", extra
        assert extra["size_bytes"] > 0 and extra["aliases"] == [ALIAS], extra
    by_alias = chat(client, ALIAS, "Hello").choices[0].message.content
    assert by_alias == chat(client, model, "Hello").choices[0].message.content
    try:
        client.models.retrieve("not-" + ALIAS)
        raise AssertionError("an unknown model was described")
    except openai.NotFoundError:
        pass
    # No max_tokens: a chat stops at --max-tokens-default (or earlier, at an end of turn).
    for message in MESSAGES:
        unbounded = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": message}], temperature=0)
        tokens, finish = unbounded.usage.completion_tokens, unbounded.choices[0].finish_reason
        assert tokens <= DEFAULT_MAX_TOKENS, unbounded.usage
        assert (finish == "length") == (tokens == DEFAULT_MAX_TOKENS), unbounded
    text = client.completions.create(model=model, prompt=REPEATING, temperature=0)
    assert text.usage.completion_tokens == 16, text.usage
    print("openai client: /v1/models fields, --alias and --max-tokens-default OK")


def check_api_key(base, model):
    for key in ("wrong-key", API_KEY + "x"):
        stranger = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
        try:
            stranger.models.list()
            raise AssertionError(f"the API key {key!r} was accepted")
        except openai.AuthenticationError as error:
            assert error.status_code == 401 and error.code == "invalid_api_key", error
        try:
            chat(stranger, model, "Hello")
            raise AssertionError(f"the API key {key!r} was accepted")
        except openai.AuthenticationError:
            pass
    print("openai client: a wrong API key is refused (401)")


WORDS = "the quick brown fox jumps over a lazy dog while seven wizards quietly hex".split()


def request_specs(count):
    """`count` different requests: mixed prompt lengths and budgets, chat and text completions,
    streamed or whole, greedy or seeded sampling; every eighth hangs up after two chunks."""
    specs = []
    for i in range(count):
        words = " ".join(WORDS[(i + j) % len(WORDS)] for j in range(1 + (i * 13) % 60))
        specs.append(
            {
                "chat": i % 2 == 0,
                "stream": i % 4 < 2,
                "prompt": f"{MESSAGES[i % len(MESSAGES)]}: {words}",
                "max_tokens": 4 + (i * 7) % 37,
                "sampling": {"temperature": 0} if i % 3 else {"temperature": 0.8, "seed": i},
                "hang_up": i % 8 == 5,
            }
        )
    return specs


def run_request(client, model, spec, hang_up=False):
    """The reply's text, or None if the client hung up midway."""
    common = dict(model=model, max_tokens=200 if hang_up else spec["max_tokens"], **spec["sampling"])
    if spec["chat"]:
        call = client.chat.completions.create
        common["messages"] = [{"role": "user", "content": spec["prompt"]}]
        piece = lambda choice: choice.delta.content or ""  # noqa: E731
    else:
        call = client.completions.create
        common["prompt"] = spec["prompt"]
        piece = lambda choice: choice.text or ""  # noqa: E731
    if not spec["stream"] and not hang_up:
        reply = call(**common).choices[0]
        return reply.message.content if spec["chat"] else reply.text
    stream = call(stream=True, **common)
    text = []
    for count, chunk in enumerate(stream):
        if hang_up and count == 2:
            stream.close()
            return None
        text.extend(piece(choice) for choice in chunk.choices)
    return "".join(text)


def metrics(base):
    """The server's /metrics as {name{labels}: value}."""
    with urllib.request.urlopen(base + "/metrics") as response:
        body = response.read().decode()
    values = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def load_test(client, model, server, base, rounds, clients):
    """Rounds of `clients` different requests at once against `--parallel` slots: every completed
    reply equals the same request served alone, hang-ups are cancelled, memory stays flat."""
    specs = request_specs(clients)
    alone = [run_request(client, model, spec) for spec in specs]
    memory = []
    for round_index in range(rounds):
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=clients) as pool:
            futures = [
                pool.submit(run_request, client, model, spec, spec["hang_up"]) for spec in specs
            ]
            results = [f.result() for f in futures]
        seconds = time.monotonic() - started
        completed = 0
        for i, result in enumerate(results):
            if result is not None:
                completed += 1
                assert result == alone[i], (i, specs[i], result, alone[i])
            else:
                assert specs[i]["hang_up"], i
        assert server.poll() is None, "the server exited"
        memory.append(resident_kib(server.pid))
        print(
            f"load round {round_index + 1}: {clients} concurrent requests, {completed} completed "
            f"(each identical to it alone), {clients - completed} hung up, {seconds:.2f} s, "
            f"server RSS {memory[-1] / 1024:.1f} MiB"
        )
    growth = memory[-1] - memory[0]
    assert growth < 16 * 1024, f"server memory grew by {growth} KiB over {rounds - 1} rounds"
    values = metrics(base)
    assert values["tern_slots"] == PARALLEL, values
    assert values["tern_slots_busy"] == 0 and values["tern_queue_depth"] == 0, values
    assert values['tern_requests_total{finish_reason="cancelled"}'] >= rounds * sum(
        s["hang_up"] for s in specs
    ), values
    assert values["tern_time_to_first_token_seconds_count"] >= rounds * clients, values
    print(f"load test OK: memory growth after round 1: {growth / 1024:.1f} MiB; /metrics agrees")


def full_queue(client, model, server, clients):
    """More requests than slots and queue hold: the rest get 503 with Retry-After at once, and the
    server answers normally afterwards."""
    refused = []

    def one(_):
        try:
            chat(client, model, "Hello", max_tokens=200)
            return None
        except openai.APIStatusError as error:
            refused.append(error)
            return error.status_code

    with ThreadPoolExecutor(max_workers=clients) as pool:
        codes = list(pool.map(one, range(clients)))
    assert refused, "no request was refused with the queue full"
    assert all(code in (None, 503) for code in codes), codes
    assert all(e.response.headers.get("retry-after") for e in refused), "no Retry-After"
    assert server.poll() is None, "the server exited"
    assert chat(client, model, "Hello").choices[0].finish_reason == "length"
    print(f"full queue: {len(refused)} of {clients} refused with 503 + Retry-After; still serving")


def churn(client, model, server, requests):
    """`requests` short requests, a fifth of them hung up after their first chunk: the server's
    memory after them is what it was after the first hundred."""
    spec = {"chat": True, "stream": True, "prompt": "Hi", "max_tokens": 3, "sampling": {}}

    def one(i):
        return run_request(client, model, spec, hang_up=i % 5 == 0)

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(one, range(100)))
        before = resident_kib(server.pid)
        started = time.monotonic()
        list(pool.map(one, range(requests - 100)))
    growth = resident_kib(server.pid) - before
    seconds = time.monotonic() - started
    assert server.poll() is None, "the server exited"
    assert growth < 16 * 1024, f"server memory grew by {growth} KiB over {requests} requests"
    print(f"churn: {requests} requests ({requests // 5} hung up) in {seconds:.1f} s, "
          f"memory growth {growth / 1024:.1f} MiB")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tern", required=True, help="the tern binary")
    parser.add_argument("--model", required=True, help="the model to serve")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--churn", type=int, default=1000, help="requests of the memory check")
    args = parser.parse_args()

    server, base, log = start_server(args.tern, args.model)
    try:
        client = openai.OpenAI(base_url=base + "/v1", api_key=API_KEY, max_retries=0, timeout=300)
        check_api_key(base, args.model)
        check_basics(client, args.model)
        check_sampling_fields(client, args.model)
        check_logprobs(client, args.model, args.tern)
        check_refused_fields(client, args.model)
        check_models(client, args.model)
        load_test(client, args.model, server, base, args.rounds, args.clients)
        full_queue(client, args.model, server, PARALLEL + QUEUE + 64)
        churn(client, args.model, server, args.churn)
        cancelled = sum("finish: cancelled" in line for line in log)
        assert cancelled >= args.rounds * 4, f"only {cancelled} generations were cancelled"
    finally:
        server.kill()
        server.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
