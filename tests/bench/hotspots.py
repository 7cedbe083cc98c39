"""Where the time goes: summarise py-spy's collapsed stacks from `run.py --py-spy DIR`.

    python tests/bench/hotspots.py DIR/agent-300.collapsed [--top 15]

Prints, per thread, the share of on-CPU samples; then the frames with the
most samples of their own (self), and the project's own frames (agent/,
drivers/) with the most samples under them (inclusive), each as
function (file:line) so the line to look at is named.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

OWN = ("agent/", "drivers/")


def parse(path: Path) -> list[tuple[str, list[str], int]]:
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        thread = re.sub(r"^thread \(\d+\):?\s*", "", frames[0]) or "?"
        stacks.append((thread, frames[1:], int(count)))
    return stacks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    for path in args.files:
        stacks = parse(path)
        total = sum(c for _, _, c in stacks) or 1
        threads: Counter[str] = Counter()
        leaf: Counter[str] = Counter()
        own: Counter[str] = Counter()
        for thread, frames, count in stacks:
            threads[thread] += count
            if frames:
                leaf[frames[-1]] += count
            for frame in dict.fromkeys(f for f in frames if any(o in f for o in OWN)):
                own[frame] += count
        print(f"== {path} ({total} samples on CPU)")
        print("threads:")
        for thread, count in threads.most_common():
            print(f"  {100 * count / total:5.1f} %  {thread}")
        print(f"self (top {args.top}):")
        for frame, count in leaf.most_common(args.top):
            print(f"  {100 * count / total:5.1f} %  {frame}")
        print(f"inclusive, agent/ and drivers/ frames (top {args.top}):")
        for frame, count in own.most_common(args.top):
            print(f"  {100 * count / total:5.1f} %  {frame}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
