"""FLOPs and bytes of a compiled step, part by part, read from its optimised HLO text
(``compiled.as_text()``): what ``python -m hfa_jax.aot --breakdown`` prints.

XLA's cost analysis gives one total per program. To see where a step's cost goes, this module
walks the optimised HLO itself:

* **which instructions.** The top-level instructions of the entry computation and of the bodies
  of its control flow (``while`` bodies times their known trip count, ``call`` and
  ``conditional`` computations), each a fusion, a custom call (a Pallas kernel), a copy, a
  collective ... what the device runs one after another.
* **bytes.** Per top-level instruction, the bytes of its operands plus its outputs (XLA's own
  per-instruction rule for a fusion, without its refinement for operands read only in part).
  Shapes are logical (no tile padding), so the sum is below XLA's ``bytes accessed``, which
  counts padded tiles on a TPU; the report prints both totals.
* **FLOPs.** Inside each fusion: ``2 * output elements * contracted size`` for every ``dot``
  and ``convolution`` (a TPU's matmuls are convolutions; its batched matmuls put the batch in
  dilated spatial dims, one valid window position each), one per output element for elementwise
  arithmetic and per input element for reductions. A custom call counts what its backend config
  declares (a Pallas kernel's ``CostEstimate``), else nothing.
* **which part.** Each instruction's ``metadata``: its ``op_name`` (the jit, transform and flax
  module path, e.g. ``jit(train_step)/transpose(jvp(HFAPretrain))/.../frame_encoder/block_10/...``)
  and its source stack (the functions that built it, from the module's ``StackFrames``).
  :func:`part_of` maps those onto the parts of a training step. A fusion's bytes go to the part
  of the fusion's own metadata (its root operation's); its FLOPs to the part of each operation.

Limits: XLA may fuse operations of two parts into one kernel (a cast of a weight into the matmul
that reads it); the kernel's bytes then go to one part. Instructions without metadata (copies
and layout changes XLA inserts) count as ``other``.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Iterable, Sequence

# bytes per element; sub-byte types round up
_DTYPE_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "s32": 4, "u32": 4,
                "s64": 8, "u64": 8, "f16": 2, "bf16": 2, "f32": 4, "f64": 8, "c64": 8, "c128": 16}
_ARRAY = re.compile(r"\b(pred|[su](?:4|8|16|32|64)|bf16|f16|f32|f64|c64|c128|f8\w*)\[([\d,]*)\]")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(.*)$")
_HEADER = re.compile(r"^(ENTRY\s+)?%([\w.\-]+)\s*\(.*\{\s*$")

# Opcodes that move no data of their own, or whose cost the called computations carry.
_FREE = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "after-all", "partition-id",
         "replica-id", "opt-barrier", "while", "call", "conditional", "copy-done", "send-done", "recv-done",
         "all-reduce-done", "all-gather-done", "collective-permute-done", "async-done", "async-update",
         "add-dependency", "domain", "slice-done"}
_ELEMENTWISE = {"add", "subtract", "multiply", "divide", "maximum", "minimum", "negate", "abs", "compare",
                "select", "and", "or", "xor", "not", "power", "remainder", "clamp", "sign", "floor", "ceil",
                "round-nearest-even", "round-nearest-afz", "shift-left", "shift-right-logical",
                "shift-right-arithmetic", "atan2", "convert", "exponential", "log", "log-plus-one",
                "exponential-minus-one", "tanh", "logistic", "sqrt", "rsqrt", "cbrt", "sine", "cosine", "tan",
                "erf", "is-finite", "popcnt", "real", "imag"}

PARTS = ("augmentation", "frozen ViT", "LoRA ViT", "temporal", "mBART", "text encoder", "losses",
         "optimiser", "other")


def _elements(dims: str) -> int:
    n = 1
    for d in dims.split(","):
        if d:
            n *= int(d)
    return n


def shape_bytes(shape: str) -> float:
    """Bytes of every array in an HLO shape string (a tuple counts all its elements)."""
    total = 0.0
    for dtype, dims in _ARRAY.findall(shape):
        total += _elements(dims) * _DTYPE_BYTES.get(dtype, 1)
    return total


def _arrays(shape: str) -> list[str]:
    return [m.group(0) for m in _ARRAY.finditer(shape)]


def instruction_bytes(ins: "Instr", shapes: dict[str, str]) -> float:
    """Bytes a top-level instruction moves: its operands plus its outputs, except for the
    asynchronous copies a TPU program uses to stage weights in VMEM. Their tuple shapes repeat the
    whole source operand: ``slice-start`` (``((source), slice, context)``) reads and writes the
    slice, ``copy-start`` (``(destination, source, context)``) reads and writes the destination's
    size; their ``-done`` halves only wait."""
    if ins.opcode == "slice-start":
        arrays = _arrays(ins.shape)
        return 2.0 * shape_bytes(arrays[len(ins.operands)]) if len(arrays) > len(ins.operands) else 0.0
    if ins.opcode == "copy-start":
        arrays = _arrays(ins.shape)
        return 2.0 * shape_bytes(arrays[0]) if arrays else 0.0
    return shape_bytes(ins.shape) + sum(shape_bytes(shapes.get(o, "")) for o in ins.operands)


def _dims(shape: str) -> list[int]:
    m = _ARRAY.search(shape)
    return [int(d) for d in m.group(2).split(",") if d] if m else []


@dataclasses.dataclass
class Instr:
    name: str
    shape: str
    opcode: str
    operands: list[str]
    attrs: str

    def attr(self, key: str) -> str | None:
        m = re.search(rf"\b{key}=(%?[\w.\-]+|\{{[^}}]*\}})", self.attrs)
        return m.group(1) if m else None

    @property
    def op_name(self) -> str:
        m = re.search(r'op_name="([^"]*)"', self.attrs)
        return m.group(1) if m else ""

    @property
    def stack_frame(self) -> int:
        m = re.search(r"stack_frame_id=(\d+)", self.attrs)
        return int(m.group(1)) if m else 0


def _split_top(s: str, open_ch: str = "(", close_ch: str = ")") -> int:
    """Index just past the bracket group that starts at ``s[0]``."""
    depth = 0
    for i, ch in enumerate(s):
        if ch in "({[":
            depth += 1
        elif ch in ")}]":
            depth -= 1
            if depth == 0:
                return i + 1
    return len(s)


def _parse_instr(line: str) -> Instr | None:
    m = _INSTR.match(line)
    if not m:
        return None
    name, rest = m.group(1), m.group(2)
    if rest.startswith("("):
        end = _split_top(rest)
        shape, rest = rest[:end], rest[end:].lstrip()
    else:
        shape, _, rest = rest.partition(" ")
    m = re.match(r"([\w\-]+)\(", rest)
    if not m:
        return None
    opcode = m.group(1)
    body = rest[len(opcode):]
    end = _split_top(body)
    operands = re.findall(r"%([\w.\-]+)", body[:end])
    return Instr(name, shape, opcode, operands, body[end:])


@dataclasses.dataclass
class Module:
    computations: dict[str, list[Instr]]
    entry: str
    frames: dict[int, tuple[str, str, int]]   # stack frame id -> (file, function, parent id)


def parse(text: str) -> Module:
    """The computations of an HLO module's text, and its stack-frame table."""
    comps: dict[str, list[Instr]] = {}
    entry, current = "", None
    section, files, funcs, locs, frames = "", {}, {}, {}, {}
    for line in text.splitlines():
        if current is None:
            h = _HEADER.match(line)
            if h:
                current = h.group(2)
                comps[current] = []
                if h.group(1):
                    entry = current
                continue
            if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
                section = line
                continue
            m = re.match(r"^(\d+) (.*)$", line)
            if m and section:
                k, v = int(m.group(1)), m.group(2)
                if section == "FileNames":
                    files[k] = v.strip('"')
                elif section == "FunctionNames":
                    funcs[k] = v.strip('"')
                elif section == "FileLocations":
                    f = re.search(r"file_name_id=(\d+)", v)
                    g = re.search(r"function_name_id=(\d+)", v)
                    locs[k] = (int(f.group(1)) if f else 0, int(g.group(1)) if g else 0)
                elif section == "StackFrames":
                    f = re.search(r"file_location_id=(\d+)", v)
                    p = re.search(r"parent_frame_id=(\d+)", v)
                    frames[k] = (int(f.group(1)) if f else 0, int(p.group(1)) if p else 0)
            continue
        if line.startswith("}"):
            current = None
            continue
        ins = _parse_instr(line)
        if ins is not None:
            comps[current].append(ins)
    table = {}
    for k, (loc, parent) in frames.items():
        fid, gid = locs.get(loc, (0, 0))
        table[k] = (files.get(fid, ""), funcs.get(gid, ""), parent)
    return Module(comps, entry, table)


def stack(module: Module, frame: int) -> list[tuple[str, str]]:
    """(file, function) of a stack frame and its callers, innermost first."""
    out, seen = [], set()
    while frame and frame not in seen and frame in module.frames:
        seen.add(frame)
        f, fn, parent = module.frames[frame]
        out.append((f, fn))
        if parent == frame:
            break
        frame = parent
    return out


_LOSS_FUNCTIONS = frozenset({"pretrain_loss", "translation_loss", "alignment_loss", "pseudo_gloss_loss",
                             "description_loss", "hand_pose_loss", "full_batch_loss", "_parts", "_mean", "_l2n"})
_LOSS_FILES = ("/train/losses.py", "/train/beyondgloss_losses.py", "/train/tasks.py")


def part_of(op_name: str, frames: Sequence[tuple[str, str]], lora_blocks: Iterable[int] = ()) -> str:
    """The part of a training step an operation belongs to, from its ``op_name`` (module path)
    and its source stack (innermost first). See the module docstring for the parts."""
    # Python's qualified names: "update_step.<locals>.keep.<locals>.<lambda>" counts as
    # update_step, keep and <lambda>.
    functions = {part for _, fn in frames for part in fn.split(".") if part != "<locals>"}
    files = " ".join(f for f, _ in frames)
    if "jit(augment)" in op_name or "augment_frames" in functions or "/data/augment" in files:
        return "augmentation"
    # a module appears as "name/" or, called through a method, "name.method/"
    m = re.search(r"/frame_encoder(?:\.\w+)?/block_(\d+)(?:\.\w+)?/", op_name + "/")
    if m:
        return "LoRA ViT" if int(m.group(1)) in set(lora_blocks) else "frozen ViT"
    if re.search(r"/frame_encoder(?:\.\w+)?/", op_name + "/"):
        # patch and position embedding (frozen); the final norm follows the LoRA blocks
        return "LoRA ViT" if re.search(r"/frame_encoder(?:\.\w+)?/norm\b", op_name) else "frozen ViT"
    if re.search(r"/text_encoder(?:\.\w+)?/", op_name + "/") or "encode_text" in op_name:
        return "text encoder"
    if re.search(r"/(video_encoder|mbart|mapper)(?:\.\w+)?/", op_name + "/"):
        return "mBART"
    if re.search(r"/(temporal|frame_proj|frame_bn|hand_pose|desc_feedback)(?:\.\w+)?/", op_name + "/") \
            or "encode_frames" in op_name or "gather_frames" in functions or "scatter_frames" in functions:
        return "temporal"
    # The objective's terms are built in the task (train/tasks.py) from train/losses.py and
    # train/beyondgloss_losses.py, and summed by train/microbatch.py; the model's own heads and
    # the rest of its top level (pseudo-gloss head, logit scale, pooling) count with them.
    if re.search(r"/(pg_head|desc_proj)/", op_name + "/") or functions & _LOSS_FUNCTIONS \
            or any(f.endswith(_LOSS_FILES) for f, _ in frames) or "HFAPretrain" in op_name \
            or "HFATranslate" in op_name:
        return "losses"
    if "/train/optim.py" in files or "optax" in files or "update_step" in functions or "keep" in functions:
        return "optimiser"
    return "other"


def _flops_of(ins: Instr, shapes: dict[str, str]) -> float:
    """FLOPs of one (non-fusion) operation."""
    op = ins.opcode
    if op == "dot":
        out = _elements(",".join(map(str, _dims(ins.shape))))
        lhs = _dims(shapes.get(ins.operands[0], "")) if ins.operands else []
        m = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", ins.attrs)
        k = 1
        if m and lhs:
            for d in m.group(1).split(","):
                if d:
                    k *= lhs[int(d)]
        return 2.0 * out * k
    if op == "convolution":
        # 2 x outputs x (input features per group x valid window positions). A TPU writes batched
        # matmuls as convolutions whose batch dims are spatial dims with lhs_dilate = window size
        # (one valid position each), so a spatial dim counts ceil(size / lhs_dilate) positions.
        out = _elements(",".join(map(str, _dims(ins.shape))))
        kern = _dims(shapes.get(ins.operands[1], "")) if len(ins.operands) > 1 else []
        m = re.search(r"dim_labels=\w+_(\w+)->", ins.attrs)
        if not kern or not m or len(m.group(1)) != len(kern) or "i" not in m.group(1):
            return 0.0
        per_out = kern[m.group(1).index("i")]
        w = re.search(r"window=\{([^}]*)\}", ins.attrs)
        size = re.search(r"size=([\dx]+)", w.group(1)) if w else None
        dil = re.search(r"lhs_dilate=([\dx]+)", w.group(1)) if w else None
        if size:
            sizes = [int(x) for x in size.group(1).split("x")]
            dils = [int(x) for x in dil.group(1).split("x")] if dil else [1] * len(sizes)
            for sz, d in zip(sizes, dils):
                per_out *= -(-sz // max(d, 1))
        return 2.0 * out * per_out
    if op in _ELEMENTWISE:
        return float(_elements(",".join(map(str, _dims(ins.shape)))))
    if op in ("reduce", "reduce-window"):
        return float(_elements(",".join(map(str, _dims(shapes.get(ins.operands[0], ""))))) if ins.operands else 0.0)
    if op == "custom-call":
        m = re.search(r'"flops"\s*:\s*"?(\d+)', ins.attrs)
        return float(m.group(1)) if m else 0.0
    return 0.0


@dataclasses.dataclass
class Breakdown:
    flops: dict[str, float]
    bytes: dict[str, float]
    instructions: dict[str, int]

    def total_flops(self) -> float:
        return sum(self.flops.values())

    def total_bytes(self) -> float:
        return sum(self.bytes.values())

    def to_json(self) -> dict:
        return {p: {"flops": self.flops.get(p, 0.0), "bytes": self.bytes.get(p, 0.0),
                    "instructions": self.instructions.get(p, 0)} for p in PARTS if p in self.flops}

    @classmethod
    def from_json(cls, d: dict) -> "Breakdown":
        """Inverse of :meth:`to_json` (parts it lacks count zero)."""
        get = lambda p, k, z: d.get(p, {}).get(k, z)  # noqa: E731
        return cls(flops={p: float(get(p, "flops", 0.0)) for p in PARTS},
                   bytes={p: float(get(p, "bytes", 0.0)) for p in PARTS},
                   instructions={p: int(get(p, "instructions", 0)) for p in PARTS})


def breakdown(text: str, lora_blocks: Iterable[int] = ()) -> Breakdown:
    """FLOPs and bytes per part (:data:`PARTS`) of a compiled program's optimised HLO text."""
    mod = parse(text)
    lora = tuple(lora_blocks)
    flops = {p: 0.0 for p in PARTS}
    moved = {p: 0.0 for p in PARTS}
    count = {p: 0 for p in PARTS}
    shapes_of = {c: {i.name: i.shape for i in instrs} for c, instrs in mod.computations.items()}
    cache: dict[tuple, str] = {}

    def part(ins: Instr) -> str:
        key = (ins.op_name, ins.stack_frame)
        if key not in cache:
            cache[key] = part_of(ins.op_name, stack(mod, ins.stack_frame), lora)
        return cache[key]

    def fused_flops(comp: str, fallback: str, times: float, depth: int = 0) -> None:
        for ins in mod.computations.get(comp, []):
            if ins.opcode == "fusion" and depth < 8:
                fused_flops((ins.attr("calls") or "").lstrip("%"), fallback, times, depth + 1)
                continue
            f = _flops_of(ins, shapes_of.get(comp, {}))
            if f:
                p = part(ins) if ins.op_name else fallback
                flops[p] += f * times

    def walk(comp: str, times: float, depth: int = 0) -> None:
        shapes = shapes_of.get(comp, {})
        for ins in mod.computations.get(comp, []):
            op = ins.opcode
            if op == "while" and depth < 8:
                n = re.search(r'"known_trip_count"\s*:\s*\{\s*"n"\s*:\s*"?(\d+)', ins.attrs)
                k = times * (int(n.group(1)) if n else 1)
                for key in ("condition", "body"):
                    c = ins.attr(key)
                    if c:
                        walk(c.lstrip("%"), k, depth + 1)
                continue
            if op in ("call", "conditional") and depth < 8:
                for c in re.findall(r"(?:to_apply|branch_computations|true_computation|false_computation)="
                                    r"\{?([%\w.\-, ]+)\}?", ins.attrs):
                    for name in re.findall(r"%?([\w.\-]+)", c):
                        walk(name, times, depth + 1)
                continue
            if op in _FREE:
                continue
            p = part(ins)
            b = instruction_bytes(ins, shapes)
            moved[p] += b * times
            count[p] += 1
            if op == "fusion":
                fused_flops((ins.attr("calls") or "").lstrip("%"), p, times)
            else:
                flops[p] += _flops_of(ins, shapes) * times

    walk(mod.entry, 1.0)
    return Breakdown(flops, moved, count)


def format_breakdown(b: Breakdown, *, xla_flops: float | None = None, xla_bytes: float | None = None,
                     title: str = "") -> str:
    """The per-part table ``aot --breakdown`` prints (per device)."""
    tf, tb = b.total_flops(), b.total_bytes()
    lines = [title] if title else []
    lines.append(f"  {'part':<14} {'GFLOP':>10} {'share':>6} {'GB':>9} {'share':>6} {'kernels':>8}")
    for p in PARTS:
        if not (b.flops[p] or b.bytes[p]):
            continue
        lines.append(f"  {p:<14} {b.flops[p] / 1e9:10.1f} {b.flops[p] / max(tf, 1):6.1%} {b.bytes[p] / 1e9:9.2f} "
                     f"{b.bytes[p] / max(tb, 1):6.1%} {b.instructions[p]:8d}")
    lines.append(f"  {'sum':<14} {tf / 1e9:10.1f} {'':>6} {tb / 1e9:9.2f}")
    if xla_flops or xla_bytes:
        lines.append(f"  {'XLA total':<14} {(xla_flops or 0) / 1e9:10.1f} {'':>6} {(xla_bytes or 0) / 1e9:9.2f}   "
                     "(XLA counts padded tiles and partly-read operands its own way: compare parts, "
                     "not absolute bytes)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m hfa_jax.hlo_cost FILE [--lora-blocks=9,10,11] [--json]``: the breakdown of a
    saved optimised HLO text (``compiled.as_text()``)."""
    import argparse
    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("file")
    p.add_argument("--lora-blocks", default="9,10,11")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    try:
        lora = [int(x) for x in a.lora_blocks.split(",") if x]
    except ValueError:
        p.error(f"--lora-blocks={a.lora_blocks!r}: give block indices, e.g. 9,10,11")
    try:
        with open(a.file, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        p.exit(2, f"error: cannot read {a.file}: {getattr(e, 'strerror', None) or e}\n")
    try:
        b = breakdown(text, lora)
    except (IndexError, ValueError, KeyError, AttributeError, RecursionError) as e:
        p.exit(2, f"error: {a.file} is not an optimised HLO text this reader understands ({type(e).__name__})\n")
    if not b.instructions or not sum(b.instructions.values()):
        p.exit(2, f"error: {a.file} holds no HLO module's instructions (write one with hfa_jax.aot --save_hlo)\n")
    print(json.dumps(b.to_json(), indent=1) if a.json else format_breakdown(b, title=a.file))


if __name__ == "__main__":
    main()
