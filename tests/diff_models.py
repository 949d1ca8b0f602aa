"""Python models the diff tests rebuild with --eager (kept in a file: --eager takes a path)."""

import torch
import torch.nn as nn
import torch.nn.functional as F


class FrozenBranch(nn.Module):
    """``if`` on tensor data: tracing keeps only the branch the example took."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 6)
        self.out = nn.Linear(6, 3)

    def forward(self, x):
        y = self.lin(x)
        if x.mean() > 0:  # the line the diff must name
            y = y * 2.0
        else:
            y = y - 1.0
        z = torch.tanh(y)
        return self.out(z)


class Block(nn.Module):
    def __init__(self, eps: float = 1e-5, act: str = "relu"):
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.norm = nn.LayerNorm(16, eps=eps)
        self.fc2 = nn.Linear(16, 8)
        self.act = act

    def forward(self, x):
        h = self.norm(self.fc1(x))
        h = F.gelu(h) if self.act == "gelu" else F.relu(h)
        return self.fc2(h) + x


class Stack(nn.Module):
    def __init__(self, eps: float = 1e-5, act: str = "relu"):
        super().__init__()
        self.blocks = nn.Sequential(Block(), Block(eps=eps, act=act), Block())

    def forward(self, x):
        return self.blocks(x)


class Extra(nn.Module):
    """Has a layer the archive's weights do not."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.Sequential(Block(), Block(), Block())
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.blocks(x))


def broken_factory():
    raise ValueError("config file missing")


class Chatty(nn.Module):
    """Prints and warns in forward, as models being debugged often do."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 3)

    def forward(self, x):
        print("forward got", tuple(x.shape))
        return torch.relu(self.lin(x))


class Branch(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        return torch.relu(self.lin(x))


class ForksAndNoGrad(nn.Module):
    """torch.jit.fork/wait and a no_grad block: what the graph has and eager Python does not."""

    def __init__(self):
        super().__init__()
        self.a = Branch()
        self.b = Branch()

    def forward(self, x):
        fa = torch.jit.fork(self.a, x)
        fb = torch.jit.fork(self.b, x * 2)
        futures = [fa, fb]
        outs = [torch.jit.wait(f) for f in futures]
        with torch.no_grad():
            y = outs[0] + outs[1]
        return y


class Sampler(nn.Module):
    """Draws noise in forward (a VAE's reparameterization): eager and graph must draw alike."""

    def __init__(self):
        super().__init__()
        self.mu = nn.Linear(4, 4)
        self.logvar = nn.Linear(4, 4)

    def forward(self, x):
        mu, logvar = self.mu(x), self.logvar(x)
        return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)


class EmptyThenFilled(nn.Module):
    """A buffer from torch.empty, then written (detection models' anchors): its first bits are garbage on both sides."""

    def forward(self, x):
        buf = torch.empty(x.shape[0], 4)
        buf[:, :2] = x[:, :2]
        buf[:, 2:] = 0.0
        scratch = torch.empty_like(x)
        scratch.copy_(x)
        return buf * 2 + scratch[:, :4]


class LookAlikes(nn.Module):
    """A frozen branch whose ops look like the ones after it: each op must meet its own line."""

    SCALE_LINE = "return x * torch.full_like(x, 0.5)"

    def forward(self, x):
        if x.mean() > 0:
            x = x * torch.full_like(x, 3.0)
        return x * torch.full_like(x, 0.5)


class NonPersistent(nn.Module):
    """A buffer left out of state_dict (Hugging Face's position_ids): the archive keeps it all the same."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.register_buffer("offsets", torch.arange(4.0), persistent=False)

    def forward(self, x):
        return self.lin(x) + self.offsets


class SharedUser(nn.Module):
    def __init__(self, pos: nn.Module):
        super().__init__()
        self.pos = pos
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(self.pos(x))


class SharedModule(nn.Module):
    """One module held by the root and by each block (CoaT's position encodings): each call
    is compared with the call made through the same path."""

    def __init__(self):
        super().__init__()
        self.pos = nn.Linear(4, 4)
        self.blocks = nn.ModuleList([SharedUser(self.pos) for _ in range(2)])

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.pos(x)


class LongStatement(nn.Module):
    """A call chain over several lines: TorchScript and Python name different lines of it."""

    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(8, 24)

    def forward(self, x):
        q, k, v = self.qkv(x).view(
            x.shape[0], 3, -1).split([1, 1, 1], dim=1)
        return q * k + v


class Chunks(nn.Module):
    """Attention over windows (CANINE): ``x[:, a:b, :]`` is three slices in a trace, two of them whole."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 8)

    def forward(self, x):
        outs = []
        for start in range(0, x.shape[1], 2):
            chunk = x[:, start:start + 2, :]
            mask = x[:, start:start + 2, 0:1]
            outs.append(self.proj(chunk) * mask)
        return torch.cat(outs, dim=1)


class Signs(nn.Module):
    """Only the signs of a linear layer reach the output: small drift inside, same outputs."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        return torch.sign(self.lin(x))


class Correlation(nn.Module):
    """A module used only through methods other than forward, one calling another (RAFT's CorrBlock)."""

    def __init__(self, scale: float = 2.0):
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.scale = scale

    def volume(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.proj(x)) * self.scale

    def lookup(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.volume(x)) + 1


class CallsAModulesMethods(nn.Module):
    def __init__(self, scale: float = 2.0):
        super().__init__()
        self.corr = Correlation(scale)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(2):
            x = x + self.corr.lookup(x)
        return self.head(x)


class CosineAttention(nn.Module):
    """Swin V2's cosine attention: two F.normalize of one shape in one statement, each one call
    eagerly and four nodes in a trace (norm, clamp_min, expand_as, div)."""

    def __init__(self):
        super().__init__()
        self.qk = nn.Linear(8, 16)

    def forward(self, x):
        q, k = self.qk(x).chunk(2, dim=-1)
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        return attn.softmax(-1)


# ----------------------------------------------------------------------------------------------
# Inputs that take a path the trace did not record: diff must say where the two runs part.
# Each model's marked lines are found by their text (``LINES``), so edits above do not break tests.


class BranchAtTheEnd(nn.Module):
    """A data-dependent ``if`` whose sides are the last ops before ``return``."""

    IF = "if x.sum() > 0:"
    TAKEN = "return y * 2.0"
    OTHER = "return y - 1.0"

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 6)

    def forward(self, x):
        y = self.lin(x)
        if x.sum() > 0:
            return y * 2.0
        return y - 1.0


class StepsOverTime(nn.Module):
    """``for t in range(x.size(0))``: unrolled to the example's steps."""

    LOOP = "for t in range(x.size(0)):"
    BODY = "h = torch.tanh(self.cell(x[t]) + h)"

    def __init__(self):
        super().__init__()
        self.cell = nn.Linear(4, 4)

    def forward(self, x):
        h = x[0] * 0.0
        for t in range(x.size(0)):
            h = torch.tanh(self.cell(x[t]) + h)
        return h


class BakedBatch(nn.Module):
    """``view(int(x.size(0)), -1)``: the batch becomes a constant."""

    VIEW = "return y.view(int(y.size(0)), -1)"

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        y = self.lin(x)
        return y.view(int(y.size(0)), -1)


class BakedTopK(nn.Module):
    """``topk(len(nonzero(...)))``: k is the example's count."""

    TOPK = "return torch.topk(x.flatten(), k).values * 2.0"

    def forward(self, x):
        x = x + 1.0
        k = len(torch.nonzero(x > 1.0))
        return torch.topk(x.flatten(), k).values * 2.0


class RankBranch(nn.Module):
    """``if x.dim() == 3`` frozen on a 2-D example."""

    IF = "if x.dim() == 3:"
    BODY = "x = x.mean(1)"
    HEAD = "return self.head(x) + 0.5"

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        x = x * 2.0
        if x.dim() == 3:
            x = x.mean(1)
        return self.head(x) + 0.5


class HalveWhileLarge(nn.Module):
    """A data-dependent ``while``, unrolled."""

    WHILE = "while x.norm() > 1:"
    BODY = "x = x / 2"

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        x = self.lin(x)
        while x.norm() > 1:
            x = x / 2
        return x + 1.0


class ChecksItsInput(nn.Module):
    """An assert on data: the trace drops it, the Python raises on a negative input."""

    CHECK = 'assert bool((x >= 0).all()), "expects non-negative inputs"'

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        assert bool((x >= 0).all()), "expects non-negative inputs"
        return self.lin(x).relu()


class Reports(nn.Module):
    """Returns a caption beside the tensor: TorchScript's str.format ignores format specs."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        y = self.lin(x)
        alpha = float(y.abs().mean()) + 1.0
        return y, "alpha={:.3f}".format(alpha)


class Prints(nn.Module):
    """A scripted ``str(float)``: TorchScript prints 17 digits, Python the shortest repr."""

    def forward(self, x):
        return x * 3.0, str(float(x.size(0)) / 3.0)


class BranchFarFromTheCause(nn.Module):
    """A frozen branch, then ops that agree, then the op where its result meets them: the
    divergence is at the add, the cause is the branch two statements up."""

    IF = "if x.mean() > 0:"
    A = "y = self.a(x)"
    B = "y = self.b(x)"
    ADD = "return torch.tanh(y + z)"

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.c = nn.Linear(4, 4)

    def forward(self, x):
        if x.mean() > 0:
            y = self.a(x)
        else:
            y = self.b(x)
        z = self.c(x)
        return torch.tanh(y + z)


class DtypeBranch(nn.Module):
    """A frozen branch that changes the output's dtype."""

    IF = "if x.max() > 10:"

    def forward(self, x):
        y = x * 2.0
        if x.max() > 10:
            return y.half()
        return y
