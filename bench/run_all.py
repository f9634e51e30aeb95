"""Every benchmark at a moderate budget, then one table of the figures against their targets.

    .venv/bin/python bench/run_all.py [--threads N] [--only masks,train_step,...] [--quick]
                                      [--with-compile] [--out DIR]

Runs, each in its own process and one after another (their own tables are printed as they come):
masks.py (compute_masks ms per pair), train_step.py (step cost per loss.mask and the masks'
share), inference.py (depth-net frames/s, eager vs ONNX Runtime; torch.compile with
--with-compile, whose compile takes minutes), render.py (synthetic street frames/s) and
mask_accuracy.py (the masks against exact visibility). Each script measures its ratios side by
side in one run. `make bench` calls this. bench/README.md says what each measures.

On a machine shared with other work pass --threads 1: with more threads than free cores, torch's
OpenMP barriers wait for descheduled threads and every figure measures the contention.
`--quick` shrinks every budget to a smoke test (figures then say little).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
TARGET_SIZE = "128x416"  # the size the issues' speed targets are stated at

# name -> (script, arguments at the moderate budget, arguments for --quick)
BENCHES = {
    "masks": ("masks.py", ["--repeat", "20"],
              ["--repeat", "2", "--height", "64", "--width", "208", "--skip-reference"]),
    "train_step": ("train_step.py", ["--masks", "--repeat", "3"], ["--masks", "--repeat", "1", "--height", "64",
                                                                   "--width", "208", "--batch", "2"]),
    "inference": ("inference.py", ["--repeat", "10", "--skip-compile"], ["--repeat", "2", "--skip-compile",
                                                                           "--batches", "1", "--height", "64",
                                                                           "--width", "208"]),
    "render": ("render.py", ["--scenes", "2", "--frames", "15"], ["--scenes", "1", "--frames", "4", "--height", "64",
                                                                    "--width", "208", "--workers", "1"]),
    "mask_accuracy": ("mask_accuracy.py", ["--scenes", "2", "--frames", "12", "--taus", "0,0.05,0.1,0.2"],
                      ["--scenes", "1", "--frames", "4", "--height", "64", "--width", "208", "--taus", "0,0.1"]),
}


def run_bench(name: str, args, folder: Path) -> tuple[dict | None, float]:
    """Run one benchmark script in its own process (output streamed); its figures and wall seconds."""
    script, moderate, quick = BENCHES[name]
    extra = quick if args.quick else moderate
    if name == "inference" and args.with_compile:
        extra = [a for a in extra if a != "--skip-compile"]
    if args.threads is not None and name != "render":  # render's own comparison is over worker processes
        extra = [*extra, "--threads", str(args.threads)]
    out = folder / f"{name}.json"
    command = [sys.executable, str(BENCH / script), *extra, "--json", str(out)]
    print(f"\n=== {name}: {' '.join(['.venv/bin/python', 'bench/' + script, *extra])}", flush=True)
    start = time.perf_counter()
    result = subprocess.run(command, cwd=BENCH.parent)
    seconds = time.perf_counter() - start
    if result.returncode != 0 or not out.is_file():
        print(f"=== {name}: FAILED (exit {result.returncode})", flush=True)
        return None, seconds
    return json.loads(out.read_text()), seconds


def summary_rows(figures: dict[str, dict | None]) -> list[tuple[str, str, str, str]]:
    """(what, measured, target, measured / target or the comparison) for the summary table."""
    rows = []
    masks = figures.get("masks")
    if masks:
        ms0, ms3 = masks["ms_per_pair"]["0"], masks["ms_per_pair"]["3"]
        size = "x".join(map(str, masks["size"]))
        rows.append((f"compute_masks, repeats 0, ms/pair (B={masks['batch']}, {size})", f"{ms0:.2f}",
                     "<= 10 at 128x416",
                     (f"{ms0 / 10:.2f}x target; authors' ~44 ms: {44 / ms0:.1f}x faster" if size == TARGET_SIZE
                      else "not comparable: other size")))
        rows.append(("compute_masks, repeats 3, ms/pair", f"{ms3:.2f}", "", f"{ms3 / ms0:.2f}x repeats 0"))
        if masks.get("loop_reference_ms"):
            rows.append(("  vs per-pixel loop reference (1 pair)", f"{masks['loop_reference_ms']:.0f}", "",
                         f"{masks['loop_reference_ms'] / ms0:.0f}x faster"))
    step = figures.get("train_step")
    if step:
        ms, mask_ms = step["ms_per_step"], step["masks_ms"]
        base = ms["none"]
        size = "x".join(map(str, step["size"]))
        rows.append((f"train step, loss.mask=none, ms (batch {step['batch']}, {size})", f"{base:.0f}", "", "1.00x"))
        for name in ("multimask r0", "multimask r3", "automask", "explainability", "multimask+automask"):
            target = "<= 1.3x none" if name == "multimask r0" else ""  # any size
            rows.append((f"train step, {name}, ms", f"{ms[name]:.0f}", target, f"{ms[name] / base:.2f}x none"))
        share = mask_ms["multimask r0"] / ms["multimask r0"]
        rows.append(("  compute_masks share of the multimask r0 step", f"{100 * share:.1f}%", "<= 10%",
                     f"{share / 0.10:.2f}x target"))
    inference = figures.get("inference")
    if inference:
        per = inference["ms_per_frame"]
        size = "x".join(map(str, inference["size"]))
        for batch in sorted(per["eager"], key=int):
            eager = per["eager"][batch]
            rows.append((f"depth net eager, batch {batch}, ms/frame ({size})", f"{eager:.1f}",
                         "~43 at 128x416 (idle)" if batch == "1" else "", f"{1000 / eager:.1f} fps"))
            for backend in ("onnxruntime", "torch.compile"):
                if backend in per and batch in per[backend]:
                    t = per[backend][batch]
                    rows.append((f"  {backend}, batch {batch}", f"{t:.1f}", ">= 1.5x eager" if batch == "1" and
                                 backend == "onnxruntime" else "", f"{eager / t:.2f}x eager"))
    render = figures.get("render")
    if render:
        fps = render["end_to_end_fps"]
        best = max(fps.values())
        size = "x".join(map(str, render["size"]))
        rows.append((f"synthetic render, frames/s end to end ({size})", f"{best:.1f}", ">= 10 at 128x416",
                     f"{best / 10:.2f}x target" if size == TARGET_SIZE else "not comparable: other size"))
        if len(fps) > 1:
            one = fps[min(fps, key=int)]
            rows.append((f"  workers {max(fps, key=int)} vs 1", "", "", f"{fps[max(fps, key=int)] / one:.2f}x"))
    accuracy = figures.get("mask_accuracy")
    if accuracy:
        tau = accuracy["recommended_tau"]["0"]
        zero = accuracy["combined"]["repeats0_tau0"]
        rec = accuracy["combined"][f"repeats0_tau{tau:g}"]
        rows.append(("combined mask on true geometry, τ 0: precision / recall", f"{zero['precision']:.3f} / "
                     f"{zero['recall']:.3f}", "", "worse direction"))
        rows.append((f"  recommended τ = {tau:g}: precision / recall", f"{rec['precision']:.3f} / {rec['recall']:.3f}",
                     "", f"recall {rec['recall'] / max(zero['recall'], 1e-12):.3f}x τ 0"))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=None, help="torch threads in every benchmark")
    parser.add_argument("--only", default=",".join(BENCHES), help=f"comma-separated subset of {', '.join(BENCHES)}")
    parser.add_argument("--quick", action="store_true", help="tiny budgets: a smoke test of the scripts")
    parser.add_argument("--with-compile", action="store_true", help="also time torch.compile (minutes to compile)")
    parser.add_argument("--out", type=Path, default=None, help="keep each benchmark's figures as DIR/<name>.json")
    args = parser.parse_args(argv)
    names = args.only.split(",")
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose among {', '.join(BENCHES)}")

    load_before = os.getloadavg()[0]
    figures, seconds = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.out or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            figures[name], seconds[name] = run_bench(name, args, folder)

    rows = summary_rows(figures)
    widths = [max(len(r[i]) for r in rows + [("what", "measured", "target", "ratio")]) for i in range(4)]
    print(f"\n=== summary ({os.cpu_count()} cores, load average {load_before:.1f} before / "
          f"{os.getloadavg()[0]:.1f} after; threads {args.threads or 'default'}; "
          + ", ".join(f"{n} {s:.0f} s" for n, s in seconds.items()) + ")")
    line = "  ".join(f"{h:<{w}}" for h, w in zip(("what", "measured", "target", "ratio"), widths))
    print(line)
    print("-" * len(line))
    for row in rows:
        print("  ".join(f"{c:<{w}}" for c, w in zip(row, widths)))
    failed = [n for n in names if figures[n] is None]
    if failed:
        print(f"failed: {', '.join(failed)}")
    print("command: .venv/bin/python bench/run_all.py " + " ".join(sys.argv[1:] if argv is None else argv))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
