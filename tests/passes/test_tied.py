"""Tied embeddings: one table read by the token Gather and (through Transpose, or Gemm transB=1) by the
lm_head is quantized once; both readers use the same stored bytes; the output never grows silently."""

import logging

import numpy as np
import onnx
import pytest
from modelgen import make_model, save
from onnx import TensorProto, helper, numpy_helper

import int4onnx
from int4onnx import _native
from int4onnx.runtime import make_session

V = 40
RNG = np.random.default_rng(13)


def tied_lm(path, D=64, dtype=np.float32, head="transpose"):
    """ids -> Gather(E) -> emb (an output too); x -> MatMul(x, W) -> h -> lm_head(h, E^T) -> logits."""
    E = RNG.standard_normal((V, D)).astype(dtype)
    W = (RNG.standard_normal((D, D)) / np.sqrt(D)).astype(dtype)
    n = helper.make_node
    nodes = [n("Gather", ["E", "input_ids"], ["emb"], name="embed"), n("MatMul", ["x", "W"], ["h"], name="mm")]
    if head == "transpose":
        nodes += [n("Transpose", ["E"], ["Et"], name="tr", perm=[1, 0]), n("MatMul", ["h", "Et"], ["logits"], name="lm_head")]
    else:  # GPT-2 style: Gemm reads the table directly
        nodes += [n("Reshape", ["h", "flat"], ["h2"], name="flatten"),
                  n("Gemm", ["h2", "E"], ["logits"], name="lm_head", transB=1)]
    et = TensorProto.FLOAT16 if dtype == np.float16 else TensorProto.FLOAT
    inits = [numpy_helper.from_array(E, "E"), numpy_helper.from_array(W, "W"),
             numpy_helper.from_array(np.array([-1, D], np.int64), "flat")]
    model = make_model(nodes, [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"]),
                               helper.make_tensor_value_info("x", et, ["m", D])],
                       [helper.make_tensor_value_info("emb", et, ["b", "s", D]),
                        helper.make_tensor_value_info("logits", et, ["m", V])], inits)
    return save(model, path), E


def stored_table(proto, D):
    """The table as the Gather and the lm_head read it: numpy dequantization of the stored initializers."""
    (g,) = [n for n in proto.graph.node if n.op_type == "GatherBlockQuantized"]
    (mm,) = [n for n in proto.graph.node if n.op_type in ("MatMulInt4", "MatMulNBits") and g.input[0] in n.input]
    attrs = {a.name: a.i for a in g.attribute}
    bits, block = attrs["bits"], attrs["block_size"]
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    assert g.input[0] == mm.input[1]  # the same codes
    data = inits[g.input[0]]
    nb = data.shape[1]
    codes = _native.unpack_weights(data, nb * block, V, bits, block).astype(np.float32)
    scales = inits[mm.input[2]].astype(np.float32)
    if len(mm.input) > 3 and inits[mm.input[3]].size:
        zp = _native.unpack_zero_points(inits[mm.input[3]], V, nb, bits).astype(np.float32)
    else:
        zp = np.full((V, nb), 1 << (bits - 1), np.float32)
    table = (codes - np.repeat(zp, block, 1)) * np.repeat(scales, block, 1)
    return table[:, :D], attrs, inits


@pytest.mark.parametrize("fmt", ["int4onnx", "matmulnbits"])
@pytest.mark.parametrize("bits,symmetric,dtype", [(4, False, np.float32), (4, True, np.float32), (8, False, np.float32),
                                                  (8, True, np.float32), (4, False, np.float16), (8, True, np.float16)])
def test_one_table_for_gather_and_lm_head(tmp_path, fmt, bits, symmetric, dtype):
    src, E = tied_lm(tmp_path / "m.onnx", dtype=dtype)
    out = tmp_path / "q.onnx"
    # float activations in both formats (matmulnbits defaults to int8 ones): the logits are checked against
    # the dequantized table in float64
    r = int4onnx.quantize(src, out, format=fmt, symmetric=symmetric, lm_head=str(bits), compute="fp32")
    proto = onnx.load(str(out))
    names = [i.name for i in proto.graph.initializer]
    assert "E" not in names and not r.grown
    codes = [i.name for i in proto.graph.initializer if list(i.dims) == [V, 64 // 32, 32 * bits // 8]]
    assert len(codes) == 1  # the table's codes, stored once and read by both nodes
    assert sorted(n.op_type for n in proto.graph.node if codes[0] in n.input) == \
        sorted(["GatherBlockQuantized", "MatMulInt4" if fmt == "int4onnx" else "MatMulNBits"])
    (e,) = r.embeddings
    assert e["quantized"] and e["bits"] == bits and e["shared_with"] == ["lm_head"]
    assert e["extra_bytes"] == (V * 2 if bits == 4 and not symmetric else 0)
    assert r.quantized_weight_bytes == sum(layer["bytes"] for layer in r.layers) + e["extra_bytes"]
    head = [layer for layer in r.layers if layer["weight"] == "E"][0]
    assert head["bits"] == bits and "tied with the token embedding" in head["decision"]
    assert r.output_bytes < r.input_bytes

    table, attrs, inits = stored_table(proto, 64)
    assert np.linalg.norm(table - E.astype(np.float32)) / np.linalg.norm(E.astype(np.float32)) < (0.12 if bits == 4 else 0.01)
    ids = RNG.integers(0, V, (2, 5), dtype=np.int64)
    x = RNG.standard_normal((3, 64)).astype(dtype)
    emb, logits = make_session(str(out)).run(["emb", "logits"], {"input_ids": ids, "x": x})
    assert emb.dtype == dtype and emb.shape == (2, 5, 64)
    np.testing.assert_array_equal(emb, table.astype(dtype)[ids])  # rows of the dequantized table, exactly
    # the lm_head multiplies by the same table (h through the quantized W, taken from the model itself)
    ref_model = onnx.load(str(out))
    ref_model.graph.output.append(helper.make_tensor_value_info("h", TensorProto.FLOAT16 if dtype == np.float16
                                                                else TensorProto.FLOAT, None))
    h = make_session(ref_model.SerializeToString()).run(["h"], {"input_ids": ids, "x": x})[0]
    ref = h.astype(np.float64) @ table.T.astype(np.float64)
    tol = 2e-2 if dtype == np.float16 else 1e-4
    np.testing.assert_allclose(logits.astype(np.float64), ref, rtol=tol, atol=tol * np.abs(ref).max())


def test_gemm_transb_and_padded_rows(tmp_path):
    """A Gemm reading the table directly (transB=1), and D = 48 with group 32: the last block is padded,
    the Gather's rows are cut back to D."""
    src, E = tied_lm(tmp_path / "m.onnx", D=48, head="gemm")
    out = tmp_path / "q.onnx"
    r = int4onnx.quantize(src, out, lm_head="4", group_size=32)
    proto = onnx.load(str(out))
    assert "E" not in [i.name for i in proto.graph.initializer] and not r.grown
    table, attrs, _ = stored_table(proto, 48)
    assert attrs["block_size"] == 32
    ids = RNG.integers(0, V, (1, 6), dtype=np.int64)
    emb = make_session(str(out)).run(["emb"], {"input_ids": ids, "x": np.zeros((2, 48), np.float32)})[0]
    np.testing.assert_array_equal(emb, table[ids])


def test_per_channel_block_becomes_a_power_of_two(tmp_path):
    src, _ = tied_lm(tmp_path / "m.onnx", D=96)
    r = int4onnx.quantize(src, tmp_path / "q.onnx", group_size=-1)
    (e,) = r.embeddings
    assert e["block_size"] == 32 and e["shared_with"] == ["lm_head"]  # 96 is not a power of two: 32 divides it


@pytest.mark.parametrize("lm_head,embedding,bits,expect", [("8", "float", 4, 8), ("4", "float", 4, 4), ("4", "8", 4, 8),
                                                            ("8", "4", 4, 8), ("4", "4", 4, 4), ("4", "4", 8, 8),
                                                            ("float", "4", 4, None)])
def test_one_decision_for_the_shared_table(tmp_path, lm_head, embedding, bits, expect):
    """The finer of --lm-head (4 = like the other layers) and --embedding (float = no opinion)."""
    src, _ = tied_lm(tmp_path / "m.onnx")
    r = int4onnx.quantize(src, tmp_path / "q.onnx", lm_head=lm_head, embedding=embedding, bits=bits)
    bits = expect
    (e,) = r.embeddings
    assert not r.grown
    if bits is None:
        assert not e["quantized"] and "kept float (--lm-head float)" in e["reason"]
        assert any(s["name"] == "lm_head" for s in r.skipped)
    else:
        assert e["quantized"] and e["bits"] == bits
        assert [layer["bits"] for layer in r.layers if layer["weight"] == "E"] == [bits]


def test_qdq_keeps_the_tied_table_float(tmp_path):
    src, _ = tied_lm(tmp_path / "m.onnx")
    r = int4onnx.quantize(src, tmp_path / "q.onnx", format="qdq")
    (e,) = r.embeddings
    assert not e["quantized"] and "--format qdq" in e["reason"]
    assert [s["name"] for s in r.skipped] == ["lm_head"] and not r.grown


def test_growth_is_reported(tmp_path, caplog):
    """A weight also read by another node keeps its float copy beside the quantized one: warned and reported."""
    W = RNG.standard_normal((64, 32)).astype(np.float32)
    n = helper.make_node
    model = make_model([n("MatMul", ["x", "W"], ["y"], name="mm"), n("Identity", ["W"], ["w_out"], name="id")],
                       [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                       [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32]),
                        helper.make_tensor_value_info("w_out", TensorProto.FLOAT, [64, 32])],
                       [numpy_helper.from_array(W, "W")])
    src = save(model, tmp_path / "m.onnx")
    with caplog.at_level(logging.WARNING):
        r = int4onnx.quantize(src, tmp_path / "q.onnx")
    (g, whole) = r.grown
    assert g["tensor"] == "W" and g["stored_bytes"] > g["float_bytes"] == W.nbytes and "Identity" in g["reason"]
    assert whole["tensor"] == "(the whole model)" and r.output_bytes > r.input_bytes
    assert "tensor 'W' grows" in caplog.text and "output is larger than the input" in caplog.text
    assert r.to_dict()["grown"] == r.grown


def test_untied_model_reports_no_growth(tmp_path):
    src, _ = tied_lm(tmp_path / "m.onnx")
    proto = onnx.load(src)
    proto.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(proto.graph.initializer[0]).copy(), "E2"))
    for node in proto.graph.node:
        if node.op_type == "Transpose":
            node.input[0] = "E2"
    onnx.save(proto, src)
    r = int4onnx.quantize(src, tmp_path / "q.onnx", embedding="4")
    assert not r.grown and r.embeddings[0]["quantized"] and "shared_with" not in r.embeddings[0]


@pytest.mark.slow
def test_smollm2_tied_table_stored_once(tmp_path, shared_data):
    """SmolLM2-135M (tied 49152 x 576 table): defaults store the table once at 8-bit, the output is smaller than
    with the table left float (184 MB before), and the perplexity stays close to fp32's (the measured run,
    16,384 tokens, is in docs/llm.md)."""
    smollm2 = pytest.importorskip("smollm2", reason="models/smollm2.py is not on this branch")
    try:
        smollm2.gguf_path()
    except Exception as exc:  # noqa: BLE001 - the package is installed by make venv
        pytest.skip(f"SmolLM2's GGUF is not installed: {exc}")
    src = smollm2.export(tmp_path / "nocache", kv_cache=False)
    src = src if src.suffix == ".onnx" else src / "model.onnx"
    out = tmp_path / "q.onnx"
    r = int4onnx.quantize(src, out)
    (e,) = r.embeddings
    assert e["quantized"] and e["bits"] == 8 and len(e["shared_with"]) == 1 and not r.grown
    assert r.output_bytes < 110e6 < 184e6 and r.nodes_rewritten == 211
    assert "tok_embeddings" not in [i.name for i in onnx.load(str(out), load_external_data=False).graph.initializer]
    from int4onnx.tools.evaluate import evaluate  # noqa: PLC0415 - slow path only
    text = shared_data / "corpora" / "wikitext2_test.txt"
    res = evaluate(src, out, perplexity_text=text, tokenizer=src.parent / "tokenizer.json", max_chars=4000, window=512)
    p = res["perplexity"]
    assert p["candidate"] < 1.3 * p["reference"], p


def test_mixed_precision_with_a_tied_table_left_float(tmp_path):
    """--format qdq keeps a tied table float in both readers (no quantized Gather to share with): mixed
    precision then works on the other weights (it raised KeyError on the dropped table)."""
    src, _ = tied_lm(tmp_path / "m.onnx")
    cal = tmp_path / "cal"
    cal.mkdir()
    for i in range(4):
        np.savez(cal / f"{i}.npz", input_ids=RNG.integers(0, V, (1, 5)), x=RNG.standard_normal((8, 64)).astype(np.float32))
    r = int4onnx.quantize(src, tmp_path / "q.onnx", format="qdq", method="gptq", calibration=str(cal),
                          target_bits=7.5, sensitivity_samples=2)
    assert [layer["weight"] for layer in r.layers] == ["W"] and r.layers[0]["bits"] in (4, 8)
    proto = onnx.load(str(tmp_path / "q.onnx"))
    assert "E" in [i.name for i in proto.graph.initializer]  # the table, float, read by both


@pytest.mark.parametrize("method", ["gptq", "awq-gptq"])
def test_calibrated_methods_quantize_the_tied_lm_head(tmp_path, method):
    """The tied table is calibrated as the lm_head's weight: GPTQ chooses its codes on the statistics of the
    lm_head's input (its layer output error below RTN's), AWQ leaves it unscaled (the Gather reads it too),
    and the Gather reads the GPTQ codes: its rows stay close to the float table."""
    src, E = tied_lm(tmp_path / "m.onnx")
    rng = np.random.default_rng(5)
    mix = rng.standard_normal((64, 64)) * np.exp(rng.standard_normal(64))[:, None]  # correlated, uneven channels
    cal = tmp_path / "cal"
    cal.mkdir()
    for i in range(4):
        np.savez(cal / f"{i}.npz", input_ids=rng.integers(0, V, (1, 8), dtype=np.int64),
                 x=(rng.standard_normal((48, 64)) @ mix).astype(np.float32))
    out = tmp_path / "q.onnx"
    r = int4onnx.quantize(src, out, method=method, calibration=str(cal), lm_head="4", group_size=32)
    (head,) = [layer for layer in r.layers if layer["weight"] == "E"]
    assert head["bits"] == 4 and head["output_rel_error"] < 0.9 * head["rtn_output_rel_error"]
    if method == "awq-gptq":
        assert not head["awq"]["applied"] and "outside this group" in head["awq"]["reason"]
    rtn = tmp_path / "rtn.onnx"
    int4onnx.quantize(src, rtn, lm_head="4", group_size=32)
    table, _, _ = stored_table(onnx.load(str(out)), 64)
    assert not np.array_equal(table, stored_table(onnx.load(str(rtn)), 64)[0])  # not round to nearest
    assert np.linalg.norm(table - E) / np.linalg.norm(E) < 0.15
    ids = rng.integers(0, V, (2, 5), dtype=np.int64)
    emb = make_session(str(out)).run(["emb"], {"input_ids": ids, "x": np.zeros((1, 64), np.float32)})[0]
    np.testing.assert_array_equal(emb, table[ids])
