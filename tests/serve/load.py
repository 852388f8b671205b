"""Load `tern serve` with the official `openai` client: for each N of --concurrent, a server with
`--parallel N` gets N streaming chats at once (--max-tokens each, greedy);
prints aggregate and per-stream tokens/s, time to first token p50/p95 and the server's resident
memory per setting (BENCHMARKS.md, continuous batching). A benchmark: it asserts nothing.

    /tmp/venv-openai/bin/python tests/serve/load.py --tern target/release/tern \
        --model tests/fixtures/bitnet-2b4t --concurrent 1,2,4,8,16 [--json]
"""

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import openai

from test_openai_client import API_KEY, resident_kib, start_server


def stream(client, model, index, max_tokens):
    """(seconds to the first content chunk, completion tokens, seconds in all) of one chat."""
    started = time.monotonic()
    first = None
    chunks = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": f"Story number {index}, please."}],
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    tokens = 0
    for chunk in chunks:
        if first is None and any(c.delta.content for c in chunk.choices):
            first = time.monotonic() - started
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return first, tokens, time.monotonic() - started


def percentile(values, p):
    values = sorted(values)
    return values[max(0, min(len(values) - 1, int(len(values) * p + 0.999999) - 1))]


def measure(tern, model, streams, max_tokens, context):
    server, base, _ = start_server(tern, model, ["--parallel", str(streams), "--context", str(context)])
    try:
        client = openai.OpenAI(base_url=base + "/v1", api_key=API_KEY, max_retries=0, timeout=3600)
        stream(client, model, -1, 2)  # warm up: pipelines, first allocations
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=streams) as pool:
            results = list(pool.map(lambda i: stream(client, model, i, max_tokens), range(streams)))
        wall = time.monotonic() - started
        tokens = sum(r[1] for r in results)
        first = [r[0] for r in results if r[0] is not None]
        return {
            "streams": streams,
            "aggregate_tok_s": tokens / wall,
            "per_stream_tok_s": sum(r[1] / r[2] for r in results) / streams,
            "ttft_p50_ms": percentile(first, 0.5) * 1e3,
            "ttft_p95_ms": percentile(first, 0.95) * 1e3,
            "server_rss_mib": resident_kib(server.pid) / 1024,
        }
    finally:
        server.kill()
        server.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tern", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--concurrent", default="1,2,4,8,16")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = [
        measure(args.tern, args.model, int(n), args.max_tokens, args.context)
        for n in args.concurrent.split(",")
    ]
    single = next((r["aggregate_tok_s"] for r in rows if r["streams"] == 1), None)
    for row in rows:
        row["aggregate_over_single"] = row["aggregate_tok_s"] / single if single else None
    if args.json:
        print(json.dumps({"model": args.model, "max_tokens": args.max_tokens, "rows": rows}))
        return 0
    print(f"{'streams':>7} {'aggregate/s':>12} {'per stream/s':>13} {'vs one':>7} "
          f"{'TTFT p50 ms':>12} {'TTFT p95 ms':>12} {'RSS MiB':>8}")
    for r in rows:
        ratio = f"{r['aggregate_over_single']:.2f}" if r["aggregate_over_single"] else "-"
        print(f"{r['streams']:>7} {r['aggregate_tok_s']:>12.1f} {r['per_stream_tok_s']:>13.1f} "
              f"{ratio:>7} {r['ttft_p50_ms']:>12.0f} {r['ttft_p95_ms']:>12.0f} "
              f"{r['server_rss_mib']:>8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
