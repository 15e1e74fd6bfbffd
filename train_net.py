#!/usr/bin/env python
"""Train and evaluate d2_anchorfree detectors with detectron2's conventions.

    python train_net.py --config-file configs/FCOS/FCOS_tiny_R_18_cpu.yaml
    python train_net.py --config-file ... --resume                 # continue from last_checkpoint
    python train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/x/model_final.pth
    python train_net.py --config-file ... --num-gpus 8             # multi-GPU (needs CUDA)
    python train_net.py --config-file ... --eval-only MODEL.WEIGHTS ... \
        DATASETS.TEST "('trees_val_whole',)" TEST.SLICE.ENABLED True  # sliced inference (large images)
    python train_net.py --config-file ... --eval-only MODEL.WEIGHTS ... TEST.AUG.ENABLED True  # TTA

Any config key can be overridden after the flags as ``KEY VALUE`` pairs (detectron2 ``opts``).
``--eval-only`` needs weights that set every tensor of the model; ``--allow-untrained`` evaluates
an untrained model on purpose (a reference number). ``TEST.SLICE.*`` (sliced inference over
overlapping windows) and ``TEST.AUG.*`` (multi-scale + flip test-time augmentation) apply to every
detector; see ``d2_anchorfree/inference``.
"""
from detectron2.engine import default_argument_parser, launch

from d2_anchorfree.checkpoint import load_inference_weights
from d2_anchorfree.data import check_num_classes
from d2_anchorfree.engine import AnchorFreeTrainer, setup_cfg


def main(args):
    cfg = setup_cfg(args)
    if args.eval_only:
        check_num_classes(cfg, cfg.DATASETS.TEST)
        model = AnchorFreeTrainer.build_model(cfg)
        load_inference_weights(model, cfg.MODEL.WEIGHTS, resume_dir=cfg.OUTPUT_DIR if args.resume else "",
                               allow_untrained=args.allow_untrained)
        return AnchorFreeTrainer.test(cfg, model)
    trainer = AnchorFreeTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def argument_parser():
    """detectron2's ``default_argument_parser`` plus ``--allow-untrained``."""
    parser = default_argument_parser()
    parser.add_argument("--allow-untrained", action="store_true",
                        help="with --eval-only: evaluate even without MODEL.WEIGHTS (untrained model)")
    return parser


if __name__ == "__main__":
    args = argument_parser().parse_args()
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
