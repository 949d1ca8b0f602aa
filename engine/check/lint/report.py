"""What a lint run reports: findings and the report that holds them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

KINDS = ("frozen-branch", "unrolled-loop", "baked-shape", "baked-scalar", "baked-device", "python-state",
         "trace-warning")


#: How sure a finding is, least first.
CONFIDENCES = ("low", "medium", "high")


@dataclass
class Finding:
    kind: str
    file: str | None
    line: int | None
    text: str | None
    frozen: str  # what was frozen: the branch taken, the trip count, the constant
    evidence: str
    confidence: str  # one of CONFIDENCES
    nodes: list[str] = field(default_factory=list)
    module_path: str = ""
    method: str = "forward"
    counterexample: str | None = None  # input specs on which archive and Python disagree (--eager)
    first_divergence: str | None = None

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.file else "?"

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class LintReport:
    findings: list[Finding] = field(default_factory=list)
    methods: dict[str, str] = field(default_factory=dict)  # method -> traced/scripted/unknown
    notes: list[str] = field(default_factory=list)
    counterexample_file: str | None = None
    reproduce: str | None = None  # the tsdebug diff command that shows the disagreement
    conversions: list[dict] = field(default_factory=list)  # --eager: tensor-to-Python conversions seen

    def to_json(self) -> dict:
        return {
            "command": "lint",
            "methods": self.methods,
            "findings": [f.to_json() for f in self.findings],
            "notes": self.notes,
            "counterexample_file": self.counterexample_file,
            "reproduce": self.reproduce,
            "conversions": self.conversions,
        }
