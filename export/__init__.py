"""Export for serving (installed as `flax_effnet.export`): any model of the library as an ONNX
graph (through jax2onnx) or a `jax.export` StableHLO artifact, with the preprocessing and
class names carried along, checked against the Flax model in the same call.

    from flax_effnet import load_pretrained
    from flax_effnet.export import to_onnx, to_stablehlo
    model, variables = load_pretrained("b0_flax")
    onnx_model = to_onnx(model, variables, input_size=224)        # onnx.ModelProto, NCHW input
    exported = to_stablehlo(model, variables, input_size=224)     # jax.export.Exported, NHWC

`export_pretrained(DIR, OUT, to=...)` is what the `export_efficientnet` command runs: load,
export, write to a temporary name, verify the written file, rename. ONNX needs the `export`
extra and jax2onnx (see README "Serving"); StableHLO needs nothing beyond jax.
"""

from flax_effnet.export.api import ExportResult, export_pretrained, verify_tolerance
from flax_effnet.export.errors import ExportError, OutputPathError, VerificationError
from flax_effnet.export.graph import LAYOUTS, serving_function, serving_metadata
from flax_effnet.export.onnx_format import load_onnx_metadata, run_onnx, to_onnx
from flax_effnet.export.stablehlo import load_stablehlo, run_stablehlo, to_stablehlo

__all__ = [
    "LAYOUTS",
    "ExportError",
    "ExportResult",
    "OutputPathError",
    "VerificationError",
    "export_pretrained",
    "load_onnx_metadata",
    "load_stablehlo",
    "run_onnx",
    "run_stablehlo",
    "serving_function",
    "serving_metadata",
    "to_onnx",
    "to_stablehlo",
    "verify_tolerance",
]
