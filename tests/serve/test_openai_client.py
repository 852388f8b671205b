"""`tern serve` driven by the official `openai` Python client.

Starts the server on a free 127.0.0.1 port with an API key, then checks non-streaming and streaming
chat and text completions (usage counts, the stream equal to the whole reply), OpenAI error types
(a wrong API key, an unknown role, an unknown model, a prompt too long), and a load test:
rounds of 32 concurrent streaming chats, some of whose clients hang up midway. Every completed
stream must equal the same request alone (greedy), the server must stay up, and its resident memory
must stay flat from round to round. Prints the load-test figures.

    python3 -m venv /tmp/venv-openai && /tmp/venv-openai/bin/pip install -r tests/serve/requirements.txt
    /tmp/venv-openai/bin/python tests/serve/test_openai_client.py --tern target/debug/tern \
        --model tests/fixtures/bitnet-2b4t
"""

import argparse
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import openai

MESSAGES = ["Hello", "Tell me a story", "What is 2+2?", "Bonjour", "Write a haiku"]
MAX_TOKENS = 20
API_KEY = "test-key"


def start_server(tern, model):
    env = dict(
        os.environ,
        XDG_RUNTIME_DIR=os.environ.get("XDG_RUNTIME_DIR", "/tmp"),
        TERN_API_KEY=API_KEY,
    )
    server = subprocess.Popen(
        # The queue holds every client of the load test.
        [tern, "serve", "--model", model, "--port", "0", "--context", "256", "--queue", "64"],
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


def load_test(client, model, server, rounds, clients, hang_ups):
    alone = [chat(client, model, m).choices[0].message.content for m in MESSAGES]
    memory = []
    for round_index in range(rounds):
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=clients) as pool:
            futures = [
                pool.submit(
                    stream_chat,
                    client,
                    model,
                    MESSAGES[i % len(MESSAGES)],
                    max_tokens=200 if i % (clients // hang_ups) == 0 else MAX_TOKENS,
                    hang_up_after=2 if i % (clients // hang_ups) == 0 else None,
                )
                for i in range(clients)
            ]
            results = [f.result() for f in futures]
        seconds = time.monotonic() - started
        completed = 0
        for i, result in enumerate(results):
            if result is not None:
                completed += 1
                assert result[0] == alone[i % len(MESSAGES)], (i, result[0])
        assert server.poll() is None, "the server exited"
        memory.append(resident_kib(server.pid))
        print(
            f"load round {round_index + 1}: {clients} concurrent streams, {completed} completed, "
            f"{clients - completed} hung up, {seconds:.2f} s, server RSS {memory[-1] / 1024:.1f} MiB"
        )
    growth = memory[-1] - memory[0]
    assert growth < 16 * 1024, f"server memory grew by {growth} KiB over {rounds - 1} rounds"
    print(f"load test OK: memory growth after round 1: {growth / 1024:.1f} MiB")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tern", required=True, help="the tern binary")
    parser.add_argument("--model", required=True, help="the model to serve")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--hang-ups", type=int, default=8, help="clients that disconnect per round")
    args = parser.parse_args()

    server, base, log = start_server(args.tern, args.model)
    try:
        client = openai.OpenAI(base_url=base + "/v1", api_key=API_KEY, max_retries=0, timeout=300)
        check_api_key(base, args.model)
        check_basics(client, args.model)
        load_test(client, args.model, server, args.rounds, args.clients, args.hang_ups)
        cancelled = sum("finish: cancelled" in line for line in log)
        assert cancelled >= args.hang_ups, f"only {cancelled} generations were cancelled"
    finally:
        server.kill()
        server.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
