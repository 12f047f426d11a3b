"""Commands over results: ``leaderboard``, ``plot``, ``validate-results``, ``submit`` and ``audit``."""
from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

from ..audit import FailCondition, audit, write_report
from ..errors import SpecError
from ..method_sources import MethodSources
from ..protocol import figure_protocol
from ..records import ResultStore
from ..report.html import write_leaderboard_html
from ..report.leaderboard import write_leaderboard
from ..records.agreement import TOLERANCE
from ..submit import SubmissionError, check_submission, submit
from ..verify import VERIFIED_FILE, record_verified, verified_hashes


def cmd_leaderboard(args) -> int:
    records = ResultStore(args.results).load()
    if args.out is None:
        here = Path(args.results) == Path("results")  # the repository's: its committed leaderboard.md
        args.out = "leaderboard.md" if here else str(Path(args.results) / "leaderboard.md")
    html = args.html or str(Path(args.out).with_suffix(".html"))
    figures = args.figures or str(Path(args.results) / "figures")
    verified = verified_hashes(args.results)  # the runs `submit --verify` re-ran: their rows are marked
    write_leaderboard(records, args.out, verified)
    write_leaderboard_html(records, html, figures, verified)
    print(f"wrote {args.out} and {html} (figures from {figures}/) from {len(records)} records in {args.results}/")
    return 0


def cmd_plot(args) -> int:
    records = [r for r in ResultStore(args.results).load() if not args.task or r.task.name in args.task]
    if not records:
        raise SpecError(f"no result records in {args.results}/"
                        + (f" for task(s) {', '.join(args.task)}" if args.task else ""))
    paths = figure_protocol(args.kind).plot(args.kind, records, args.out, per_checkpoint=args.per_checkpoint)
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def _print_problems(problems) -> None:
    for problem in problems:
        print(problem, file=sys.stderr)


def cmd_validate_results(args) -> int:
    status = 0
    for path in args.files:
        sub = check_submission(path, args.results)
        if sub.problems:
            _print_problems(sub.problems)
            print(f"forgetbench: error: {path}: {len(sub.problems)} problem(s)", file=sys.stderr)
            status = 2
            continue
        runs = Counter(f"{r['task']['name']} v{r['task']['version']}" for _, r in sub.records)
        stored = f"; {len(sub.already_stored)} already stored (agreeing)" if sub.already_stored else ""
        print(f"{path}: ok, {len(sub.records)} new record(s) ({', '.join(f'{t}: {n}' for t, n in sorted(runs.items())) or '-'})"
              f"{stored}")
    return status


def _verify(args, sources: MethodSources):
    """The verification outcomes of ``args.file`` (``verify`` and ``submit --verify``), printed as they come."""
    from ..methods import get_method
    from ..progress import set_quiet
    from ..verify import verify

    if args.sample < 0:
        raise SpecError(f"--sample must be >= 0, got {args.sample}")
    for path in args.method_file:
        if not path.endswith(".py"):
            raise SpecError(f"--method-file {path}: expected a .py file")
        get_method(path)
    set_quiet(args.quiet)
    outcomes = verify(args.file, sample=args.sample, seed=args.sample_seed, device=args.device,
                      progress=not args.quiet, sources=sources, allow_code=args.allow_code)
    counts = Counter(o.status for o in outcomes)
    print(f"{args.file}: {counts['agrees']} agree, {counts['disagrees']} disagree, {counts['skipped']} skipped "
          f"(tolerance {TOLERANCE})")
    return outcomes


def cmd_verify(args) -> int:
    outcomes = _verify(args, MethodSources(args.results, args.method_source))
    return 0 if outcomes and all(o.status == "agrees" for o in outcomes) else 1


def cmd_submit(args) -> int:
    sources = MethodSources(args.results, args.method_source)  # read now: a missing file fails before any work
    outcomes = _verify(args, sources) if args.verify else []
    refused = [o for o in outcomes if o.status == "disagrees"]
    if refused:
        for o in refused:
            print(f"{args.file}:{o.line}: {o.why}", file=sys.stderr)
        print(f"forgetbench: error: {args.file}: refused ({len(refused)} record(s) disagree with their re-run); "
              f"{args.results}/ is unchanged", file=sys.stderr)
        return 2
    try:
        result = submit(args.file, args.results, sources)
    except SubmissionError as e:
        _print_problems(e.problems)
        print(f"forgetbench: error: {args.file}: refused ({len(e.problems)} problem(s)); {args.results}/ is unchanged",
              file=sys.stderr)
        return e.exit_code
    for path, n in result.added.items():
        print(f"added {n} record(s) to {path}")
    for path in result.sources:
        print(f"stored method source {path} (data: run only by `verify --allow-code`)")
    if outcomes:
        print(f"{record_verified(args.results, outcomes)} run(s) marked verified in {args.results}/{VERIFIED_FILE}")
    if result.already_stored:
        print(f"{len(result.already_stored)} record(s) were already stored (agreeing within the reproducibility "
              "tolerance); skipped")
    if result.added:
        print(f"regenerate the leaderboard with: forgetbench leaderboard --results {args.results}")
    return 0


def cmd_audit(args) -> int:
    conditions = [FailCondition.parse(c) for c in args.fail_if or []]  # a typo fails now, not after the evaluation
    result = audit(args.reference, args.tuned, args.suite, exclude=tuple(args.exclude or ()), device=args.device,
                   seed=args.seed)
    paths = write_report(result, args.out)
    base = result["tuned"]["metadata"].get("model")
    if base and base != args.reference:  # e.g. a 64 px fine-tune audited at the model's default 224 px
        print(f"note: {args.tuned} was fine-tuned from {base!r} (its metadata says so), audited here against "
              f"{args.reference!r}; to get its run's numbers, audit with --reference {base!r}")
    print(result["summary_line"])
    print("wrote " + ", ".join(str(p) for p in paths))
    failed = []
    for c in conditions:
        value = c.value(result)
        holds = c.holds(result)
        print(f"--fail-if {c.text}: {c.metric} = {value:+.4f}: {'holds, failing' if holds else 'does not hold'}")
        failed += [c] if holds else []
    return 1 if failed else 0
