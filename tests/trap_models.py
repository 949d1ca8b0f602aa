"""Patterns torch.jit.trace freezes silently: the lint trap suite.

Each trap's ``LINE`` names the line lint must report (matched by text, so
edits above do not break the tests).
"""

from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


class DataBranch(nn.Module):
    LINE = "if x.mean() > 0:"

    def forward(self, x):
        y = x * 3
        if x.mean() > 0:
            y = y + 1
        else:
            y = y - 1
        return y.relu()


class SizeLoop(nn.Module):
    LINE = "for i in range(x.size(0)):"

    def forward(self, x):
        out = torch.zeros_like(x[0])
        for i in range(x.size(0)):
            out = out + x[i] * 2
        return out


class ItemScalar(nn.Module):
    LINE = "k = int(x.abs().max().item())"

    def forward(self, x):
        k = int(x.abs().max().item())
        return x * k


class TrainingFlag(nn.Module):
    LINE = "if self.training:"

    def forward(self, x):
        if self.training:
            x = F.dropout(x, 0.5)
        return x + 1


class DimBranch(nn.Module):
    LINE = "if x.dim() == 2:"

    def forward(self, x):
        if x.dim() == 2:
            x = x.unsqueeze(0)
        return x.sum(1)


class ListLoop(nn.Module):
    LINE = "for t in xs:"

    def forward(self, xs: List[torch.Tensor]):
        acc = xs[0] * 0
        for t in xs:
            acc = acc + t.tanh()
        return acc


class NonzeroCount(nn.Module):
    LINE = "n = len(idx)"

    def forward(self, x):
        idx = (x > 0).nonzero()
        n = len(idx)
        return torch.ones(n, 2) * x.sum()


class WhileNorm(nn.Module):
    LINE = "while x.norm() > 1:"

    def forward(self, x):
        while x.norm() > 1:
            x = x / 2
        return x


class LenList(nn.Module):
    LINE = "if len(xs) > 2:"

    def forward(self, xs: List[torch.Tensor]):
        y = xs[0] + xs[1]
        if len(xs) > 2:
            y = y + xs[2]
        return y


class Pad(nn.Module):
    LINE = "if x.size(-1) % 2 == 1:"

    def forward(self, x):
        if x.size(-1) % 2 == 1:
            x = F.pad(x, (0, 1))
        return x * 2


class TwoPads(nn.Module):
    """One shape-dependent submodule class, two instances seeing different shapes."""

    def __init__(self):
        super().__init__()
        self.odd = Pad()
        self.even = Pad()

    def forward(self, a, b):
        return self.odd(a).sum() + self.even(b).sum()


class ShapeArith(nn.Module):
    LINE = "return x.reshape(x.shape[0], int(half), 2)"

    def forward(self, x):
        half = x.shape[1] * 1.0 / 2
        return x.reshape(x.shape[0], int(half), 2)


class HeightBranch(nn.Module):
    """A branch on a dimension read into a local first (torchvision's RAFT ``grid_sample``)."""

    LINE = "if h > 1:"

    def forward(self, x):
        h, w = x.shape[-2:]
        y = x / (w - 1)
        if h > 1:
            y = y * 2 / (h - 1) - 1
        return y


TRAPS = {
    "frozen-branch": (DataBranch, (torch.ones(2, 3),)),
    "unrolled-loop": (SizeLoop, (torch.randn(3, 4),)),
    "baked-scalar": (ItemScalar, (torch.full((3,), 2.5),)),
    "python-state": (TrainingFlag, (torch.randn(3),)),
    "dim-branch": (DimBranch, (torch.randn(3, 4),)),
    "list-loop": (ListLoop, ([torch.randn(2), torch.randn(2), torch.randn(2)],)),
    "nonzero-count": (NonzeroCount, (torch.tensor([1.0, -1.0, 2.0]),)),
    "while-loop": (WhileNorm, (torch.full((4,), 3.0),)),
    "len-list": (LenList, ([torch.randn(2), torch.randn(2), torch.randn(2)],)),
    "shape-arith": (ShapeArith, (torch.randn(2, 6),)),
    "shape-branch": (HeightBranch, (torch.randn(1, 4, 5),)),
}


def _rescale(b, h: float, w: float):
    return b * h / w + b * w / h  # the same ops twice on one line, from one call


class PostprocessLoop(nn.Module):
    """Detection-style post-processing: a loop over the images whose body calls a helper
    and spans several lines (its ops come out of line order)."""

    LINE = "for boxes, size in zip(boxes_list, sizes):"

    def forward(self, boxes_list: List[torch.Tensor]):
        sizes = [(2.0, 3.0) for _ in boxes_list]
        out = []
        for boxes, size in zip(boxes_list, sizes):
            scaled = torch.cat(
                [_rescale(boxes[:, :2], size[0], size[1]),
                 _rescale(boxes[:, 2:], size[0], size[1])],
                dim=1,
            )
            out.append(scaled.shape[-2:][0] * scaled)
        return torch.stack(out)


class WrittenIndex(nn.Module):
    """Box coordinates by index: the 3 is written in the code, not read from a shape."""

    def forward(self, boxes):
        return (boxes[:, 3] - boxes[:, 1]) * (boxes[:, 2] - boxes[:, 0])


class Configured(nn.Module):
    """Branches a trace keeps right (types, an int argument, a module list's index, a side the
    trace never entered) beside one it freezes (on tensor data)."""

    LINE = "if x.sum() > 0:"

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])

    def pick(self, x, idx: int):
        if idx < 0:
            idx += len(self.blocks)
        out = x
        for i, block in enumerate(self.blocks):
            if i == idx:
                out = block(x)
        return out

    def forward(self, x, mask: Optional[torch.Tensor] = None):
        if mask is not None:
            x = x * mask
            if mask.sum() > 2:
                x = x * 2
        if not x.is_floating_point():
            x = x.float()
        y = self.pick(x, -1)
        if x.sum() > 0:
            y = y + 1
        return y


class Gate(nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x * 2
        return x


class TwoGates(nn.Module):
    """One block used twice: its frozen line is one finding per instance, shown once."""

    def __init__(self):
        super().__init__()
        self.first = Gate()
        self.second = Gate()

    def forward(self, x):
        return self.second(self.first(x))


class TransformersStyle(nn.Module):
    """Tests as Hugging Face models write them: on optional arguments, on flags, on the
    device, on is_tracing(); and one on data."""

    LINE = "if x.mean() > 0:"

    def forward(self, x, enc: Optional[torch.Tensor] = None, output_attentions: Optional[bool] = False):
        is_cross = enc is not None
        h = enc if is_cross else x
        if output_attentions or enc is not None:
            h = h * 3
        if x.device.type == "cuda" and enc is not None:
            h = h.contiguous()
        is_tracing = torch.jit.is_tracing()
        if not is_tracing and torch.all(x == 1):
            h = h + 0
        if x.mean() > 0:
            h = h * 2
        return h


class Chain(nn.Sequential):
    """``for module in self``: a Sequential that passes a list along."""

    def forward(self, xs: List[torch.Tensor]) -> List[torch.Tensor]:
        for module in self:
            xs = module(xs)
        return xs


class Fuse(nn.Module):
    """HRNet's fuse layers: a loop over a module list nested in another; then a loop on data."""

    LINE = "for i in range(int(xs[0].abs().sum() > 0) + 1):"

    def __init__(self):
        super().__init__()
        self.fuse_layers = nn.ModuleList([nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)]) for _ in range(2)])

    def forward(self, xs: List[torch.Tensor]) -> List[torch.Tensor]:
        out = []
        for i, fuse_outer in enumerate(self.fuse_layers):
            y = None
            for j, f in enumerate(fuse_outer):
                y = f(xs[j]) if y is None else y + f(xs[j])
            out.append(y)
        for i in range(int(xs[0].abs().sum() > 0) + 1):
            out[0] = out[0] * 2
        return out


class Tail(nn.Module):
    """RegNet's ``for block in self.children()`` and a ModuleDict's items."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.heads = nn.ModuleDict({"x": nn.Linear(4, 4), "y": nn.Linear(4, 4)})

    def forward(self, x):
        for block in self.children():
            if isinstance(block, nn.Linear):
                x = block(x)
        for _name, head in self.heads.items():
            x = head(x)
        return x


class FuseNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stages = Chain(Fuse(), Fuse())
        self.tail = Tail()

    def forward(self, a, b):
        xs = self.stages([a, b])
        return self.tail(xs[0])


MODE_EAGER = "eager"


class ConfigTests(nn.Module):
    """What Hugging Face models test besides data: attributes present, flag defaults,
    locals set from the configuration, a check that raises, module-list indices; a rank
    test (low); and one branch on data."""

    LINE = "if h.mean() > 0:"
    RANK = "if mask.dim() == 3:"

    def __init__(self):
        super().__init__()
        self.impl = "sdpa"
        self.upcast = False
        self.projs = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])
        self.norms = nn.ModuleList([nn.LayerNorm(4), nn.LayerNorm(4)])

    def post(self, h, residual=True, output_attentions=False):
        if residual:
            h = h + 1
        if output_attentions:
            h = h * 0
        return h

    def forward(self, x, mask: Optional[torch.Tensor] = None, head_mask: Optional[torch.Tensor] = None):
        if len(x.shape) > 5:
            raise ValueError("at most 5 dims")
        using_eager = self.impl == MODE_EAGER
        use_fast = self.impl == "sdpa" and head_mask is None
        if using_eager and self.upcast:
            x = x.double()
        if use_fast:
            x = x * 2
        if hasattr(self, "scale"):
            x = x * 3
        h = x
        for idx, pair in enumerate(zip(self.projs, self.norms)):
            proj, norm = pair
            h = proj(h)
            if idx != len(self.projs) - 1:
                h = norm(h)
        if mask is not None:
            if mask.dim() == 3:
                mask = mask[:, 0]
            h = h * mask
        h = self.post(h)
        if h.mean() > 0:
            h = h * 2
        return h


class TensorConstant(nn.Module):
    """torch.tensor in forward: tracing warns that it becomes a constant."""

    def forward(self, x):
        scale = torch.tensor(2.0)
        return x * scale


class Literals(nn.Module):
    """float() of a literal and int() of an attribute convert no tensor; float() of a sum does."""

    LINE = "total = float(x.sum())"

    def __init__(self):
        super().__init__()
        self.n = 3

    def forward(self, x):
        x = x.masked_fill(x != 0, float(-100.0)).masked_fill(x == 0, float(0.0))
        x = x * int(self.n)
        total = float(x.sum())
        return x / total


class KindOfTensor(nn.Module):
    """Asks what kind of tensor it has (quantized, scripting) and loops over its rank (low)."""

    LOOP = "for i in range(x.dim()):"

    def forward(self, x):
        if not torch.jit.is_scripting() and x.is_quantized:
            x = x.dequantize()
        for i in range(x.dim()):
            x = x.cumsum(i)
        return x


PRIMES = [31, 43, 59, 61]


class Mode:
    """timm's Format: members compared against a parameter."""

    NCHW = "NCHW"
    NHWC = "NHWC"


class IdiomConfig:
    output_attentions = False
    num_blocks = 2
    use_cache = False
    patch = 2


def torch_int(x):
    """transformers.utils.generic.torch_int: a tensor stays one while tracing."""
    return x.to(torch.int64) if torch.jit.is_tracing() and isinstance(x, torch.Tensor) else int(x)


class HFIdioms(nn.Module):
    """A None-default flag falling back to the configuration, a loop over range(0, config),
    a configuration list sliced by an int, a rank kept in a local (low); one test on data."""

    RANK = "if ndim == 3:"
    LINE = "if x.amax() > 100:"

    def __init__(self):
        super().__init__()
        self.config = IdiomConfig()
        self.lin = nn.Linear(4, 4)

    def hashes(self, x, num_hashes: int):
        primes = PRIMES[:num_hashes]
        out = []
        for prime in primes:
            out.append(x * prime)
        return out

    def layout(self, x, fmt: "Mode"):
        if fmt == Mode.NHWC:
            x = x.flip(-1)
        return x + 1

    def patches(self, x):
        # MobileViT's unfolding: sizes from the configuration, and a size kept a tensor while tracing
        patch_width, patch_height = self.config.patch, self.config.patch
        patch_area = int(patch_width * patch_height)
        width = x.shape[-1]
        new_width = torch_int(torch.ceil(width / patch_width) * patch_width) if torch.jit.is_tracing() else width
        return x[..., :new_width] * patch_area

    def forward(self, x, output_attentions=None, cache=None):
        x = self.patches(x)
        x = self.layout(x, Mode.NCHW)
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        using_cache = cache.is_compileable if cache is not None else False
        if using_cache:
            x = x + 1
        ndim = x.ndim
        if ndim == 3:
            x = x[0]
        for block_index in range(0, self.config.num_blocks):
            if block_index == 0:
                x = self.lin(x)
        if output_attentions:
            x = x * 2
        x = sum(self.hashes(x, num_hashes=2))
        if x.amax() > 100:
            x = x / 100
        return x * 3


class EncoderDecoderIdioms(nn.Module):
    """T5, BART and GPT-J idioms: a test a fixed guard decides alone (low), a use_cache flag
    from the configuration or set to False, a check that raises only inside a nested `if`, a
    private helper called with a literal flag; one test on data."""

    GUARD = "if is_cross_attention and past is not None and is_updated:"
    LINE = "if x.amax() > 100:"

    def __init__(self):
        super().__init__()
        self.config = IdiomConfig()
        self.is_decoder = False
        self.checkpointing = False
        self.q = nn.Linear(4, 4)

    def _split_heads(self, x, rotary):
        if rotary:
            return x
        return x.flip(-1)

    def forward(self, x, key_value_states=None, past=None, use_cache=None):
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        if self.checkpointing:
            use_cache = False
        if use_cache is True:
            if not self.is_decoder:
                raise ValueError("use_cache needs a decoder")
        is_cross_attention = key_value_states is not None
        if past is not None:
            is_updated = past.get(0)
        if is_cross_attention and past is not None and is_updated:
            x = x + 1
        else:
            x = self.q(x)
        x = self._split_heads(x, False)
        if x.amax() > 100:
            x = x / 100
        return x * 3


class HashBuckets(nn.Module):
    """CANINE's hash embeddings: a private helper builds one tensor per prime of a constant list,
    and the caller loops over that list (fixed length: not a finding); a helper that builds one per
    row of a tensor, looped over the same way (its length is the batch's: still a finding)."""

    LINE = "for r in rows:"

    def __init__(self):
        super().__init__()
        self.q = nn.Linear(4, 4)

    def _hash_buckets(self, x, num_hashes: int):
        primes = PRIMES[:num_hashes]
        result = []
        for prime in primes:
            result.append((x * prime) % 7)
        return result

    def _per_row(self, x):
        out = []
        for row in x:
            out.append(row * 2)
        return out

    def forward(self, x):
        buckets = self._hash_buckets(x, num_hashes=2)
        parts = []
        for i, b in enumerate(buckets):
            parts.append(self.q(b) * i)
        rows = self._per_row(x)
        for r in rows:
            parts.append(r.unsqueeze(0) + 1)
        return torch.cat(parts, 0)


class RowFilter(nn.Module):
    """Detection post-processing: keep the rows whose score passes. The loop's body only
    indexes and compares, so it leaves no ops; the list's length is the example's."""

    LINE = "for b in boxes:"
    LEN = "return torch.stack(keep).sum(0) / len(keep)"

    def forward(self, boxes):
        keep = []
        for b in boxes:
            if b[4] > 0.5:
                keep.append(b)
        return torch.stack(keep).sum(0) / len(keep)


class RowPairs(nn.Module):
    """Rows of two tensors side by side, their indices kept by a test on data."""

    LINE = "for i, (box, score) in enumerate(zip(boxes, scores)):"
    LEN = "return boxes.sum(0) * len(kept)"

    def forward(self, boxes, scores):
        kept = []
        for i, (box, score) in enumerate(zip(boxes, scores)):
            if score > 0.5 and box[2] > box[0]:
                kept.append(i)
        return boxes.sum(0) * len(kept)


class RowComprehension(nn.Module):
    """The same filter written as a comprehension."""

    LINE = "kept = [b for b in boxes if b[4] > 0.5]"
    LEN = "return torch.stack(kept).mean(0) * len(kept)"

    def forward(self, boxes):
        kept = [b for b in boxes if b[4] > 0.5]
        return torch.stack(kept).mean(0) * len(kept)


class Scale(nn.Module):
    def __init__(self, k: float):
        super().__init__()
        self.k = k

    def forward(self, x):
        return x * self.k


class HeadsAbove(nn.Module):
    """A loop over a module list (fixed) whose list grows only under a test on data: its len() is baked."""

    LEN = "return torch.stack(keep).sum(0) * len(keep)"

    def __init__(self):
        super().__init__()
        self.heads = nn.ModuleList([Scale(1.0), Scale(-1.0), Scale(2.0)])

    def forward(self, x):
        keep = []
        for head in self.heads:
            y = head(x)
            if y.mean() > 0:
                keep.append(y)
        return torch.stack(keep).sum(0) * len(keep)


BOXES = torch.tensor([[0.0, 0.0, 1.0, 1.0, 0.9], [0.0, 0.0, 2.0, 2.0, 0.8], [1.0, 1.0, 3.0, 3.0, 0.7]])
ROW_TRAPS = {
    "RowFilter": (RowFilter, (BOXES,)),
    "RowPairs": (RowPairs, (BOXES[:, :4], BOXES[:, 4])),
    "RowComprehension": (RowComprehension, (BOXES,)),
}
