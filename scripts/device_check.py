"""One prepared run on a CUDA machine (not part of `make test`).

1. Saves small archives made on CUDA (parameters on the GPU, and a trace that
   baked ``cuda:0`` into the graph) for the CPU test suite: tests/data/.
2. Runs the engine with --device cuda on test models: same bits as native?
3. Sweeps real torchvision / timm / transformers architectures, traced and
   scripted, through `Session.run_and_compare()` on the CPU and on CUDA.

Writes $OUT/results.json and the archives to $OUT.
"""

import json
import os
import sys
import time
import traceback
import warnings

warnings.simplefilter("ignore")
sys.path.insert(0, os.getcwd())
sys.path.insert(0, os.path.join(os.getcwd(), "tests"))

import torch  # noqa: E402

OUT = os.environ.get("OUT", "/tmp/out")
os.makedirs(OUT, exist_ok=True)
torch.set_num_threads(8)
results = {"torch": torch.__version__, "cuda": torch.cuda.is_available(), "fixtures": {}, "device_runs": [], "sweep": []}


def save_results():
    with open(os.path.join(OUT, "results.json"), "w") as f:
        json.dump(results, f, indent=1, default=str)


from engine import Session  # noqa: E402
import models as M  # noqa: E402
from fixtures_cuda import make_cuda_fixtures  # noqa: E402

# 1. fixtures
try:
    results["fixtures"] = make_cuda_fixtures(OUT)
except Exception:
    results["fixtures"] = {"error": traceback.format_exc()[-2000:]}
save_results()


def check(name, path, device, inputs=None, inline=False):
    row = {"name": name, "device": device, "inline": inline}
    t0 = time.time()
    try:
        s = Session(path, device=device, inline=inline)
        s.start(values=inputs)
        r = s.run_and_compare()
        row.update(identical=r.identical, max_abs_diff=r.max_abs_diff, nodes=r.nodes_executed,
                   error=r.error.message if r.error else None, native_error=r.native_error,
                   engine_s=r.engine_seconds, native_s=r.native_seconds, methods=r.methods)
    except Exception as exc:
        row["exception"] = f"{type(exc).__name__}: {str(exc)[:500]}"
        row["tb"] = traceback.format_exc()[-1500:]
    row["wall_s"] = round(time.time() - t0, 2)
    print(json.dumps({k: v for k, v in row.items() if k != "tb"}), flush=True)
    return row


# 2. engine on CUDA with test models
tmp = "/tmp/dev"
os.makedirs(tmp, exist_ok=True)
if torch.cuda.is_available():
    for name, mk, args, mode in [
        ("convnet", lambda: M.randomize_bn(M.ConvNet()), (torch.randn(2, 3, 16, 16),), "trace"),
        ("lstm", M.LSTMNet, (torch.randn(2, 5, 6),), "script"),
        ("transformer", M.TransformerNet, (torch.randn(2, 5, 16),), "trace"),
        ("control", M.ControlFlow, (torch.randn(2, 4), 3, "sum"), "script"),
    ]:
        m = mk().eval()
        p = os.path.join(tmp, f"{name}.pt")
        ts = torch.jit.trace(m, args, check_trace=False) if mode == "trace" else torch.jit.script(m)
        torch.jit.save(ts, p)
        results["device_runs"].append(check(name, p, "cuda:0", tuple(a.cuda() if isinstance(a, torch.Tensor) else a for a in args)))
        save_results()

# 3. real architectures
def sweep_item(name, build, example, modes=("trace", "script"), devices=("cpu",)):
    for mode in modes:
        try:
            model = build().eval()
            with torch.no_grad():
                ts = torch.jit.trace(model, example, check_trace=False, strict=False) if mode == "trace" else torch.jit.script(model)
            p = os.path.join(tmp, f"{name}_{mode}.pt")
            torch.jit.save(ts, p)
        except Exception as exc:
            results["sweep"].append({"name": name, "mode": mode, "export_failed": f"{type(exc).__name__}: {str(exc)[:300]}"})
            continue
        for dev in devices:
            def move(e):
                if isinstance(e, torch.Tensor):
                    return e.to(dev)
                if isinstance(e, list):
                    return [move(v) for v in e]
                return e
            inputs = tuple(move(e) for e in example)
            row = check(f"{name}_{mode}", p, dev, inputs)
            row["size_mb"] = round(os.path.getsize(p) / 1e6, 1)
            results["sweep"].append(row)
            save_results()
            if (row.get("exception") or row.get("error") or row.get("identical") is False) and row["size_mb"] < 15:
                kept = [f for f in os.listdir(OUT) if f.endswith(".pt")]
                if len(kept) < 7:
                    import shutil
                    shutil.copy(p, os.path.join(OUT, f"fail_{name}_{mode}.pt"))


img = (torch.randn(1, 3, 224, 224),)
try:
    import torchvision.models as tvm
    for name, fn in [("resnet18", tvm.resnet18), ("mobilenet_v3_small", tvm.mobilenet_v3_small),
                     ("efficientnet_b0", tvm.efficientnet_b0), ("densenet121", tvm.densenet121),
                     ("googlenet", lambda: tvm.googlenet(aux_logits=False, init_weights=True)),
                     ("inception_v3", lambda: tvm.inception_v3(aux_logits=False, init_weights=True)),
                     ("convnext_tiny", tvm.convnext_tiny), ("vit_b_16", tvm.vit_b_16),
                     ("swin_t", tvm.swin_t), ("regnet_y_400mf", tvm.regnet_y_400mf),
                     ("shufflenet_v2_x1_0", tvm.shufflenet_v2_x1_0), ("squeezenet1_0", tvm.squeezenet1_0)]:
        ex = (torch.randn(1, 3, 299, 299),) if name == "inception_v3" else img
        sweep_item(name, fn, ex, devices=("cpu", "cuda:0") if name in ("resnet18", "vit_b_16") else ("cpu",))
    from torchvision.models import detection as det
    for name, fn in [("fasterrcnn_mobilenet_320", lambda: det.fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None)),
                     ("maskrcnn_resnet50", lambda: det.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)),
                     ("retinanet_resnet50", lambda: det.retinanet_resnet50_fpn(weights=None, weights_backbone=None)),
                     ("ssdlite", lambda: det.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None))]:
        sweep_item(name, fn, ([torch.rand(3, 320, 320)],), modes=("script",),
                   devices=("cpu", "cuda:0") if name == "fasterrcnn_mobilenet_320" else ("cpu",))
    from torchvision.models import segmentation as seg
    sweep_item("deeplabv3_mobilenet", lambda: seg.deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, aux_loss=False), img)
except Exception:
    results["sweep"].append({"torchvision_error": traceback.format_exc()[-1500:]})
save_results()

try:
    import timm
    for name in ["resnet50", "convnext_atto", "vit_tiny_patch16_224", "efficientnet_b0", "mobilevitv2_050", "regnetx_002", "deit_tiny_patch16_224", "levit_128s"]:
        sweep_item("timm_" + name, lambda n=name: timm.create_model(n, pretrained=False), img)
except Exception:
    results["sweep"].append({"timm_error": traceback.format_exc()[-1500:]})
save_results()

try:
    import transformers as tf
    ids = torch.randint(0, 1000, (1, 16))
    for name, cfg_cls, model_cls in [
        ("bert", tf.BertConfig, tf.BertModel), ("gpt2", tf.GPT2Config, tf.GPT2Model),
        ("t5_encoder", tf.T5Config, tf.T5EncoderModel), ("distilbert", tf.DistilBertConfig, tf.DistilBertModel),
    ]:
        def build(cfg_cls=cfg_cls, model_cls=model_cls):
            cfg = cfg_cls(vocab_size=1000, hidden_size=64, d_model=64, num_hidden_layers=2, num_layers=2,
                          num_attention_heads=4, num_heads=4, intermediate_size=128, d_ff=128, n_embd=64,
                          n_layer=2, n_head=4, dim=64, n_heads=4, hidden_dim=128, torchscript=True, return_dict=False)
            return model_cls(cfg)
        sweep_item("hf_" + name, build, (ids,), modes=("trace",))
except Exception:
    results["sweep"].append({"transformers_error": traceback.format_exc()[-1500:]})
save_results()
# diff and lint on real architectures: the Python model beside its export
results["diff_lint"] = []
for name in ("resnet18", "mobilenet_v3_small", "vit_b_16", "convnext_tiny"):
    for mode in ("trace", "script"):
        p = os.path.join(tmp, f"{name}_{mode}.pt")
        if not os.path.exists(p):
            continue
        row = {"name": name, "mode": mode}
        try:
            from engine.check.lint import lint_session
            s = Session(p)
            s.start(values=img)
            res = s.diff(f"torchvision.models:{name}")
            row.update(coverage=round(res.report.coverage, 4), outputs_close=res.report.outputs_close,
                       first=res.report.first.record.node.id if res.report.first else None,
                       findings=[(f.kind, f.line) for f in lint_session(Session(p)).findings])
        except Exception as exc:
            row["exception"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        print(json.dumps(row), flush=True)
        results["diff_lint"].append(row)
        save_results()
print("DONE", flush=True)
