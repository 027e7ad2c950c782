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
BENCHMARKS = ["attention", "train", "dropout", "generate", "export", "bucketing"]
HAND_WRITTEN_MARKER = "<!-- Sections below are written by hand"


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
    train = load("train")
    if train:
        lines += train_section(train)
    dropout = load("dropout")
    if dropout:
        lines += [
            "## Dropout of one (64, 64, 256) activation in a `tf.function` "
            "(why ours hashes its masks under XLA)",
            "",
            "| case | ms |",
            "| --- | --- |",
        ] + [f"| {k} | {v:.2f} |" for k, v in dropout["ms"].items()] + [""]
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
    path = os.path.join(HERE, "RESULTS.md")
    # The sections after the marker come from runs that this script does not
    # make (issues' one-off measurements): they are kept as they are.
    kept = ""
    if os.path.exists(path):
        text = open(path, encoding="utf-8").read()
        if HAND_WRITTEN_MARKER in text:
            kept = text[text.index(HAND_WRITTEN_MARKER):]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + ("\n" + kept if kept else ""))
    print("\n".join(lines))


def train_section(t):
    c = t["config"]
    runs = t["runs"]
    lines = [
        f"## Training in `model.fit`: target tokens/s (width {c['hidden_dim']}, "
        f"{c['num_heads']} heads, feed-forward {c['intermediate_dim']}, "
        f"{c['num_layers']}+{c['num_layers']} layers, vocabulary {c['vocabulary_size']}, "
        f"length {c['length']}, batch {c['batch']}, dropout {c['dropout']})",
        "",
        f"float32 matmul ceiling measured in the same run: {t['ceiling_gflops']:.0f} GFLOP/s; "
        f"model FLOPs per training step: {t['train_flops_per_step'] / 1e9:.1f} GFLOP "
        "(formula in `benchmarks/train.py`).",
        "",
        "| model | XLA | precision | parameters | ms/step | tokens/s | MFU |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    main_job = [r for r in runs if r.get("config") == "main_job"]
    runs = [r for r in runs if r.get("config", "issue5") == "issue5"]
    main_runs = [r for r in runs if not r["lever"] and not r.get("xla_flags")]
    for r in main_runs:
        lines.append(f"| {r['model']} | {r['jit_compile']} | {r['precision']} | "
                     f"{r['parameters']:,} | {1000 * r['step_seconds']:.0f} | "
                     f"{r['tokens_per_second']:,.0f} | {100 * r['mfu']:.0f}% |")

    def best(model, **where):
        rows = [r for r in main_runs if r["model"] == model
                and all(r[k] == v for k, v in where.items())]
        return max(rows, key=lambda r: r["tokens_per_second"]) if rows else None

    if t.get("head_to_head"):
        lines += ["", "Head to head: the three models trained one step each in turn in one "
                  "process (`train_on_batch`, the step `fit` compiles), so that the CPU's "
                  "drift hits all three alike; speed-up = their step time / ours:", "",
                  "| XLA | ours ms/step | keras_hub ms/step | tutorial ms/step | "
                  "ours vs keras_hub | ours vs tutorial |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for r in t["head_to_head"]:
            st = r["step_seconds"]
            lines.append(f"| {r['jit_compile']} | {1000 * st['ours']:.0f} | "
                         f"{1000 * st['keras_hub']:.0f} | {1000 * st['tutorial']:.0f} | "
                         f"{st['keras_hub'] / st['ours']:.2f}x | "
                         f"{st['tutorial'] / st['ours']:.2f}x |")
        bests = {n: min(r["step_seconds"][n] for r in t["head_to_head"])
                 for n in ("ours", "keras_hub", "tutorial")}
        lines.append(f"| best mode of each | {1000 * bests['ours']:.0f} | "
                     f"{1000 * bests['keras_hub']:.0f} | {1000 * bests['tutorial']:.0f} | "
                     f"{bests['keras_hub'] / bests['ours']:.2f}x | "
                     f"{bests['tutorial'] / bests['ours']:.2f}x |")
    lines += ["", "Ratios of the `model.fit` runs above (one process each, one after "
              "another):", "",
              "| ratio (tokens/s) | vs keras_hub | vs tutorial |", "| --- | --- | --- |"]
    for label, where, theirs_where in (
        ("ours best / their best", {}, {}),
        ("ours XLA / their XLA (float32)", {"jit_compile": True, "precision": "float32"},
         {"jit_compile": True}),
        ("ours no XLA / their no XLA (float32)", {"jit_compile": False, "precision": "float32"},
         {"jit_compile": False}),
    ):
        ours = best("ours", **where)
        cells = []
        for other in ("keras_hub", "tutorial"):
            theirs = best(other, **theirs_where)
            cells.append(f"{ours['tokens_per_second'] / theirs['tokens_per_second']:.2f}x"
                         if ours and theirs else "-")
        lines.append(f"| {label} | {cells[0]} | {cells[1]} |")
    flag_runs = [r for r in runs if r.get("xla_flags") and not r["lever"]]
    if t.get("levers") or flag_runs:
        lines += ["", "Levers, ours with XLA: each run against the shipped model in the same "
                  "process, one training step of each in turn (so that the CPU's drift hits "
                  "both); > 1: the shipped way is faster.", "",
                  "| turned off | shipped ms/step | turned off ms/step | speed-up of shipping it |",
                  "| --- | --- | --- | --- |"]
        for r in t.get("levers", []):
            lines.append(f"| {r['lever']} | {1000 * r['shipped_seconds']:.0f} | "
                         f"{1000 * r['lever_off_seconds']:.0f} | {r['speedup']:.2f}x |")
        base = best("ours", jit_compile=True, precision="float32")
        for r in flag_runs:
            lines.append(f"| (XLA_FLAGS={r['xla_flags']}, separate process) | "
                         f"{1000 * base['step_seconds']:.0f} | "
                         f"{1000 * r['step_seconds']:.0f} | "
                         f"{r['step_seconds'] / base['step_seconds']:.2f}x |")
    if main_job:
        lines += ["", "The main job's own shapes (tiny preset, vocabulary 2,400, source 15, "
                  "target 20, batch 64), ours: " + ", ".join(
                      f"XLA {r['jit_compile']}: {r['tokens_per_second']:,.0f} tokens/s"
                      for r in main_job) + "."]
    return lines + [""]


def main():
    names = sys.argv[1:] or BENCHMARKS
    for name in names:
        run(name)
    write_results()


if __name__ == "__main__":
    main()
