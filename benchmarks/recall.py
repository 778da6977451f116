"""Image-text retrieval quality on a Flickr8k-shaped folder: Recall@K both ways.

    python benchmarks/recall.py ../shared/data/flickr8k-1k --model open_clip:ViT-B-32@laion2b_s34b_b79k

The folder holds images and a captions.csv (image,caption; several captions per image). Text to
image: for each caption, is its image in the top K? Image to text: for each image, is one of its
captions in the top K? Everything goes through the public engine API, so the figure measures
what users get (ANN, rerank and all). With random weights (all these machines can load) the
numbers sit at chance; with real weights they are the usual R@K.

Ends with: t2i_r1=... t2i_r5=... t2i_r10=... i2t_r1=... i2t_r5=... i2t_r10=... chance_t2i_r10=...
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmsearch import Engine, Query, Settings  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
KS = (1, 5, 10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path, help="Folder with images/ and captions.csv")
    ap.add_argument("--model", default="open_clip:ViT-B-32@random")
    ap.add_argument("--catalog", type=Path, default=None, help="Reuse a catalog (default: a temporary one).")
    ap.add_argument("--limit", type=int, default=0, help="Evaluate on the first N images only.")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    folder = args.folder.resolve()
    captions: dict[str, list[str]] = defaultdict(list)
    with open(folder / "captions.csv", newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            captions[row["image"]].append(row["caption"].strip())
    names = sorted(captions)[: args.limit] if args.limit else sorted(captions)

    with tempfile.TemporaryDirectory() as tmp:
        media = Path(tmp) / "media"
        (media / "images").mkdir(parents=True)
        with open(media / "captions.csv", "w", newline="", encoding="utf-8") as out:
            w = csv.writer(out)
            w.writerow(["image", "caption"])
            for name in names:
                (media / "images" / name).symlink_to(folder / "images" / name)
                w.writerows([name, c] for c in captions[name])
        settings = Settings(catalog=args.catalog or Path(tmp) / "catalog", model=args.model, audio=False,
                            device=args.device, follow_links=True, model_config_dirs=[REPO / "tests" / "assets"])
        with Engine.open(settings) as engine:
            report = engine.index([media])
            print(f"indexed {report.items} items ({len(names)} images) in {report.seconds:.0f} s", file=sys.stderr)
            image_path = {name: str(media / "images" / name) for name in names}
            t2i = [0] * len(KS)
            n_captions = 0
            for name in names:
                for caption in captions[name]:
                    hits = [h.path for h in engine.search(Query(text=caption, to="image", k=max(KS))).results]
                    t2i = [a + (image_path[name] in hits[:k]) for a, k in zip(t2i, KS)]
                    n_captions += 1
            i2t = [0] * len(KS)
            for name in names:
                q = Query(image=(folder / "images" / name).read_bytes(), to="text", k=max(KS),
                          path=str(media / "captions.csv"))
                refs = [h.ref_path for h in engine.search(q).results]
                i2t = [a + (image_path[name] in refs[:k]) for a, k in zip(i2t, KS)]
    line = " ".join([*(f"t2i_r{k}={v / n_captions:.4f}" for k, v in zip(KS, t2i)),
                     *(f"i2t_r{k}={v / len(names):.4f}" for k, v in zip(KS, i2t)),
                     f"chance_t2i_r10={min(1.0, 10 / len(names)):.4f}"])
    print(f"model={settings.model} images={len(names)} captions={n_captions}", file=sys.stderr)
    print(line)


if __name__ == "__main__":
    main()
