"""The `xformer` command (`python -m keras_xformer`) on a small corpus: train
within a time budget and export, then translate, evaluate and export again."""

import json
import os
import subprocess
import sys

import pytest

from keras_xformer import cli
from keras_xformer import pipeline

pytestmark = pytest.mark.tensorflow_only  # TF Text tokenizers / the TensorFlow pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CI": "1"}
WORDS = "zero one two three four five six seven eight nine".split()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    lines = []
    for n in range(300):
        # Cased text, a placeholder and an identifier that must copy through.
        lines.append(f"Item {n} of %s\tÉlément {' '.join(WORDS[int(d)] for d in str(n))} de %s")
    corpus = folder / "pairs.tsv"
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = folder / "run"
    # One minute in all: training stops in time and the run still exports.
    result = subprocess.run(
        [sys.executable, "-m", "keras_xformer", "train", "--data", str(corpus), "--out",
         str(out), "--time-budget", "1", "--no-tflite", "--batch-tokens", "800",
         # Only the budget may end training: on a fast machine 100 epochs of
         # 270 pairs, or 3 epochs without a better validation loss, came first.
         "--epochs", "100000", "--patience", "100000",
         # The opt-in schedule, decaying to zero at the budget's end.
         "--schedule", "linear"],
        capture_output=True, text=True, timeout=600, env=ENV, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return corpus, out, result.stdout, result.stderr


def test_train_stops_at_its_time_budget_and_exports(trained):
    corpus, out, stdout, stderr = trained
    assert "Time budget reached" in stdout
    # The length-bucketed validation set declares its number of batches, so
    # a validation pass ends at its last batch, not at the end of the data
    # (whose iterator's destruction stalled training; benchmarks/epoch_stall.py).
    assert "Your input ran out of data" not in stderr
    assert "a linear decay to zero at 100000 epochs or the time budget" in stdout
    assert "BLEU" in stdout and "chrF" in stdout
    for name in ("model.keras", "source_vocab.txt", "tokenizer.json", "serving", "metrics.json"):
        assert os.path.exists(os.path.join(out, name)), name
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    assert metrics["tokenizer"]["lower_case"] is False and metrics["tokenizer"]["joint"]
    # Placeholders are protected spans by default; the folder keeps the settings.
    assert "Protected spans: " in stdout
    assert metrics["tokenizer"]["spans"]["max_spans"] == 16
    assert json.load(open(os.path.join(out, "tokenizer.json")))["spans"] == (
        metrics["tokenizer"]["spans"])
    assert 0 <= metrics["bleu"] <= 100 and 0 <= metrics["chrf"] <= 100
    # --precision auto (the --data default): bfloat16 steps only where the
    # CPU has them natively; the model kept computes in float32 either way.
    native = bool(pipeline.cpu_flags() & {"avx512_bf16", "amx_bf16"})
    assert metrics["training_precision"] == ("mixed_bfloat16" if native else "float32")
    assert f"Precision: {metrics['training_precision']} training steps" in stdout
    assert metrics["precision"] == "float32"
    # The evaluation's length penalty is kept for `xformer translate`.
    assert metrics["length_penalty"] == 2.0 and "(length penalty 2)" in stdout
    # The CTranslate2 export (a test extra): greedy, as the SavedModel, on
    # the same pairs, so the two engines score alike.
    assert os.path.exists(os.path.join(out, "translator_ct2", "model.bin"))
    assert metrics["ct2_mb"] > 0
    assert abs(metrics["ct2_bleu"] - metrics["serving_bleu"]) < 1.0, metrics


def test_no_overwrite_without_the_flag(trained, capsys):
    corpus, out, _, _ = trained
    before = os.path.getmtime(os.path.join(out, "model.keras"))
    assert cli.main(["train", "--data", str(corpus), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert os.path.getmtime(os.path.join(out, "model.keras")) == before


def test_translate_evaluate_and_export(trained, capsys, tmp_path, monkeypatch):
    corpus, out, _, _ = trained
    assert cli.main(["translate", str(out), "Item 7 of %s", "Item 12 of %s"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(isinstance(line, str) for line in lines)
    # A sentence far longer than any in training is translated, not cut
    # and not an error.
    long_text = " ".join(["Item 7 of %s"] * 12)
    monkeypatch.setattr(sys, "stdin", __import__("io").StringIO(long_text + "\nItem 3 of %s\n"))
    assert cli.main(["translate", str(out), "--beam", "0"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2  # one line per input, even empty
    assert cli.main(["evaluate", str(out), "--data", str(corpus), "--max-pairs", "20"]) == 0
    printed = capsys.readouterr().out
    assert "(length penalty 2)" in printed  # the folder's, from its training run
    scores = json.loads(printed.strip().splitlines()[-1])
    assert cli.main(["evaluate", str(out), "--data", str(corpus), "--max-pairs", "20",
                     "--length-penalty", "0.6"]) == 0
    assert "(length penalty 0.6)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["translate", str(out), "--length-penalty", "-1", "x"])
    assert set(scores) >= {"bleu", "chrf", "exact_match"}
    assert cli.main(["export", str(out), "--out", str(tmp_path / "again"), "--no-tflite"]) == 0
    assert os.path.exists(tmp_path / "again" / "serving" / "saved_model.pb")


def test_sentence_by_sentence_by_default_whole_texts_on_request(trained, capsys):
    import argparse

    corpus, out, _, _ = trained
    assert json.load(open(os.path.join(out, "metrics.json")))["split_sentences"] is True
    two = "Item 7 of %s.  Item 12 of %s"
    assert cli.main(["translate", "--beam", "0", str(out), two, "Item 7 of %s.",
                     "Item 12 of %s"]) == 0
    split, first, second = capsys.readouterr().out.splitlines()
    assert split == first + "  " + second  # each sentence alone, the text's own spaces
    assert cli.main(["translate", "--whole-texts", "--beam", "0", str(out), two]) == 0
    whole = capsys.readouterr().out.splitlines()
    model, source, target, metrics = pipeline.load_translator(str(out))
    assert whole == pipeline.translate_texts(
        model, source, target, [two], metrics["source_length"], metrics["target_length"],
        beam=0, spans=pipeline.load_span_protector(str(out)), split_sentences=False)
    # The flag wins; otherwise the folder's setting; folders from before it: split.
    assert pipeline.split_setting(argparse.Namespace(whole_texts=True), {}) is False
    assert pipeline.split_setting(argparse.Namespace(whole_texts=False),
                                  {"split_sentences": False}) is False
    assert pipeline.split_setting(argparse.Namespace(whole_texts=False), {}) is True


def test_clear_errors(tmp_path, capsys):
    assert cli.main(["translate", str(tmp_path), "hello"]) == 2
    assert "no trained model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["train"])  # --data is required
    missing = str(tmp_path / "missing.tsv")
    assert cli.main(["train", "--data", missing, "--out", str(tmp_path / "o")]) == 2
    assert "not found" in capsys.readouterr().err


def test_linear_decay_reaches_zero_at_the_deadline_or_the_last_step():
    from keras_xformer.pipeline import LinearDecayToDeadline

    by_time = LinearDecayToDeadline(2e-3, warmup_steps=10, deadline=1100.0)
    assert by_time.rate(0, 1000.0) == pytest.approx(2e-4)  # warm-up: 1/10 of the peak
    assert by_time.rate(9, 1000.0) == pytest.approx(2e-3)
    assert by_time.rate(10, 1000.0) == pytest.approx(2e-3)  # decay starts here, at t=1000
    assert by_time.rate(50, 1050.0) == pytest.approx(1e-3)  # half the time left
    assert by_time.rate(99, 1100.0) == pytest.approx(2e-5)  # the floor, never zero
    by_step = LinearDecayToDeadline(1e-3, warmup_steps=10, total_steps=110)
    assert by_step.rate(60, 0.0) == pytest.approx(5e-4)
    both = LinearDecayToDeadline(1e-3, warmup_steps=10, deadline=200.0, total_steps=110)
    both.rate(10, 100.0)
    assert both.rate(60, 190.0) == pytest.approx(1e-4)  # the clock is nearer its end


def test_cooldown_keeps_the_inverse_square_root_until_its_window():
    from keras_xformer.pipeline import LinearDecayToDeadline

    # Warm-up ends at step 10 (t=1000); the deadline is t=1100, so a 0.2
    # cool-down is the last 20 seconds.
    by_time = LinearDecayToDeadline(2e-3, warmup_steps=10, deadline=1100.0,
                                    shape="inverse-sqrt", cooldown=0.2)
    assert by_time.rate(5, 990.0) == pytest.approx(1.2e-3)  # warm-up as before
    assert by_time.rate(10, 1000.0) == pytest.approx(2e-3)
    assert by_time.rate(40, 1050.0) == pytest.approx(1e-3)  # 2e-3 * sqrt(10 / 40)
    assert by_time.rate(40, 1080.0) == pytest.approx(1e-3)  # the window opens here
    assert by_time.rate(40, 1090.0) == pytest.approx(5e-4)  # half of it left
    assert by_time.rate(40, 1100.0) == pytest.approx(1e-5)  # the floor, never zero
    by_step = LinearDecayToDeadline(1e-3, warmup_steps=10, total_steps=110,
                                    shape="inverse-sqrt", cooldown=0.5)
    assert by_step.rate(40, 0.0) == pytest.approx(5e-4)  # before the last 50 steps
    assert by_step.rate(90, 0.0) == pytest.approx(1e-3 * (10 / 90) ** 0.5 * 0.4)
    with pytest.raises(ValueError, match="cooldown"):
        LinearDecayToDeadline(1e-3, warmup_steps=10, shape="inverse-sqrt", cooldown=0)
    with pytest.raises(ValueError, match="shape"):
        LinearDecayToDeadline(1e-3, warmup_steps=10, shape="cosine")


def test_own_data_defaults_are_the_measured_recipe():
    parser = cli.build_parser()

    def parsed(*flags):
        return pipeline.finish_arguments(parser, parser.parse_args(["train", *flags]))

    # Each default was chosen by whole-budget runs on the catalogs corpus
    # (benchmarks/RESULTS.md); a change here must come with a new run.
    args = parsed("--data", "pairs.tsv")
    assert (args.batch_tokens, args.learning_rate, args.schedule, args.cooldown,
            args.label_smoothing, args.time_budget, args.average_checkpoints, args.patience,
            args.beam, args.length_percentile, args.dropout, args.preset) == (
        800, 2e-3, "inverse-sqrt", 0.2, 0.1, 14.5, 3, 3, 4, 99.0, None, None)
    assert parsed("--data", "pairs.tsv", "--epochs", "3").time_budget is None
    assert args.precision == "auto" and args.held_out_pairs == 500
    # Beam 4 at length penalty 2.0, chosen on the runs' own splits (session 10).
    assert args.length_penalty == 2.0 and args.subword_alpha == 0.0
    assert pipeline.finish_arguments(parser, parser.parse_args(
        ["train", "--data", "p.tsv", "--length-penalty", "0.6"])).length_penalty == 0.6
    assert parsed("--data", "pairs.tsv", "--schedule", "linear").cooldown == 0.0
    assert parsed("--data", "pairs.tsv", "--cooldown", "0").cooldown == 0.0
    # One piece per 3 training pairs, 2000 to 8000 (runs T, R and V).
    assert [pipeline.default_vocabulary_size(n, joint=True) for n in (300, 12000, 29372)] == [
        2000, 4000, 8000]


def test_auto_precision_takes_bfloat16_only_where_the_cpu_computes_it(monkeypatch):
    monkeypatch.setattr(pipeline, "cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16"})
    assert pipeline.auto_precision(multi_worker=False)[0] == "mixed_bfloat16"
    assert pipeline.auto_precision(multi_worker=True)[0] == "float32"
    monkeypatch.setattr(pipeline, "cpu_flags", lambda: {"avx2", "avx512f"})
    precision, why = pipeline.auto_precision(multi_worker=False)
    assert precision == "float32" and "no native bfloat16" in why


def test_several_workers_with_a_time_budget_drop_only_the_default_cooldown(capsys):
    parser = cli.build_parser()

    def parsed(*flags):
        return pipeline.finish_arguments(parser, parser.parse_args(["train", *flags]))

    args = parsed("--data", "pairs.tsv")  # time budget, default cool-down
    assert pipeline.rate_to_deadline(args, multi_worker=False) and args.cooldown == 0.2
    assert not pipeline.rate_to_deadline(args, multi_worker=True) and args.cooldown == 0.0
    assert "No cool-down: with several workers" in capsys.readouterr().out
    for flags in (["--cooldown", "0.2"], ["--schedule", "linear"]):
        with pytest.raises(ValueError, match="runs on one worker only"):
            pipeline.rate_to_deadline(parsed("--data", "pairs.tsv", *flags), multi_worker=True)
    # With --epochs every worker counts the same steps: the cool-down stays.
    args = parsed("--data", "pairs.tsv", "--epochs", "3")
    assert pipeline.rate_to_deadline(args, multi_worker=True) and args.cooldown == 0.2


def test_held_out_pairs_caps_the_validation_and_test_splits(tmp_path):
    from types import SimpleNamespace

    corpus = tmp_path / "pairs.tsv"
    corpus.write_text("".join(f"line {n}\tligne {n}\n" for n in range(4000)), encoding="utf-8")
    args = SimpleNamespace(data=str(corpus), seed=0, train_size=None, held_out_pairs=None)
    train, validation, test = pipeline.load_corpus(args)
    assert 150 < len(validation[0]) < 250 and 150 < len(test[0]) < 250  # 5% each
    args.held_out_pairs = 40
    capped = pipeline.load_corpus(args)
    assert 20 < len(capped[1][0]) < 60 and 20 < len(capped[2][0]) < 60
    assert len(capped[0][0]) + len(capped[1][0]) + len(capped[2][0]) == 4000
    # A stable hash: the smaller validation split is part of the larger one.
    assert set(capped[1][0]) <= set(validation[0])


def test_recipe_flags_are_checked(tmp_path, capsys):
    corpus = tmp_path / "pairs.tsv"
    corpus.write_text("a\tb\n", encoding="utf-8")
    for flags, message in ((["--label-smoothing", "1.5"], "--label-smoothing"),
                           (["--dropout", "-0.1"], "--dropout"),
                           (["--batch-tokens", "-5"], "--batch-tokens"),
                           (["--cooldown", "1.5"], "--cooldown"),
                           (["--length-penalty", "-1"], "--length-penalty"),
                           (["--subword-alpha", "-0.1"], "--subword-alpha"),
                           (["--schedule", "linear", "--cooldown", "0.2"], "--cooldown")):
        with pytest.raises(SystemExit):
            cli.main(["train", "--data", str(corpus), "--out", str(tmp_path / "o"), *flags])
        assert message in capsys.readouterr().err


def test_a_failed_export_keeps_the_trained_model(tmp_path, capsys, monkeypatch):
    corpus = tmp_path / "pairs.tsv"
    corpus.write_text("".join(f"Item {n}\tÉlément {n}\n" for n in range(120)), encoding="utf-8")
    out = tmp_path / "run"

    def failing_export(*args, **kwargs):
        raise RuntimeError("converter exploded")

    monkeypatch.setattr(pipeline, "export_all", failing_export)
    status = cli.main(["train", "--data", str(corpus), "--out", str(out), "--epochs", "1",
                       "--beam", "0"])
    assert status == 1
    assert "xformer export" in capsys.readouterr().err
    for name in ("model.keras", "tokenizer.json", "metrics.json"):
        assert os.path.exists(out / name), name
    assert "converter exploded" in json.load(open(out / "metrics.json"))["export_error"]
    # The folder is a usable translator: the exports can be retried from it.
    assert cli.main(["translate", str(out), "Item 3"]) == 0
