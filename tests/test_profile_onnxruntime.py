"""benchmarks/profile_onnxruntime.py: per-node medians from ONNX Runtime's profile, grouped by
op type and by the layer role in the node's name; and a whole run on a small input."""

import importlib.util
import os

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
_spec = importlib.util.spec_from_file_location(
    "profile_onnxruntime", os.path.join(BENCHMARKS, "profile_onnxruntime.py")
)
prof = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(prof)


def _event(name, op, us):
    return {"cat": "Node", "name": f"{name}_kernel_time", "dur": us, "args": {"op_name": op}}


def test_layer_role_skips_position_components():
    assert prof.layer_role("/blocks/blocks.1/blocks.1.0/conv_pw/Conv_output_0_nchwc") == "conv_pw"
    assert prof.layer_role("/features/features.7/se/Mul") == "se"
    assert prof.layer_role("/conv_stem/Conv_output_0_nchwc") == "conv_stem"
    assert prof.layer_role("ReorderOutput_token_302") == "-"


def test_node_times_take_the_median_per_call_and_ignore_other_events():
    pw, dw = "/blocks/blocks.0/blocks.0.0/conv_pw/Conv", "/blocks/blocks.0/blocks.0.0/conv_dw/Conv"
    events = [
        # conv_pw runs twice per call (as a node inside a loop would); one call stalled
        *[_event(pw, "Conv", us) for us in (1000, 1000, 1000, 9000)],
        *[_event(dw, "Conv", us) for us in (500, 700)],
        {"cat": "Session", "name": "model_run", "dur": 10**6},
        {"cat": "Node", "name": f"{dw}_fence_before", "dur": 10**6, "args": {"op_name": "Conv"}},
    ]
    per_node = prof.node_times(events, calls=2)
    assert per_node == {(pw, "Conv"): 2.0, (dw, "Conv"): 0.6}
    by_role = prof.totals(per_node, lambda name, op: (op, prof.layer_role(name)))
    assert by_role == [(("Conv", "conv_pw"), 2.0), (("Conv", "conv_dw"), 0.6)]


def test_runs_on_a_small_input(capsys):
    assert prof.main(["--size", "64", "--batch", "1", "--calls", "2", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime" in out and "efficientnet_b0, batch 1, 64 px" in out
    roles = {line.split()[-1] for line in out.split("by op type and layer role:")[1].splitlines()[1:]}
    assert {"conv_pw", "conv_dw", "conv_pwl", "conv_stem"} <= roles
