"""`edge export expose-embeddings`: a CCL bundle whose device computes the kernel from its own centroids file.

The CCL head's graph ends in Sub(e, centroids) -> Pow -> ReduceMean -> Mul ->
Exp, with the centroids a constant (an initializer, or one dequantised from
initializers in a quantised model). This adds the tensor e (B, C, M) as a
second graph output "embeddings" (through an Identity, so nothing else in the
graph changes), writes the centroids to centroids.npy and states both in the
manifest. A site can then move the centroids without the training stack
(`edge calibrate --adapt-centroids`). Before writing, ONNX Runtime checks on
synthetic cells and noise that the scores output is unchanged and that the
device's formula on (embeddings, centroids) gives the graph's scores.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from edge.runtime.bundle import ModelSpec, copy_model_files, derive_bundle, load_bundle, sha256_file
from edge.runtime.centroids import CENTROIDS_FILE, EMBEDDINGS, CentroidsSpec, ccl_kernel, centroids_sha256
from edge.runtime.preprocess import to_model_input
from edge.synthetic.smear import SmearConfig, render_cell_crops
from export.deployed import git_commit

CHECK_CELLS = 16   # synthetic cells, and as many noise images, on which each edited file is checked
KERNEL_TOLERANCE = 1e-5  # the device's numpy kernel against the graph's, absolute, on D in (0, 1]


class ExposeError(ValueError):
    """A model or bundle that cannot be converted; the message says why."""


def expose_embeddings(model: onnx.ModelProto, classes: int) -> tuple[onnx.ModelProto, np.ndarray, str]:
    """(a copy of `model` with the output "embeddings", its centroids (C, M) float32, the name of the
    tensor compared with them)."""
    graph = model.graph
    if any(o.name == EMBEDDINGS for o in graph.output):
        raise ExposeError(f"the model already has an output {EMBEDDINGS!r}")
    producers = {o: n for n in graph.node for o in n.output}
    initializers = {i.name: i for i in graph.initializer}
    found = []
    for node in graph.node:
        if node.op_type != "Sub" or len(node.input) != 2:
            continue
        values = [_constant(name, initializers, producers) for name in node.input]
        for k in (0, 1):
            c, other = values[k], values[1 - k]
            if other is None and c is not None and c.ndim == 2 and c.shape[0] == classes:
                found.append((node.input[1 - k], c))
    if len(found) != 1:
        raise ExposeError(f"expected one Sub of the embeddings and a constant ({classes}, M) centroid matrix "
                          f"(the CCL head), found {len(found)}")
    embedding, centroids = found[0]
    scores = graph.output[0]
    batch = scores.type.tensor_type.shape.dim[0]
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.node.append(helper.make_node("Identity", [embedding], [EMBEDDINGS], name="expose_ccl_embeddings"))
    out.graph.output.append(helper.make_tensor_value_info(
        EMBEDDINGS, onnx.TensorProto.FLOAT, [batch.dim_param or batch.dim_value or None, *centroids.shape]))
    return out, centroids.astype(np.float32), embedding


def _constant(name: str, initializers: dict, producers: dict) -> np.ndarray | None:
    """The value of a tensor that does not depend on the input: an initializer, a Constant, or a
    DequantizeLinear of such; None for anything else."""
    if name in initializers:
        return numpy_helper.to_array(initializers[name])
    node = producers.get(name)
    if node is None:
        return None
    if node.op_type == "Constant":
        return numpy_helper.to_array(node.attribute[0].t) if node.attribute[0].name == "value" else None
    if node.op_type != "DequantizeLinear":
        return None
    parts = [_constant(i, initializers, producers) for i in node.input]
    if any(p is None for p in parts):
        return None
    x, scale = parts[0].astype(np.float32), parts[1].astype(np.float32)
    zero = parts[2].astype(np.float32) if len(parts) > 2 else np.float32(0)
    if scale.ndim == 1 and x.ndim > 1:  # per-axis
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1) % x.ndim
        shape = [1] * x.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), np.reshape(zero, shape) if np.ndim(zero) else zero
    return (x - zero) * scale


def check_exposed(original: onnx.ModelProto, exposed: onnx.ModelProto, centroids: np.ndarray,
                  sigma: float, spec: ModelSpec) -> dict:
    """Run both models in ONNX Runtime; ExposeError unless the scores are bit-identical and the
    device's kernel on the new outputs gives them. Returns the figures."""
    x = _check_inputs(spec)
    before = _run(original, spec, x)[spec.outputs[0]]
    after = _run(exposed, spec, x)
    change = float(np.abs(after[spec.outputs[0]] - before).max())
    if not np.array_equal(after[spec.outputs[0]], before):
        raise ExposeError(f"exposing the embeddings changed the scores (max {change:.3g}); this is a bug")
    kernel = float(np.abs(ccl_kernel(after[EMBEDDINGS], centroids, sigma) - before).max())
    if kernel > KERNEL_TOLERANCE:
        raise ExposeError(f"the CCL kernel of the exposed embeddings and centroids differs from the graph's "
                          f"scores by {kernel:.3g} (sigma {sigma}): the graph is not the CCL head this expects")
    return {"inputs": len(x), "max_abs_score_change": change, "max_abs_kernel_difference": kernel,
            "max_score": float(before.max())}


def _check_inputs(spec: ModelSpec) -> np.ndarray:
    size = spec.input_hw[0]
    cells = render_cell_crops(np.arange(CHECK_CELLS) % len(SmearConfig().classes), size, seed=0)
    noise = np.random.default_rng(0).integers(0, 256, (CHECK_CELLS, size, size, 3), dtype=np.uint8)
    return to_model_input(np.concatenate([cells, noise]), spec.input_hw, spec.normalisation)


def _run(model: onnx.ModelProto, spec: ModelSpec, x: np.ndarray) -> dict[str, np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    step = spec.input_shape[0] if spec.input_shape[0] > 0 else len(x)
    parts = [session.run(names, {spec.input_name: x[i:i + step]}) for i in range(0, len(x), step)]
    return {n: np.concatenate([p[k] for p in parts]) for k, n in enumerate(names)}


def expose_bundle_embeddings(bundle_path: Path, out: Path) -> dict:
    """Write bundle `out`: `bundle_path`'s with the embeddings exposed and the centroids in a file
    (see the module docstring). The thresholds carry over, bound to the new classifier file and the
    centroids, since the scores are checked unchanged. Returns the provenance note."""
    bundle = load_bundle(bundle_path)
    if bundle.classifier_head != "ccl":
        raise ExposeError(f"only a CCL head has centroids; this bundle's head is {bundle.classifier_head}")
    if bundle.ccl_centroids is not None:
        raise ExposeError(f"{bundle_path} already states ccl_centroids")
    spec = bundle.classifier
    with tempfile.TemporaryDirectory(prefix="expose-") as tmp:
        tmp = Path(tmp)
        copy_model_files(bundle, bundle.detector, tmp)
        checks, centroids, tensor = {}, None, None
        for file in spec.files:
            original = onnx.load(str(bundle.root / file))
            exposed, found, tensor = expose_embeddings(original, len(bundle.class_names))
            if centroids is not None and not np.array_equal(found, centroids):
                raise ExposeError(f"{file} holds other centroids than {spec.file}")
            centroids = found
            checks[file] = check_exposed(original, exposed, found, bundle.ccl_sigma, spec)
            (tmp / file).parent.mkdir(parents=True, exist_ok=True)
            onnx.save(exposed, str(tmp / file))
        source = replace(bundle, root=tmp, classifier=replace(spec, outputs=(spec.outputs[0], EMBEDDINGS)))
        note = {"script": "edge export expose-embeddings", "date": time.strftime("%Y-%m-%d"),
                "code_commit": git_commit(), "source_bundle": str(bundle.root),
                "source_manifest_sha256": bundle.manifest_sha256, "embedding_tensor": tensor,
                "centroids_shape": list(centroids.shape), "checks": checks}
        thresholds = replace(bundle.thresholds, classifier_sha256=sha256_file(tmp / spec.file),
                             centroids_sha256=centroids_sha256(centroids))
        derive_bundle(source, Path(out), "ccl_centroids", note, centroids=centroids, thresholds=thresholds,
                      ccl_centroids=CentroidsSpec(CENTROIDS_FILE, "0" * 64))
    return note
