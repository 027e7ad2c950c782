"""Protected spans (placeholders, names, identifiers): which kinds to protect,
and how many the translations keep.

    python benchmarks/spans.py classes [--data CORPUS/train.tsv]   # the table
    python benchmarks/spans.py kept RUN_NAME [RUN_NAME...]         # held-out share kept

`classes` measures, for each candidate kind of span, how often a span found
in a training source appears verbatim in its reference translation (an
occurrence counts as copied when the target holds it at least as many times
as the source). `keras_xformer.text.spans.DEFAULT_PATTERN` protects the
kinds copied in >= 90% of cases. Measured on the training split only.

`kept` counts, on the held-out `CORPUS/test.tsv`, the distinct spans that
`SpanProtector()` protects in each source and the reference copies
verbatim, and how many of them appear verbatim in a run's
`test_translations.txt` (benchmarks/real_text.py writes it, beam 4); with
cased BLEU and chrF of the same file. `KX_CORPUS` names the corpus folder.
"""

import argparse
import collections
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Candidates, written in the syntax that Python's `re` (with re.ASCII) and
# RE2 (TensorFlow's regex ops) read alike.
CANDIDATES = {
    "python-format %(name)s": r"%\([A-Za-z0-9_.]+\)[-#0+]*[0-9]*(?:\.[0-9]+)?[diouxXeEfFgGcrsa]",
    "printf %s %d %r %1$s %-5.2f": r"%(?:[0-9]+\$)?[-#0+']*[0-9]*(?:\.[0-9]+)?(?:hh|h|ll|l|L|q|j|z|t)?[diouxXeEfFgGcsrap]",
    "brace {0} {name} {}": r"\{[A-Za-z0-9_.:!\[\]]*\}",
    "double brace {{...}}": r"\{\{[^{}]*\}\}",
    "dollar ${name} $name": r"\$\{[A-Za-z0-9_.]+\}|\$[A-Za-z_][A-Za-z0-9_]*",
    "tag <b> </a> <br/>": r"</?[A-Za-z][A-Za-z0-9]*(?:\s[^<>]*)?/?>",
    "HTML entity &amp;": r"&(?:[A-Za-z]+|#[0-9]+);",
    "URL": r"(?:https?|ftp)://[^\s<>\"']*[^\s<>\"'.,;:!?)]",
    "e-mail address": r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
    "file path /a/b ~/.x": r"(?:~|\.{1,2})?/[A-Za-z0-9_.+-]+(?:/[A-Za-z0-9_.+-]*)+",
    "--long-option": r"--[A-Za-z0-9][A-Za-z0-9_-]*(?:=[A-Za-z0-9_]+)?",
    "call name()": r"\b[A-Za-z_][A-Za-z0-9_.]*\(\)",
    "identifier with _": r"\b_*[A-Za-z0-9]+(?:_+[A-Za-z0-9]+)+_*\b",
    "identifier with _ (not the whole source)": None,  # the row above, sentence context
    "dotted name a.b": r"\b[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+\b",
    "file name x.ext": r"\b[A-Za-z0-9_-]+\.(?:py|txt|html|css|js|json|xml|csv|png|jpg|po|mo|cfg|ini|conf|yml|yaml|zip|gz|tar|pdf|md|rst|sh|sql|log)\b",
    "camelCase": r"\b[a-z]+[A-Z][A-Za-z0-9]*\b",
    "ALL-CAPS acronym (2+)": r"\b[A-Z][A-Z0-9]+\b",
    "ALL-CAPS with _ (TRAC_ENV)": r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b",
    "substitution &#124;NAME&#124;": r"\|[A-Za-z0-9_ -]+\|",
    "``literal``": r"``[^`]+``",
    "number": r"\b[0-9]+(?:[.,][0-9]+)*\b",
    "version 1.2.3": r"\b[0-9]+\.[0-9]+(?:\.[0-9]+)+\b",
}


def read_pairs(path):
    pairs = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            fields = line.rstrip("\n").split("\t")
            if len(fields) >= 2:
                pairs.append((fields[0], fields[1]))
    return pairs


def copied(spans, target):
    """Occurrences of `spans` (a list, repeats included) found in `target`."""
    kept = 0
    for span, count in collections.Counter(spans).items():
        kept += min(count, target.count(span))
    return kept


def classes(path):
    pairs = read_pairs(path)
    rows = []
    for name, pattern in CANDIDATES.items():
        whole_source_excluded = pattern is None
        if whole_source_excluded:
            pattern = CANDIDATES["identifier with _"]
        regex = re.compile(pattern, re.ASCII)
        found = kept = sentences = 0
        examples = collections.Counter()
        for source, target in pairs:
            spans = regex.findall(source)
            if whole_source_excluded:
                # Plone's message ids ("label_contact_phone") are whole
                # sources that are translated, not copied.
                spans = [s for s in spans if s != source.strip()]
            if not spans:
                continue
            sentences += 1
            found += len(spans)
            k = copied(spans, target)
            kept += k
            if k < len(spans):
                for span in spans:
                    if span not in target:
                        examples[span] += 1
        share = kept / found if found else float("nan")
        rows.append((name, pattern, sentences, found, kept, share,
                     ", ".join(f"`{s if len(s) < 40 else s[:37] + '...'}`"
                               for s, _ in examples.most_common(3))))
    # The pattern as protected: keras_xformer.text.spans (TensorFlow ops),
    # distinct spans per source, a source that is one span left as text.
    sys.path.insert(0, ROOT)
    from keras_xformer.text.spans import SpanProtector

    protector = SpanProtector()
    found = kept = sentences = 0
    for i in range(0, len(pairs), 4096):
        chunk = pairs[i : i + 4096]
        _, spans = protector.protect([source for source, _ in chunk])
        for (source, target), row in zip(chunk, spans.to_list()):
            row = [span.decode("utf-8") for span in row]
            if row:
                sentences += 1
                found += len(row)
                kept += sum(span in target for span in row)
    rows.append(("**the default pattern, as protected** (distinct spans, max 16)",
                 None, sentences, found, kept, kept / max(found, 1), ""))
    print(f"Copy rates on {path} ({len(pairs)} pairs)\n")
    print("| kind | source sentences | spans | copied verbatim | share | most often not copied |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, pattern, sentences, found, kept, share, missing in rows:
        print(f"| {name} | {sentences} | {found} | {kept} | {100 * share:.1f}% | "
              f"{missing.replace('|', '&#124;')} |")
    return 0


def kept(names, corpus):
    import sacrebleu

    sys.path.insert(0, ROOT)
    from keras_xformer.text import spans as kx_spans

    protector = kx_spans.SpanProtector()
    pairs = read_pairs(os.path.join(corpus, "test.tsv"))
    _, found_spans = protector.protect([source for source, _ in pairs])
    found_spans = [[span.decode("utf-8") for span in row] for row in found_spans.to_list()]
    references = [t for _, t in pairs]
    print("| run | sentences with spans | reference-copied spans | kept in output | share | "
          "BLEU | chrF |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in names:
        path = os.path.join(corpus, "runs", name, "test_translations.txt")
        with open(path, encoding="utf-8") as f:
            hypotheses = f.read().split("\n")[: len(pairs)]
        sentences = total = found = 0
        for (source, reference), hypothesis, spans in zip(pairs, hypotheses, found_spans):
            if not spans:
                continue
            sentences += 1
            # Only spans the reference copies: a reference that translates
            # one is no evidence either way.
            wanted = [span for span in spans if span in reference]
            total += len(wanted)
            found += sum(span in hypothesis for span in wanted)
        bleu = sacrebleu.corpus_bleu(hypotheses, [references]).score
        chrf = sacrebleu.corpus_chrf(hypotheses, [references]).score
        print(f"| {name} | {sentences} of {len(pairs)} | {total} | {found} | "
              f"{100 * found / max(total, 1):.1f}% | {bleu:.2f} | {chrf:.2f} |")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["classes", "kept"])
    parser.add_argument("names", nargs="*")
    corpus = os.environ.get("KX_CORPUS", "/work/corpus")
    parser.add_argument("--data", default=os.path.join(corpus, "train.tsv"))
    args = parser.parse_args(argv)
    if args.mode == "classes":
        return classes(args.data)
    return kept(args.names, corpus)


if __name__ == "__main__":
    sys.exit(main())
