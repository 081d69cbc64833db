"""Perplexity against file size, one point per file (docs/QUALITY.md's chart).

    python tools/quality_chart.py docs/quality_points.csv docs/quality.png

The CSV has a header line and the columns
    label,family,mb,perplexity
(family: a legend entry such as "rtn", "gptq", "llama.cpp"; one colour and
marker per family; points of a family are joined in size order). A "float"
family is drawn as a horizontal line. Needs matplotlib (a tool-only
dependency: pip install matplotlib).
"""

import argparse
import csv
import sys


def read_points(path):
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    need = {"label", "family", "mb", "perplexity"}
    if not rows or not need <= set(rows[0]):
        raise ValueError(f"{path}: need a header with the columns {', '.join(sorted(need))}")
    return [(r["label"], r["family"], float(r["mb"]), float(r["perplexity"])) for r in rows]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("csv")
    ap.add_argument("png")
    ap.add_argument("--title", default="SmolLM2-135M-Instruct, GPL-3 + Apache-2.0 (9,834 tokens)")
    a = ap.parse_args(argv)
    try:
        points = read_points(a.csv)
    except (OSError, ValueError, KeyError) as e:
        print(f"quality_chart: error: {e}", file=sys.stderr)
        return 1
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    markers = "osD^vP*X"
    families = []
    for _, fam, _, _ in points:
        if fam not in families:
            families.append(fam)
    for k, fam in enumerate(families):
        pts = sorted((mb, ppl, label) for label, f, mb, ppl in points if f == fam)
        if fam == "float":
            ax.axhline(pts[0][1], color="grey", linestyle="--", linewidth=1, label=f"float ({pts[0][1]:.1f})")
            continue
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=markers[k % len(markers)],
                linewidth=1, label=fam)
        for mb, ppl, label in pts:
            ax.annotate(label, (mb, ppl), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.margins(x=0.1)
    ax.set_xlabel("file size (MB)")
    ax.set_ylabel("perplexity (lower is better)")
    ax.set_title(a.title, fontsize=9)
    ax.grid(True, linewidth=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(a.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
