"""What users run on a converted model, apart from the converter: evaluation (perplexity, output
agreement), benchmarks, text generation, inspection of a converted file, and the build of the
standalone native library. These read models through `int4onnx.runtime` (ONNX Runtime sessions) and
`int4onnx.lm` (the LM feeds); nothing in the converter imports them."""
