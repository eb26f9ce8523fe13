"""How far can token identity alone go on a token-level task? A reference point for the
schedule comparison's chance rows (docs/experiments/schedule-comparison.md).

For each token id, the smoothed share of positive labels over the prepared *train* split
(``alpha`` pseudo-counts of the train prior) predicts the held-out label; the script prints
the held-out majority-class accuracy beside this identity baseline. A task whose identity
baseline does not beat the majority class can only be learned above chance from context.

    python docs/experiments/token_identity_baseline.py CACHE/prepared/<fingerprint> \
        --task token_document_relation
"""

from __future__ import annotations

import argparse
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

import datasets


def label_column(split: datasets.Dataset, task: str) -> str:
    """The task's token label column (``<task>_labels`` or the one column ending in labels)."""
    names = [c for c in split.column_names if c.endswith("labels")]
    preferred = f"{task}_labels"
    if preferred in names:
        return preferred
    if len(names) != 1:
        raise SystemExit(f"{task}: no single label column among {split.column_names}")
    return names[0]


def labelled_tokens(split: datasets.Dataset, column: str) -> Iterator[tuple[int, int]]:
    """(token id, label) of every labelled position (labels < 0 are ignored positions)."""
    for batch in split.iter(batch_size=1024):
        for ids, labels in zip(batch["input_ids"], batch[column], strict=True):
            yield from ((t, y) for t, y in zip(ids, labels, strict=True) if y >= 0)


def main() -> None:
    """Print majority-class and identity-baseline accuracy on the held-out split."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prepared", type=Path, help="a prepared-data folder (one per fingerprint)")
    parser.add_argument("--task", default="token_document_relation")
    parser.add_argument("--alpha", type=float, nargs="+", default=[0.0, 5.0, 20.0, 100.0])
    args = parser.parse_args()
    train = datasets.load_from_disk(str(args.prepared / args.task / "train"))
    held = datasets.load_from_disk(str(args.prepared / args.task / "heldout"))
    column = label_column(train, args.task)
    votes: dict[int, Counter] = defaultdict(Counter)
    for token, label in labelled_tokens(train, column):
        votes[token][label] += 1
    overall = sum(votes.values(), Counter())
    majority, total_train = overall.most_common(1)[0][0], sum(overall.values())
    pairs = list(labelled_tokens(held, column))
    print(f"{args.task}: {total_train} train / {len(pairs)} held-out labelled tokens")
    print(
        f"majority class ({majority}) on held-out: {sum(y == majority for _, y in pairs) / len(pairs):.3f}"
    )
    for alpha in args.alpha:
        hits = 0
        for token, label in pairs:
            counts = votes.get(token, Counter())
            n = sum(counts.values())
            scores = {c: (counts[c] + alpha * overall[c] / total_train) for c in overall}
            guess = max(scores, key=scores.get) if n or alpha else majority
            hits += guess == label
        print(f"token-identity baseline (alpha={alpha:g}) on held-out: {hits / len(pairs):.3f}")


if __name__ == "__main__":
    main()
