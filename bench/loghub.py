"""Accuracy and speed of boxwatch's log template miner on the Loghub-2k sets.

Runs the very miner the journald exporter uses (``exporters.journald.new_miner``: same masking, same
Drain configuration, one configuration for every set) and prints, per set found under ``--data``:

- GA, grouping accuracy: share of lines in a mined group whose lines are exactly the lines of one
  ground-truth template;
- PA, parsing accuracy: share of lines whose mined template, with placeholders written ``<*>``,
  equals the ground-truth template string;

then the lines per second over all sets and the resident memory after mining 1 million lines
(synthesised by varying the numbers in the sets' lines, so new values keep arriving).

A set is a folder ``<DS>`` holding ``<DS>_2k.log`` and ``<DS>_2k.log_structured_corrected.csv``.
Each raw line's header (timestamp, host, level, component) is removed the way the ground truth's
Content column does: the line's Content is taken from the structured CSV after checking that the raw
line ends with it (header parsing only; the ground truth templates are never looked at while mining).

    python bench/loghub.py [--data ../shared/bench/loghub] [--json] [--lines 1000000]
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import re
import resource
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# run as a script, bench/ comes first on the path and bench/exporters.py would shadow the package
sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from exporters.drain import to_generic  # noqa: E402
from exporters.journald import new_miner  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "bench" / "loghub"


# --------------------------------------------------------------------------- metrics


def grouping_accuracy(truth: Sequence[str], parsed: Sequence[object]) -> float:
    """GA: lines in parsed groups whose lines are exactly one ground-truth group's lines / all lines."""
    if len(truth) != len(parsed):
        raise ValueError("truth and parsed differ in length")
    if not truth:
        return 0.0
    truth_sizes = Counter(truth)
    groups: dict[object, list[str]] = defaultdict(list)
    for t, p in zip(truth, parsed, strict=True):
        groups[p].append(t)
    correct = 0
    for members in groups.values():
        kinds = set(members)
        if len(kinds) == 1 and truth_sizes[members[0]] == len(members):
            correct += len(members)
    return correct / len(truth)


def parsing_accuracy(truth_templates: Sequence[str], parsed_templates: Sequence[str]) -> float:
    """PA: share of lines whose parsed template string equals the ground truth's."""
    if len(truth_templates) != len(parsed_templates):
        raise ValueError("truth and parsed differ in length")
    if not truth_templates:
        return 0.0
    same = sum(_normal(t) == _normal(p) for t, p in zip(truth_templates, parsed_templates, strict=True))
    return same / len(truth_templates)


def _normal(template: str) -> str:
    return re.sub(r"\s+", " ", template.strip())


# --------------------------------------------------------------------------- data


def load_set(folder: Path) -> tuple[list[str], list[str], list[str]]:
    """(contents, ground-truth event ids, ground-truth templates) of one set, in line order."""
    name = folder.name
    raw_path = folder / f"{name}_2k.log"
    csv_path = folder / f"{name}_2k.log_structured_corrected.csv"
    raw = raw_path.read_text(encoding="utf-8", errors="replace").splitlines()
    with csv_path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for column in ("Content", "EventTemplate"):
        if rows and column not in rows[0]:
            raise ValueError(f"{csv_path}: no {column!r} column")
    if len(rows) != len(raw):
        raise ValueError(f"{csv_path}: {len(rows)} rows but {raw_path} has {len(raw)} lines")
    contents = []
    for number, (line, row) in enumerate(zip(raw, rows, strict=True), start=1):
        content = row["Content"]
        if not _normal(line).endswith(_normal(content)):
            raise ValueError(f"{raw_path}:{number}: line does not end with its Content {content!r}")
        contents.append(content)
    templates = [row["EventTemplate"] for row in rows]
    return contents, templates, templates


def find_sets(data: Path) -> list[Path]:
    return sorted(p for p in data.iterdir() if (p / f"{p.name}_2k.log").is_file()
                  and (p / f"{p.name}_2k.log_structured_corrected.csv").is_file())


# --------------------------------------------------------------------------- runs


def evaluate(contents: Sequence[str], truth_ids: Sequence[str], truth_templates: Sequence[str]) -> dict:
    miner = new_miner()
    clusters = [miner.add(line)[0] for line in contents]
    ids = [c.id for c in clusters]
    templates = [to_generic(c.template) for c in clusters]  # final template of each line's group
    return {"GA": round(grouping_accuracy(truth_ids, ids), 4),
            "PA": round(parsing_accuracy(truth_templates, templates), 4),
            "templates": len(set(ids)), "truth_templates": len(set(truth_ids))}


_DIGITS = re.compile(r"\d+")


def synthesise(lines: Sequence[str], count: int, seed: int = 7):
    """``count`` lines: the given ones repeated, their numbers replaced by random ones."""
    rng = random.Random(seed)
    for i in range(count):
        line = lines[i % len(lines)]
        yield _DIGITS.sub(lambda m: str(rng.randrange(10 ** len(m.group())) if len(m.group()) < 18 else 7), line)


def throughput(all_lines: Sequence[str], count: int, chunk: int = 10_000) -> dict:
    """Lines per second and resident memory mining ``count`` synthesised lines with one miner.

    Lines are made in chunks outside the timed part, so the figure is the miner's own speed and
    the memory is the miner's plus one chunk's."""
    miner = new_miner()
    lines = synthesise(all_lines, count)
    elapsed = 0.0
    done = 0
    while done < count:
        batch = [next(lines) for _ in range(min(chunk, count - done))]
        start = time.perf_counter()
        for line in batch:
            miner.add(line)
        elapsed += time.perf_counter() - start
        done += len(batch)
    return {"lines": done, "seconds": round(elapsed, 2), "lines_per_second": round(done / elapsed),
            "rss_bytes": _rss_bytes(), "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "clusters": len(miner.clusters)}


def _rss_bytes() -> int:
    """Resident set size now (Linux /proc), else the peak."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * resource.getpagesize()
    except (OSError, IndexError, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of Loghub-2k sets (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help='print {"<DS>": {"GA": .., "PA": ..}} only')
    parser.add_argument("--lines", type=int, default=1_000_000, help="lines for the speed/RSS run; 0 skips it")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        parser.error(f"--data {args.data}: not a directory")
    sets = find_sets(args.data)
    if not sets:
        parser.error(f"--data {args.data}: no <DS>/<DS>_2k.log with its structured CSV")
    results, all_lines = {}, []
    for folder in sets:
        try:
            contents, ids, templates = load_set(folder)
        except (OSError, ValueError) as err:
            parser.error(str(err))
        all_lines.extend(contents)
        results[folder.name] = evaluate(contents, ids, templates)
    if args.json:
        print(json.dumps({ds: {"GA": r["GA"], "PA": r["PA"]} for ds, r in results.items()}))
        return 0
    print(f"{'set':10} {'GA':>6} {'PA':>6} {'templates':>9} {'truth':>6}")
    for ds, r in results.items():
        print(f"{ds:10} {r['GA']:6.3f} {r['PA']:6.3f} {r['templates']:9d} {r['truth_templates']:6d}")
    if args.lines > 0:
        speed = throughput(all_lines, args.lines)
        print(f"\n{speed['lines']} lines mined in {speed['seconds']} s: {speed['lines_per_second']} lines/s; "
              f"RSS after them {speed['rss_bytes'] / 2**20:.1f} MiB (peak {speed['max_rss_bytes'] / 2**20:.1f} MiB), "
              f"{speed['clusters']} templates")
    return 0


if __name__ == "__main__":
    sys.exit(main())
