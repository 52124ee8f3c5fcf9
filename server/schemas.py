"""Typed requests and results of every tool, shared by the MCP server and the LangChain tools.

Bounds here are absolute caps of the schema; the configured limits (often lower) are enforced by
the service with a message naming the limit. Results stay small: counts, summaries, top genes and
a few example cells. The full result is a file under the output directory (see `OutputFile`).
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

H5adPath = Annotated[str, Field(
    min_length=1, max_length=4096,
    description="Path of the cells inside one of the server's data roots (absolute, or relative to the first "
                "data root): an AnnData .h5ad file or .zarr store, or Cell Ranger's filtered_feature_bc_matrix "
                "(.h5 file, or matrix.mtx.gz or its folder; GEO's GSM..._matrix.mtx.gz too), or a table of "
                "genes x cells or cells x genes (.csv, .tsv or .txt, optionally .gz), or a .loom or .h5Seurat "
                "file; or the path of an .h5ad this server wrote (annotate_cells' annotated file, generate_cells' "
                "cells).")]
OptionalText = Annotated[str | None, Field(max_length=200)]
JobId = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$", description="Job id returned by an earlier call.")]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _MatrixOptions(_Request):
    layer: OptionalText = Field(None, description="Layer to read instead of X (e.g. 'counts').")
    use_raw: bool = Field(False, description="Read adata.raw instead of X.")
    gene_key: OptionalText = Field(None, description="var column holding gene symbols, if var_names are not genes.")
    genome: OptionalText = Field(
        None, description="For a matrix counted against several species' genomes (barnyard or xenograft; the "
                          "reply to reading it without one names them): the genome to read, e.g. 'GRCh38'. Its genes "
                          "are read, and the cells with most of their counts on them; the others are left out.")


class InspectDatasetRequest(_MatrixOptions):
    h5ad_path: H5adPath


UnassignedBelow = Annotated[float | None, Field(
    gt=0, le=1, description="Label cells answered with a lower confidence 'Unassigned' (for files that may hold "
                            "types the candidates lack, or uncertain calls), e.g. 0.5 or 0.6. Omit to label every "
                            "cell.")]
UnassignedAtypical = Annotated[float | None, Field(
    gt=0, le=100, allow_inf_nan=False,
    description="Label cells 'Unassigned' whose typicality (how alike the training cells of their label they are, "
                "in those cells' standard deviations) is below minus this, e.g. 3: cells of a type or tissue the "
                "model never learned, with or without candidates. Omit to label every cell.")]
CompareKey = Annotated[str | None, Field(
    max_length=200, description="obs column of labels the cells already have (an author's annotation): the reply "
                                "reports the agreement with them, overall and per label.")]

ObsTable = Annotated[str | None, Field(
    None, min_length=1, max_length=4096,
    description="A table of per-cell metadata inside the data roots (.csv, .tsv or .txt, optionally .gz; first "
                "column the cell names), e.g. GEO's metadata or Cell Ranger's clusters.csv, joined onto the cells "
                "by name; compare_key and groupby can then name its columns.")]
GroupBy = Annotated[str | None, Field(
    max_length=200, description="obs column of groups (clusters, samples, conditions): the reply says what each "
                                "group was answered (most frequent answer, its share of the group, the runner-up).")]
MoreSamples = Annotated[list[H5adPath] | None, Field(
    None, max_length=50,
    description="Further samples read together with h5ad_path (the same formats; e.g. each sample's Cell Ranger "
                "output): obs['sample'] names each cell's sample (from its folder or file name), the genes are "
                "those all samples hold, and the reply reports each sample unless groupby names another column.")]
Fast = Annotated[bool, Field(
    description="Cells the model's linear gene read-out gives one label a probability of 0.98 or more (and that are "
                "not atypical of it) take its answer, and the language model reads only the others: several times "
                "faster on a CPU where most cells are clear-cut (on the shared sets' valid cells no answer changed). "
                "It applies to candidates "
                "from one learned label set (inspect_dataset's matching_label_sets) and to drug response, not to "
                "free answers for blood or pancreas cells (several sets' labels). The reply's notes say how many "
                "cells it answered, or why none. false: every cell by the language model.")]
ResolveAt = Annotated[float | None, Field(
    gt=0.5, le=1, description="Also give each cell the finest answer whose probability reaches this (0.9, say): its "
                              "label, else a broader Cell Ontology type summing the probabilities of the labels under "
                              "it ('CD4-positive, alpha-beta T cell' for a cell torn between CD4+ T subsets), else "
                              "'Unassigned'. The reply counts them (resolved_counts); the annotated file holds "
                              "obs['instructcell_resolved']. Omit for labels only.")]
MarkerCheck = Annotated[Literal["panglaodb", "cellmarker2"] | None, Field(
    description="Also check each answer against its known markers in this database (asks no model): how well "
                "they single out the cells given it, as an AUROC and a verdict per label (marker_check). Lineages "
                "(B, NK, monocytes, islet hormones) mostly score 0.8 and above; subsets of one lineage share their "
                "markers and score lower even when right. Omit to skip.")]
DrawMap = Annotated[bool, Field(
    description="Also draw the answers and their confidence on a map of the cells (a PNG among the outputs, kind "
                "'map_png'): the file's own obsm['X_umap'] (or X_tsne), else a UMAP computed from its genes (about "
                "30 s for 50,000 cells on two CPU cores), which the annotated file then keeps in obsm['X_umap']. "
                "false skips it.")]


class AnnotateCellsRequest(_MatrixOptions):
    h5ad_path: H5adPath
    candidates: list[Annotated[str, Field(min_length=1, max_length=200)]] | None = Field(
        None, min_length=2, max_length=200,
        description="Cell types to choose from (probabilities for each): a label set the model learned, or Cell "
                    "Ontology names such as 'B cell' or 'CD14-positive monocyte'. Omit to let the model name the type "
                    "freely. The reply's notes say how the candidates were scored.")
    instruction: str | None = Field(
        None, max_length=2000, description="Question asked per cell; {choices} lists the candidates. Default: ours.")
    free_text: bool = Field(False, description="Without candidates: unconstrained free answers instead of "
                                                 "answers decoded within the model's known labels.")
    species: OptionalText = Field(None, description="Prompt field; default: obs['species'] or detected.")
    tissue: OptionalText = Field(None, description="Prompt field; default: obs['tissue'] if present.")
    unassigned_below: UnassignedBelow = None
    unassigned_atypical: UnassignedAtypical = None
    resolve_at: ResolveAt = None
    fast: Fast = False
    more_samples: MoreSamples = None
    obs_table: ObsTable = None
    compare_key: CompareKey = None
    groupby: GroupBy = None
    marker_check: MarkerCheck = None
    by_markers: Literal["panglaodb", "cellmarker2"] | None = Field(
        None, description="Answer from the candidates' known markers alone, no model asked: for cell types the model "
                          "never learned ('Hepatocyte', 'Kupffer cell'; PanglaoDB lists 178 across organs). Tells "
                          "lineages apart (islet hormones, B / T / NK / myeloid), not subsets of one lineage; where "
                          "the model learned the types it is far more accurate. Needs candidates (or markers).")
    markers: dict[Annotated[str, Field(min_length=1, max_length=200)],
                  list[Annotated[str, Field(min_length=1, max_length=50)]]] | None = Field(
        None, max_length=200, description="With by_markers: your own marker genes per cell type, {type: [genes]}, "
                                          "used instead of the database's; candidates default to its types.")
    tissue_types: OptionalText = Field(
        None, description="A tissue the model never learned (liver, lung, kidney, brain, colon...): its known cell "
                          "types (PanglaoDB's types of that organ, and the immune, endothelial and stromal types most "
                          "tissues hold) are added to the candidates, and the types the model never learned are "
                          "answered from their known markers. inspect_dataset lists them (tissue_cell_types).")
    plot: DrawMap = True
    background: bool = Field(False, description="Run as a background job and return a job id at once.")
    n_examples: int = Field(5, ge=0, le=20, description="Example cells to include in the reply.")

    @model_validator(mode="after")
    def _with_tissue_types(self):
        """The tissue's known types joined to the candidates, so every use of them sees one list."""
        if self.tissue_types:
            from instructcell_agent.interpret.tissue_types import tissue_cell_types

            given = list(self.candidates or [])
            self.candidates = given + tissue_cell_types(self.tissue_types, besides=given)
            self.tissue_types = None  # joined once: validating the result again adds nothing
        return self


class PredictDrugResponseRequest(_MatrixOptions):
    h5ad_path: H5adPath
    drug: str = Field(min_length=1, max_length=200, description="Drug name, e.g. 'cisplatin'.")
    candidates: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        ["resistant", "sensitive"], min_length=2, max_length=20, description="Response classes to score.")
    instruction: str | None = Field(None, max_length=2000, description="Question asked per cell; default: ours.")
    unassigned_below: UnassignedBelow = None
    unassigned_atypical: UnassignedAtypical = None
    fast: Fast = False
    more_samples: MoreSamples = None
    obs_table: ObsTable = None
    compare_key: CompareKey = None
    groupby: GroupBy = None
    plot: DrawMap = True
    background: bool = Field(False, description="Run as a background job and return a job id at once.")
    n_examples: int = Field(5, ge=0, le=20, description="Example cells to include in the reply.")


class GenerateCellsRequest(_Request):
    cell_type: str = Field(min_length=1, max_length=200, description="Cell type to generate, e.g. 'CD14+ Monocyte'.")
    n: int = Field(100, ge=1, le=1_000_000, description="Number of cells to generate.")
    condition: OptionalText = Field(None, description="Condition, e.g. 'IFN-beta stimulated' or 'control'.")
    species: OptionalText = Field(None, description="Species; default: from the training conditions.")
    tissue: OptionalText = Field(None, description="Tissue; default: from the training conditions.")
    instruction: str | None = Field(None, max_length=2000, description="Template with {cell_type}, {condition}.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Sampling seed (same seed, same cells).")
    allow_unseen: bool = Field(False, description="Generate even for a condition unseen in training.")
    background: bool = Field(False, description="Run as a background job and return a job id at once.")


class ExplainGenesRequest(_MatrixOptions):
    h5ad_path: H5adPath
    labels: OptionalText = Field(
        None, description="What to explain: an obs column of labels, or one label for every cell. "
                          "Default: each cell's predicted label. On a file annotate_cells wrote, "
                          "'instructcell_label' or 'instructcell_resolved' (its resolve_at answers) are explained "
                          "over the candidates it recorded: a broader type as the summed probability of the "
                          "candidates under it.")
    candidates: list[Annotated[str, Field(min_length=1, max_length=200)]] | None = Field(
        None, min_length=2, max_length=200, description="Labels scored for every cell. Default: those annotate_cells "
                                                        "recorded in the file, else the model's.")
    method: Literal["saliency", "gradient", "ig"] = Field(
        "saliency", description="saliency (gradient x input), gradient, or ig (Integrated Gradients; slower).")
    reference: Literal["train", "zero", "mean"] = Field(
        "train", description="What saliency and ig measure each cell against: the model's mean training cell of "
                             "the scored label set (train, default: genes at their usual level count for "
                             "nothing, so housekeeping genes drop out of the rankings), no expression (zero), "
                             "or the mean cell of the file (mean). Genes are ranked where a cell expresses "
                             "them above the reference.")
    normalize: Literal["none", "minmax"] = Field(
        "minmax", description="Per-cell scaling before the per-label mean: minmax (default: each cell's supporting "
                              "genes scaled to [0, 1], so no single cell dominates a label's ranking), or none "
                              "(raw attributions).")
    top_k: int = Field(10, ge=1, le=1000, description="Genes reported per label.")
    drug: OptionalText = Field(None, description=(
        "Explain drug-response answers to this drug (as predict_drug_response asks; candidates default to the "
        "learned responses, e.g. resistant / sensitive) instead of cell types."))
    more_samples: MoreSamples = None
    obs_table: ObsTable = None
    max_cells_per_label: int | None = Field(None, ge=1, le=1_000_000, description=(
        "Explain at most this many cells of each label (drawn at random, seeded), for large files: the rankings are "
        "per-label means. The cell limit then counts the cells explained. Without labels every cell is answered "
        "first (no gradients, far cheaper) and the cells are drawn from each answer; the limit then counts this "
        "many for each answer the model can give (each candidate, else each learned label)."))
    versus: OptionalText = Field(None, description=(
        "Why each cell's label rather than another: a candidate label, 'runner-up' for each cell's most probable "
        "other candidate, or an obs column of labels (an author's annotation: why the model's answer rather than "
        "the author's; names read through the Cell Ontology, cells whose label names no candidate left out). "
        "Explains log p(label) - log p(versus), so the genes ranked are those that tell "
        "the two apart; results are grouped 'A vs B', and cells whose label is the versus label are left out."))
    fast: bool = Field(False, description=(
        "With max_cells_per_label and no labels: the answers given first take annotate_cells' fast (cells the "
        "linear read-out is sure of answered by it alone), the larger share of the time on a large file. The "
        "attributions always go through the language model."))
    background: bool = Field(False, description="Run as a background job and return a job id at once.")


class JobRequest(_Request):
    job_id: JobId


# ------------------------------------------------------------------ results


class OutputFile(BaseModel):
    path: str = Field(description="Absolute path of the written file on the server.")
    uri: str = Field(description="MCP resource URI to read it through the server.")
    kind: str = Field(description="What it holds, e.g. 'annotated_h5ad', 'labels_csv', 'dotplot_png'.")
    mime_type: str
    size_bytes: int


class ObsColumn(BaseModel):
    name: str
    dtype: str
    n_unique: int
    examples: list[str] = Field(description="Up to 5 values.")


class VocabularyOverlap(BaseModel):
    n_vocab: int = Field(description="Genes the model reads.")
    n_matched: int = Field(description="Of those, genes found in the input.")
    matched_fraction: float
    input_matched_fraction: float = Field(description="Share of the input's genes the model uses.")
    min_needed: int = Field(description="Fewest matched genes the model accepts.")
    sufficient: bool
    gene_id_type: str
    species: str
    missing_examples: list[str]
    notes: list[str]


class DatasetInfo(BaseModel):
    kind: Literal["dataset"] = "dataset"
    h5ad_path: str
    input_format: str = Field("h5ad", description="h5ad, zarr, 10x_h5, 10x_mtx, text, loom or h5seurat (Cell "
                                                  "Ranger's files and text tables: cells and genes only, so no "
                                                  "species or tissue columns).")
    n_cells: int
    n_genes: int
    obs_columns: list[ObsColumn]
    layers: list[str]
    has_raw: bool
    value_type: str = Field(description="raw_counts, log1p, normalized, or invalid (with value_note).")
    value_note: str
    overlap: VocabularyOverlap | None = Field(description="None when the values cannot be used.")
    within_cell_limit: bool
    runs_in_background: bool = Field(description="Whether annotate_cells on this file would run as a job.")
    model_annotation_labels: list[str] = Field(description="Labels the model knows (first 50).")
    matching_label_sets: dict[str, list[str]] = Field(
        default_factory=dict,
        description="The model's annotation label sets learned for this file's species and tissue (obs columns "
                    "species/organism and tissue, as annotate_cells reads them; without a species column, the "
                    "species its gene names show), by name. Pass one set's labels as candidates for a probability "
                    "per label, or no candidates for free answers; empty when the model learned no labels for "
                    "this context. Without a tissue column every tissue of the species is listed: ask which "
                    "tissue the cells come from, or pass it as annotate_cells' tissue.")
    tissue_cell_types: list[str] = Field(
        default_factory=list,
        description="Where the model learned no labels for the file's tissue (a tissue column naming liver, lung, "
                    "kidney, brain...): that tissue's known cell types (PanglaoDB's types of its organ, and the "
                    "immune, endothelial and stromal types most tissues hold), candidates annotate_cells answers "
                    "from their known markers. A list to start from: drop types the tissue cannot hold, add ones "
                    "it lacks. Empty otherwise.")


class DescribeModelRequest(_Request):
    pass


class LabelSetInfo(BaseModel):
    name: str
    task: str = Field(description="annotation or drug_response.")
    species: str
    tissue: str
    drug: str | None = None
    labels: list[str]


class GenerationConditionInfo(BaseModel):
    cell_type: str
    species: str
    tissue: str
    conditions: list[str] = Field(description="Condition texts it was learned under (empty: none, or the set has "
                                              "no conditions).")
    dataset: str
    n_cells: int = Field(description="Training cells: the generator renders types learned from few cells worse.")


class ModelInfo(BaseModel):
    kind: Literal["model"] = "model"
    checkpoint: str
    package_version: str | None
    backbone: str
    device: str
    precision: str
    label_sets: list[LabelSetInfo] = Field(description="What annotate_cells and predict_drug_response learned: pass "
                                                       "one set's labels as candidates, or name them your way.")
    drugs: list[str] = Field(description="Drugs whose responses the model learned; others get a warning.")
    generation: list[GenerationConditionInfo] | None = Field(
        description="What generate_cells can draw: cell type, species, tissue and conditions as learned; None "
                    "without a usable generator (generation_note says why).")
    generation_note: str | None = None
    typicality: bool = Field(description="Whether answers carry a typicality (the checkpoint keeps reference cells).")


class CellExample(BaseModel):
    cell: str
    label: str
    confidence: float
    typicality: float | None = Field(None, description="How alike the training cells of its label the cell is: "
                                                       "0 as those cells, -3 three of their standard deviations less.")
    resolved: str | None = Field(None, description="With resolve_at: its label, a broader type or 'Unassigned'.")


class LabelAgreement(BaseModel):
    n_cells: int
    agreement: float = Field(description="Share of this label's cells whose answer names it.")
    most_common_answer: str


class AgreementSummary(BaseModel):
    compare_key: str
    agreement: float | None = Field(description="Share of compared cells whose answer names their known label "
                                                "(same name, Cell Ontology synonym or a finer type); None "
                                                "when no cell could be compared.")
    n_compared: int = Field(description="Cells with both a known label and an answer.")
    per_label: dict[str, LabelAgreement] = Field(description="The 50 largest known labels.")


class GroupSummary(BaseModel):
    group: str
    n_cells: int
    answer: str | None = Field(description="Most frequent answer (free cell-type answers by Cell Ontology name); "
                                           "None when no cell of the group was labelled.")
    share: float = Field(description="Its share of the group's cells.")
    runner_up: str | None
    runner_up_share: float
    mean_confidence: float | None = Field(description="Of the group's labelled cells.")
    not_labelled: int = Field(description="Cells left unlabelled or 'Unassigned'.")


class MarkerSupport(BaseModel):
    label: str
    n_cells: int
    n_markers: int = Field(description="The label's known markers the file holds and expresses.")
    auroc: float | None = Field(description="How well the label's marker score singles its cells out from the "
                                            "cells of other labels (not its synonyms); None when it cannot be "
                                            "measured.")
    support: Literal["supported", "weak", "not supported", "no known markers", "no other label"] = Field(
        description="supported: AUROC >= 0.8; weak: >= 0.6; not supported: below.")
    top_markers: str = Field(description="Known markers most above the other cells, each with the share of the "
                                         "label's cells / of the others expressing it.")
    shares_markers_with: str = Field(description="Labels whose known markers overlap this one's (Jaccard > 0.5): "
                                                 "a weak verdict is expected between them.")


class AnnotationSummary(BaseModel):
    kind: Literal["annotation", "drug_response"]
    h5ad_path: str
    n_cells: int
    label_counts: dict[str, int]
    mean_confidence: float | None = Field(description="Mean confidence of the labelled cells; None when no "
                                                "cell could be labelled.")
    low_confidence_cells: int = Field(description="Cells whose confidence is below 0.5 (worth a look; "
                                                  "unassigned_below labels such cells 'Unassigned').")
    unlabelled_cells: int = Field(0, description="Cells left without a label: no counts on any of the model's genes.")
    unassigned_cells: int = Field(0, description="Cells labelled 'Unassigned': confidence below unassigned_below or "
                                                 "typicality below -unassigned_atypical.")
    atypical_cells: int | None = Field(None, description="Cells whose typicality is below -3: unlike the training "
                                                         "cells of their label (a type or tissue the model may not "
                                                         "know; unassigned_atypical=3 labels them 'Unassigned'). "
                                                         "None when the checkpoint keeps no reference cells.")
    outside_candidates: dict[str, int] | None = Field(
        None, description="With candidates: cells that look like a type the model learned but the candidates lack "
                          "(the read-out's probability on such types above 0.5), by that type; add it to the "
                          "candidates if the file may hold it. None without candidates.")
    candidates: list[str] | None
    drug: str | None = None
    examples: list[CellExample]
    alignment: str = Field(description="How the input's genes matched the model's.")
    notes: list[str] = Field(default_factory=list,
                             description="What to weigh before trusting the labels (e.g. a tissue the model never saw).")
    answer_tissues: dict[str, int] | None = Field(
        None, description="Free answers (no candidates) counted by the tissue whose training sets taught the label "
                          "named: what the cells were read as. Several tissues for one sample are worth a look; "
                          "pass tissue (or a tissue column) to keep the answers to one.")
    agreement: AgreementSummary | None = Field(None, description="With compare_key: agreement with those labels.")
    resolved_groups: list[GroupSummary] | None = Field(
        None, description="With resolve_at and groupby: what each group's resolved answers were (a cluster whose "
                          "fine labels split may be one broader type).")
    resolved_counts: dict[str, int] | None = Field(
        None, description="With resolve_at: cells per resolved answer (labels, broader Cell Ontology types, "
                          "'Unassigned'); a note says how many were resolved at their label.")
    resolved_agreement: float | None = Field(
        None, description="With resolve_at and compare_key: share of the resolved answers (at a label or broader) "
                          "right for those labels, a broader type counting as right when the known label falls "
                          "under it.")
    groups: list[GroupSummary] | None = Field(None, description="With groupby: what each group was answered (the "
                                                                "first 200 groups).")
    marker_check: list[MarkerSupport] | None = Field(None, description="With marker_check: each answer against its "
                                                                       "known markers, weakest first (200 at most).")
    outputs: list[OutputFile]
    seconds: float


class GenerationSummary(BaseModel):
    kind: Literal["generation"] = "generation"
    n_cells: int
    n_genes: int
    cell_type: str = Field(description="The cell type generated, as the model learned to name it.")
    requested_cell_type: str
    species: str | None
    tissue: str | None
    condition: str | None
    learned_from: str | None = Field(description="The training set whose cells of this type the request matched.")
    unseen_condition: bool
    notes: list[str] = Field(default_factory=list, description=(
        "How the request was resolved where the choice was open (the same type learned in other species or "
        "tissues), whether the instruction was read as another condition, and whether most cells came out unlike "
        "the training cells of their type."))
    mean_total_counts: float
    top_expressed_genes: list[str] = Field(description="Ten genes with the highest mean count.")
    outputs: list[OutputFile]
    seconds: float


class GeneScore(BaseModel):
    gene: str
    score: float
    is_known_marker: bool | None


class ExplanationSummary(BaseModel):
    kind: Literal["explanation"] = "explanation"
    h5ad_path: str
    n_cells: int
    n_explained: int = Field(description="Cells attributed: all, or at most max_cells_per_label of each label.")
    method: str
    reference: str = Field(description="What the attributions were measured against (train, zero, mean; none "
                                       "for the plain gradient).")
    normalize: str = Field(description="Per-cell scaling applied before the per-label mean.")
    cells_per_label: dict[str, int] = Field(description="Cells averaged into each label's ranking (cells with no "
                                                    "counts on the model's genes are left out; see notes).")
    top_genes: dict[str, list[GeneScore]] = Field(description="Per label, its top genes by attribution.")
    explained_by_markers: list[str] = Field(
        default_factory=list,
        description="Labels annotate answered from known markers (by_markers, or a type the checkpoint never "
                    "learned): their top genes are those markers' shares of the marker score the answer won on, "
                    "not the model's gradients.")
    marker_precision: dict[str, float | None] | None = Field(
        description="Per label, share of the top 10 genes that are known markers (None: a label the marker table "
                    "does not map, or one explained by its own known markers).")
    notes: list[str] = Field(default_factory=list, description="How the labels were scored, where that matters.")
    outputs: list[OutputFile]
    seconds: float


ToolResult = Annotated[Union[AnnotationSummary, GenerationSummary, ExplanationSummary], Field(discriminator="kind")]
JobStatusName = Literal["queued", "running", "completed", "failed", "cancelled"]


class JobInfo(BaseModel):
    job_id: str
    tool: str
    status: JobStatusName
    progress: float = Field(ge=0, le=1, description="Fraction done.")
    message: str
    error: str | None = None
    seconds: float = Field(description="Time since the job was queued.")


class _CallOutput(BaseModel):
    """What a model-using tool returns: the result when it finished in time, else a job to poll."""

    status: JobStatusName
    job: JobInfo | None = Field(description="Set when the work continues in the background; poll job_status.")


class AnnotationOutput(_CallOutput):
    result: AnnotationSummary | None


class GenerationOutput(_CallOutput):
    result: GenerationSummary | None


class ExplanationOutput(_CallOutput):
    result: ExplanationSummary | None


class JobResultOutput(BaseModel):
    job: JobInfo
    result: ToolResult | None = Field(description="Set once the job completed.")
