"""`instructcell` command line: train, evaluate, annotate, drug-response, explain, generate, info."""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import warnings
from pathlib import Path

from . import __version__
from . import cli_checkpoint as checkpoint_commands
from . import cli_data as data_commands
from .cli_checkpoint import recorded_command
from .cli_data import (CANDIDATES_HELP, add_data_arguments, add_matrix_arguments, check_new_file, inputs,
                       parse_candidates, read_data, table_separator, with_tissue_types)
from .core_model.precision import add_device_argument, add_precision_argument
from .core_model.replay import REPLAY_SHARE
from .core_model.scoring import add_scoring_argument

log = logging.getLogger("instructcell_agent")


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a checkpoint on the shared train splits and/or your own sets "
                                     "(--catalog); --init-from fine-tunes one")
    p.add_argument("--out", required=True, help="run directory (checkpoint goes to OUT/checkpoint)")
    p.add_argument("--datasets", default="", help="comma-separated catalog names (default: all annotation + drug sets)")
    p.add_argument("--backbone", choices=["smollm2", "tiny"], default="smollm2")
    p.add_argument("--lm-steps", type=int, default=600)
    p.add_argument("--encoder-epochs", type=int, default=25)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--n-hvg", type=int, default=2000)
    p.add_argument("--hidden-dim", type=int, default=384, help="width of the encoder's gene-embedding layer")
    p.add_argument("--gene-keep", type=float, default=0.85,
                   help="augmentation: chance each non-zero count is kept (1 = no entry dropout)")
    p.add_argument("--panel-drop", type=float, default=0.3,
                   help="augmentation: chance a batch sees only a random subset of the genes (0 = never)")
    p.add_argument("--hvg-panel", type=float, default=0.0,
                   help="chance a batch sees only its dataset's 500-3,000 most variable genes (a file cut to HVGs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from OUT/train_state.pt")
    p.add_argument("--init-from", default=None, metavar="CHECKPOINT",
                   help="start from this checkpoint's weights and gene vocabulary (skips stage 1): more steps "
                        "for a trained model, or fine-tuning it on --catalog sets")
    p.add_argument("--no-replay", action="store_true",
                   help="with --init-from: do not replay the start's reference cells of the label sets this run has "
                        "no data for (core_model/replay.py; without them a --no-shared run forgets those sets)")
    p.add_argument("--replay-share", type=float, default=REPLAY_SHARE,
                   help="share of the language model's batches the replayed sets take together (default %(default)s)")
    p.add_argument("--anchor-weight", type=float, default=0.0,
                   help="with --init-from: weight of a penalty pulling the trained weights back toward the start's "
                        "(L2-SP, core_model/anchor.py; default 0: off)")
    p.add_argument("--distill-weight", type=float, default=0.0,
                   help="with --init-from and replay: weight of the start's answers on the replayed cells, its "
                        "candidate probabilities distilled beside their labels (core_model/distill.py; default 0: off)")
    p.add_argument("--lr", type=float, default=5e-4, help="peak learning rate of stage 2")
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay, both stages")
    p.add_argument("--dataset-alpha", type=float, default=0.5,
                   help="draw datasets with probability proportional to cells**ALPHA (0.5 favours small "
                        "sets; 1 gives every train cell the same number of passes)")
    p.add_argument("--aux-weight", type=float, default=0.5,
                   help="weight of the auxiliary per-dataset classifier's loss beside the LM's in stage 2 (keeps "
                        "the encoder's queries separable while the LM learns to read them)")
    p.add_argument("--rank-weight", type=float, default=0.0,
                   help="weight of a loss ranking each set's labels as answers are scored (decisive tokens), "
                        "beside the LM's next-token loss (default 0: off)")
    p.add_argument("--linear-skip", action="store_true",
                   help="give the encoder's soft tokens a linear read-out of the expression beside the "
                        "Q-Former's (benchmarks/results/encoder_probe_run7.md)")
    p.add_argument("--freeze-encoder", action="store_true",
                   help="stage 2 keeps the encoder as stage 1 (or --init-from) left it and trains only the "
                        "projection and the LM adapters")
    p.add_argument("--fit-splits", default="train", choices=["train", "train+valid"],
                   help="splits to fit on; train+valid is the final refit once settings were chosen on valid")
    p.add_argument("--vocab-from", default=None, metavar="CHECKPOINT_OR_JSON",
                   help="take the gene vocabulary (genes and order) from a checkpoint or gene_vocab.json")
    p.add_argument("--catalog", action="append", default=[],
                   help="JSON list of your own datasets in the shared catalog's format (name, task cta|dsp, "
                        "path, label, split, drug for dsp); repeatable; trained beside the shared sets")
    p.add_argument("--no-shared", action="store_true", help="train on the --catalog datasets only")
    p.add_argument("--no-readout", action="store_true",
                   help="leave the linear gene read-out out of the checkpoint (it reads genes only, not the "
                        "trained weights; fit it later with train-readout)")
    add_device_argument(p)


def _add_readout_argument(p) -> None:
    p.add_argument("--no-readout", action="store_true",
                   help="answer with the language model alone, without the checkpoint's linear gene read-out "
                        "(core_model/readout.py)")


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="metrics of a checkpoint on one split of a labelled .h5ad")
    p.add_argument("--checkpoint", default=None, help="checkpoint directory (default: the shipped one)")
    add_data_arguments(p)
    p.add_argument("--split", required=True, help="split JSON (train/valid/test lists of obs_names)")
    p.add_argument("--split-name", default="test")
    p.add_argument("--task", choices=["cta", "dsp", "cpcg"], required=True)
    p.add_argument("--label-key", required=True)
    p.add_argument("--drug", default=None, help="dsp: the drug the phrasings name (default: obs['drug'], else the "
                                                "checkpoint's record of a set of the file's name)")
    p.add_argument("--instructions", default=None, help="JSON list / JSON lines with an 'instruction' field")
    p.add_argument("--n-instructions", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="metrics JSON to write")
    p.add_argument("--calibrate", action="store_true",
                   help="batch label-prior correction of scored answers (core_model/calibration.py)")
    p.add_argument("--resolve-at", type=float, default=None, metavar="PROBABILITY",
                   help="cta: also count each scored cell's finest answer reaching this probability (its label or "
                        "a broader Cell Ontology type) and how often it is right: the JSON's 'resolved'")
    add_precision_argument(p, "float32")  # metrics should not depend on the machine unless asked
    add_device_argument(p)
    add_scoring_argument(p)
    _add_readout_argument(p)


def _add_annotate(sub) -> None:
    p = sub.add_parser("annotate", help="annotate the cells of a file; writes a new .h5ad")
    _add_answer_arguments(p, candidates=None, key_added="instructcell")
    p.add_argument("--free-text", action="store_true",
                   help="without candidates, let the model answer in unconstrained text (default: decode "
                        "within the labels the checkpoint knows for the species and tissue)")
    p.add_argument("--resolve-at", type=float, default=None, metavar="PROBABILITY",
                   help="also give each cell the finest answer whose probability reaches this (above 0.5; e.g. "
                        "0.9): its label, else a broader Cell Ontology type summing the labels under it ('CD4-"
                        "positive, alpha-beta T cell' for a cell torn between CD4+ T subsets), else 'Unassigned'; "
                        "written to obs '<key>_resolved' (and _confidence, _ontology_id, _level)")
    p.add_argument("--marker-check", nargs="?", const="panglaodb", default=None, choices=["panglaodb", "cellmarker2"],
                   help="also check each answer against its known markers (PanglaoDB, or cellmarker2): how well "
                        "they single out the cells given it (AUROC), printed and stored in uns '<key>_marker_check' "
                        "and obs '<key>_marker_score'; asks no model")
    p.add_argument("--by-markers", nargs="?", const="panglaodb", default=None, choices=["panglaodb", "cellmarker2"],
                   help="answer from the candidates' known markers alone (PanglaoDB's 178 cell types across organs, "
                        "or cellmarker2), no model asked: for cell types the model never learned ('Hepatocyte', "
                        "'Kupffer cell'); tells lineages apart, not subsets of one (interpret/marker_annotation.py)")
    p.add_argument("--no-markers", action="store_true",
                   help="candidates none of which the model learned are answered from their known markers by "
                        "default (as --by-markers), and where they mix learned and unlearned types the markers "
                        "decide the unlearned ones; this scores their names as strings instead")
    p.add_argument("--tissue-types", default=None, metavar="TISSUE",
                   help="candidates: the known cell types of TISSUE (liver, lung, kidney, brain, colon...: "
                        "PanglaoDB's types of that organ, and the immune, endothelial and stromal types most tissues "
                        "hold), added to any --candidates; for tissues the model never learned, answered from their "
                        "known markers")
    p.add_argument("--markers", default=None, metavar="FILE",
                   help="with --by-markers: your own markers (JSON {\"type\": [genes]}, or .csv/.tsv rows of "
                        "cell type, gene), used instead of the database's for those types; --candidates defaults to "
                        "its types")


def _add_drug_response(sub) -> None:
    p = sub.add_parser("drug-response", help="predict each cell's response to a drug; writes a new .h5ad")
    p.add_argument("--drug", required=True, help="the drug named in the instruction, e.g. erlotinib")
    _add_answer_arguments(p, candidates="resistant,sensitive", key_added="instructcell_drug")


def _add_answer_arguments(p, candidates: str | None, key_added: str) -> None:
    """What `annotate` and `drug-response` share: one question to every cell of a file."""
    p.add_argument("--checkpoint", default=None)
    add_data_arguments(p, several=True)
    p.add_argument("--out", default=None, help="the annotated .h5ad to write (needed unless --table or --plot is given)")
    p.add_argument("--instruction", default=None)
    p.add_argument("--candidates", default=candidates,
                   help=f"{CANDIDATES_HELP} (default: {candidates or 'none, a free answer'})")
    p.add_argument("--key-added", default=key_added, help=f"prefix of the obs/obsm/uns keys written (default {key_added})")
    p.add_argument("--table", default=None, metavar="CSV_OR_TSV",
                   help="also write one row per cell (label, confidence, answer, typicality, Cell Ontology id and "
                        "name, p_<candidate> columns) as .csv or .tsv, e.g. for Seurat's AddMetaData")
    p.add_argument("--plot", default=None, metavar="PNG",
                   help="also draw the answers and their confidence on a map of the cells: the file's own "
                        "obsm['X_umap'] (or X_tsne, or obs UMAP_1/UMAP_2), else a UMAP computed from its genes, "
                        "which --out then keeps")
    p.add_argument("--groupby", default=None, metavar="KEY",
                   help="obs column of groups (clusters, samples): print what each group was answered (most "
                        "frequent answer, its share, the runner-up) and store it in uns (default with several "
                        "--data samples: the sample)")
    p.add_argument("--compare-key", default=None,
                   help="obs column of labels the cells already have: print the agreement with them, overall and "
                        "per label (answers read through the Cell Ontology), and store it in uns")
    p.add_argument("--unassigned-below", type=float, default=None, metavar="CONFIDENCE",
                   help="label cells answered with a lower confidence 'Unassigned' (the best guess stays in the "
                        "answer), for files that may hold types the candidates lack; e.g. 0.5 or 0.6")
    p.add_argument("--unassigned-atypical", type=float, default=None, metavar="SDS",
                   help="label cells 'Unassigned' whose typicality (how alike the training cells of their label, "
                        "in those cells' standard deviations; written to obs '<key>_typicality') is below -SDS, "
                        "with or without candidates; e.g. 3")
    add_matrix_arguments(p)
    p.add_argument("--species", default="", help="species named in the prompt (default: obs['species'] if present)")
    p.add_argument("--tissue", default="", help="tissue named in the prompt (default: obs['tissue'] if present)")
    add_precision_argument(p, "auto")
    add_device_argument(p)
    add_scoring_argument(p)
    _add_readout_argument(p)
    p.add_argument("--fast", action="store_true",
                   help="cells the linear read-out gives one label a probability of 0.98 or more (unless atypical of "
                        "it) take its answer, and the language model reads only the others (on the shared sets' valid "
                        "cells no answer changed; core_model/readout_first.py)")


def _add_explain(sub) -> None:
    p = sub.add_parser("explain", help="gene saliency per label; writes explained.h5ad, top_genes.csv and figures")
    p.add_argument("--checkpoint", default=None)
    add_data_arguments(p, several=True)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--label-key", default=None, help="obs column of labels to explain (default: predicted labels)")
    p.add_argument("--dataset", default=None, help="checkpoint label set whose labels are the candidates")
    p.add_argument("--candidates", default=None, help=CANDIDATES_HELP)
    p.add_argument("--tissue-types", default=None, metavar="TISSUE",
                   help="candidates: the known cell types of TISSUE, as annotate --tissue-types takes them")
    p.add_argument("--method", choices=["saliency", "gradient", "ig"], default="saliency")
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--n-steps", type=int, default=64, help="Integrated Gradients integration points")
    p.add_argument("--normalize", choices=["none", "minmax"], default="minmax",
                   help="per-cell scaling before the per-label mean (minmax, default: each cell's supporting genes "
                        "to [0, 1]; none: raw attributions)")
    p.add_argument("--reference", choices=["train", "zero", "mean"], default="train",
                   help="what saliency and ig measure each cell against: the mean training cell of the scored label "
                        "set (train, default), no expression (zero) or the mean cell of the file (mean); genes are "
                        "ranked where a cell expresses them above the reference")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-cells-per-label", type=int, default=None,
                   help="explain at most this many cells of each label (drawn at random; without --label-key "
                        "every cell is answered first, without gradients, and drawn from each answer): the "
                        "rankings are per-label means, and each cell costs a backward pass")
    p.add_argument("--seed", type=int, default=0, help="draws the cells --max-cells-per-label keeps")
    p.add_argument("--fast", action="store_true",
                   help="with --max-cells-per-label and no --label-key: the answers given first take annotate's "
                        "--fast (cells the linear read-out is sure of answered by it alone); the attributions "
                        "always go through the language model")
    p.add_argument("--drug", default=None,
                   help="explain drug-response answers to this drug (as drug-response asks; candidates default to "
                        "the learned responses, e.g. resistant,sensitive) instead of cell types")
    p.add_argument("--versus", default=None, metavar="LABEL|runner-up|COLUMN",
                   help="why each cell's label rather than this candidate (runner-up: each cell's most probable "
                        "other candidate; an obs column: each cell's label there, e.g. an author's, where it "
                        "differs): explain log p(label) - log p(versus); cells are grouped 'A vs B' and checked "
                        "against the known markers of A not listed for B")
    add_matrix_arguments(p)
    # float32: in bfloat16 the per-label top-10 genes changed by up to a quarter (zheng2017) for a
    # 1.2-1.7x speed-up; an explanation should not depend on the machine unless asked
    add_precision_argument(p, "float32")
    add_device_argument(p)
    add_scoring_argument(p)
    _add_readout_argument(p)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="instructcell", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_evaluate(sub)
    _add_annotate(sub)
    _add_drug_response(sub)
    _add_explain(sub)
    data_commands.add_commands(sub)
    checkpoint_commands.add_commands(sub)
    from .core_model.generation import commands as generation_commands  # generate, train-generator, cpcg

    generation_commands.add_generation_commands(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    from .core_model.errors import InstructCellError

    try:
        with warnings.catch_warnings():  # restored on return: tests and scripts call main() in process
            if not args.verbose:  # a warning's text is for the user; the line that raised it is not (-v shows it)
                warnings.showwarning = _show_warning
            if generation_commands.handles(args):
                return generation_commands.run(args)
            if checkpoint_commands.handles(args):
                return checkpoint_commands.run(args)
            if data_commands.handles(args):
                return data_commands.run(args)
            return {"train": _train, "evaluate": _evaluate, "annotate": _annotate, "drug-response": _annotate,
                    "explain": _explain}[args.command](args)
    except InstructCellError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # the API's argument checks ("n must be at least 1"); -v keeps the traceback
        if args.verbose:
            raise
        print(f"error: {exc} (run with -v for the traceback)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Long runs get stopped on purpose; say what survives rather than print a traceback.
        print(f"interrupted: {_what_survives(args)}", file=sys.stderr)
        return 130


def _what_survives(args: argparse.Namespace) -> str:
    if args.command == "train":
        return "training state is saved every few hundred steps; run the same command with --resume to continue"
    if args.command == "train-generator":
        return "the generator is written only when training ends; the checkpoint keeps the one it had, if any"
    return "outputs are written only when complete (to a temporary name, then renamed), so no file is half-written"


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=file or sys.stderr)


def _train(args) -> int:
    from .core_model.config import BackboneConfig
    from .core_model.datasets import load_user_catalog
    from .core_model.errors import InputFileError
    from .core_model.training import TrainConfig, train

    if args.no_shared and not args.catalog:  # an InstructCellError, so main() prints it as "error: ..."
        raise InputFileError("--no-shared needs at least one --catalog file of your own datasets")
    cfg = TrainConfig(
        datasets=tuple(d for d in args.datasets.split(",") if d), backbone=BackboneConfig(kind=args.backbone),
        lm_steps=args.lm_steps, encoder_epochs=args.encoder_epochs, batch_size=args.batch_size,
        n_hvg=args.n_hvg, seed=args.seed, hidden_dim=args.hidden_dim, gene_keep=args.gene_keep,
        panel_drop_prob=args.panel_drop, hvg_panel_prob=args.hvg_panel, lr=args.lr, init_from=args.init_from,
        weight_decay=args.weight_decay,
        fit_splits=args.fit_splits, vocab_from=args.vocab_from, dataset_alpha=args.dataset_alpha,
        linear_skip=args.linear_skip, aux_weight=args.aux_weight, freeze_encoder=args.freeze_encoder,
        rank_weight=args.rank_weight, replay=not args.no_replay, replay_share=args.replay_share,
        anchor_weight=args.anchor_weight, distill_weight=args.distill_weight,
    )
    command = recorded_command()
    specs = None
    if args.catalog:
        specs = [] if args.no_shared else _shared_specs(cfg)
        specs += [spec for file in args.catalog for spec in load_user_catalog(file)]
        _refuse_repeated_names([s.name for s in specs], shared=not args.no_shared)
    path = train(cfg, args.out, resume=args.resume, command=command, specs=specs, device=args.device,
                 fit_readout=not args.no_readout)
    print(path)
    # Without temperatures the answers' confidences are the raw, overconfident ones (shipped
    # model: mean 0.98 at accuracy 0.91 on test); fitting them is a separate, minutes-long step.
    catalogs = "".join(f" --catalog {c}" for c in args.catalog)
    print(f"hint: fit the confidence temperatures with `instructcell calibrate --checkpoint {path}{catalogs}`",
          file=sys.stderr)
    return 0


def _shared_specs(cfg) -> list:
    """The shared sets a --catalog run trains beside the user's; where there is no shared data the
    error says how to train on the user's sets alone."""
    from .core_model.errors import InputFileError
    from .core_model.training import select_specs

    try:
        return select_specs(cfg)
    except InputFileError as exc:
        raise InputFileError(f"{exc}; or pass --no-shared to train on your --catalog sets alone") from exc


def _refuse_repeated_names(names: list[str], shared: bool) -> None:
    """Label sets are keyed by dataset name, so a repeated name would merge or hide a set."""
    from .core_model.errors import InputFileError

    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        where = "the shared catalog and your --catalog files" if shared else "your --catalog files"
        raise InputFileError(f"dataset names must be unique across {where}; repeated: {', '.join(repeated)}; "
                             "rename your entries")


def _evaluate(args) -> int:
    from .api import load_model
    from .core_model.evaluation import evaluate
    from .core_model.instructions import load_instruction_file
    from .core_model.io import write_json_atomic

    loaded = load_model(args.checkpoint, device=args.device, precision=args.precision)
    instructions = load_instruction_file(args.instructions) if args.instructions else None
    result = evaluate(loaded, args.data, args.split, args.task, args.label_key, instructions=instructions,
                      n_instructions=args.n_instructions, seed=args.seed, split=args.split_name,
                      calibrate=args.calibrate, scoring=args.scoring, readout=not args.no_readout, drug=args.drug,
                      genome=args.genome, resolve_at=args.resolve_at)
    write_json_atomic(result, args.out)
    print(json.dumps({k: result[k] for k in ("accuracy", "macro_f1", "weighted_f1", "invalid_rate", "n_cells",
                                             "resolved") if k in result}))
    return 0


def _annotate(args) -> int:
    """`annotate` and `drug-response`: answer every cell of --data, write them to a new file (--out)."""
    from .agreement import known_labels
    from .api import EMPTY_CELLS_NOTE
    from .cell_map import keep_coords
    from .cli_markers import markers_line
    from .composition import check_groups
    from .core_model.errors import InputFileError
    from .core_model.hierarchy import check_resolve_at
    from .core_model.io import obs_column, write_h5ad_atomic, write_text_atomic

    if not (args.out or args.table or args.plot):
        raise InputFileError("name where the answers go: --out FILE.h5ad (the annotated cells), --table FILE.csv "
                             "(one row per cell), --plot FILE.png (a map of the cells), or several")
    if getattr(args, "resolve_at", None) is not None:  # annotate only; refused before any reading
        check_resolve_at(args.resolve_at)
    candidates = with_tissue_types(parse_candidates(args.candidates), getattr(args, "tissue_types", None))
    sep = table_separator(args) if args.table else None  # refused before any reading
    if args.plot:
        check_new_file(args.plot, ".png", "--plot", args)
    adata = read_data(args)
    known = known_labels(adata, args.compare_key) if args.compare_key else None  # refused before the model runs
    # several samples are reported on one by one unless another grouping is asked for
    group_key = args.groupby or (adata.uns["samples"]["key"] if len(inputs(args)) > 1 else None)
    groups = obs_column(adata, group_key, "Name a column of groups (clusters, samples)") if group_key else None
    if groups is not None:
        check_groups(groups, group_key)
    result, model, by_markers = _warned_once(lambda: _answers(args, adata, candidates),
                                             lambda answers: answers[0].provenance)
    if len(result.confidence) and all(math.isnan(float(c)) for c in result.confidence):
        # not a cell with counts on the model's genes: most likely the wrong matrix, so say which others there are
        notes = result.provenance.get("notes", [])
        said = next((n for n in notes if n.startswith(EMPTY_CELLS_NOTE)), EMPTY_CELLS_NOTE)
        which = said[len(EMPTY_CELLS_NOTE):].lstrip("; ")  # the matrix read, and the others the file holds
        print(f"error: none of the {adata.n_obs:,} cells has counts on the model's genes{'; ' + which if which else ''}; "
              "nothing written", file=sys.stderr)
        return 2
    compared = result.agreement(known) if known is not None else None
    resolved_compared = result.resolved_agreement(known) if known is not None and result.resolved is not None else None
    grouped = result.composition(groups, group_key) if groups is not None else None
    grouped_resolved = (result.composition(groups, group_key, resolved=True)
                        if groups is not None and result.resolved is not None else None)
    checked = _marker_check(result, adata, model, args) if getattr(args, "marker_check", None) else None
    if checked is not None:
        checked.note_answers_from_these_markers(result.provenance)
    drawn_map, no_map = _draw_map(result, adata, args) if args.plot else (None, None)
    if args.out:
        # Written into the cells read here (a new object; the input file is only read), so a
        # large matrix is not held twice.
        out = result.to_adata(adata, key_added=args.key_added)
        if drawn_map is not None:
            keep_coords(out, drawn_map)  # what the figure shows, for sc.pl.umap(out, color=...)
        if compared is not None:
            out.uns[args.key_added]["agreement"] = {"key": args.compare_key, **compared.to_dict()}
        if resolved_compared is not None:
            out.uns[args.key_added]["resolved_agreement"] = {"key": args.compare_key, **resolved_compared.to_dict()}
        if grouped is not None:
            out.uns[args.key_added]["composition"] = grouped.to_uns()
        if grouped_resolved is not None:
            out.uns[args.key_added]["resolved_composition"] = grouped_resolved.to_uns()
        if checked is not None:
            checked.store(out, args.key_added)
        write_h5ad_atomic(out, args.out, protect=inputs(args))
    if sep is not None:
        write_text_atomic(result.to_table().to_csv(sep=sep, index_label="cell"), args.table)
    print(result.summary())
    if by_markers:
        print(markers_line(result))
    if compared is not None:
        print(compared.summary(f"obs[{args.compare_key!r}]"))
    if resolved_compared is not None:
        print(resolved_compared.summary(f"obs[{args.compare_key!r}]"))
    if grouped is not None:
        print(grouped.summary())
    if grouped_resolved is not None:
        print(grouped_resolved.summary())
    if checked is not None:
        print(checked.summary())
    print("wrote " + ", ".join(str(p) for p in (args.out, args.table, drawn_map and args.plot) if p))
    if no_map:
        print(f"error: no map drawn ({no_map}); the answers are written", file=sys.stderr)
        return 2
    return 0


def _answers(args, adata, candidates):
    """(answers, the model loaded for them or None, whether known markers gave them) for `annotate`
    and `drug-response`."""
    from .api import annotate, load_model, predict_drug_response
    from .cli_markers import by_markers_result, unlearned_only_result

    by_markers = getattr(args, "by_markers", None) or getattr(args, "markers", None)
    if by_markers:  # no model: the candidates' known markers answer (cli_markers.py)
        return by_markers_result(args, adata, candidates), None, True
    result = unlearned_only_result(args, adata, candidates)  # where annotate would have them answer
    if result is not None:
        return result, None, True
    model = load_model(args.checkpoint, device=args.device, precision=args.precision)
    shared = dict(model=model, instruction=args.instruction, candidates=candidates, use_raw=args.use_raw,
                  layer=args.layer, gene_key=args.gene_key, species=args.species, tissue=args.tissue,
                  scoring=args.scoring, unassigned_below=args.unassigned_below,
                  unassigned_atypical=args.unassigned_atypical, readout=not args.no_readout, fast=args.fast)
    if args.command == "drug-response":
        result = predict_drug_response(adata, drug=args.drug, progress=_progress_bar("predicting"), **shared)
    else:
        result = annotate(adata, free_text=args.free_text, resolve_at=args.resolve_at,
                          by_markers=False if args.no_markers else None, progress=_progress_bar("annotating"), **shared)
    return result, model, False


def _marker_check(result, adata, model, args):
    """The answers against their known markers, on the matrix the model read."""
    from .interpret.marker_check import marker_check

    return marker_check(adata, result.labels, model=model or args.checkpoint, marker_db=args.marker_check,
                        layer=args.layer, use_raw=args.use_raw, gene_key=args.gene_key)


def _draw_map(result, adata, args):
    """(map, None) once --plot is drawn, or (None, why not): the picture failing must not cost
    the answers of a long run, which are written either way."""
    try:
        return result.draw_map(adata, args.plot, layer=args.layer, use_raw=args.use_raw), None
    except Exception as exc:  # noqa: BLE001 - reported, and the exit status says it failed
        log.debug("map failed", exc_info=True)
        return None, f"{type(exc).__name__}: {exc}" if args.verbose else str(exc)


def _explain(args) -> int:
    from .api import load_model
    from .core_model.io import obs_column
    from .interpret.api import explain, write_explanation

    candidates = with_tissue_types(parse_candidates(args.candidates), args.tissue_types)  # refused before reading
    adata = read_data(args)
    if args.label_key:  # a missing column is an error here (explain would take the name for a label)
        obs_column(adata, args.label_key, "Pass the name of the column that holds the labels")
    loaded = load_model(args.checkpoint, device=args.device, precision=args.precision)
    # A file named like one of the checkpoint's datasets gets that label set as candidates.
    stem = Path(args.data[0]).stem if len(args.data) == 1 else None
    dataset = args.dataset or (stem if stem in loaded.label_sets else None)
    result = _warned_once(lambda: explain(
        adata, model=loaded, labels=args.label_key, method=args.method, top_k=args.top_k,
        dataset=None if candidates else dataset, candidates=candidates, normalize=args.normalize,
        reference=args.reference, n_steps=args.n_steps, batch_size=args.batch_size, use_raw=args.use_raw,
        layer=args.layer, gene_key=args.gene_key, max_cells_per_label=args.max_cells_per_label, seed=args.seed,
        drug=args.drug, versus=args.versus, scoring=args.scoring, readout=not args.no_readout, fast=args.fast,
        progress=_progress_bar("explaining"), answer_progress=_progress_bar("answering first")),
        lambda explained: explained.provenance)
    paths = write_explanation(result, args.out, protect=inputs(args))
    print(result.summary())
    print("\n".join(str(p) for p in paths.values()))
    return 0


def _warned_once(run, provenance_of):
    """`run()`'s result, with the warnings it raised shown afterwards except those whose text its
    provenance notes hold: the summary prints those, and the same paragraph twice on one screen
    reads as two problems. On an exception every warning is shown."""
    result = None
    try:
        with warnings.catch_warnings(record=True) as caught:  # the filters as they are: ignored stays ignored
            result = run()
    finally:
        noted = set(provenance_of(result).get("notes", [])) if result is not None else set()
        for w in caught:
            if str(w.message) not in noted:
                warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    return result


def _progress_bar(desc: str):
    """A (cells done, total) callback drawing a bar on stderr; tqdm hides it when stderr is not a
    terminal, so logs and pipes stay clean."""
    from tqdm.auto import tqdm

    bar = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=desc, unit="cell", disable=None)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return update


if __name__ == "__main__":
    raise SystemExit(main())
