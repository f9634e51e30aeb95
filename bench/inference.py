"""Depth-net inference speed: frames per second at H×W, eager PyTorch vs `torch.compile` vs ONNX Runtime.

    .venv/bin/python bench/inference.py [--net dispnet|resnet18 | --run RUN] [--height 128] [--width 416]
                                        [--batches 1 8] [--repeat 20] [--skip-compile] [--device cpu|cuda]
                                        [--threads N] [--json FILE]

Times the module `masksfm export` writes (image -> depth = 1 / disp_0), so ONNX Runtime runs the very
graph a user gets. Weights are random unless --run is given (speed does not depend on them). Each
figure is the median of --repeat timed calls after warm-up (torch.compile with freezing, the CPU
inference recipe), the backends taking turns call by call
(a shared machine then slows them alike); torch.compile's compile time is printed apart. Ratios are against eager on the same device, measured in the same run. On CUDA, ONNX Runtime
is timed where its CUDA provider is installed.
Target (issue 5): ONNX Runtime >= 1.5x eager at batch 1 on the CPU.

On a machine shared with other work, pass --threads 1: with more threads than free cores, torch's
OpenMP barriers wait for descheduled threads (seen here: eager DispNet 1.9 s per frame with 2
threads on 2 busy cores, 0.27 s with 1), and the comparison measures the contention, not the backends.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from masksfm.export import DepthOutput, write_onnx
from masksfm.networks import build_depth_net


def time_interleaved(calls: dict, repeat: int, sync) -> dict[str, float]:
    """Median seconds per call of each backend, after two warm-up calls each. The backends take
    turns call by call, so that a machine shared with other work slows them all alike."""
    for fn in calls.values():
        for _ in range(2):
            fn()
        sync()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeat):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def onnx_session(module: torch.nn.Module, height: int, width: int, folder: Path, device: torch.device):
    """The exported graph (dynamic batch, as `masksfm export` writes it) in an ONNX Runtime session, or None."""
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            return None
        providers.insert(0, "CUDAExecutionProvider")
    path = folder / "depth.onnx"
    if not path.exists():
        batch = torch.export.Dim("batch", min=1, max=4096)
        write_onnx(module, (torch.rand(2, 3, height, width),), ["image"], "depth", {"image": {0: batch}}, {}, path)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = torch.get_num_threads()
    return ort.InferenceSession(str(path), options, providers=providers)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--net", default="dispnet", choices=["dispnet", "resnet18"])
    which.add_argument("--run", type=Path, default=None, help="a run folder or checkpoint (its depth net)")
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=416)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--skip-compile", action="store_true", help="leave torch.compile out (its compile takes minutes)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads of torch and ONNX Runtime alike (default: torch's, one per core)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if args.run is not None:
        from masksfm.model import load_model

        depth_net, name = load_model(args.run, "cpu")[0].depth_net, str(args.run)
    else:
        torch.manual_seed(0)
        depth_net, name = build_depth_net(args.net), args.net
    module = DepthOutput(depth_net).eval()

    rows: dict[str, dict[int, float]] = {}
    compile_seconds = {}
    with tempfile.TemporaryDirectory() as folder, torch.inference_mode():
        session = onnx_session(module, args.height, args.width, Path(folder), device)
        module = module.to(device)
        compiled = None
        if not args.skip_compile:
            from torch._inductor import config as inductor_config

            # Freezing (weights as constants, pre-packed for the CPU's convolution kernels) is
            # PyTorch's recipe for CPU inference; without it the compiled net is no faster than eager.
            inductor_config.freezing = True
            compiled = torch.compile(module)
        for batch in args.batches:
            x = torch.rand(batch, 3, args.height, args.width, device=device)
            calls = {"eager": lambda: module(x)}
            if compiled is not None:
                start = time.perf_counter()
                compiled(x)
                sync()
                compile_seconds[batch] = time.perf_counter() - start
                calls["torch.compile"] = lambda: compiled(x)
            if session is not None:
                x_np = x.cpu().numpy()
                calls["onnxruntime"] = lambda: session.run(None, {"image": x_np})
            for backend, seconds in time_interleaved(calls, args.repeat, sync).items():
                rows.setdefault(backend, {})[batch] = seconds

    print(f"depth net {name} (image -> depth), {args.height}x{args.width}, {device.type}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, median of {args.repeat}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the end")
    header = f"{'backend':<14}" + "".join(f" | {'b=' + str(b):>6} {'ms/frame':>9} {'fps':>7} {'vs eager':>8}"
                                          for b in args.batches)
    print(header)
    print("-" * len(header))
    for backend, times in rows.items():
        cells = []
        for batch in args.batches:
            seconds = times[batch]
            ratio = rows["eager"][batch] / seconds
            cells.append(f" | {'':>6} {1000 * seconds / batch:>9.2f} {batch / seconds:>7.1f} {ratio:>7.2f}x")
        print(f"{backend:<14}" + "".join(cells))
    if compile_seconds:
        print("torch.compile first call (compile): " + ", ".join(f"b={b}: {s:.0f} s" for b, s in compile_seconds.items()))
    if "onnxruntime" in rows and 1 in args.batches:
        print(f"target: ONNX Runtime / eager at batch 1 = {rows['eager'][1] / rows['onnxruntime'][1]:.2f}x "
              f"(target >= 1.5x); eager {1000 * rows['eager'][1]:.0f} ms/frame (about 43 ms on idle 2 cores)")
    print("command: .venv/bin/python bench/inference.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    figures = {"net": name, "device": device.type, "threads": torch.get_num_threads(),
               "size": [args.height, args.width],
               "ms_per_frame": {b: {str(n): 1000 * t[n] / n for n in t} for b, t in rows.items()},
               "compile_s": {str(b): s for b, s in compile_seconds.items()}}
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return figures


if __name__ == "__main__":
    main()
