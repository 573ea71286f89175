"""GPT-2-style character LM exporter (no torch): tinygpt_char.pt -> ONNX, plus its tokenizer.json.

    python models/tinygpt.py                      # models/tinygpt_char.onnx + models/tinygpt_char.tokenizer.json
    python models/tinygpt.py --check              # and its perplexity on the last 10% of tiny shakespeare

The checkpoint (nterrel/llmini's TinyGPT: 4 pre-LayerNorm blocks, width 128, 4 heads, vocab 65, block
size 128) is a PyTorch zip: a pickled {"model": state_dict, "config": {...}} whose tensors point at
raw little-endian storages in the zip's data/ folder. It is read with zipfile + a restricted
unpickler that rebuilds tensors as numpy arrays and refuses every other class.

The graph maps idx [batch, seq] (int64, seq <= 128, the metadata's context_length) to logits [batch, seq, 65]: token embedding +
position embedding, per block LayerNorm -> Q/K/V MatMuls (no bias) -> causal softmax attention ->
output projection (+bias) -> residual, LayerNorm -> MatMul+bias -> exact GELU (erf) -> MatMul+bias ->
residual; final LayerNorm and the head MatMul. Linear weights are stored [in, out]. The vocabulary is
the sorted set of characters of tiny shakespeare (the training script's), written as a
`tokenizers` WordLevel tokenizer that splits every character (unknown characters map to a space).
"""

from __future__ import annotations

import argparse
import collections
import pathlib
import pickle
import sys
import zipfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from paths import ROOT, SHARED  # noqa: E402

CHECKPOINT = SHARED / "models" / "tinygpt_char" / "tinygpt_char.pt"
SHAKESPEARE = SHARED / "corpora" / "tinyshakespeare_input.txt"
N_HEAD = 4  # not stored in the checkpoint; the training script's value
OPSET = 17
_STORAGE_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
                   "LongStorage": np.int64, "IntStorage": np.int32, "ByteStorage": np.uint8, "BoolStorage": np.bool_}


def _rebuild_tensor(storage, offset, size, stride, *_):
    size, stride = tuple(size), tuple(stride)
    if not size:
        return np.array(storage[offset])
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=size, strides=[s * storage.itemsize for s in stride])
    return np.array(view)


def _rebuild_parameter(data, *_):
    return data


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
        super().__init__(file)
        self.archive, self.prefix = archive, prefix

    def find_class(self, module, name):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from the checkpoint")

    def persistent_load(self, pid):
        kind, dtype, key, _location, numel = pid
        if kind != "storage":
            raise pickle.UnpicklingError(f"unknown persistent id {kind!r}")
        raw = self.archive.read(f"{self.prefix}/data/{key}")
        return np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"), count=numel)


def read_checkpoint(path=CHECKPOINT) -> tuple[dict[str, np.ndarray], dict]:
    """{name: array} and the config dict of a PyTorch zip checkpoint, without torch."""
    with zipfile.ZipFile(path) as z:
        pkl = next(n for n in z.namelist() if n.endswith("/data.pkl"))
        prefix = pkl.rsplit("/", 1)[0]
        order = f"{prefix}/byteorder"
        if order in z.namelist() and z.read(order).decode().strip() != "little":
            raise ValueError("big-endian checkpoints are not supported")
        with z.open(pkl) as f:
            obj = _Unpickler(f, z, prefix).load()
    state = {k: np.asarray(v, dtype=np.float32) for k, v in obj["model"].items()}
    return state, dict(obj.get("config", {}))


def build_onnx(state: dict[str, np.ndarray], config: dict, n_head: int = N_HEAD) -> onnx.ModelProto:
    V, C = state["tok_emb.weight"].shape
    T = int(config.get("block_size", state["pos_emb.weight"].shape[0]))
    n_layer = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    hs = C // n_head
    nodes, inits = [], []
    count = [0]

    def const(name, array):
        inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(op_type, inputs, **attrs):
        count[0] += 1
        out = f"{op_type}_{count[0]}"
        nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def linear(x, prefix, bias=True):
        y = op("MatMul", [x, const(f"{prefix}.weight.T", np.ascontiguousarray(state[f"{prefix}.weight"].T))])
        return op("Add", [y, const(f"{prefix}.bias", state[f"{prefix}.bias"])]) if bias else y

    def layernorm(x, prefix):
        return op("LayerNormalization", [x, const(f"{prefix}.weight", state[f"{prefix}.weight"]),
                                         const(f"{prefix}.bias", state[f"{prefix}.bias"])], axis=-1, epsilon=1e-5)

    const("zero1", np.array([0], np.int64))
    const("one1", np.array([1], np.int64))
    const("shape_heads", np.array([0, 0, n_head, hs], np.int64))
    const("shape_out", np.array([0, 0, C], np.int64))
    const("inv_sqrt_hs", np.array(1.0 / np.sqrt(hs), np.float32))
    const("causal_mask", np.triu(np.full((T, T), -1e9, np.float32), k=1))
    const("half", np.array(0.5, np.float32))
    const("one", np.array(1.0, np.float32))
    const("inv_sqrt2", np.array(1.0 / np.sqrt(2.0), np.float32))

    seq = op("Shape", ["idx"], start=1, end=2)
    pos = op("Slice", [const("pos_emb.weight", state["pos_emb.weight"]), "zero1", seq, "zero1"])
    mask = op("Slice", [op("Slice", ["causal_mask", "zero1", seq, "zero1"]), "zero1", seq, "one1"])
    x = op("Add", [op("Gather", [const("tok_emb.weight", state["tok_emb.weight"]), "idx"]), pos])
    for i in range(n_layer):
        p = f"blocks.{i}"
        h = layernorm(x, f"{p}.ln1")
        q, k, v = (op("Transpose", [op("Reshape", [linear(h, f"{p}.attn.{n}", bias=False), "shape_heads"])],
                      perm=[0, 2, 1, 3]) for n in ("query", "key", "value"))
        scores = op("Mul", [op("MatMul", [q, op("Transpose", [k], perm=[0, 1, 3, 2])]), "inv_sqrt_hs"])
        att = op("Softmax", [op("Add", [scores, mask])], axis=-1)
        y = op("Reshape", [op("Transpose", [op("MatMul", [att, v])], perm=[0, 2, 1, 3]), "shape_out"])
        x = op("Add", [x, linear(y, f"{p}.attn.proj")])
        h = linear(layernorm(x, f"{p}.ln2"), f"{p}.mlp.0")
        gelu = op("Mul", [op("Mul", [h, "half"]), op("Add", [op("Erf", [op("Mul", [h, "inv_sqrt2"])]), "one"])])
        x = op("Add", [x, linear(gelu, f"{p}.mlp.2")])
    logits = linear(layernorm(x, "ln_f"), "head", bias=False)
    nodes.append(helper.make_node("Identity", [logits], ["logits"], name="logits_identity"))
    graph = helper.make_graph(nodes, "tinygpt_char",
                              [helper.make_tensor_value_info("idx", TensorProto.INT64, ["batch", "seq"])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", V])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="int4onnx-models")
    helper.set_model_props(model, {"context_length": str(T)})  # read by int4onnx.lm: windows never exceed it
    model.ir_version = 8
    return model


def char_tokenizer(path, chars, unk: str) -> pathlib.Path:
    """A tokenizer.json mapping each character of `chars` to its index (characters not in it to `unk`'s)."""
    from tokenizers import Regex, Tokenizer
    from tokenizers.decoders import Fuse
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Split

    tok = Tokenizer(WordLevel({c: i for i, c in enumerate(chars)}, unk_token=unk))
    tok.pre_tokenizer = Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = Fuse()  # decoding joins the characters (no spaces between tokens)
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return path


def write_tokenizer(path, corpus=SHAKESPEARE) -> pathlib.Path:
    """The character vocabulary of the training script (sorted characters of the corpus) as tokenizer.json."""
    return char_tokenizer(path, sorted(set(pathlib.Path(corpus).read_text(encoding="utf-8"))), unk=" ")


def export(out=ROOT / "models" / "tinygpt_char.onnx", checkpoint=CHECKPOINT) -> tuple[pathlib.Path, pathlib.Path]:
    if not pathlib.Path(checkpoint).is_file():
        sys.exit(f"checkpoint not found: {checkpoint} (expected ../shared/data beside the project)")
    state, config = read_checkpoint(checkpoint)
    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(build_onnx(state, config), str(out))
    tok = write_tokenizer(out.with_name(out.name.replace(".onnx", "") + ".tokenizer.json"))
    return out, tok


def validation_split(corpus=SHAKESPEARE) -> int:
    """Character offset where the training script's validation split (last 10%) starts."""
    return int(len(pathlib.Path(corpus).read_text(encoding="utf-8")) * 0.9)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--output", default=str(ROOT / "models" / "tinygpt_char.onnx"))
    ap.add_argument("--checkpoint", default=str(CHECKPOINT))
    ap.add_argument("--check", action="store_true", help="print the perplexity on the validation split")
    a = ap.parse_args(argv)
    model, tok = export(a.output, a.checkpoint)
    print(model)
    print(tok)
    if a.check:
        sys.path.insert(0, str(ROOT))
        from int4onnx.runtime import Tokenizer, make_session, perplexity

        text = SHAKESPEARE.read_text(encoding="utf-8")[validation_split():]
        ppl, n = perplexity(make_session(str(model)), Tokenizer(tok).encode(text))
        print(f"perplexity {ppl:.4f} on {n} characters of the tiny shakespeare validation split (128-char windows)")


if __name__ == "__main__":
    main()
