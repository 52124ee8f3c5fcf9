"""MCP prompts: the workflows the tools are built for, as a client offers them to its user (Claude
Desktop lists them as slash commands). Each is a user message naming the tools and arguments to
use in order; `REFERENCES` lists those names so a test keeps the text true to the schemas."""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer

_ANNOTATE = """Annotate the cells in {h5ad_path} with the InstructCell tools and report what you find.

1. Call inspect_dataset on it. If it refuses a matrix counted against several genomes, pass the \
species to read as genome. If the value type or the notes say the matrix is scaled, pass layer or \
use_raw as they suggest.
2. Choose the candidates: a label set that matching_label_sets lists for the file's species and \
tissue, or cell types I name (Cell Ontology names work); with neither, leave candidates out and \
pass species and tissue, so that free answers stay within what the model learned there. If the \
tissue is one the model never learned (describe_model lists its tissues), pass the cell types I \
name as candidates, else tissue_types set to the tissue (its known types, which inspect_dataset \
lists as tissue_cell_types), and also call annotate_cells with them and by_markers="panglaodb", \
which answers from their known markers alone, and report both (the marker answers tell lineages \
apart, not subsets).
3. Call annotate_cells. Pass compare_key if an obs column already holds cell types (an author's \
annotation) and groupby if one holds clusters or samples (leiden, louvain, seurat_clusters, sample). \
If I named several samples' files, pass the others as more_samples; if I named a table of per-cell \
metadata (clusters.csv, a GEO metadata file), pass it as obs_table, and its columns can then be groupby or \
compare_key. Pass resolve_at=0.9, so that cells torn between fine types (CD4+ T subsets, say) also get \
the broader type the model is sure of, and marker_check="panglaodb", for each label's known markers.
4. Report the label counts, the mean confidence, the low-confidence and atypical cells, every note, \
each group's answer and share, the resolved counts (and each group's resolved answer), the \
agreement if you compared, and the labels marker_check does not support (weak is expected between \
labels that share their markers); show the map (the map_png output) if you can display images. If a \
note says cells look like types the candidates lack, name those types and offer to annotate again \
with them among the candidates.
5. Call explain_genes on the annotated_h5ad file annotate_cells wrote, with \
labels="instructcell_label" and max_cells_per_label=20, and list each label's top genes, saying \
which are known markers. Where two labels are easily confused (subsets that share markers, or \
many cells resolved to a broader type), call it again with versus="runner-up" and list, for each \
pair, the genes that tell the answer from its runner-up; if you compared with an author's labels, \
call it with versus set to that column to show why the answers differ where they do.

Say plainly where the model is unsure: low confidence, atypical cells, or a tissue it never learned."""

_DRUG = """Predict how the cells in {h5ad_path} respond to {drug} with the InstructCell tools.

1. Call describe_model and check that {drug} is among the drugs it learned; if not, tell me that \
its answers would rest on the drugs it did learn (an unseen drug's name does not change them) and \
ask whether to go on.
2. Call inspect_dataset on the file, then predict_drug_response with drug="{drug}"; pass groupby \
if an obs column holds samples, time points or clusters.
3. Report how many cells were called resistant and sensitive, the low-confidence and atypical \
cells, every note and each group's answer and share.
4. Call explain_genes on the annotated_h5ad file predict_drug_response wrote, with \
labels="instructcell_drug_label", drug="{drug}" and max_cells_per_label=20, and list the genes \
behind each answer."""

_GENERATE = """Generate {n} pseudo-cells of {cell_type} with the InstructCell tools, and check them.

1. Call describe_model and find {cell_type} among the generation conditions (species, tissue, \
condition); if it is not there, tell me the nearest types it lists instead of generating.
2. Call generate_cells with cell_type="{cell_type}" and n={n}, and the species, tissue or \
condition I asked for.
3. Check the cells: call annotate_cells on the h5ad file generate_cells wrote and report the share \
read as {cell_type}, and the atypical cells.
4. Report every warning and note of both calls."""

# (tool, argument) pairs the prompts name; None: the tool alone, or an output kind / field of a reply.
REFERENCES = {
    "annotate_dataset": [("inspect_dataset", "genome"), ("inspect_dataset", "layer"), ("inspect_dataset", "use_raw"),
                         ("annotate_cells", "candidates"), ("annotate_cells", "species"),
                         ("annotate_cells", "tissue"), ("annotate_cells", "compare_key"),
                         ("annotate_cells", "groupby"), ("annotate_cells", "more_samples"),
                         ("annotate_cells", "obs_table"), ("annotate_cells", "resolve_at"),
                         ("annotate_cells", "marker_check"), ("annotate_cells", "by_markers"),
                         ("annotate_cells", "tissue_types"),
                         ("describe_model", None), ("explain_genes", "labels"),
                         ("explain_genes", "max_cells_per_label"), ("explain_genes", "versus")],
    "drug_response_report": [("describe_model", None), ("inspect_dataset", None),
                             ("predict_drug_response", "drug"), ("predict_drug_response", "groupby"),
                             ("explain_genes", "labels"), ("explain_genes", "drug"),
                             ("explain_genes", "max_cells_per_label")],
    "generate_and_check": [("describe_model", None), ("generate_cells", "cell_type"), ("generate_cells", "n"),
                           ("generate_cells", "species"), ("generate_cells", "tissue"),
                           ("generate_cells", "condition"), ("annotate_cells", None)],
}


def register_prompts(server: MCPServer) -> None:
    """Add the workflow prompts to `server`."""

    @server.prompt(title="Annotate a dataset")
    def annotate_dataset(h5ad_path: str) -> str:
        """Inspect, annotate (by cluster where the file has clusters), show the map and explain the
        answers of one file."""
        return _ANNOTATE.format(h5ad_path=h5ad_path)

    @server.prompt(title="Drug response report")
    def drug_response_report(h5ad_path: str, drug: str) -> str:
        """Predict each cell's response to a drug and explain the answers."""
        return _DRUG.format(h5ad_path=h5ad_path, drug=drug)

    @server.prompt(title="Generate and check cells")
    def generate_and_check(cell_type: str, n: int = 200) -> str:
        """Generate pseudo-cells of a type, then annotate them to check they read as asked."""
        return _GENERATE.format(cell_type=cell_type, n=n)
