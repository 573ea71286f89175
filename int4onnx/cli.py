"""Command line: `int4onnx convert | inspect | bench`. Parsing and printing only; the work is in the library.

User errors print one line (`int4onnx: error: ...`) and exit with a non-zero code (2, or 3 when
the model has nothing to quantize); `--debug` shows the traceback instead.
"""

from __future__ import annotations

import json
import logging
import pathlib
import sys
from collections import Counter

import click

from int4onnx.config import COMPUTE, FORMATS, METHODS, QuantConfig
from int4onnx.errors import Int4OnnxError


class _Group(click.Group):
    """Turns library errors into one line and an exit code."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except Int4OnnxError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"int4onnx: error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("int4onnx: interrupted; no output was written", err=True)
            ctx.exit(130)


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="int4onnx")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
@click.pass_context
def main(ctx, debug, verbose):
    """Convert ONNX MatMul weights to packed INT4 and run them with int4onnx's ONNX Runtime op."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    level = logging.WARNING if not verbose else (logging.INFO if verbose == 1 else logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


@main.command()
@click.argument("model", type=click.Path(dir_okay=True, path_type=pathlib.Path))
@click.option("-o", "--output", type=click.Path(path_type=pathlib.Path),
              help="Output model (default: MODEL with .int4.onnx).")
@click.option("--bits", type=int, default=4, show_default=True, help="Weight bits: 4 or 8.")
@click.option("--group-size", type=int, default=32, show_default=True,
              help="Weights per scale along K: 16, 32, 64, 128, 256; -1 or 0 = per-channel.")
@click.option("--symmetric/--asymmetric", default=False, show_default=True,
              help="Symmetric codes (no zero points) or asymmetric (uint codes with zero points).")
@click.option("--method", type=click.Choice(METHODS), default="rtn", show_default=True,
              help="Quantization algorithm.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="int4onnx", show_default=True,
              help="int4onnx: our MatMulInt4 op; matmulnbits: ONNX Runtime's MatMulNBits; qdq: opset-21 DequantizeLinear+MatMul.")
@click.option("--compute", type=click.Choice(COMPUTE), default="fp32", show_default=True,
              help="Kernel arithmetic: fp32 activations, or int8-quantized activations (faster, slightly less accurate).")
@click.option("--dtype", "quant_type", type=click.Choice(["int", "nf4"]), default="int", show_default=True,
              help="Code type: uniform integers, or the NF4 codebook (symmetric 4-bit).")
@click.option("--exclude", multiple=True, metavar="NAME|REGEX",
              help="Leave these MatMul/Gemm nodes float (repeatable; full-match regex).")
@click.option("--report", type=click.Path(dir_okay=False, path_type=pathlib.Path),
              help="Write a JSON report: per-layer shapes, bits, error; skipped nodes and why.")
@click.option("-q", "--quiet", is_flag=True, help="No progress or summary.")
def convert(model, output, bits, group_size, symmetric, method, fmt, compute, quant_type, exclude, report, quiet):
    """Quantize the MatMul/Gemm weights of MODEL and write the converted model."""
    from int4onnx.pipeline import quantize_file

    config = QuantConfig(bits=bits, group_size=group_size, symmetric=symmetric, method=method, format=fmt,
                         compute=compute, exclude=exclude, quant_type=quant_type)
    if output is None:
        name = model.name[:-5] if model.name.endswith(".onnx") else model.name
        output = model.with_name(f"{name}.int4.onnx" if bits == 4 else f"{name}.int{bits}.onnx")
    if report is not None:
        from int4onnx.io import check_output_path

        check_output_path(model, report)

    bar = None

    def progress(done, total, label):
        nonlocal bar
        if quiet or not sys.stderr.isatty():
            return
        if bar is None:
            bar = click.progressbar(length=total, label="quantizing", file=sys.stderr, show_pos=True)
            bar.__enter__()
        bar.update(done - bar.pos)
        if done >= total:
            bar.__exit__(None, None, None)

    result = quantize_file(model, output, config, progress=progress)
    if report is not None:
        _write_atomic(report, result.to_json() + "\n")
    if quiet:
        return
    click.echo(f"wrote {output}")
    click.echo(f"  quantized {result.nodes_rewritten} MatMul/Gemm node(s), {len(result.layers)} weight(s), "
               f"{result.bits_per_weight:.2f} bits/weight (scales and zero points included)")
    click.echo(f"  size {_mb(result.input_bytes)} -> {_mb(result.output_bytes)} "
               f"({result.input_bytes / max(result.output_bytes, 1):.2f}x smaller) in {result.seconds:.1f} s")
    if result.skipped:
        click.echo(f"  left float: {len(result.skipped)} MatMul/Gemm node(s)")
        for reason, n in Counter(s["reason"] for s in result.skipped).most_common():
            names = [s["name"] for s in result.skipped if s["reason"] == reason]
            shown = ", ".join(names[:4]) + (f", ... ({n - 4} more)" if n > 4 else "")
            click.echo(f"    {n} x {reason}: {shown}")


def _write_atomic(path: pathlib.Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


@main.command()
@click.argument("model", type=click.Path(path_type=pathlib.Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def inspect(model, as_json):
    """Show what MODEL has quantized: layers, bits per weight, sizes."""
    from int4onnx.inspect import describe

    info = describe(model)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    layers = info["quantized_layers"]
    click.echo(f"{info['path']}: {_mb(info['file_bytes'])} on disk, {_mb(info['initializer_bytes'])} of initializers")
    if not layers:
        click.echo("  no quantized layers")
    else:
        formats = Counter(layer["format"] for layer in layers)
        click.echo(f"  {len(layers)} quantized layer(s) ({', '.join(f'{n} {f}' for f, n in formats.items())}), "
                   f"{info['quantized_weights']:,} weights, {info['bits_per_weight']:.2f} bits/weight, "
                   f"{_mb(info['quantized_bytes'])}")
        click.echo(f"  {'node':<40} {'K':>6} {'N':>6} {'bits':>4} {'block':>5} {'sym':>4} {'type':>4} {'compute':>7} {'bits/w':>7}")
        for layer in layers:
            click.echo(f"  {layer['node'][:40]:<40} {layer['K']:>6} {layer['N']:>6} {layer['bits']:>4} "
                       f"{layer['block_size']:>5} {'yes' if layer['symmetric'] else 'no':>4} {layer['quant_type']:>4} "
                       f"{layer['compute']:>7} {layer['bits_per_weight']:>7.2f}")
    floats = info["float_matmuls_with_weights"]
    if floats:
        click.echo(f"  {len(floats)} MatMul/Gemm with float weights left ({_mb(info['float_weight_bytes_left'])})")


def _int_list(ctx, param, value):
    try:
        vals = [int(v) for v in str(value).split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None
    if not vals or min(vals) < 1:
        raise click.BadParameter(f"expected positive integers, got {value!r}")
    return vals


@main.command()
@click.argument("model", type=click.Path(path_type=pathlib.Path))
@click.option("--vs", "others", multiple=True, type=click.Path(path_type=pathlib.Path),
              help="Another model with the same inputs to time against MODEL (repeatable).")
@click.option("--threads", type=int, default=None, help="intra_op_num_threads (default: all cores).")
@click.option("--seq", default="1", callback=_int_list, show_default=True,
              help="Comma-separated lengths for the dynamic dimensions after the first (tokens).")
@click.option("--batch", type=int, default=1, show_default=True, help="Size of the first dynamic dimension.")
@click.option("--repeats", type=int, default=20, show_default=True, help="Timed rounds (each runs every model once).")
@click.option("--vocab", type=int, default=32, show_default=True, help="Integer inputs (token ids) are drawn from [0, vocab).")
@click.option("--spin", is_flag=True,
              help="Keep ONNX Runtime's thread spinning on (off by default: idle sessions' spinning threads compete "
                   "with the one being timed).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def bench(model, others, threads, seq, batch, repeats, vocab, spin, as_json):
    """Time MODEL (and --vs models) in one process, alternating, with random inputs.

    Prints the median and 90th-percentile latency per model and shape; on each --vs model's row,
    MODEL's speed-up over it (its median / MODEL's median: above 1 means MODEL is faster) and how
    close its first output is to MODEL's.
    """
    from int4onnx.bench import bench_models
    from int4onnx.errors import ConfigError

    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {threads}")
    if batch < 1:
        raise ConfigError(f"--batch must be at least 1, got {batch}")
    result = bench_models([model, *others], threads=threads, shapes=[(batch, s) for s in seq], repeats=repeats,
                          vocab=vocab, spin=spin)
    if as_json:
        click.echo(json.dumps({"threads": result.threads, "repeats": result.repeats, "rows": result.rows}, indent=2))
        return
    click.echo(f"{result.threads} thread(s), median of {result.repeats} alternating rounds")
    click.echo(result.table())


if __name__ == "__main__":  # pragma: no cover
    main()
