"""`xformer`: train, evaluate, export and use a translator from the shell.

    xformer train --data pairs.tsv --out DIR         # train, evaluate, export
    xformer translate DIR "Open the file" "Cancel"   # or one sentence a line on stdin
    xformer evaluate DIR --data heldout.tsv          # cased BLEU and chrF
    xformer export DIR                               # (re)write the exports

`python -m keras_xformer ...` is the same command. Each sub-command is a
function of `keras_xformer.pipeline` that a script can call.
"""

import argparse
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _train(args):
    from keras_xformer import pipeline

    return pipeline.run_training(args)


def _check_folder(folder):
    if not os.path.exists(os.path.join(folder, "model.keras")):
        print(f"{folder} holds no trained model (model.keras): train one with "
              "`xformer train --data pairs.tsv --out FOLDER`.", file=sys.stderr)
        return False
    return True


def _length_penalty(args, metrics):
    """The flag's, else the one the folder was evaluated with (0.6, the
    paper's, for folders from before it was kept)."""
    if args.length_penalty is not None:
        return args.length_penalty
    return metrics.get("length_penalty", 0.6)


def _translate(args):
    if not _check_folder(args.folder):
        return 2
    from keras_xformer import pipeline

    texts = args.text or [line.rstrip("\n") for line in sys.stdin]
    model, source, target, metrics = pipeline.load_translator(args.folder)
    outputs = pipeline.translate_texts(
        model, source, target, texts, metrics.get("source_length", 64),
        metrics.get("target_length", 64), beam=args.beam,
        length_penalty=_length_penalty(args, metrics),
        spans=pipeline.load_span_protector(args.folder),
        split_sentences=pipeline.split_setting(args, metrics))
    for line in outputs:
        print(line, flush=True)
    return 0


def _evaluate(args):
    if not _check_folder(args.folder):
        return 2
    import json

    from keras_xformer import pipeline
    from keras_xformer.datasets import parallel_text

    model, source, target, metrics = pipeline.load_translator(args.folder)
    pairs = parallel_text._read_pairs(args.data)
    if args.max_pairs:
        pairs = pairs[: args.max_pairs]
    result, hypotheses = pipeline.evaluate(
        model, source, target, ([s for s, _ in pairs], [t for _, t in pairs]),
        metrics.get("source_length", 64), metrics.get("target_length", 64),
        beam=args.beam, show=args.show, label=os.path.basename(args.data),
        spans=pipeline.load_span_protector(args.folder),
        length_penalty=_length_penalty(args, metrics),
        split_sentences=pipeline.split_setting(args, metrics))
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write("\n".join(hypotheses) + "\n")
    print(json.dumps({k: round(v, 4) for k, v in result.items()}))
    return 0


def _export(args):
    if not _check_folder(args.folder):
        return 2
    from keras_xformer import pipeline
    from keras_xformer.datasets import parallel_text

    model, source, target, metrics = pipeline.load_translator(args.folder)
    out = args.out or args.folder
    os.makedirs(out, exist_ok=True)
    if args.data:
        pairs = parallel_text._read_pairs(args.data)[:500]
    else:
        pairs = [("Hello", "Bonjour")]
    start = time.perf_counter()
    pipeline.export_all(model, source, target, ([s for s, _ in pairs], [t for _, t in pairs]),
                        metrics.get("source_length", 64), metrics.get("target_length", 64),
                        out, tflite=not args.no_tflite,
                        spans=pipeline.load_span_protector(args.folder),
                        split_sentences=pipeline.split_setting(args, metrics))
    print(f"Exported to {out}/ in {time.perf_counter() - start:.0f} s")
    return 0


def build_parser():
    from keras_xformer import pipeline

    parser = argparse.ArgumentParser(
        prog="xformer", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n")[1])
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train on a TSV corpus, evaluate and export")
    pipeline.add_training_arguments(train, own_data=True)
    train.set_defaults(func=_train)

    translate = commands.add_parser("translate", help="translate text with a trained folder")
    translate.add_argument("folder", help="the --out folder of `xformer train`")
    translate.add_argument("text", nargs="*", help="sentences (default: one per line on stdin)")
    translate.add_argument("--beam", type=int, default=4, help="beam size (0: greedy)")
    translate.add_argument("--length-penalty", type=float, default=None,
                       help="beam search's length penalty (default: the folder's, "
                            "from its training run)")
    pipeline.add_sentence_argument(translate)
    translate.set_defaults(func=_translate)

    evaluate = commands.add_parser("evaluate", help="cased BLEU and chrF on a TSV file")
    evaluate.add_argument("folder", help="the --out folder of `xformer train`")
    evaluate.add_argument("--data", required=True, help="source<TAB>reference pairs")
    evaluate.add_argument("--beam", type=int, default=4, help="beam size (0: greedy)")
    evaluate.add_argument("--length-penalty", type=float, default=None,
                       help="beam search's length penalty (default: the folder's, "
                            "from its training run)")
    evaluate.add_argument("--max-pairs", type=int, default=None)
    evaluate.add_argument("--show", type=int, default=5, help="translations to print")
    evaluate.add_argument("--output", help="write the translations to this file")
    pipeline.add_sentence_argument(evaluate)
    evaluate.set_defaults(func=_evaluate)

    export = commands.add_parser("export", help="write the SavedModel and TFLite exports")
    export.add_argument("folder", help="the --out folder of `xformer train`")
    export.add_argument("--out", help="where to write them (default: the folder)")
    export.add_argument("--data", help="pairs to check the exports' BLEU on (first 500)")
    export.add_argument("--no-tflite", action="store_true", help="the SavedModel only")
    pipeline.add_sentence_argument(export)
    export.set_defaults(func=_export)
    return parser


def main(argv=None):
    started = time.time()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "train":
        from keras_xformer import pipeline

        args = pipeline.finish_arguments(parser, args)
        args.started = started
    for name in ("beam", "length_penalty"):
        if getattr(args, name, 0) is not None and getattr(args, name, 0) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0")
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"xformer {args.command}: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
