"""Train and evaluate d2_anchorfree detectors with detectron2's conventions.

    d2af train --config-file configs/FCOS/FCOS_tiny_R_18_cpu.yaml
    d2af train --config-file ... --resume                 # continue from last_checkpoint
    d2af train --config-file ... --num-gpus 8             # multi-GPU (needs CUDA)
    d2af evaluate --config-file ... MODEL.WEIGHTS output/x/model_final.pth   # = train --eval-only
    d2af evaluate --config-file ... MODEL.WEIGHTS ... \\
        DATASETS.TEST "('trees_val_whole',)" TEST.SLICE.ENABLED True  # sliced inference (large images)
    d2af evaluate --config-file ... MODEL.WEIGHTS ... TEST.AUG.ENABLED True  # TTA

(``python train_net.py`` takes the same arguments as ``d2af train``.) Any config key can be
overridden after the flags as ``KEY VALUE`` pairs (detectron2 ``opts``). ``--eval-only`` needs
weights that set every tensor of the model; ``--allow-untrained`` evaluates an untrained model
on purpose (a reference number). After the final evaluation (training, ``--eval-only``) the
evaluation report of each test dataset is written to ``OUTPUT_DIR/report/<dataset>/`` and the
best-F1 score threshold beside the weights (``TEST.REPORT``; ``d2af report`` makes it from any
results json). ``TEST.SLICE.*`` (sliced inference over overlapping windows) and
``TEST.AUG.*`` (multi-scale + flip test-time augmentation) apply to every detector; see
``d2_anchorfree/inference``.
"""
import sys

from detectron2.engine import default_argument_parser, launch

from d2_anchorfree.checkpoint import load_inference_weights
from d2_anchorfree.data import check_num_classes
from d2_anchorfree.engine import AnchorFreeTrainer, setup_cfg
from d2_anchorfree.engine.report import check_report_config, write_evaluation_reports


def main(args):
    """Train, or with ``args.eval_only`` evaluate, in this process (one worker of ``launch``).

    Args:
        args (argparse.Namespace): parsed by :func:`argument_parser`.

    Returns:
        The trainer's result: ``OrderedDict`` of evaluation results (``--eval-only``, or training
        with a final evaluation), else None.

    Raises:
        FileNotFoundError, KeyError: bad config file or key (``setup_cfg``).
        ValueError: ``--eval-only`` weights that do not set the model (``load_inference_weights``);
            bad ``TEST.REPORT`` values.
    """
    cfg = setup_cfg(args)
    if args.eval_only:
        check_num_classes(cfg, cfg.DATASETS.TEST)
        check_report_config(cfg)
        model = AnchorFreeTrainer.build_model(cfg)
        load_inference_weights(model, cfg.MODEL.WEIGHTS, resume_dir=cfg.OUTPUT_DIR if args.resume else "",
                               allow_untrained=args.allow_untrained)
        results = AnchorFreeTrainer.test(cfg, model)
        # TEST.REPORT: OUTPUT_DIR/report/<dataset>/; the threshold is saved only beside weights named
        # by MODEL.WEIGHTS (with --resume the loaded checkpoint may be another file)
        write_evaluation_reports(cfg, "" if args.resume else cfg.MODEL.WEIGHTS)
        return results
    trainer = AnchorFreeTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def argument_parser(prog=None):
    """detectron2's ``default_argument_parser`` plus ``--allow-untrained``.

    Args:
        prog (str, optional): the program name shown in the usage (default: the script's name).
    """
    parser = default_argument_parser()
    if prog:
        parser.prog = prog
    parser.add_argument("--allow-untrained", action="store_true",
                        help="with --eval-only: evaluate even without MODEL.WEIGHTS (untrained model)")
    return parser


def run(argv=None, prog=None, eval_only=False) -> int:
    """Parse ``argv`` and run :func:`main` on ``--num-gpus`` processes (detectron2's ``launch``).

    Args:
        argv (list[str], optional): the arguments (default: ``sys.argv[1:]``).
        prog (str, optional): the program name shown in the usage.
        eval_only (bool): evaluate only, as if ``--eval-only`` were given (``d2af evaluate``).

    Returns:
        int: 0 (errors raise).
    """
    args = argument_parser(prog).parse_args(argv)
    args.eval_only = args.eval_only or eval_only
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
    return 0


def evaluate(argv=None, prog=None) -> int:
    """``d2af evaluate``: :func:`run` with ``--eval-only`` (same arguments as ``d2af train``)."""
    return run(argv, prog, eval_only=True)


if __name__ == "__main__":
    sys.exit(run())
