"""Runs every benchmark (each in its own process, one after another, so they
do not share the 2 cores) and rewrites benchmarks/RESULTS.md.

    python benchmarks/run.py            # all
    python benchmarks/run.py attention  # some
"""

import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BENCHMARKS = ["attention", "generate", "export", "bucketing"]


def run(name):
    print(f"== {name}", flush=True)
    subprocess.run([sys.executable, os.path.join(HERE, f"{name}.py")], check=True,
                   env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


def load(name):
    path = os.path.join(HERE, "results", f"{name}.json")
    return json.load(open(path)) if os.path.exists(path) else None


def write_results():
    lines = [
        "# Benchmark results",
        "",
        f"Written by `python benchmarks/run.py` on {time.strftime('%Y-%m-%d')}, "
        f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
        "every comparison made within one run. Speed-up = theirs / ours (> 1: ours faster).",
        "",
    ]
    attention = load("attention")
    if attention:
        c = attention["config"]
        lines += [
            f"## Attention and encoder block: forward + backward, batch {c['batch']}, "
            f"length {c['length']}, width {c['width']}, {c['heads']} heads, padding mask",
            "",
            "| case | XLA | ours ms | theirs ms | speed-up |",
            "| --- | --- | --- | --- | --- |",
        ]
        for key, r in attention["results"].items():
            case, jit = key.split("/")
            other = [k for k in r if k.endswith("_ms") and not k.startswith("ours")][0]
            lines.append(f"| {case} vs {other[:-3]} | {jit.split('=')[1]} | {r['ours_ms']:.1f} | "
                         f"{r[other]:.1f} | {r['speedup']:.2f}x |")
        lines.append("")
    generate = load("generate")
    if generate:
        lines += [
            "## Greedy generation: ms per generated token (source 64, 64 new tokens, "
            "width 256, 4+4 layers, vocabulary 8000)",
            "",
            "| batch | implementation | ms/token |",
            "| --- | --- | --- |",
        ]
        for batch, r in generate.items():
            for name, ms in sorted(r["ms_per_token"].items()):
                lines.append(f"| {batch.split('=')[1]} | {name} | {ms:.2f} |")
            lines.append(f"| {batch.split('=')[1]} | **best vs best** | naive / ours "
                         f"{r['speedup_vs_naive']:.1f}x, keras-hub / ours "
                         f"{r['speedup_vs_keras_hub']:.1f}x |")
        lines.append("")
    export = load("export")
    if export:
        lines += [
            "## Exports: one translation at batch 1 (main job's artefacts)",
            "",
            "| artefact | ms | MB |",
            "| --- | --- | --- |",
        ] + [f"| {a} | {ms} | {mb} |" for a, ms, mb in export["rows"]] + [""]
    bucketing = load("bucketing")
    if bucketing:
        lines += [
            "## Length bucketing: real target tokens per second in training "
            "(mixed-length corpus, tiny preset)",
            "",
            "| batching | tokens/s |",
            "| --- | --- |",
        ] + [f"| {k} | {v:,.0f} |" for k, v in bucketing["tokens_per_second"].items()] + [
            f"| bucketed / padded | {bucketing['speedup']:.2f}x |", ""]
    with open(os.path.join(HERE, "RESULTS.md"), "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


def main():
    names = sys.argv[1:] or BENCHMARKS
    for name in names:
        run(name)
    write_results()


if __name__ == "__main__":
    main()
