"""Mutation testing of the modules that carry compatret's promises: do the tests catch a one-line bug?

    python eval/mutation/run.py                      # mutmut run (hours on 2 cores; resumable), then the tally
    python eval/mutation/run.py --rerun-survivors    # then each survivor again, by name (tests added since)
    python eval/mutation/run.py --tally              # only the tally of the kept verdicts (verdicts/, from mutants/)
    python eval/mutation/run.py --survivors-only compatret/engine/upgrade.py ...   # those modules' survivors by name, no plain run

mutmut (configured in pyproject.toml's [tool.mutmut]: the modules and the in-process tests)
changes one thing at a time in a function (an operator, a constant, a condition, an argument)
and runs the tests that call that function; a mutant is *killed* when a test fails. A mutant no
test can tell from the original is *equivalent*: each is listed with its reason in
`equivalent.toml` beside this file and left out of the score. Timeouts (a mutant that loops) are
kills. A mutant in a function no selected test calls counts as *survived*; one a run cut short
never reached is *not run*, and its module does not meet the bar.

mutmut keeps every verdict in mutants/ and reruns only mutants of changed functions, so a run cut
short goes on where it stopped. mutants/ is a work folder git does not keep, so each run also
copies the verdicts to verdicts/ beside this file (committed), and a run on a fresh clone starts
from them: a verdict stands for as long as its function's source is unchanged (mutmut compares a
hash of each function), and hours of mutants are not lost with the machine that ran them. A survivor stays one until it is run again by name: after tests
are added, `--rerun-survivors` does that, once the plain run has taken in every source change (a
named run rewrites a changed file's results with the named mutants only). Changing the test
selection in pyproject.toml resets every verdict (mutmut compares its fingerprint): a new test
file costs a full run, a test added to a selected file does not. Run one of these at a time.

Writes results.json and results.md: totals and per module, the bar being
killed / (killed + survived) >= 0.9 on every module.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import functools
import json
import os
import subprocess
import sys
import time
import tomllib
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
VERDICTS = HERE / "verdicts"
BAR = 0.9
KILLED = {1: "killed", 3: "killed", 36: "killed", -24: "killed", 24: "killed", 152: "killed", 255: "killed", 37: "killed"}
SURVIVED = {0: "survived", 5: "survived", 33: "survived"}  # 5/33: no test ran it, so nothing would catch it


def configured_modules() -> list[str]:
    return list(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]["only_mutate"])


def equivalents() -> dict[str, dict[str, str]]:
    """mutant name -> why no test can tell it from the original, and the line it changes."""
    path = HERE / "equivalent.toml"
    return tomllib.loads(path.read_text()) if path.exists() else {}


@functools.cache
def _functions(copy: Path) -> tuple[str, dict[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    source = copy.read_text()
    return source, {n.name: n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}


def changed_lines(name: str) -> str | None:
    """The lines the mutant `name` writes in place of the original's, stripped and joined by ' / '
    (read from its function in mutants/; None without that copy). A mutant is named by its place
    among its function's mutants, so the number can move to another change when the lines the
    tests cover move: an equivalent is excused only while its recorded change is still this one."""
    module, _, func = name.rpartition(".")
    copy = ROOT / "mutants" / (module.replace(".", "/") + ".py")
    if not copy.exists():
        return None
    source, defs = _functions(copy)
    orig, mutant = defs.get(func.rpartition("__mutmut_")[0] + "__mutmut_orig"), defs.get(func)
    if orig is None or mutant is None:
        return None
    lines = [(ast.get_source_segment(source, d) or "").replace(d.name, "f", 1).splitlines() for d in (orig, mutant)]  # the def line names the mutant
    diff = difflib.ndiff(*lines)
    return " / ".join(line[2:].strip() for line in diff if line.startswith("+ "))


def tally() -> dict:
    recorded = equivalents()
    moved = sorted(n for n, e in recorded.items() if changed_lines(n) not in (None, e.get("change")))
    equivalent = {n: e for n, e in recorded.items() if n not in moved}
    per_module: dict[str, Counter[str]] = defaultdict(Counter)
    survivors: dict[str, list[str]] = defaultdict(list)
    named: set[str] = set()
    for module in configured_modules():
        kept = VERDICTS / f"{module}.json"
        if not kept.exists():
            raise SystemExit(f"no results for {module}: run without --tally first")
        codes = json.loads(kept.read_text())["exit_code_by_key"]
        named |= set(codes)
        for name, code in codes.items():
            if name in equivalent:
                state = "equivalent"
            elif code in KILLED:
                state = "killed"
            elif code in SURVIVED:
                state = "survived"
            else:
                state = "not_run" if code is None else f"other ({code})"
            per_module[module][state] += 1
            if state not in ("killed", "equivalent", "not_run"):
                survivors[module].append(name)
    stale = sorted(set(equivalent) - named)

    def score(c: Counter[str]) -> float | None:
        """Over the mutants that were run (None: none was; a run cut short is never a pass)."""
        caught, missed = c["killed"], c["survived"] + sum(v for k, v in c.items() if k.startswith("other"))
        return round(caught / (caught + missed), 4) if caught + missed else None

    total: Counter[str] = sum(per_module.values(), Counter())
    return {
        "tool": "mutmut 3 (pyproject.toml [tool.mutmut])",
        "bar": BAR,
        "killed": total["killed"],
        "survived": total["survived"],
        "equivalent": total["equivalent"],
        "not_run": total["not_run"],
        "score": score(total),
        "bar_met": all((score(c) or 0.0) >= BAR and not c["not_run"] for c in per_module.values()),
        "modules": {m: {**dict(c), "score": score(c)} for m, c in per_module.items()},
        "survivors": dict(survivors),
        "stale_equivalents": stale,  # listed as equivalent, but no such mutant any more: update equivalent.toml
        "moved_equivalents": moved,  # listed as equivalent, but the mutant of that name now makes another change: not excused
    }


def shown(score: float | None) -> str:
    return "n/a" if score is None else f"{score:.3f}"


def write(result: dict) -> None:
    (HERE / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    rows = [f"| `{m}` | {c.get('killed', 0)} | {c.get('survived', 0)} | {c.get('equivalent', 0)} | {c.get('not_run', 0)} | {shown(c['score'])} |"
            for m, c in result["modules"].items()]
    md = ["# Mutation testing (`python eval/mutation/run.py`)", "",
          f"Bar: killed / (killed + survived) >= {BAR} on every module. Met: **{result['bar_met']}**.", "",
          "| module | killed | survived | equivalent | not run | score |", "|---|---:|---:|---:|---:|---:|", *rows,
          f"| **all** | {result['killed']} | {result['survived']} | {result['equivalent']} | {result['not_run']} | {shown(result['score'])} |",
          "", "Score: killed / (killed + survived) over the mutants that were run; a module with mutants not run does not meet the bar.", ""]
    if result["moved_equivalents"]:
        md += ["Listed as equivalent, but the mutant of that name now makes another change (not excused; update equivalent.toml):", ""]
        md += [f"- `{n}`" for n in result["moved_equivalents"]] + [""]
    if any(result["survivors"].values()):
        md += ["Survivors (`mutmut show NAME` prints the change):", ""]
        md += [f"- `{n}`" for names in result["survivors"].values() for n in names]
    (HERE / "results.md").write_text("\n".join(md) + "\n")


def fresh_copies_of_changed_sources() -> None:
    """mutmut regenerates a changed file's mutants on the lines the tests cover, measured on the
    copies in mutants/; it copies a source there only when no copy exists, so a changed file was
    measured on its old, already mutated copy, whose line numbers are another file's, and most of
    its mutants went missing (view.py fell from 458 to 178). A changed file's copy is removed here:
    mutmut copies the source afresh, measures it, and keeps the verdicts of unchanged functions."""
    refreshed = False
    for module in configured_modules():
        copy = ROOT / "mutants" / module
        if copy.exists() and (ROOT / module).stat().st_mtime > copy.stat().st_mtime:
            copy.unlink()
            refreshed = True
    stats = ROOT / "mutants" / "mutmut-stats.json"
    if refreshed and stats.exists():  # which tests reach which function was recorded on the old copies: record it again
        data = json.loads(stats.read_text())  # (the file stays: mutmut compares its config fingerprint with the new one)
        data["tests_by_mangled_function_name"], data["duration_by_test"] = {}, {}
        stats.write_text(json.dumps(data))


def restore_verdicts() -> None:
    """A module with no verdicts in mutants/ (a fresh clone) gets the committed ones: mutmut, as it
    writes that module's mutants, keeps each verdict whose function is unchanged and runs the rest."""
    for module in configured_modules():
        meta, kept = ROOT / "mutants" / f"{module}.meta", VERDICTS / f"{module}.json"
        if not meta.exists() and kept.exists():
            meta.parent.mkdir(parents=True, exist_ok=True)
            meta.write_text(json.dumps({**json.loads(kept.read_text()), "durations_by_key": {}, "estimated_durations_by_key": {}}))


def keep_verdicts() -> None:
    """Each module's verdicts and function hashes, from mutants/ to verdicts/ (the committed copy)."""
    for module in configured_modules():
        meta = ROOT / "mutants" / f"{module}.meta"
        if meta.exists():
            data = json.loads(meta.read_text())
            kept = VERDICTS / f"{module}.json"
            kept.parent.mkdir(parents=True, exist_ok=True)
            kept.write_text(json.dumps({k: data[k] for k in ("exit_code_by_key", "hash_by_function_name")}, indent=0, sort_keys=True) + "\n")


def retest_untested() -> None:
    """Mutants once found in a function no selected test reached (33) are tried again: the stats
    that said so may predate the tests, or the function's mutants (mutmut keeps such verdicts)."""
    for module in configured_modules():
        meta = ROOT / "mutants" / f"{module}.meta"
        if meta.exists():
            data = json.loads(meta.read_text())
            codes = data["exit_code_by_key"]
            if any(c == 33 for c in codes.values()):
                data["exit_code_by_key"] = {k: None if c == 33 else c for k, c in codes.items()}
                meta.write_text(json.dumps(data, indent=4))


def mutmut_run(names: list[str], max_children: int = 2) -> None:
    """`mutmut run` over everything not yet run (no names), or again over the named mutants."""
    # each mutant's tests run in a fresh fork: the digit models they share are trained once, here
    env = {**os.environ, "COMPATRET_TEST_MODELS": str(ROOT / "mutants" / "digit_models")}
    done = subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(max_children), *names], cwd=ROOT, env=env)
    if done.returncode != 0:
        raise SystemExit(f"mutmut run failed (exit {done.returncode}): nothing tallied")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tally", action="store_true", help="only count the results of the last run")
    ap.add_argument("--rerun-survivors", action="store_true", help="after the run, run every survivor again by name")
    ap.add_argument("--survivors-only", nargs="*", metavar="MODULE",
                    help="run only the survivors again by name (of these modules; all when none is named), no plain run: "
                    "for a plain run cut short when no source changed since")
    ap.add_argument("--max-children", type=int, default=2)
    args = ap.parse_args()
    if args.survivors_only is not None:
        keep_verdicts()  # the survivors of the last run, which may have been cut short before it kept them
        survivors = tally()["survivors"]
        wanted = args.survivors_only or list(survivors)
        unknown = sorted(set(wanted) - set(configured_modules()))
        if unknown:
            raise SystemExit(f"not a mutated module: {unknown[0]}")
        restore_verdicts()
        fresh_copies_of_changed_sources()
        mutmut_run([n for m in wanted for n in survivors.get(m, [])], args.max_children)
    elif not args.tally:
        t0 = time.time()
        restore_verdicts()
        fresh_copies_of_changed_sources()
        retest_untested()
        mutmut_run([], args.max_children)
        if args.rerun_survivors:
            keep_verdicts()
            mutmut_run([n for names in tally()["survivors"].values() for n in names], args.max_children)
        print(f"mutmut ran for {time.time() - t0:.0f} s", file=sys.stderr)
    keep_verdicts()
    result = tally()
    write(result)
    print(json.dumps({k: result[k] for k in ("killed", "survived", "equivalent", "not_run", "score", "bar_met")}))
    for module, c in result["modules"].items():
        print(f"{shown(c['score'])}  {module}  ({c.get('killed', 0)} killed, {c.get('survived', 0)} survived, "
              f"{c.get('equivalent', 0)} equivalent, {c.get('not_run', 0)} not run)")


if __name__ == "__main__":
    main()
