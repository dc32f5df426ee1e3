"""vlmkit classify / classify-calibrate: zero-shot labels from a dual encoder, with abstention."""
from __future__ import annotations

import json
import sys


def _template_args(p) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--template", action="append", default=None, metavar="T", help="a prompt template with {} for the label (repeatable; replaces the built-in ensemble)")
    g.add_argument("--templates-file", default=None, help="one template per line")
    g.add_argument("--no-ensemble", action="store_true", help='use the single template "a photo of a {}."')
    p.add_argument("--model", default=None, help="dual encoder directory (default: vlmkit-clip)")


def register(sub) -> None:
    p = sub.add_parser("classify", help="zero-shot classify images into given labels (or 'review')")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--labels", default=None, help='comma-separated labels, e.g. "cat,dog,car"')
    p.add_argument("--labels-file", default=None, help="one label per line")
    _template_args(p)
    p.add_argument("--thresholds", default=None, help="JSON from classify-calibrate (its labels and templates are used unless given)")
    p.add_argument("--min-score", type=float, default=None, help="top probability below this -> review")
    p.add_argument("--min-margin", type=float, default=None, help="lead over the runner-up below this -> review")
    p.add_argument("--top", type=int, default=3, help="probabilities to show per image")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_classify)

    c = sub.add_parser("classify-calibrate", help="pick abstention thresholds on a labelled folder (one subfolder per class)")
    c.add_argument("folder", metavar="DIR")
    _template_args(c)
    c.add_argument("--target-precision", type=float, default=0.9)
    c.add_argument("--out", default="thresholds.json", help="where to write the thresholds JSON")
    c.add_argument("--plot", default=None, help="also write a precision/coverage PNG here")
    c.set_defaults(func=run_calibrate)


def _templates(args, fallback=None):
    from ..search.classify import DEFAULT_TEMPLATES, SINGLE_TEMPLATE, check_templates, read_templates

    if args.no_ensemble:
        return list(SINGLE_TEMPLATE)
    if args.template:
        return check_templates(args.template)
    if args.templates_file:
        return read_templates(args.templates_file)
    return list(fallback or DEFAULT_TEMPLATES)


def run_classify(args) -> int:
    from ..errors import ImageError, VlmkitError
    from ..models.dual_encoder import load_dual_encoder
    from ..processing.images import load_image
    from ..search.classify import Thresholds, classify, parse_labels

    th = Thresholds.load(args.thresholds) if args.thresholds else Thresholds()
    labels = parse_labels(args.labels, args.labels_file) or list(th.labels or [])
    if not labels:
        raise VlmkitError("give --labels \"a,b,c\" or --labels-file F (or a --thresholds file that names them)")
    if th.labels and labels != th.labels:
        raise VlmkitError(f"{args.thresholds} was calibrated for labels {th.labels}, not {labels}: re-run classify-calibrate")
    templates = _templates(args, th.templates)
    if args.min_score is not None:
        th.min_score = args.min_score
    if args.min_margin is not None:
        th.min_margin = args.min_margin
    encoder = load_dual_encoder(args.model)
    if th.model_id and th.model_id != encoder.model_id:
        raise VlmkitError(f"{args.thresholds} was calibrated for model {th.model_id}, not {encoder.model_id}: re-run classify-calibrate")
    images, names, failed = [], [], 0
    for path in args.images:
        try:
            images.append(load_image(path))
            names.append(path)
        except ImageError as e:
            print(f"vlmkit: skipped {e}", file=sys.stderr)
            failed += 1
    if not images:
        raise VlmkitError("no readable images")
    preds = classify(encoder, images, labels, templates, th)
    if args.json:
        print(json.dumps([{"image": n, **p.to_dict(args.top)} for n, p in zip(names, preds)], indent=2))
    else:
        w = max(len(n) for n in names)
        for n, p in zip(names, preds):
            top = ", ".join(f"{k} {v:.2f}" for k, v in sorted(p.probs.items(), key=lambda kv: -kv[1])[: args.top])
            print(f"{n:<{w}}  {p.label:<12}  score {p.score:.3f}  margin {p.margin:.3f}  ({top})")
    return 1 if failed else 0


def run_calibrate(args) -> int:
    import numpy as np

    from ..errors import ImageError, VlmkitError
    from ..models.dual_encoder import load_dual_encoder
    from ..processing.images import load_image
    from ..search.calibrate import calibrate, plot_curve
    from ..search.classify import Thresholds, labelled_folder, zero_shot_probs

    paths, labels, names = labelled_folder(args.folder)
    templates = _templates(args)
    encoder = load_dual_encoder(args.model)
    images, kept = [], []
    for p, y in zip(paths, labels):
        try:
            images.append(load_image(p))
            kept.append(y)
        except ImageError as e:
            print(f"vlmkit: skipped {e}", file=sys.stderr)
    if not images:
        raise VlmkitError(f"{args.folder}: no readable images")
    labels = kept
    probs = zero_shot_probs(encoder, images, names, templates)
    cal = calibrate(probs, labels, args.target_precision)
    Thresholds(cal.min_score, cal.min_margin, labels=names, templates=templates, model_id=encoder.model_id, extra=cal.summary()).save(args.out)
    if args.plot:
        plot_curve(probs, np.asarray(labels), cal, args.plot)
    msg = "reached" if cal.reached else "NOT reached (best precision shown)"
    print(f"{len(labels)} images, {len(names)} classes; accuracy without abstention {cal.accuracy_no_abstention:.3f}")
    print(f"target precision {cal.target_precision:g} {msg}: min_score {cal.min_score:.4f}, min_margin {cal.min_margin:.4f} "
          f"-> precision {cal.precision:.3f} at coverage {cal.coverage:.3f} (measured on this folder)")
    print(f"wrote {args.out}" + (f" and {args.plot}" if args.plot else ""))
    return 0
