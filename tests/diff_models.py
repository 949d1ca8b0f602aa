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
