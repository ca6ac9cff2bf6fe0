"""The query x gallery retrieval cross matrix of the heterogeneous runs of one seed (``hetero.sh``).

Queries: the test split (4,000 utterances); gallery: the updated training split (1,500). Each model embeds
with its ``embed`` (the representation before the classifier); top-1 (1-NN, cosine) and mAP per pair. Compute:
parameters of each model and measured encode time per query (200 test queries one at a time, as on a device,
median of 3 passes, 1 CPU thread). Usage: ``cross_matrix.py RUN_ROOT MASSIVE_DIR [MODEL ...]`` (run folders under
RUN_ROOT; default ``large small small_bct``, ``large`` first: the gallery model the others are judged against;
writes cross_matrix.json).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from trustml.data.massive import MassiveConfig, MassiveDataModule
from trustml.methods.old_model import embed_split
from trustml.metrics.compatibility import count_parameters, encode_seconds_per_query, retrieval_cross_matrix
from trustml.run_record import load_model_from_run

torch.set_num_threads(1)


def main(root: Path, data_dir: str, names: list[str]) -> None:
    models = {name: load_model_from_run(root / name)[0] for name in names}
    data = MassiveDataModule(MassiveConfig(path=data_dir, stage="updated"))
    data.setup()
    data.map_inputs(models[names[0]].featurize)  # one tokenizer for all three (checked by method=bct)
    query, gallery = data.splits["test"], data.splits["train"]
    device = torch.device("cpu")
    queries = {n: embed_split(m.embed, query, 256, device) for n, m in models.items()}
    galleries = {n: embed_split(m.embed, gallery, 256, device) for n, m in models.items()}
    singles = [{k: v[i : i + 1] for k, v in query.inputs.items()} for i in range(min(200, len(query)))]
    seconds = {n: encode_seconds_per_query(m.embed, singles) for n, m in models.items()}
    params = {n: count_parameters(m) for n, m in models.items()}
    matrix = retrieval_cross_matrix(
        queries, galleries, query.labels, gallery.labels, parameters=params, seconds_per_query=seconds
    )
    (root / "cross_matrix.json").write_text(json.dumps(matrix.to_dict(), indent=2) + "\n")
    print(matrix.to_markdown())
    for q in names[1:]:
        ratio = matrix.compute_ratio(q, "large")
        print(
            f"- {q} queries vs large gallery: top-1 {100 * matrix.top1[q]['large']:.2f}% vs {q} alone "
            f"{100 * matrix.top1[q][q]:.2f}% -> {'compatible' if matrix.compatible(q, 'large') else 'not compatible'}; "
            f"large / small: {ratio['parameters']:.2f}x parameters, {ratio['encode_time']:.2f}x encode time"
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3:] or ["large", "small", "small_bct"])
