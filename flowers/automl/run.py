"""`flowers automl DATA_DIR --output OUT`: a folder-per-class tree to a servable model.

    import (stratified split) -> preprocess once per backbone (cached in OUT/embeddings/)
    -> search the head on the embeddings (Optuna, OUT/study.sqlite3, OUT/trials.csv)
    -> list the train photos whose label out-of-fold heads doubt (OUT/label_issues.csv)
    -> search fine-tuning's first head on the features it reads (OUT/study_finetune.sqlite3, OUT/trials_finetune.csv)
    -> fine-tune each backbone's best candidate end to end on images, cheapest first (OUT/finetune/<backbone>/)
    -> export the best of the frozen, fine-tuned and ensembled candidates (by validation accuracy) to
       OUT/model/<version>/, scored through its own serving signature: OUT/metrics.json, OUT/eval_predictions.jsonl

It keeps to --budget_minutes: the search gets at most SEARCH_SHARE of it, fine-tuning what is
left before the export, and OUT/summary.json says what it had time for. A killed run started
again with --resume keeps its split, embeddings, finished trials and fine-tuning epochs.
"""
import argparse
import json
import math
import sys
import time

from flowers import cli
from flowers.automl import label_audit, space
from flowers.core import backbones, records, storage

DEFAULT_BACKBONES = ("efficientnet_lite0", "efficientnet_lite2")
BUDGET_MINUTES = 60.0
TRIALS = 30
SEARCH_SHARE = 0.3  # of the budget, when fine-tuning follows
EXPORT_RESERVE = 0.08  # of the budget (at least EXPORT_RESERVE_MIN_S) kept for export + evaluation
EXPORT_RESERVE_MIN_S = 45
FROZEN_CV_FOLDS = label_audit.FOLDS  # the frozen ensemble's check reuses the label audit's out-of-fold scores
FINETUNE_STUDY, FINETUNE_TRIALS = "study_finetune.sqlite3", "trials_finetune.csv"  # fine-tuning's own head search
# Standard errors of validation accuracy a fine-tuned candidate may trail by and still replace the frozen head,
# and the fine-tuned ensemble the best single model: both sides' figures were picked on that same slice.
SLACK_SE = 1.0


def _log(msg):
    print(f"[automl {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def import_data(data_dir, output, eval_fraction, seed, log):
    from flowers.data import importer

    folder = storage.join(output, "data")
    if not storage.exists(storage.join(folder, "dict.txt")):
        labels, n_train, n_eval = importer.import_tree(data_dir, folder, eval_fraction, seed)
        log(f"imported {len(labels)} classes: {n_train} train, {n_eval} eval rows")
    return folder


def preprocess(data, output, backbone, log):
    """OUT/embeddings/<backbone>/{train,eval}: made once, reused afterwards."""
    from flowers.preprocess import pipeline

    prefixes = [storage.join(output, "embeddings", backbone, split) for split in ("train", "eval")]
    if all(storage.exists(records.metadata_path(p)) for p in prefixes):
        log(f"{backbone}: cached embeddings")
        return prefixes
    started = time.time()
    pipeline.run(["--input_path", f"{storage.join(data, 'train_set.csv')},{storage.join(data, 'eval_set.csv')}",
                  "--input_dict", storage.join(data, "dict.txt"), "--output_path", ",".join(prefixes),
                  "--backbone", backbone])
    log(f"{backbone}: preprocessed in {time.time() - started:.0f} s")
    return prefixes


def run(data_dir, output, budget_minutes=BUDGET_MINUTES, trials=TRIALS, backbone_names=DEFAULT_BACKBONES,
        fine_tune=True, resume=False, eval_fraction=0.1, seed=0, fine_tune_epochs=None, ensemble=True, log=_log):
    """The whole AutoML run; returns the summary (also in OUT/summary.json)."""
    from flowers.automl import search

    started = time.time()
    budget = budget_minutes * 60
    end = started + budget - max(EXPORT_RESERVE * budget, EXPORT_RESERVE_MIN_S)
    summary = {"budget_minutes": budget_minutes, "phases": {}, "did": []}

    def phase(name, t0):
        summary["phases"][name] = round(time.time() - t0, 1)

    study = search.open_study(storage.join(output, "study.sqlite3"), resume)  # refuses a study without resume
    t0 = time.time()
    data_folder = import_data(data_dir, output, eval_fraction, seed, log)
    datasets = {}
    for name in backbone_names:
        datasets[name] = search.load_embeddings(*preprocess(data_folder, output, name, log))
    phase("import_and_preprocess", t0)

    t0 = time.time()
    search_end = started + SEARCH_SHARE * budget if fine_tune else end
    best = search.search(study, datasets, trials, min(search_end, end), log)
    search.write_trials_csv(study, storage.join(output, "trials.csv"))
    phase("search", t0)
    n_done = search.finished(study)
    summary["did"].append(f"search: {n_done} of {trials} trials finished")
    if best is None:
        raise search.SearchError("no trial finished within the budget: raise --budget_minutes")
    params = _with_epochs(best)
    log(f"best trial {best.number}: val accuracy {best.value:.4f} {params}")
    summary["frozen_trial"] = best.number
    t0 = time.time()
    oof = search.out_of_fold_scores(params, datasets[params["backbone"]], label_audit.FOLDS)
    doubted, rows = label_audit.audit(params, datasets[params["backbone"]], storage.join(output, "label_issues.csv"),
                                      oof=oof)
    summary["did"].append(f"label audit: {doubted} of {rows} train photos classified otherwise out of fold "
                          "(label_issues.csv, most doubted first)")
    phase("label_audit", t0)
    # Every backbone's best trial is fine-tuned, the cheapest first (the registry's order: lite0, lite1,
    # lite2; their input sizes are not in that order). Fine-tuning can reorder the backbones (on the
    # shared photos a fine-tuned lite0 beat a frozen lite2 by 2 points).
    per_backbone = search.best_per_backbone(study)
    tune = [(_with_epochs(per_backbone[name]), datasets[name])
            for name in sorted(per_backbone, key=list(backbones.BACKBONES).index)]
    finish(params, datasets[params["backbone"]], output, end, fine_tune, fine_tune_epochs, summary, log, tune, ensemble,
           known_oof=(params, oof), trials=trials, resume=resume)
    summary["wall_time_s"] = round(time.time() - started, 1)
    storage.write_text(storage.join(output, "summary.json"), json.dumps(summary, indent=2, default=str) + "\n")
    log(f"winner: {summary['winner']['kind']} {summary['winner']['backbone']}, "
        f"eval accuracy {summary['eval_accuracy']:.4f} (frozen {summary['frozen']['eval_accuracy']:.4f}), "
        f"{summary['wall_time_s']:.0f} s -> {summary['export_path']}")
    log("had time for: " + "; ".join(summary["did"]))
    return summary


def _with_epochs(trial):
    return dict(trial.params, best_epoch=trial.user_attrs.get("best_epoch", space.EPOCHS))


def finish(params, data, output, end, fine_tune=True, fine_tune_epochs=None, summary=None, log=_log, tune=None,
           ensemble=True, known_oof=None, trials=TRIALS, resume=False, study_path=None):
    """From the search's best parameters to OUT/model/<version>/ and its evaluation files.

    The frozen-feature candidate is the best trial's head retrained for its best number of epochs,
    on the fit rows for its validation figure, then on every train row, several averaged, for export
    (search.refit_head).
    tune: each backbone's best (params, data), fine-tuned in that order, each in an equal share of
    the time left (default: the best trial's own), each from the best head of a second search (TRIALS
    trials, study in study_path, default OUT/study_finetune.sqlite3) on the features fine-tuning
    reads. With ensemble on and several backbones, their frozen heads' mean scores may replace the
    single head (see _frozen_ensemble). A fine-tuned candidate replaces the chosen one only with a
    validation accuracy at least as good, or within the slice's noise of a frozen one (see _bar); the
    ensemble of the fine-tuned models (their mean scores, when ensemble is on) unless it validates worse
    beyond the slice's noise (see _ensemble). Eval accuracies are reported, never used to choose.
    known_oof: (params, out-of-fold (scores, targets)) already computed (the label audit's), reused by
    the frozen ensemble's check.
    Also the AutoML pipeline's fine-tune step (flowers.pipeline.automl)."""
    from flowers.automl import finetune, search, tuned_model, winner
    from flowers.train import metrics

    summary = {"phases": {}, "did": []} if summary is None else summary

    def phase(name, t0):
        summary["phases"][name] = round(time.time() - t0, 1)

    t0 = time.time()
    # The head on the fit rows gives the validation figure that chooses; heads on every train row are exported.
    head, history = search.train_head(params, data, epochs=search.best_epochs(params))
    frozen_val = history[-1]
    refit = search.refit_head(params, data)
    frozen_eval = search.accuracy(refit.predict(data["eval"][1], verbose=0), data["eval"][2])
    train_figures = metrics.summarize(refit.predict(data["fit"][1], verbose=0), data["fit"][2], data["labels"])
    chosen = {"kind": "frozen", "members": [(params["backbone"], None, refit)], "val_accuracy": frozen_val,
              "train_accuracy": train_figures["accuracy"], "train_loss": train_figures["loss"],
              "steps": _refit_steps(params, data), "params": params,
              "data": data}
    summary["frozen"] = {"val_accuracy": frozen_val, "eval_accuracy": frozen_eval}
    tune = tune or [(params, data)]
    heads = {p["backbone"]: head for p, _ in tune if p == params}  # each backbone's best head, frozen features
    if ensemble and len(tune) > 1:
        chosen = _frozen_ensemble(tune, chosen, heads, summary, cross_validate=not fine_tune, known_oof=known_oof)
    phase("frozen_candidate", t0)

    if fine_tune:
        t0 = time.time()
        cut = {p["backbone"]: tuned_model.head_features_data(d) for p, d in tune}  # what fine-tuning reads
        start_params = _search_head_features(cut, output, study_path or storage.join(output, FINETUNE_STUDY), trials,
                                             resume, time.time() + SEARCH_SHARE * (end - time.time()), summary, log)
        phase("finetune_search", t0)
        t0 = time.time()
        kwargs = {"epochs": fine_tune_epochs} if fine_tune_epochs else {}
        summary["fine_tune"], tuned_all = {}, []
        for i, (tune_params, tune_data) in enumerate(tune):
            name = tune_params["backbone"]
            tune_params = start_params.get(name, tune_params)  # the frozen search's, if none finished
            share_end = time.time() + (end - time.time()) / (len(tune) - i)  # the time left, shared
            start_head = _best_head(tune_params, cut[name])
            log(f"fine-tune {name} ({i + 1} of {len(tune)}), until {time.strftime('%H:%M', time.localtime(share_end))}")
            tuned = finetune.fine_tune(tune_data, tune_params, start_head.get_weights(),
                                       storage.join(output, "finetune", name), share_end, log=log, **kwargs)
            if tuned is None:
                summary["did"].append(f"fine-tune {name}: skipped, the budget was spent")
                continue
            hist = tuned["history"]
            candidate = {"kind": "fine-tuned", "members": [(name, tuned["backbone"], tuned["head"])],
                         "val_accuracy": tuned["val_accuracy"], "val_scores": tuned["val_scores"],
                         "eval_scores": finetune.predict(tuned["backbone"], tuned["head"], tune_data["eval"][0],
                                                         backbones.get(name).image_size),
                         # as Keras saw them: augmented batches, dropout on
                         "train_accuracy": (hist.get("accuracy") or [float("nan")])[-1],
                         "train_loss": (hist.get("loss") or [float("nan")])[-1],
                         "steps": tuned["epochs"] * -(-len(tune_data["fit"][0]) // finetune.BATCH_SIZE),
                         "params": tune_params, "data": tune_data}
            summary["fine_tune"][name] = {"val_accuracy": tuned["val_accuracy"],
                                          "eval_accuracy": search.accuracy(candidate["eval_scores"],
                                                                           tune_data["eval"][2]),
                                          "epochs": tuned["epochs"], "stopped_by": tuned["stopped"], "history": hist,
                                          "head_params": tune_params}
            summary["did"].append(f"fine-tune {name}: {tuned['epochs']} epoch(s), stopped by {tuned['stopped']}")
            tuned_all.append(candidate)
            if candidate["val_accuracy"] >= _bar(chosen):
                chosen = candidate
        if ensemble and len(tuned_all) > 1:
            chosen = _ensemble(tuned_all, chosen, summary)
        phase("fine_tune", t0)
    else:
        summary["did"].append("fine-tune: off (--no-fine_tune)")

    t0 = time.time()
    params, data = chosen["params"], chosen["data"]
    names = " + ".join(name for name, *_ in chosen["members"])
    summary["winner"] = {"kind": chosen["kind"], "backbone": names, "params": params,
                         "val_accuracy": chosen["val_accuracy"]}
    members = [(name, model or backbones.load(name), head) for name, model, head in chosen["members"]]
    extra = {"train_accuracy": chosen["train_accuracy"], "train_loss": chosen["train_loss"],
             "steps": chosen["steps"], "automl": summary}
    path, result = winner.export_and_evaluate(members, data, output, extra)
    phase("export_and_evaluate", t0)
    summary.update({"export_path": path, "eval_accuracy": result["accuracy"]})
    return summary


def _search_head_features(cut, output, study_path, trials, resume, deadline, summary, log):
    """{backbone: best params} of a second search on CUT ({backbone: data}), the head's features alone: what fine-tuning
    reads (tuned_model.head_features), so its first head is chosen for those inputs, not for the
    pooled stages. Against fine-tuning from the frozen search's heads, four default runs' winners
    scored +5, +1, -1 and -1 photos held out: beyond the noise on one split (docs/ACCURACY.md)."""
    from flowers.automl import search

    study = search.open_study(study_path, resume)
    search.search(study, cut, trials, deadline, lambda msg: log(f"head features: {msg}"))
    search.write_trials_csv(study, storage.join(output, FINETUNE_TRIALS))
    summary["did"].append(f"head-features search: {search.finished(study)} of {trials} trials finished")
    return {name: _with_epochs(t) for name, t in search.best_per_backbone(study).items()}


def _best_head(params, data):
    from flowers.automl import search

    return search.train_head(params, data, epochs=search.best_epochs(params))[0]


def _frozen_ensemble(per_backbone, single, heads, summary, cross_validate=True, known_oof=None):
    """Each backbone's best head on its frozen features, their mean scores as one more candidate.

    It replaces the single head when it classifies the train rows at least as well out of fold
    (FROZEN_CV_FOLDS heads per backbone): the validation slice picked the single head's parameters
    and epochs among many trials, so it flatters that head. Without cross_validate (fine-tuning
    follows, and its models win by points) it is only reported, its figures those of heads trained on
    the fit rows. heads: {backbone: head trained on the fit rows}, filled here; single's member is
    its exported head (search.refit_head, as a chosen ensemble's members are).
    known_oof: (params, (scores, targets)), used for the backbone whose best parameters they are."""
    import numpy as np

    from flowers.automl import search
    from flowers.train import metrics

    data = single["data"]
    _check_same_rows([d for _, d in per_backbone])
    for p, d in per_backbone:
        if p["backbone"] not in heads:
            heads[p["backbone"]] = _best_head(p, d)

    def mean_scores(split, heads=heads):
        return np.mean([heads[p["backbone"]].predict(d[split][1], verbose=0, batch_size=1024)
                        for p, d in per_backbone], axis=0)

    names = [p["backbone"] for p, _ in per_backbone]
    figures = summary["frozen_ensemble"] = {
        "members": names, "val_accuracy": search.accuracy(mean_scores("val"), data["val"][2]),
        "eval_accuracy": search.accuracy(mean_scores("eval"), data["eval"][2])}
    if not cross_validate:
        summary["did"].append(f"frozen ensemble of {' + '.join(names)}: reported only (fine-tuning follows)")
        return single
    def out_of_fold(p, d):
        if known_oof is not None and known_oof[0] == p:
            return known_oof[1]
        return search.out_of_fold_scores(p, d, FROZEN_CV_FOLDS)

    oof = {p["backbone"]: out_of_fold(p, d) for p, d in per_backbone}
    targets = next(iter(oof.values()))[1]
    figures["cv_accuracy_single"] = search.accuracy(oof[single["params"]["backbone"]][0], targets)
    figures["cv_accuracy"] = search.accuracy(np.mean([s for s, _ in oof.values()], axis=0), targets)
    summary["did"].append(f"frozen ensemble of {' + '.join(names)}: {FROZEN_CV_FOLDS}-fold accuracy "
                          f"{figures['cv_accuracy']:.4f} against {figures['cv_accuracy_single']:.4f} "
                          "for the best trial's head")
    if figures["cv_accuracy"] < figures["cv_accuracy_single"]:
        return single
    # Chosen: each member is exported as search.refit_head makes it, as the single head is.
    refits = {p["backbone"]: single["members"][0][2] if p == single["params"] else
              search.refit_head(p, d) for p, d in per_backbone}
    fit = metrics.summarize(mean_scores("fit", refits), data["fit"][2], data["labels"])
    return {"kind": "frozen ensemble", "members": [(name, None, refits[name]) for name in names],
            "val_accuracy": figures["val_accuracy"], "train_accuracy": fit["accuracy"],
            "train_loss": fit["loss"], "params": [p for p, _ in per_backbone], "data": data,
            "steps": sum(_refit_steps(p, data) for p, _ in per_backbone)}


def _refit_steps(params, data):
    """Training steps of search.refit_head's heads: every train row, params' best number of epochs."""
    from flowers.automl import search

    rows = len(data["fit"][0]) + len(data["val"][0])
    return search.REFIT_HEADS * search.best_epochs(params) * -(-rows // params["batch_size"])


def _less_slack(accuracy, n):
    """ACCURACY on n photos less SLACK_SE standard errors."""
    return accuracy - SLACK_SE * math.sqrt(accuracy * (1 - accuracy) / n)


def _bar(chosen):
    """The validation accuracy a fine-tuned candidate needs to replace CHOSEN. A frozen head's figure is
    the best of the search's trials on the validation slice, more flattered than a fine-tuned model's
    best epoch: held out, the frozen head scored below the fine-tuned winner on all ten unseen splits,
    and with this slack the exported model held out 2.2 photos more over eight (validation bootstrap,
    docs/ACCURACY.md), so a fine-tuned model within SLACK_SE standard errors of it replaces it."""
    if chosen["kind"].startswith("frozen"):
        return _less_slack(chosen["val_accuracy"], len(chosen["data"]["val"][0]))
    return chosen["val_accuracy"]


def _check_same_rows(datas):
    """Members of an ensemble are scored row by row together: their fit and val rows must be the same."""
    first = datas[0]
    if any(d["fit"][0] != first["fit"][0] or d["val"][0] != first["val"][0] for d in datas):
        raise ValueError("the backbones' train rows differ: their embeddings come from different splits")


def _ensemble(candidates, chosen, summary):
    """The fine-tuned models' mean scores as one candidate (weighted or geometric means held out level
    over seven runs, docs/ACCURACY.md). It replaces `chosen` unless it validates worse by more than
    SLACK_SE standard errors of `chosen`'s validation accuracy: a fine-tuned model's figure is the best
    of its epochs on this same slice (its checkpoint was picked there), so it is flattered, and a
    difference of a photo or two is noise."""
    import numpy as np

    from flowers.automl import search

    _check_same_rows([c["data"] for c in candidates])
    targets = candidates[0]["data"]["val"][2]
    val_accuracy = search.accuracy(np.mean([c["val_scores"] for c in candidates], axis=0), targets)
    eval_accuracy = search.accuracy(np.mean([c["eval_scores"] for c in candidates], axis=0),
                                    candidates[0]["data"]["eval"][2])
    names = [name for c in candidates for name, *_ in c["members"]]
    best = chosen["val_accuracy"]
    floor = _less_slack(best, len(targets))
    summary["ensemble"] = {"members": names, "val_accuracy": val_accuracy, "eval_accuracy": eval_accuracy,
                           "kept_from_val_accuracy": floor}
    summary["did"].append(f"ensemble of {' + '.join(names)}: val accuracy {val_accuracy:.4f} (kept from {floor:.4f}: "
                          f"{best:.4f} of the best single model, less {SLACK_SE:g} standard error)")
    if val_accuracy < floor:
        return chosen
    return {"kind": "ensemble", "members": [m for c in candidates for m in c["members"]],
            "val_accuracy": val_accuracy, "params": [c["params"] for c in candidates], "data": candidates[0]["data"],
            "train_accuracy": float(np.mean([c["train_accuracy"] for c in candidates])),
            "train_loss": float(np.mean([c["train_loss"] for c in candidates])),
            "steps": sum(c["steps"] for c in candidates)}


def main(argv=None):
    parser = cli.ArgumentParser(prog="flowers automl", description=__doc__)
    parser.add_argument("data_dir", metavar="DATA_DIR", help="one folder of images per class")
    parser.add_argument("--output", required=True)
    parser.add_argument("--budget_minutes", type=float, default=BUDGET_MINUTES)
    parser.add_argument("--trials", type=int, default=TRIALS)
    parser.add_argument("--backbones", nargs="+", default=list(DEFAULT_BACKBONES),
                        choices=[b for b in backbones.BACKBONES if b.startswith("efficientnet_lite")])
    parser.add_argument("--fine_tune", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--fine_tune_epochs", type=int, help="at most this many epochs (default: finetune.EPOCHS)")
    parser.add_argument("--ensemble", action=argparse.BooleanOptionalAction, default=True,
                        help="also try the backbones' mean scores as one model, of their frozen-feature heads and of "
                             "the fine-tuned models (serves every backbone)")
    parser.add_argument("--resume", action="store_true", help="continue the run in OUTPUT")
    parser.add_argument("--eval_fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from flowers.automl.search import SearchError

    try:
        run(args.data_dir, args.output, args.budget_minutes, args.trials, args.backbones, args.fine_tune,
            args.resume, args.eval_fraction, args.seed, args.fine_tune_epochs, args.ensemble)
    except (SearchError, ValueError) as e:
        print(f"flowers automl: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
