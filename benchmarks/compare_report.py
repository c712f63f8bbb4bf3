"""The report of the Mask R-CNN comparison: ``results.json`` -> a plot and a markdown section.

``report(results, work_dir)`` writes ``WORK_DIR/latency_vs_size.png`` and
``WORK_DIR/section.md`` and, with ``write_docs``, ``docs/images/latency_vs_size.png`` and the
section "## Against Model Garden's Mask R-CNN" of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import os

import matplotlib
import numpy as np

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402

from benchmarks.compare_targets import (  # noqa: E402
    PEER,
    THROUGHPUT_BATCH,
    TRAIN_BATCH,
    parse_size,
    size_name,
    split_target,
)
from benchmarks.docs_section import replace_section  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTION = "## Against Model Garden's Mask R-CNN"
DOCS = os.path.join(ROOT, "docs", "benchmarks.md")
PLOT = os.path.join(ROOT, "docs", "images", "latency_vs_size.png")
LABEL = {
    "vanilla": "SOLO R50",
    "decoupled": "Decoupled SOLO R50",
    "vanilla_bf16": "SOLO R50, bfloat16",
    "decoupled_bf16": "Decoupled SOLO R50, bfloat16",
    "solov2": "SOLOv2 R50",
    "solov2_bf16": "SOLOv2 R50, bfloat16",
    "solov2light": "SOLOv2-Light R50",
    "solov2light_bf16": "SOLOv2-Light R50, bfloat16",
    PEER: "Mask R-CNN R50-FPN (Model Garden)",
}
# Model Garden pads to 2^max_level; SOLO to the backbone's stride 32.
PAD = {**{target: 32 for target in LABEL}, PEER: 64}


def plot(results: dict, paths: list[str]) -> None:
    """Batch-1 latency (median, bar up to p90) against input pixels, one line per model."""
    fig, ax = plt.subplots(figsize=(6, 4))
    sizes = list(results["inference"])
    for target in LABEL:
        points = [
            (s, results["inference"][s][target]["batch1"])
            for s in sizes
            if target in results["inference"][s]
        ]
        if not points:
            continue
        x = [np.prod(parse_size(s)) / 1e6 for s, _ in points]
        y = [p["median_s"] * 1e3 for _, p in points]
        up = [(p["p90_s"] - p["median_s"]) * 1e3 for _, p in points]
        ax.errorbar(x, y, yerr=[[0] * len(up), up], marker="o", capsize=3, label=LABEL[target])
    ax.set_xticks([np.prod(parse_size(s)) / 1e6 for s in sizes], sizes)
    ax.set_xlabel("input image (H x W)")
    ax.set_ylabel("batch-1 latency, ms (median; bar to p90)")
    machine = results["machine"]
    device = machine["gpu"] if machine["gpu"] != "none" else f"{machine['cores']} CPU cores"
    ax.set_title(f"SavedModel serving_default, {device}", fontsize=10)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    for path in paths:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fig.savefig(path, dpi=110)
    plt.close(fig)


def _dtype(target: str) -> str:
    return "float32" if target == PEER else split_target(target)[1]


def _ratio(ours: float, peer: float | None) -> str:
    return f"{ours / peer:.2f}" if peer else "-"


def inference_rows(results: dict, peaks: dict) -> list[str]:
    """One table row per (size, model); % of peak is of the row's own dtype's matmul peak."""
    rows = []
    for size, by_target in results["inference"].items():
        peer = by_target.get(PEER)
        h, w = parse_size(size)
        for target, r in by_target.items():
            b1, b8 = r["batch1"], r.get("batch8")
            ips = THROUGHPUT_BATCH / b8["median_s"] if b8 else float("nan")
            peer_ips = peer and peer.get("batch8") and THROUGHPUT_BATCH / peer["batch8"]["median_s"]
            rss8 = f"{r['rss_batch8_mib'] / 1024:.2f}" if b8 else "-"
            ips_text = f"{ips:.2f}" if b8 else "-"
            flops = results["exports"].get(f"{target}_{size}", {}).get("flops", 0)
            achieved = flops / b1["median_s"] / 1e9
            pad = PAD[target]
            padded = f"{-(-h // pad) * pad}x{-(-w // pad) * pad}"
            rows.append(
                f"| {LABEL[target]} | {size} ({padded}) | {b1['median_s'] * 1e3:.0f} | "
                f"{b1['p90_s'] * 1e3:.0f} | "
                f"{_ratio(b1['median_s'], peer and peer['batch1']['median_s'])} | "
                f"{ips_text} | {_ratio(ips, peer_ips) if b8 else '-'} | "
                f"{r['rss_batch1_mib'] / 1024:.2f} / {rss8} | "
                f"{flops / 1e9:.0f} | {achieved:.0f} | "
                f"{100 * achieved / peaks[_dtype(target)]:.0f}% {_dtype(target)} |"
            )
    return rows


def training_rows(results: dict) -> list[str]:
    training = results.get("training", {})
    peer = training.get(PEER)
    return [
        f"| {LABEL[t]} | {r['median_s']:.2f} | {r['p90_s']:.2f} | "
        f"{_ratio(r['median_s'], peer and peer['median_s'])} | "
        f"{r['peak_rss_mib'] / 1024:.2f} |"
        for t, r in training.items()
    ]


def flops_breakdown(results: dict) -> list[str]:
    """One line per export: the op types that hold most of its counted FLOPs."""
    lines = []
    for key, export in results["exports"].items():
        by_type = export.get("flops_by_type")
        if not by_type:
            continue
        target, size = key.rsplit("_", 1)
        top = sorted(by_type.items(), key=lambda kv: -kv[1])[:4]
        shares = ", ".join(f"{op} {100 * n / export['flops']:.0f}%" for op, n in top)
        lines.append(f"- {LABEL[target]}, {size}: {export['flops'] / 1e9:.0f} GFLOPs; {shares}")
    return lines


def _header(results: dict) -> list[str]:
    """The section's heading and the paragraph on the command, machine and software."""
    m = results["machine"]
    device = f"{m['cores']} CPU cores ({m['cpu']}), {m['memory_gib']:.0f} GiB" + (
        f", GPU {m['gpu']}" if m["gpu"] != "none" else ", no GPU"
    )
    mode = "`--quick` (512x512 only, fewer runs)" if results["quick"] else "the full run"
    return [
        SECTION,
        "",
        f"`{results['command']}` ({mode}, {results['started']} to {results.get('finished', '?')}) "
        f"on {device}; TensorFlow {m['tensorflow']}, tf-models-official "
        f"{m['tf_models_official']}; 1-minute load average {m['load_average_start'][0]:.1f} at "
        f"the start, {results.get('load_average_end', [float('nan')])[0]:.1f} at the end.",
        *(["", results["note"]] if results.get("note") else []),
    ]


def _inference_section(results: dict, peaks: dict) -> list[str]:
    """What was measured for inference, its table, the plot and the FLOPs breakdown."""
    runs = results["runs"]
    fp32 = peaks.get("float32", {}).get("gflops", float("nan"))
    return [
        "",
        "Models, all with random weights: SOLO R50 and Decoupled SOLO R50 (the "
        "default `ModelConfig`: ResNet-50, FPN, 7-conv heads, grids 40..12, 80 classes), "
        "SOLOv2 R50 (the model of `experiments/solov2_r50.flags`: torchvision ResNet-50, "
        "kernel and category towers of 4 x 512, mask features E = 256 at stride 4) and "
        "SOLOv2-Light R50 (`experiments/solov2_light_r50_448.flags`: towers of 2 x 256, E = "
        "128; measured at its test size 448x768 only, the peer beside it); exported "
        "by `export.saved_model`, post-processing inside: Matrix NMS, masks resized to the "
        "image; float32, and the same weights exported with `--compute_dtype=bfloat16`: "
        "bfloat16 convolutions under Keras' `mixed_bfloat16` policy, float32 "
        "post-processing; the SavedModels post-process one image at a time) and Model Garden's "
        "`maskrcnn_resnetfpn_coco` (ResNet-50-FPN, 91 classes, "
        "exported by `official.vision.serving.export_saved_model_lib`, `image_tensor` input, "
        "dynamic batch; its masks come out as 28 x 28 crops per box, not pasted into the "
        "image). Inference: each SavedModel's `serving_default` on a uint8 [B, H, W, 3] "
        "tensor, each model in its own worker process, calls alternated between the models "
        f"in a rotating order; batch 1: median and p90 of {runs['batch1']} calls after 2 "
        f"warm-up calls; batch {THROUGHPUT_BATCH}: images/s from the median of "
        f"{runs['batch8']} calls after 1 warm-up call, one model at a time (its own fresh "
        "worker, the others closed, so that their memory does not add up). "
        "x peer: ours / Mask R-CNN from the same run (latency: below 1 "
        "is faster; throughput: above 1 is faster). Peak RSS: the worker's `ru_maxrss` after "
        "the batch-1 calls / after the batch-8 calls (the model loaded included). GFLOPs: one "
        "batch-1 call of the serving function, counted by the TF profiler "
        "(`benchmarks/flops.py`: multiply-add = 2; ops inside while loops and dynamically "
        "shaped ops after NMS not counted); achieved = GFLOPs / batch-1 median; % peak: of "
        f"the matmul peak below in the row's dtype (float32 {fp32:.0f} GFLOP/s, bfloat16 "
        f"{peaks.get('bfloat16', {}).get('gflops', float('nan')):.0f}).",
        "",
        "| model | input (padded) | batch-1 median ms | p90 ms | x peer | "
        f"batch-{THROUGHPUT_BATCH} images/s | x peer | peak RSS GiB (b1 / b{THROUGHPUT_BATCH}) "
        "| GFLOPs / image | achieved GFLOP/s | % of peak |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *inference_rows(results, {d: p.get("gflops", float("nan")) for d, p in peaks.items()}),
        "",
        "![latency vs input size](images/latency_vs_size.png)",
        "",
        "Where the counted FLOPs of one batch-1 serving call go (op types, share of the total):",
        "",
        *flops_breakdown(results),
        "",
    ]


def _training_section(results: dict) -> list[str]:
    if not results.get("training"):
        return []
    return [
        f"Training step, batch {TRAIN_BATCH}, {size_name(results['train_size'])}, float32, "
        f"{results['runs']['train']} steps per model after 2 warm-up steps, alternated: SOLO "
        "through `train_lib.make_train_loop` + `make_replica_step` (forward, `solo_loss`, "
        "gradients, clip, SGD momentum update); Mask R-CNN through Model Garden's "
        "`MaskRCNNTask.train_step` (forward with RPN and RoI sampling, losses, gradients, "
        "SGD momentum update) on examples made by its own `maskrcnn_input.Parser`; 8 "
        "box-shaped instances per image for both. Peak RSS: the worker's `ru_maxrss`.",
        "",
        "| model | step median s | p90 s | x peer | peak RSS GiB |",
        "|---|---:|---:|---:|---:|",
        *training_rows(results),
        "",
    ]


def _machine_section(results: dict) -> list[str]:
    lines = [
        "Machine peak (`benchmarks/machine_peak.py`, best of 5 square matmuls, 2 n^3 FLOPs):",
        "",
        "| dtype | n | GFLOP/s |",
        "|---|---:|---:|",
        *[f"| {p['dtype']} | {p['n']} | {p['gflops']:.0f} |" for p in results["machine_peak"]],
    ]
    if results["errors"]:
        lines += [
            "",
            "Did not run: "
            + "; ".join(f"{k}: {v.strip().splitlines()[0]}" for k, v in results["errors"].items()),
        ]
    return lines


def markdown(results: dict) -> str:
    """The docs section of ``results``."""
    peaks = {p["dtype"]: p for p in results["machine_peak"]}
    lines = [
        *_header(results),
        *_inference_section(results, peaks),
        *_training_section(results),
        *_machine_section(results),
    ]
    return "\n".join(lines) + "\n"


def report(results: dict, work_dir: str, write_docs: bool = True) -> str:
    """Writes the plot and the section (see the module docstring); returns the section."""
    paths = [os.path.join(work_dir, "latency_vs_size.png")] + ([PLOT] if write_docs else [])
    if results["inference"]:
        plot(results, paths)
    section = markdown(results)
    with open(os.path.join(work_dir, "section.md"), "w") as f:
        f.write(section)
    if write_docs:
        replace_section(DOCS, section)
    return section
