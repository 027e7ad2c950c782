"""The main job end to end, on a small corpus (the full default run is in
the README and its figures in metrics.json). Each run also covers one
precision or strategy: float32 (resume), mixed_bfloat16 (artefacts),
mixed_float16 (user corpus), two workers (MultiWorkerMirroredStrategy)."""

import glob
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from tests.distribute.cluster import run_workers

# TensorFlow-only feature (tests/conftest.py): skipped on JAX and PyTorch.
pytestmark = pytest.mark.tensorflow_only

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "examples", "translate_numbers.py")
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CI": "1"}


def run(*args, timeout=600):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True,
                          text=True, timeout=timeout, env=ENV, cwd=ROOT)


SMALL = ["--train-size", "300", "--batch-size", "32", "--no-export"]


def assert_finite_history(metrics, epochs):
    """metrics.json's per-epoch training and validation figures: one per
    epoch, all finite (a NaN or an inf under mixed precision shows here)."""
    history = metrics["history"]
    assert set(history) == {"loss", "masked_accuracy", "val_loss", "val_masked_accuracy"}
    for name, values in history.items():
        assert len(values) == epochs and all(math.isfinite(v) for v in values), (name, values)
    assert 0 < history["loss"][-1] < 10


def test_main_job_writes_its_artefacts_and_refuses_to_overwrite_mixed_bfloat16(tmp_path):
    out = str(tmp_path / "run")
    result = run(*SMALL, "--epochs", "1", "--out", out, "--precision", "mixed_bfloat16")
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("model.keras", "source_vocab.txt", "target_vocab.txt", "metrics.json",
                 "attention.png"):
        assert os.path.exists(os.path.join(out, name)), name
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert 0 <= metrics["bleu"] <= 100 and 0 <= metrics["exact_match"] <= 1
    assert metrics["train_seconds"] > 0
    assert metrics["precision"] == "mixed_bfloat16" and metrics["replicas"] == 1
    assert_finite_history(metrics, epochs=1)
    assert "Test (" in result.stdout and "BLEU" in result.stdout
    before = os.path.getmtime(os.path.join(out, "model.keras"))
    again = run(*SMALL, "--epochs", "1", "--out", out)
    assert again.returncode == 2 and "--overwrite" in again.stderr
    assert os.path.getmtime(os.path.join(out, "model.keras")) == before


def test_killed_run_resumes_from_its_last_epoch(tmp_path):
    out = str(tmp_path / "resume")
    args = [*SMALL, "--epochs", "3", "--out", out, "--pair", "en-de"]
    process = subprocess.Popen([sys.executable, SCRIPT, *args], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=ENV, cwd=ROOT)
    # The epoch counter is written last: once it exists, epoch 1 is saved.
    backup = os.path.join(out, ".work", "backup", "training_metadata.json")
    deadline = time.time() + 300
    while time.time() < deadline and not os.path.exists(backup):
        assert process.poll() is None, process.stdout.read()[-3000:]
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not os.path.exists(os.path.join(out, "model.keras"))
    result = run(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Resuming" in result.stdout
    assert "Epoch 1/3" not in result.stdout and "Epoch 3/3" in result.stdout
    assert json.load(open(os.path.join(out, "metrics.json")))["epochs"] == 3


def test_trains_on_a_users_tsv_corpus_including_anki_files_mixed_float16(tmp_path):
    """--data: a deterministic synthetic pair (digits to words) written as an
    Anki/Tatoeba-style file with a third attribution column; trained under
    mixed_float16 (loss scaling, float16 activations)."""
    words = "zero one two three four five six seven eight nine".split()
    lines = []
    for n in range(400):
        digits = " ".join(str(n))
        lines.append(f"{digits}\t{' '.join(words[int(d)] for d in str(n))}\tCC-BY 2.0 (France) #{n}")
    corpus = tmp_path / "pairs.tsv"
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = str(tmp_path / "mine")
    result = run("--data", str(corpus), "--epochs", "1", "--batch-size", "32",
                 "--no-export", "--out", out, "--precision", "mixed_float16")
    assert result.returncode == 0, result.stderr[-3000:]
    # Split by a stable hash of the source text: about 5% each.
    counts = re.search(r"Corpus: (\d+) training, (\d+) validation, (\d+) test pairs",
                       result.stdout).groups()
    train_count, validation_count, test_count = map(int, counts)
    assert train_count + validation_count + test_count == 400
    assert 5 <= validation_count <= 40 and 5 <= test_count <= 40
    # Users' text keeps its case: one joint cased vocabulary, shared and
    # tied embeddings, beam 4, cased BLEU and chrF.
    assert "joint sentence pieces (cased)" in result.stdout
    assert "shared and tied embeddings" in result.stdout
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert metrics["test_pairs"] == test_count and metrics["decoding"] == "beam 4"
    assert metrics["train_pairs"] <= train_count and 0 <= metrics["chrf"] <= 100
    tokenizer = dict(metrics["tokenizer"])
    # `--data` protects spans by default; the settings travel with the folder.
    assert tokenizer.pop("spans")["max_spans"] == 16
    assert tokenizer == {"kind": "sentencepiece", "joint": True, "lower_case": False}
    assert metrics["precision"] == "mixed_float16"
    assert_finite_history(metrics, epochs=1)


def test_two_workers_train_one_model_and_only_the_chief_writes(tmp_path):
    """TF_CONFIG: two processes on 127.0.0.1 train one model with
    MultiWorkerMirroredStrategy (global batch 32, 16 per worker). The chief
    evaluates and writes the artefacts; the other worker's files live in a
    temporary folder that is gone afterwards."""
    out = str(tmp_path / "cluster")
    pattern = os.path.join(tempfile.gettempdir(), "translate_numbers_workertemp_*")
    temporaries = set(glob.glob(pattern))
    (chief_rc, chief), (worker_rc, worker) = run_workers(
        [SCRIPT, *SMALL, "--epochs", "1", "--out", out], env={"CI": "1"}, timeout=600)
    assert chief_rc == 0, chief[-3000:]
    assert worker_rc == 0, worker[-3000:]
    assert "Training on 2 replicas with MultiWorkerMirroredStrategy, task worker 0 (chief)" in chief
    assert "Training on 2 replicas with MultiWorkerMirroredStrategy, task worker 1\n" in worker
    assert "Test (" in chief and "Wrote " in chief
    assert "Test (" not in worker and "Training done; the chief evaluates" in worker

    def epoch_line(output):  # "10/10 - 17s - 2s/step - loss: ..." -> "loss: ..."
        lines = [line for line in output.splitlines() if " - loss: " in line]
        assert len(lines) == 1, output[-3000:]
        return lines[0][lines[0].index("loss: "):]

    assert epoch_line(chief) == epoch_line(worker)  # one model, all-reduced figures
    assert sorted(os.listdir(out)) == ["attention.png", "metrics.json", "model.keras",
                                       "source_vocab.txt", "target_vocab.txt", "tokenizer.json"]
    assert set(glob.glob(pattern)) == temporaries
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert metrics["replicas"] == 2 and metrics["train_pairs"] == 300
    assert_finite_history(metrics, epochs=1)
