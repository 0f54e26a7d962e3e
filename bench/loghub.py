"""Accuracy and speed of boxwatch's log template miner on the Loghub-2k sets.

Runs the very miner the journald exporter uses (``exporters.journald.new_miner``: same masking, same
Drain configuration, one configuration for every set) and prints, per set found under ``--data``:

- GA, grouping accuracy: share of lines in a mined group whose lines are exactly the lines of one
  ground-truth template;
- PA, parsing accuracy: share of lines whose mined template, with placeholders written ``<*>``,
  equals the ground-truth template string;

then the miner's speed (lines per second of CPU time): per set, on a mixed corpus of all sets (1 million
lines synthesised by varying the numbers in the sets' lines, so new values keep arriving; the resident
memory is read after it), and on a corpus of 1,000 made-up templates that share one leaf of the tree
(Drain's worst case; ``stress_corpus``).

A set is a folder ``<DS>`` holding ``<DS>_2k.log`` and ``<DS>_2k.log_structured_corrected.csv``.
Each raw line's header (timestamp, host, level, component) is removed the way the ground truth's
Content column does: the line's Content is taken from the structured CSV after checking that the raw
line ends with it (header parsing only; the ground truth templates are never looked at while mining).

    python bench/loghub.py [--data ../shared/bench/loghub] [--json] [--lines 1000000] [--set-lines 100000]
                           [--stress-lines 200000] [--stress-templates 1000]
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
from collections.abc import Iterator, Sequence
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


def synthesise(lines: Sequence[str], count: int, seed: int = 7) -> Iterator[str]:
    """``count`` lines: the given ones repeated, their numbers replaced by random ones."""
    rng = random.Random(seed)
    for i in range(count):
        line = lines[i % len(lines)]
        yield _DIGITS.sub(lambda m: str(rng.randrange(10 ** len(m.group())) if len(m.group()) < 18 else 7), line)


_SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "qui", "dor", "fen", "gal", "hux", "jor")
_NAMES = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory", "oscar")
STRESS_LENGTH = 10


def _made_up_words(rng: random.Random, count: int) -> list[str]:
    words: set[str] = set()
    while len(words) < count:
        words.add("".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4))))
    ordered = sorted(words)
    rng.shuffle(ordered)
    return ordered


def stress_corpus(count: int, templates: int = 1000, seed: int = 11) -> tuple[list[str], list[int]]:
    """``count`` lines of ``templates`` made-up templates and the template of each line.

    Drain's worst case: every template has the same first two words and the same length, so all of
    them share one leaf of the tree and each line meets every template there. A template is
    ``kernel: worker`` and eight slots: constant words (no two templates share a word at one
    position), ``key=<number>`` and ``key=<user name>`` pairs with a key of the template's own, and
    a last slot that is a number or an IP address in every template. Any two templates share at
    most three of their ten tokens, under the 0.4 similarity that would merge them."""
    rng = random.Random(seed)
    vocabulary = _made_up_words(rng, (STRESS_LENGTH - 3) * templates)
    shapes = []
    for t in range(templates):
        slots = []
        for position in range(STRESS_LENGTH - 3):
            word = vocabulary[position * templates + t]
            slots.append(rng.choices(("word", "number", "name"), weights=(6, 1, 1))[0] + ":" + word)
        slots.append(rng.choice(("last:number", "last:ip")))
        shapes.append(slots)

    def value(slot: str) -> str:
        kind, word = slot.split(":")
        if kind == "word":
            return word
        if kind == "number":
            return f"{word}={rng.randrange(100000)}"
        if kind == "name":
            return f"{word}={rng.choice(_NAMES)}"
        if word == "ip":
            return f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}"
        return str(rng.randrange(10 ** 6))

    lines, truth = [], []
    for _ in range(count):
        t = rng.randrange(templates)
        lines.append(" ".join(["kernel:", "worker"] + [value(slot) for slot in shapes[t]]))
        truth.append(t)
    return lines, truth


def throughput(lines: Iterator[str], count: int, chunk: int = 10_000) -> dict:
    """Speed and resident memory mining ``count`` lines from ``lines`` with one fresh miner.

    Lines are made in chunks outside the timed part, so the figure is the miner's own speed and
    the memory is the miner's plus one chunk's. ``lines_per_second`` counts the process's CPU time,
    which a machine busy with other work inflates less than the wall-clock time (also reported)."""
    miner = new_miner()
    cpu = wall = 0.0
    done = 0
    ids: list[int] = []
    while done < count:
        batch = [next(lines) for _ in range(min(chunk, count - done))]
        start_cpu, start_wall = time.process_time(), time.perf_counter()
        ids.extend([miner.add(line)[0].id for line in batch])
        cpu += time.process_time() - start_cpu
        wall += time.perf_counter() - start_wall
        done += len(batch)
    return {"lines": done, "cpu_seconds": round(cpu, 2), "wall_seconds": round(wall, 2),
            "lines_per_second": round(done / max(cpu, 1e-9)), "rss_mib": round(_rss_bytes() / 2**20, 1),
            "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "clusters": len(miner.clusters), "ids": ids}


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
    parser.add_argument("--json", action="store_true",
                        help='print {"<DS>": {"GA": .., "PA": .., "lines_per_second": ..}, "speed": {..}, "stress": {..}}')
    parser.add_argument("--lines", type=int, default=1_000_000,
                        help="lines of the mixed corpus of all sets for the speed/RSS run; 0 skips it")
    parser.add_argument("--set-lines", type=int, default=100_000, help="lines per set for its own speed; 0 skips it")
    parser.add_argument("--stress-lines", type=int, default=200_000,
                        help="lines of the many-templates corpus (all in one leaf of the tree); 0 skips it")
    parser.add_argument("--stress-templates", type=int, default=1000, help="templates of that corpus")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        parser.error(f"--data {args.data}: not a directory")
    for flag in ("lines", "set_lines", "stress_lines"):
        if getattr(args, flag) < 0:
            parser.error(f"--{flag.replace('_', '-')} must not be negative")
    if args.stress_templates < 1:
        parser.error("--stress-templates must be at least 1")
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
        results[folder.name] = {"GA": (r := evaluate(contents, ids, templates))["GA"], "PA": r["PA"]}
        if args.set_lines > 0:
            results[folder.name]["lines_per_second"] = \
                throughput(synthesise(contents, args.set_lines), args.set_lines)["lines_per_second"]
        results[folder.name].update({"templates": r["templates"], "truth_templates": r["truth_templates"]})
    report: dict = {ds: dict(r) for ds, r in results.items()}
    if args.lines > 0:
        speed = throughput(synthesise(all_lines, args.lines), args.lines)
        del speed["ids"]
        report["speed"] = speed
    if args.stress_lines > 0:
        lines, truth = stress_corpus(args.stress_lines, args.stress_templates)
        stress = throughput(iter(lines), len(lines))
        stress["GA"] = round(grouping_accuracy(truth, stress.pop("ids")), 4)
        stress["templates"] = args.stress_templates
        report["stress"] = stress
    if args.json:
        for ds in results:
            del report[ds]["templates"], report[ds]["truth_templates"]
        print(json.dumps(report))
        return 0
    _print_report(report, results)
    return 0


def _print_report(report: dict, results: dict) -> None:
    print(f"{'set':10} {'GA':>6} {'PA':>6} {'templates':>9} {'truth':>6} {'lines/s':>8}")
    for ds, r in results.items():
        rate = f"{r['lines_per_second']:8d}" if "lines_per_second" in r else f"{'-':>8}"
        print(f"{ds:10} {r['GA']:6.3f} {r['PA']:6.3f} {r['templates']:9d} {r['truth_templates']:6d} {rate}")
    if "speed" in report:
        s = report["speed"]
        print(f"\nmixed corpus of {len(results)} sets: {s['lines']} lines in {s['cpu_seconds']} s of CPU "
              f"({s['wall_seconds']} s wall): {s['lines_per_second']} lines/s; RSS after them {s['rss_mib']} MiB "
              f"(peak {s['max_rss_mib']} MiB), {s['clusters']} templates")
    if "stress" in report:
        s = report["stress"]
        print(f"many templates in one leaf: {s['lines']} lines of {s['templates']} templates in {s['cpu_seconds']} s "
              f"of CPU ({s['wall_seconds']} s wall): {s['lines_per_second']} lines/s; {s['clusters']} templates "
              f"mined, GA {s['GA']:.3f}")


if __name__ == "__main__":
    sys.exit(main())
