#!/usr/bin/env python
r"""Exact k-NN search speed on real Hummingbird features: faiss ``IndexFlatIP`` vs torch fp32 vs ``torch_bf16``.

Run by hand; not a test. The features are extracted once with a real backbone on CamVid (``--train_images``
training images × ``--passes`` augmented passes as the memory bank, ``--val_images`` val images as queries, at
``--input_size``), saved to ``--features`` and reused by later runs. The memory bank is built as Hummingbird
builds it (every labelled patch, unit norm), the queries are the val patches (unit norm). Each backend then
searches the same queries back to back in this one process, one image's patches per call as Hummingbird does
(``--repeats`` rounds, backends interleaved, the best wall time kept), so the ratios hold even when other work
shares the CPU; it prints per backend the seconds (wall, and the process's CPU), the speed-up over faiss, whether
its neighbour sets equal exact fp32 search's (rows whose ``k``-th and ``(k+1)``-th exact similarities differ
by more than ``--tie_tol``), the largest similarity difference, for ``torch_bf16`` the keys re-scored per
query (mean / max), and with ``--miou`` each backend's Hummingbird mIoU on the same features::

    OMP_NUM_THREADS=2 python benchmarks/knn_speed.py \
        --model ../shared/models/dinov2-small-imgfocus --data_dir ../shared/datasets/camvid \
        --features /work/bench/knn_feats.pt --miou
    # the whole training split, ~1.02 M keys as a full CamVid bank at 448 x 616 (~20 min of features on 2 cores)
    OMP_NUM_THREADS=2 python benchmarks/knn_speed.py --train_images 367 \
        --features /work/bench/knn_feats_full.pt --queries 5632 --backends faiss torch_bf16

With ``--json PATH`` the figures are also written as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from paka_hf.evaluation import CamVid, DenseFeatures, HummingbirdConfig, build_memory_bank  # noqa: E402
from paka_hf.evaluation.features import extract_features  # noqa: E402
from paka_hf.evaluation.hummingbird import _query_patches, hummingbird_retrieval  # noqa: E402
from paka_hf.evaluation.knn import TorchBf16Index, TorchFlatIndex, build_knn_index  # noqa: E402


def parse_size(text: str) -> tuple[int, int]:
    """``"448,616"`` → ``(448, 616)``, ``"448"`` → ``(448, 448)``."""
    sides = [int(v) for v in text.split(",")]
    return (sides[0], sides[0]) if len(sides) == 1 else (sides[0], sides[1])


def load_or_extract(args: argparse.Namespace) -> tuple[DenseFeatures, DenseFeatures]:
    """The (train, val) features saved at ``args.features``, extracted and saved there first if absent."""
    if args.features.exists():
        saved = torch.load(args.features, weights_only=False)
        return DenseFeatures(**saved["train"]), DenseFeatures(**saved["val"])
    from paka_hf.modeling.backbones import PatchBackbone

    backbone = PatchBackbone.from_pretrained(args.model).eval()
    size = parse_size(args.input_size)
    common = {"input_size": size, "batch_size": 8, "progress": True}
    train = extract_features(
        backbone,
        CamVid(args.data_dir, "train"),
        augment=True,
        passes=args.passes,
        max_images=args.train_images,
        desc="features train",
        **common,
    )
    val = extract_features(
        backbone, CamVid(args.data_dir, "val"), max_images=args.val_images, desc="features val", **common
    )
    args.features.parent.mkdir(parents=True, exist_ok=True)
    fields = ("features", "masks", "patch_size", "num_classes", "ignore_index")
    torch.save(
        {name: {f: getattr(d, f) for f in fields} for name, d in (("train", train), ("val", val))}, args.features
    )
    return train, val


def search_per_image(index, queries: torch.Tensor, per_call: int, k: int):
    """Search ``queries`` ``per_call`` at a time (Hummingbird searches one image's patches per call).

    Returns:
        ``(similarities, indices, wall seconds, CPU seconds of the process)``.
    """
    sims, idx = [], []
    start, cpu = time.perf_counter(), time.process_time()
    for s in range(0, queries.shape[0], per_call):
        a, b = index.search(queries[s : s + per_call], k)
        sims.append(a)
        idx.append(b)
    return torch.cat(sims), torch.cat(idx), time.perf_counter() - start, time.process_time() - cpu


def same_sets(found: torch.Tensor, exact_idx: torch.Tensor, exact_sims: torch.Tensor, k: int, tol: float):
    """``(rows whose k neighbours are exact fp32 search's set, rows compared)``: rows whose k-th and (k+1)-th
    exact similarities differ by more than ``tol`` (elsewhere a tie may resolve either way)."""
    untied = (exact_sims[:, k - 1] - exact_sims[:, k]) > tol
    found_sorted = found[untied].sort(1).values
    exact_sorted = exact_idx[untied, :k].sort(1).values
    return int((found_sorted == exact_sorted).all(1).sum()), int(untied.sum())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="../shared/models/dinov2-small-imgfocus")
    p.add_argument("--data_dir", default="../shared/datasets/camvid")
    p.add_argument("--features", type=Path, default=Path("/work/bench/knn_feats.pt"))
    p.add_argument("--input_size", default="448,616")
    p.add_argument("--train_images", type=int, default=100)
    p.add_argument("--passes", type=int, default=2)
    p.add_argument("--val_images", type=int, default=20)
    p.add_argument("--extract_only", action="store_true", help="extract and save the features, search nothing")
    p.add_argument("--queries", type=int, default=None, help="search only the first N query patches")
    p.add_argument("--k", type=int, default=30)
    p.add_argument("--repeats", type=int, default=2, help="timed rounds (backends interleaved); the best counts")
    p.add_argument("--backends", nargs="+", default=["faiss", "torch", "torch_bf16"])
    p.add_argument("--tie_tol", type=float, default=1e-5)
    p.add_argument("--miou", action="store_true", help="also run Hummingbird with each backend on these features")
    p.add_argument("--threads", type=int, default=None, help="torch and faiss threads (default: torch's)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
        try:
            import faiss  # type: ignore[import-not-found]

            faiss.omp_set_num_threads(args.threads)
        except ImportError:
            pass
    train, val = load_or_extract(args)
    print(f"train {tuple(train.features.shape)}, val {tuple(val.features.shape)}")
    if args.extract_only:
        return
    keys, _ = build_memory_bank(train)
    queries = _query_patches(val.features)[: args.queries]
    per_call = val.features.shape[2] * val.features.shape[3]  # one image's patches, as Hummingbird searches
    print(
        f"memory bank {keys.shape[0]:,} keys, {queries.shape[0]:,} queries, k={args.k}, {torch.get_num_threads()} threads"
        f", load average {os.getloadavg()[0]:.1f}"
    )

    indexes, report = (
        {},
        {"keys": keys.shape[0], "queries": queries.shape[0], "k": args.k, "threads": torch.get_num_threads()},
    )
    for backend in args.backends:
        start = time.perf_counter()
        indexes[backend] = build_knn_index(keys, backend)
        report[backend] = {"build_s": round(time.perf_counter() - start, 2), "search_s": []}
    exact_sims, exact_idx, exact_s, _ = search_per_image(TorchFlatIndex(keys), queries, per_call, args.k + 1)
    print(f"reference: exact fp32 torch search, {exact_s:.1f} s")
    for _ in range(args.repeats):
        for backend, index in indexes.items():
            sims, idx, seconds, cpu = search_per_image(index, queries, per_call, args.k)
            report[backend]["search_s"].append(round(seconds, 2))
            report[backend].setdefault("cpu_s", []).append(round(cpu, 2))
            same, compared = same_sets(idx, exact_idx, exact_sims, args.k, args.tie_tol)
            report[backend].update(
                same_sets=same,
                rows_compared=compared,
                max_similarity_error=float((sims - exact_sims[:, : args.k]).abs().max()),
            )
    base = min(report["faiss"]["search_s"]) if "faiss" in indexes else None
    for backend, index in indexes.items():
        entry = report[backend]
        best = min(entry["search_s"])
        entry["best_s"] = best
        line = f"{backend:>11}: {best:7.2f} s (rounds {entry['search_s']}, CPU {entry['cpu_s']}, build {entry['build_s']} s)"
        if base is not None:
            entry["speedup_vs_faiss"] = round(base / best, 2)
            line += f", {base / best:.2f}x faiss"
        line += f"; same neighbour sets {entry['same_sets']}/{entry['rows_compared']}"
        line += f", max |sim - exact| {entry['max_similarity_error']:.1e}"
        if isinstance(index, TorchBf16Index):
            entry["candidates_mean"] = round(index.candidates / index.queries_searched, 1)
            entry["candidates_max"] = index.max_candidates
            line += f"; re-scored per query: mean {entry['candidates_mean']}, max {entry['candidates_max']}"
        print(line, flush=True)
    if args.miou:
        for backend in indexes:
            scores, _, _ = hummingbird_retrieval(train, val, HummingbirdConfig(backend=backend), progress=False)
            report[backend]["miou"] = scores.mean_iou
            print(f"{backend:>11}: Hummingbird mIoU {scores.mean_iou:.4f}", flush=True)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
