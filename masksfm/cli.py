"""The command line: parse, then call one library function per command. Nothing else lives here.

argparse rather than typer/click: it is in the standard library, its exit code 2 for a bad flag is
the convention we want, and overriding `error()` gives the one-line message of our other errors
without depending on a CLI framework's private internals. Heavy imports (torch, evo, onnx) happen
inside the commands so that `--help` answers at once.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from masksfm.config import MOTIONS
from masksfm.errors import MasksfmError, one_line

EPILOG = """\
examples:
  masksfm synth data/synth --scenes 6 --frames 40
  masksfm train data/synth --out runs/demo --set loss.repeats=3
  masksfm eval depth runs/demo data/synth --split test
  torchrun --nproc-per-node 2 -m masksfm train data/synth --out runs/ddp
"""


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error message on stderr and exit code 2."""

    def error(self, message: str):
        raise MasksfmError(f"{self.prog}: {message} (see {self.prog} --help)")


def _formatter(prog):
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


# --- commands ------------------------------------------------------------------------------------


def cmd_synth(args) -> None:
    from masksfm.data.synthetic import render_dataset

    out = render_dataset(args.out, scenes=args.scenes, frames=args.frames, height=args.height, width=args.width,
                         seed=args.seed, moving_cars=args.moving_cars, progress=True)
    print(f"wrote {args.scenes} scenes x {args.frames} frames ({args.width}x{args.height}) to {out}")


def cmd_prepare_kitti_raw(args) -> None:
    from masksfm.data.kitti import prepare_kitti_raw

    prepare_kitti_raw(args.raw, args.out, height=args.height, width=args.width, annotated=args.annotated,
                      seed=args.seed, val_fraction=args.val_fraction, suffix=".jpg" if args.jpeg else ".png")


def cmd_prepare_kitti_odometry(args) -> None:
    from masksfm.data.kitti import prepare_kitti_odometry

    prepare_kitti_odometry(args.odometry, args.out, height=args.height, width=args.width,
                           suffix=".jpg" if args.jpeg else ".png")


def cmd_prepare_video(args) -> None:
    from masksfm.data.video import prepare_video

    prepare_video(args.input, args.out, stride=args.stride, fps=args.fps, height=args.height, width=args.width,
                  fov=args.fov, intrinsics=args.intrinsics, calib=args.calib, scene_length=args.scene_length,
                  min_motion=args.min_motion, resize=args.resize, suffix=".jpg" if args.jpeg else ".png")


def cmd_train(args) -> None:
    from masksfm.runlock import check_run_folder

    check_run_folder(args.out)  # another training in this run folder: refused in a second, not after torch loads
    from masksfm.training import TRAIN_FLAGS, run_training, training_config  # noqa: E402 (after the quick check)

    config = training_config(args.out, args.config, args.overrides, resume=args.resume,
                             **{flag: getattr(args, flag) for flag in TRAIN_FLAGS})
    run_training(args.data, args.out, config, resume=args.resume, device=args.device)


def _console():
    from rich.console import Console

    # Off a terminal rich assumes 80 columns and truncates; logs and pipes get room for the table.
    return Console(width=None if sys.stdout.isatty() else 160)


def print_metrics(title: str, metrics: dict, json_path: Path | None) -> None:
    """A small table on stdout; the same numbers as JSON with --json."""
    import json

    from rich.table import Table

    table = Table(title=title)
    for key in metrics:
        table.add_column(key, justify="right")
    table.add_row(*(f"{v:.4f}" if isinstance(v, float) else str(v) for v in metrics.values()))
    _console().print(table)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(metrics, indent=2) + "\n")


def cmd_eval_depth(args) -> None:
    from masksfm.inference import run_eval_depth

    metrics = run_eval_depth(args.run, args.data, args.split, args.crop, args.pred_kind, args.device,
                             median_scaling=args.scaling == "median", flip=args.flip)
    print_metrics(f"depth, split {args.split}", metrics, args.json)


def cmd_eval_pose(args) -> None:
    import json

    from rich.table import Table

    from masksfm.inference import run_eval_pose

    results = run_eval_pose(args.run, args.data, args.split, args.out, args.device, refine=args.refine,
                            refine_motion=args.refine_motion, flip=args.flip)
    keys = ["ate_mean", "ate_std", "ate3_mean", "ate3_std", "ate_own_mean", "ate_own_std", "ate_rmse", "rpe_trans",
            "rpe_rot", "t_rel", "r_rel"]
    table = Table(title=f"pose, split {args.split} (snippet ATE, metres: 5 frames (ate) and 3 frames (ate3) chained "
                        f"from consecutive pairs, the net's own {results.get('snippet_length', '?')}-frame snippets "
                        f"(ate_own); trajectories in {results.pop('out')})")
    table.add_column("scene")
    for key in keys:
        table.add_column(key, justify="right")
    for name, seq in results["sequences"].items():
        for label, row in ((name, seq), (f"{name} refined", seq.get("refined"))):
            if row is not None:
                table.add_row(label, *(f"{row[k]:.4f}" if k in row else "-" for k in keys))
    for label, row in (("all", results), ("all refined", results.get("refined"))):
        if row is not None:
            table.add_row(label, *(f"{row[k]:.4f}" for k in keys[:4]), *["" for _ in keys[4:]])
    _console().print(table)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")


def cmd_predict(args) -> None:
    from masksfm.predict import run_predict

    summaries = run_predict(args.run, args.input, args.out, save=args.save, ply=args.ply, trajectory=args.trajectory,
                            camera_height=args.camera_height, batch_size=args.batch_size, device=args.device,
                            intrinsics=args.intrinsics, fov=args.fov, refine=args.refine,
                            refine_motion=args.refine_motion, flip=args.flip)
    frames = sum(s["frames"] for s in summaries.values())
    scales = [f" (median scale {s['scale_median']:.4g} m per model unit)"
              for s in summaries.values() if "scale_median" in s]
    print(f"predict: {frames} frames in {len(summaries)} sequence(s) -> {args.out}"
          + (scales[0] if len(scales) == 1 else ""))


def cmd_export(args) -> None:
    from masksfm.export import export_model

    for path in export_model(args.run, args.format, args.out, height=args.height, width=args.width, pose=args.pose):
        print(f"wrote {path}")


def cmd_demo(args) -> None:
    from masksfm.demo import DemoSettings, run_demo, summary_lines

    given = {k: getattr(args, k) for k in ("scenes", "frames", "height", "width", "seed", "minutes")}
    settings = DemoSettings(**{k: v for k, v in given.items() if v is not None})
    for line in summary_lines(run_demo(args.out, settings, device=args.device, threads=args.threads)):
        print(line)


# --- parser --------------------------------------------------------------------------------------


def _add_device(p) -> None:
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available, else cpu)")


def _add_flip(p, what: str) -> None:
    p.add_argument("--flip", action="store_true",
                   help=f"read every frame twice, as it is and mirrored, and average the two {what} (the mirrored one "
                        "mirrored back; monodepth2's post-processing): twice the inference cost")


def _add_refine(p) -> None:
    p.add_argument("--refine", type=_positive_int, nargs="?", const=10, default=None, metavar="ITERATIONS",
                   help="also refine each consecutive pair's pose photometrically against the depth net's depth "
                        "(robust Levenberg-Marquardt, coarse to fine; ITERATIONS per pyramid level, default 10), "
                        "with the model's motion: a car's camera (model.motion=vehicle) stays on its path")
    p.add_argument("--refine-motion", choices=MOTIONS, default=None,
                   help="the motion --refine solves for, instead of the model's: free (any rigid motion, 6 unknowns; "
                        "e.g. a car's camera on a bumpy road), vehicle (along a car's path, 4 unknowns) or vehicle_vertical "
                        "(that path tilted up or down, never sideways, 5 unknowns)")


def _add_synth(commands) -> None:
    """`synth`."""
    p = commands.add_parser("synth", help="render a synthetic street dataset with exact ground truth",
                            description="Render a seeded, KITTI-like synthetic street drive by analytic ray casting: "
                            "frames, cam.txt, poses.txt, exact depth, visibility between neighbouring frames "
                            "and (with --moving-cars) moving-object masks, in the sequence-folder layout.",
                            formatter_class=_formatter)
    p.add_argument("out", type=Path, help="output dataset folder")
    p.add_argument("--scenes", type=_positive_int, default=6, help="number of scenes (default 6)")
    p.add_argument("--frames", type=_positive_int, default=40, help="frames per scene (default 40)")
    p.add_argument("--height", type=_positive_int, default=128, help="frame height, pixels (default 128)")
    p.add_argument("--width", type=_positive_int, default=416, help="frame width, pixels (default 416)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes (default 0)")
    p.add_argument("--moving-cars", type=int, default=0, help="independently moving cars per scene (default 0)")
    p.set_defaults(func=cmd_synth)


def _add_prepare(commands) -> None:
    """`prepare kitti-raw`, `prepare kitti-odometry`, `prepare video`."""
    prepare = commands.add_parser("prepare", help="turn KITTI or your own video into training folders",
                                  formatter_class=_formatter)
    kinds = prepare.add_subparsers(dest="kind", metavar="KIND", parser_class=_Parser, required=True)

    p = kinds.add_parser("kitti-raw", help="KITTI raw -> training folders + Eigen test ground truth",
                         description="Each drive's image_02 and image_03 become scenes (resized frames keeping "
                         "KITTI's numbers, cam.txt from P_rect_02 / P_rect_03 scaled); Eigen test drives are left "
                         "out, SfMLearner's static frames removed, drives split train / val by drive (seeded). "
                         "Eigen test ground truth from the velodyne scans (monodepth2's convention) goes to "
                         "OUT/eigen_test/; missing test images are counted, not an error. Needs only image_02/03, "
                         "the date folders' calibration files and the test images' velodyne scans.",
                         formatter_class=_formatter)
    p.add_argument("raw", type=Path, help="KITTI raw root (holds 2011_09_26/ ...)")
    p.add_argument("out", type=Path, help="output dataset folder")
    p.add_argument("--height", type=_positive_int, default=128, help="frame height, pixels (default 128)")
    p.add_argument("--width", type=_positive_int, default=416, help="frame width, pixels (default 416)")
    p.add_argument("--annotated", type=Path, default=None,
                   help="KITTI annotated depth maps (Uhrig et al.) -> also the eigen_benchmark split")
    p.add_argument("--seed", type=int, default=0, help="seed of the train / val split by drive")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of the drives that go to val (default 0.1)")
    p.add_argument("--jpeg", action="store_true", help="write training frames as JPEG (quality 95), not PNG")
    p.set_defaults(func=cmd_prepare_kitti_raw)

    p = kinds.add_parser("kitti-odometry", help="KITTI odometry sequences -> folders with poses",
                         description="Sequences 00-10: image_2 frames resized, cam.txt from calib.txt's P2 scaled, "
                         "poses.txt from poses/NN.txt (camera 0's poses, used for camera 2 as SfMLearner does). "
                         "00-08 train, 09-10 test.",
                         formatter_class=_formatter)
    p.add_argument("odometry", type=Path, help="KITTI odometry root (holds sequences/ and poses/)")
    p.add_argument("out", type=Path, help="output dataset folder")
    p.add_argument("--height", type=_positive_int, default=128, help="frame height, pixels (default 128)")
    p.add_argument("--width", type=_positive_int, default=416, help="frame width, pixels (default 416)")
    p.add_argument("--jpeg", action="store_true", help="write frames as JPEG (quality 95), not PNG")
    p.set_defaults(func=cmd_prepare_kitti_odometry)

    p = kinds.add_parser("video", help="a video file or image folder -> training folders",
                         description="Frames where the camera stands still are dropped: the median motion of "
                         "corners tracked (Lucas-Kanade) since the last kept frame is under --min-motion output "
                         "pixels. Scenes are cut at hard cuts (shot changes), every --scene-length frames and after "
                         "more than 10 still frames in a row. Without --fov / --intrinsics / --calib a 70 degree horizontal field of view is "
                         "assumed, with a warning; with a calibration that has distortion, frames are undistorted.",
                         formatter_class=_formatter)
    p.add_argument("input", type=Path, help="video file (mp4, mov, ...) or folder of images")
    p.add_argument("out", type=Path, help="output dataset folder")
    rate = p.add_mutually_exclusive_group()
    rate.add_argument("--stride", type=_positive_int, default=None, help="keep every N-th frame")
    rate.add_argument("--fps", type=_positive_float, default=None, help="resample to F frames per second")
    p.add_argument("--height", type=_positive_int, default=128, help="frame height, pixels (default 128)")
    p.add_argument("--width", type=_positive_int, default=416, help="frame width, pixels (default 416)")
    p.add_argument("--resize", choices=["crop", "squash"], default="crop",
                   help="crop: centre-crop to the output's aspect ratio, then resize (default); "
                        "squash: resize the whole frame")
    calib = p.add_mutually_exclusive_group()
    calib.add_argument("--fov", type=_positive_float, default=None,
                       help="horizontal field of view of the input, degrees (default 70, with a warning)")
    calib.add_argument("--intrinsics", default=None, help="fx,fy,cx,cy in the input's pixels")
    calib.add_argument("--calib", type=Path, default=None, help="OpenCV-style YAML/JSON with K and distortion")
    p.add_argument("--min-motion", type=float, default=1.0,
                   help="drop frames whose median tracked motion since the last kept frame is below this, "
                        "output pixels (default 1; 0 keeps every frame)")
    p.add_argument("--scene-length", type=_positive_int, default=300, help="cut scenes at N frames (default 300)")
    p.add_argument("--jpeg", action="store_true", help="write frames as JPEG (quality 95), not PNG")
    p.set_defaults(func=cmd_prepare_video)


def _add_train(commands) -> None:
    """`train`."""
    p = commands.add_parser("train", help="learn depth and ego-motion from unlabelled video",
                            description="Learn depth and ego-motion from unlabelled video (the default recipe unless\n"
                                        "--config says otherwise). The default assumes a camera fixed to a car and looking\n"
                                        "ahead (model.motion=vehicle: no sideways or vertical travel); for a hand-held,\n"
                                        "drone or sideways camera add --set model.motion=free.",
                            formatter_class=_formatter)
    p.add_argument("data", type=Path, help="dataset folder (sequence-folder layout)")
    p.add_argument("--out", type=Path, required=True, help="run folder (config, checkpoints, TensorBoard)")
    p.add_argument("--config", default=None, help="YAML file, or a shipped name: default, paper, paper_dn")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value, e.g. --set loss.repeats=3 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue from RUN/checkpoints/last.safetensors")
    p.add_argument("--steps", type=_positive_int, default=None, help="total optimisation steps")
    p.add_argument("--batch-size", type=_positive_int, default=None, help="global batch size")
    p.add_argument("--height", type=_positive_int, default=None, help="training image height")
    p.add_argument("--width", type=_positive_int, default=None, help="training image width")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--checkpoint-every", type=_positive_int, default=None, help="write last every N steps")
    _add_device(p)
    p.set_defaults(func=cmd_train)


def _add_eval(commands) -> None:
    """`eval depth`, `eval pose`."""
    evaluate = commands.add_parser("eval", help="evaluate depth or pose with the field's protocols",
                                   formatter_class=_formatter)
    what = evaluate.add_subparsers(dest="what", metavar="WHAT", parser_class=_Parser, required=True)
    p = what.add_parser("depth", help="depth metrics (abs_rel, sq_rel, rmse, rmse_log, a1-a3)",
                        formatter_class=_formatter)
    p.add_argument("run", type=Path, help="run folder, checkpoint file, or folder of .npy predictions")
    p.add_argument("data", type=Path, help="dataset folder")
    p.add_argument("--split", default="test", help="split file name, or eigen / eigen_benchmark (default test)")
    p.add_argument("--crop", choices=["garg", "none"], default=None,
                   help="evaluation crop (default: garg for kitti-raw data, none otherwise)")
    p.add_argument("--pred-kind", choices=["disp", "depth"], default="disp",
                   help="what a folder of .npy predictions holds (default disp)")
    p.add_argument("--scaling", choices=["median", "none"], default="median",
                   help="median: per-image median scaling, the protocol for scale-free monocular depth "
                        "(default); none: score metric depth as it is, e.g. predict --camera-height output")
    p.add_argument("--json", type=Path, default=None, help="write the metrics to this JSON file")
    _add_device(p)
    _add_flip(p, "disparities")
    p.set_defaults(func=cmd_eval_depth)

    p = what.add_parser("pose", help="5-frame snippet ATE and full-trajectory ATE / RPE / KITTI t_rel, r_rel",
                        formatter_class=_formatter)
    p.add_argument("run", type=Path, help="run folder or checkpoint file")
    p.add_argument("data", type=Path, help="dataset folder with poses.txt per scene")
    p.add_argument("--split", default="test", help="split file name (default test)")
    p.add_argument("--json", type=Path, default=None,
                   help="write ate_mean, ate_std and per-scene trajectory metrics to this JSON file")
    p.add_argument("--out", type=Path, default=None, help="folder for trajectories and plots")
    _add_refine(p)
    _add_device(p)
    _add_flip(p, "poses")
    p.set_defaults(func=cmd_eval_pose)


def _add_predict(commands) -> None:
    """`predict`."""
    p = commands.add_parser("predict", help="depth maps, point clouds and trajectories from a model",
                            description="Per frame: DIR/depth/<frame>.png (uint16, depth x 256, 0 = invalid), "
                            "DIR/depth/<frame>.npy (float32 at the frame's resolution), DIR/color/<frame>.png "
                            "(colourised disparity); --ply: DIR/points/<frame>.ply (camera frame). --trajectory: "
                            "DIR/trajectory.kitti.txt, .tum.txt, .png (+ DIR/cloud.ply, world frame, with --ply). "
                            "--camera-height M: the road plane is fitted in each frame and depth is written in "
                            "metres (per-frame scale in DIR/scale.txt). A prepared dataset's scenes go to "
                            "DIR/<scene>/.",
                            formatter_class=_formatter)
    p.add_argument("run", type=Path, help="run folder or checkpoint file")
    p.add_argument("input", type=Path, help="image, folder of images, video, prepared scene or dataset")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--save", default="png16,npy,color", help="comma list of png16, npy, color")
    p.add_argument("--ply", action="store_true", help="coloured point cloud per frame")
    p.add_argument("--trajectory", action="store_true", help="chain poses into a trajectory (KITTI + TUM + plot)")
    _add_refine(p)
    p.add_argument("--camera-height", type=_positive_float, default=None,
                   help="metres above the road: fit the road plane and write metric depth")
    p.add_argument("--batch-size", type=_positive_int, default=8, help="frames per forward pass (default 8)")
    calib = p.add_mutually_exclusive_group()
    calib.add_argument("--fov", type=_positive_float, default=None,
                       help="horizontal field of view, degrees, of inputs without cam.txt (default 70)")
    calib.add_argument("--intrinsics", default=None, help="fx,fy,cx,cy in the input's pixels (overrides cam.txt)")
    _add_device(p)
    _add_flip(p, "depth maps and poses")
    p.set_defaults(func=cmd_predict)


def _add_export(commands) -> None:
    """`export`."""
    p = commands.add_parser("export", help="export the depth (and pose) net to ONNX or torch.export",
                            description="The depth net with input 'image' (B,3,H,W) RGB in [0,1] and output 'depth' "
                            "(B,1,H,W) = 1/disparity, the values predict writes to .npy for a frame of that size; "
                            "dynamic batch axis, fixed H x W (default: the training size; another size runs the net "
                            "at that size). Metadata (sizes, interface, config, version) travel in the file. With "
                            "--pose the pose net goes beside FILE (x.onnx -> x.pose.onnx): inputs 'target', "
                            "'sources', output 'poses'.",
                            formatter_class=_formatter)
    p.add_argument("run", type=Path, help="run folder or checkpoint file")
    p.add_argument("--format", choices=["onnx", "pt2"], required=True)
    p.add_argument("--out", type=Path, required=True, help="output file")
    p.add_argument("--height", type=_positive_int, default=None, help="input height (default: training size)")
    p.add_argument("--width", type=_positive_int, default=None, help="input width (default: training size)")
    p.add_argument("--pose", action="store_true", help="export the pose net too (beside FILE)")
    p.set_defaults(func=cmd_export)


def _add_demo(commands) -> None:
    """`demo`."""
    p = commands.add_parser("demo", help="synth + train + eval + report.html on synthetic data",
                            description="Render synthetic street drives, train from scratch for --minutes, evaluate\n"
                            "depth and pose on held-out drives beside a constant-depth and a constant-speed baseline,\n"
                            "predict on a test drive, and write OUT/report.html (one self-contained page). About 10\n"
                            "minutes on 2 CPU cores. Re-running re-uses OUT/data when its settings match and trains\n"
                            "again from scratch (OUT/run is replaced).",
                            formatter_class=_formatter)
    p.add_argument("--out", type=Path, default=Path("demo-output"), help="output folder (default demo-output)")
    p.add_argument("--minutes", type=_positive_float, help="training budget in minutes (default 8)")
    _add_device(p)
    p.add_argument("--threads", type=_positive_int, help="torch CPU threads (default: the cores idle at the start)")
    small = p.add_argument_group("a smaller demo (tests, quick looks)")
    small.add_argument("--scenes", type=_positive_int, help="drives to render, >= 3 (default 12)")
    small.add_argument("--frames", type=_positive_int, help="frames per drive, >= 5 (default 30)")
    small.add_argument("--height", type=_positive_int, help="frame height, >= 32 (default 64)")
    small.add_argument("--width", type=_positive_int, help="frame width, >= 32 (default 208)")
    small.add_argument("--seed", type=int, help="random seed of the drives (default 0)")
    p.set_defaults(func=cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="masksfm",
        description="Self-supervised monocular depth and ego-motion from video with geometric multi-masks "
        "(Wang et al., ICRA 2019).",
        epilog=EPILOG,
        formatter_class=_formatter,
    )
    from masksfm import __version__

    parser.add_argument("--version", action="version", version=f"masksfm {__version__}")
    parser.add_argument("--debug", action="store_true", help="on an error, show the traceback instead of one line")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    _add_synth(commands)
    _add_prepare(commands)
    _add_train(commands)
    _add_eval(commands)
    _add_predict(commands)
    _add_export(commands)
    _add_demo(commands)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of `masksfm` and `python -m masksfm`: exit 2 with one line on a user error.

    `--debug`, anywhere on the line, shows the traceback instead.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    argv = [arg for arg in argv if arg != "--debug"]
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if getattr(args, "func", None) is None:
            parser.print_help()
            sys.exit(2)
        args.func(args)
    except MasksfmError as error:
        if debug:
            raise
        print(f"masksfm: {error.label}: {one_line(error)}", file=sys.stderr)
        sys.exit(error.exit_code)
    except OSError as error:
        # A full disk, a folder we may not write, a file gone: the environment, not a bug.
        if debug:
            raise
        where = f"{error.filename}: " if error.filename else ""
        print(f"masksfm: error: {where}{error.strerror or one_line(error)} (--debug shows where)", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("masksfm: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
