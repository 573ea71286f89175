"""Command line: `int4onnx convert | inspect | eval | bench | build-native | generate`. Parsing and printing only; the work is in the library.

User errors print one line (`int4onnx: error: ...`) and exit with a non-zero code (2, or 3 when
the model has nothing to quantize); `--debug` shows the traceback instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import pathlib
import signal
import sys
import tempfile
import threading
import typing
from collections import Counter

import click

from int4onnx.config import QuantConfig
from int4onnx.errors import Int4OnnxError, Interrupted


class _OneLineUsageError(click.UsageError):
    """A usage mistake (unknown choice, not a number, missing argument) printed on one line."""

    def show(self, file=None):
        hint = f" (see '{self.ctx.command_path} --help')" if self.ctx else ""
        click.echo(f"int4onnx: error: {self.format_message()}{hint}", err=True)


def _raise_interrupted(signum, frame):
    raise Interrupted(signum)


@contextlib.contextmanager
def _terminate_as_interrupt():
    """SIGTERM and SIGHUP end a conversion like Ctrl-C does: through the clean-up code, so no
    temporary file is left. (SIGKILL cannot be caught; see docs/errors.md.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    sigs = [s for s in (signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None]
    old = {s: signal.signal(s, _raise_interrupted) for s in sigs}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


class _Group(click.Group):
    """Turns library errors into one line and an exit code."""

    def invoke(self, ctx):
        def debug() -> bool:  # --debug is parsed inside super().invoke
            return bool(ctx.obj and ctx.obj.get("debug"))

        try:
            with _terminate_as_interrupt():
                return super().invoke(ctx)
        except Int4OnnxError as exc:
            if debug():
                raise
            click.echo(f"int4onnx: error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except click.UsageError as exc:
            if isinstance(exc, _OneLineUsageError):
                raise
            raise _OneLineUsageError(exc.format_message(), exc.ctx) from None
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except KeyboardInterrupt as exc:
            name = signal.Signals(getattr(exc, "signum", signal.SIGINT)).name
            if getattr(exc, "output_written", False) or (ctx.obj and ctx.obj.get("written")):
                click.echo(f"int4onnx: interrupted ({name}) after the output was written", err=True)
            else:
                click.echo(f"int4onnx: interrupted ({name}); nothing was written and any previous output is "
                           "unchanged", err=True)
            ctx.exit(128 + int(getattr(exc, "signum", signal.SIGINT)))
        except MemoryError:
            if debug():
                raise
            click.echo("int4onnx: error: out of memory; nothing was written", err=True)
            ctx.exit(1)
        except OSError as exc:
            if debug():
                raise
            where = f": {exc.filename}" if exc.filename else ""
            click.echo(f"int4onnx: error: {exc.strerror or exc}{where}; nothing was written", err=True)
            ctx.exit(1)
        except Exception as exc:
            if debug():
                raise
            click.echo(f"int4onnx: internal error: {type(exc).__name__}: {exc}. This is a bug in int4onnx; "
                       "nothing was written. Run again with --debug for the traceback and report it.", err=True)
            ctx.exit(1)


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="int4onnx")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.option("-v", "--verbose", count=True, help="More logging (-v info and ONNX Runtime's warnings, -vv debug).")
@click.pass_context
def main(ctx, debug, verbose):
    """Convert ONNX MatMul weights to packed INT4 and run them with int4onnx's ONNX Runtime op."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    ctx.obj["verbose"] = verbose
    _configure_logging(verbose)


def _configure_logging(verbose: int) -> None:
    """-v: info, -vv: debug. ONNX Runtime's own log follows (runtime.ort_log_severity): its warnings
    with -v, everything with -vv, and otherwise nothing, since its errors reach us as exceptions and
    are printed on our one line."""
    from int4onnx.runtime import ort_log_severity

    level = logging.WARNING if not verbose else (logging.INFO if verbose == 1 else logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger().setLevel(level)
    import onnxruntime

    onnxruntime.set_default_logger_severity(ort_log_severity())


def _verbose_option(command):
    """-v/--verbose after the subcommand too (`int4onnx convert m.onnx -v`), adding to the group's."""

    def set_level(ctx, param, value):
        if value:
            root = ctx.find_root()
            _configure_logging(value + ((root.obj or {}).get("verbose") or 0))
        return value

    return click.option("-v", "--verbose", count=True, expose_value=False, callback=set_level,
                        help="More logging (-v info and ONNX Runtime's warnings, -vv debug).")(command)


def config_options(command):
    """Every QuantConfig field as a click option of `command`, in field order, with the name, help,
    choices, metavar and default its metadata gives (config.option); the option's value arrives under
    the field's name."""
    hints = typing.get_type_hints(QuantConfig)
    for f in reversed(dataclasses.fields(QuantConfig)):
        meta = f.metadata
        decl = meta.get("cli") or f"--{f.name.replace('_', '-')}"
        hint = hints[f.name]
        if type(None) in typing.get_args(hint):  # X | None
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        default = meta.get("cli_default", f.default)
        kw = {"default": default, "help": meta["help"], "metavar": meta.get("metavar"),
              "show_default": not (default is None or default is False or default == ())}
        if hint is bool:  # a given pair (--symmetric/--asymmetric), --x/--no-x when on by default, or a flag
            if "/" not in decl and default:
                decl = f"{decl}/--no-{decl[2:]}"
            elif "/" not in decl:
                kw["is_flag"] = True
        elif meta.get("choices"):
            kw["type"] = click.Choice(meta["choices"])
        elif meta.get("path"):
            kw["type"] = click.Path(path_type=pathlib.Path)
        elif typing.get_origin(hint) is tuple:
            kw["multiple"] = True
        else:
            kw["type"] = hint
        command = click.option(decl, f.name, **kw)(command)
    return command


def _progress_printer(quiet: bool):
    """A progress callback drawing one bar per phase (calibrating, measuring sensitivity, quantizing)."""
    state = {"bar": None, "label": None}

    def progress(done, total, label):
        if quiet or not sys.stderr.isatty():
            return
        label = label if label in ("calibrating", "measuring sensitivity") else "quantizing"
        if state["bar"] is not None and state["label"] != label:
            state["bar"].__exit__(None, None, None)
            state["bar"] = None
        if state["bar"] is None:
            if done >= total:
                return
            state["bar"] = click.progressbar(length=total, label=label, file=sys.stderr, show_pos=True)
            state["bar"].__enter__()
            state["label"] = label
        bar = state["bar"]
        bar.update(done - bar.pos)
        if done >= total:
            bar.__exit__(None, None, None)
            state["bar"] = None

    return progress


@main.command()
@_verbose_option
@click.argument("model", type=click.Path(dir_okay=True, path_type=pathlib.Path))
@click.option("-o", "--output", type=click.Path(path_type=pathlib.Path),
              help="Output model (default: MODEL with .int4.onnx); for a model folder, a new or empty folder "
                   "(default: MODEL-int4).")
@config_options
@click.option("--report", type=click.Path(dir_okay=False, path_type=pathlib.Path),
              help="Write a JSON report: per-layer shapes, bits, error before/after the method; skipped nodes and why.")
@click.option("--ops-library", type=click.Path(dir_okay=False, path_type=pathlib.Path), metavar="FILE",
              help="GenAI folders: the custom-op library to copy in (default: this installation's, which loads only "
                   "inside Python; give `int4onnx build-native`'s for GenAI's C or Java API).")
@click.option("-q", "--quiet", is_flag=True, help="No progress or summary.")
def convert(model, output, report, ops_library, quiet, **options):
    """Quantize the MatMul/Gemm weights of MODEL and write the converted model.

    MODEL is an .onnx file or a model folder written by ONNX Runtime GenAI's model builder or by
    optimum (genai_config.json / config.json, model.onnx, tokenizer files): the output is then a new
    folder (-o, default MODEL-int4) with the same files and the model converted, ready to run."""
    from int4onnx.pipeline import quantize_file

    if options["symmetric"] is None:
        options["symmetric"] = options["quant_type"] == "nf4"
    if options["calibration_text"] and not options["tokenizer"]:  # the tokenizer beside the model, or in its folder
        from int4onnx.folder import model_path
        from int4onnx.tools.generate import find_tokenizer

        options["tokenizer"] = find_tokenizer(model_path(model) if model.is_dir() else model)
    config = QuantConfig(**options)
    bits, method, fmt = config.bits, config.method, config.format
    from int4onnx import folder as folders

    is_folder = model.is_dir()
    if is_folder:  # a model folder (GenAI, optimum) in, a folder out
        output = output if output is not None else folders.default_output(model, bits)
    else:
        name = model.name[:-5] if model.name.endswith(".onnx") else model.name
        default_name = f"{name}.int4.onnx" if bits == 4 else f"{name}.int{bits}.onnx"
        if output is None:
            output = model.with_name(default_name)
        elif output.is_dir():  # like cp: into the folder, under the default name
            output = output / default_name
    also = []
    if report is not None:
        from int4onnx.io import check_output_path

        check_output_path(report, "--report")
        also.append(("--report", report))

    written = None
    if is_folder:
        result, written = folders.convert_folder(model, output, config, progress=_progress_printer(quiet),
                                                 also_writes=also, ops_library=ops_library)
    else:
        if ops_library is not None:
            from int4onnx.errors import ConfigError

            raise ConfigError("--ops-library is for model folders (GenAI's genai_config.json); a single .onnx "
                              "output loads no library by itself")
        result = quantize_file(model, output, config, progress=_progress_printer(quiet), also_writes=also)
    click.get_current_context().obj["written"] = True
    if report is not None:
        _write_atomic(report, result.to_json() + "\n")
    if quiet:
        return
    if written is not None:
        click.echo(f"wrote {written.folder}/ ({written.kind} folder: {written.model.name} converted, "
                   f"{len(written.copied)} other file(s) copied"
                   + (f", {written.library.name} added)" if written.library else ")"))
    else:
        click.echo(f"wrote {output}")
    by_bits = Counter(layer.bits for layer in result.layers)
    mix = ", ".join(f"{n} at {b}-bit" for b, n in sorted(by_bits.items()))
    click.echo(f"  quantized {result.nodes_rewritten} MatMul/Gemm node(s), {len(result.layers)} weight(s) ({mix}), "
               f"{result.bits_per_weight:.2f} bits/weight (scales and zero points included)")
    ratio = result.input_bytes / max(result.output_bytes, 1)
    change = f"{ratio:.2f}x smaller" if ratio >= 1 else f"{1 / ratio:.2f}x larger"
    click.echo(f"  size {_mb(result.input_bytes)} -> {_mb(result.output_bytes)} ({change}) in {result.seconds:.1f} s")
    cal = result.calibration
    if cal is not None and cal.samples:
        click.echo(f"  calibration: {cal.samples} sample(s) from {cal.source} in {cal.seconds:.1f} s")
    before, after = result.mean_metric("rtn_output_rel_error"), result.mean_metric("output_rel_error")
    if after is not None and method == "rtn":
        click.echo(f"  layer output error on calibration data (mean relative): {after:.4f}")
    elif before is not None and after is not None:
        click.echo(f"  layer output error on calibration data (mean relative): rtn {before:.4f} -> {method} {after:.4f}")
    elif method != "rtn":
        click.echo(f"  weight error (mean relative): rtn {result.mean_metric('rtn_rel_error'):.4f} -> "
                   f"{method} {result.mean_metric('rel_error'):.4f}")
    dead = [layer for layer in result.layers if layer.dead_input_channels]
    if dead:
        n = sum(layer.dead_input_channels for layer in dead)
        click.echo(f"  {len(dead)} weight(s) have input channels ({n} in all) that are (near) zero in every calibration "
                   f"sample: the output error above does not measure their weights (GPTQ rounds them to nearest) "
                   f"(weight error: rtn {result.mean_metric('rtn_rel_error'):.4f} -> {method} "
                   f"{result.mean_metric('rel_error'):.4f}); calibrate on more representative data")
    mp = cal.mixed_precision if cal is not None else None
    if mp:
        click.echo(f"  mixed precision: {mp.layers_4bit} layer(s) 4-bit, {mp.layers_8bit} 8-bit, "
                   f"{mp.layers_float} float; estimated output error {mp.estimated_output_rel_error:.4f}, "
                   f"{mp.estimated_bits_per_weight_all_selected:.2f} bits/weight with float layers counted")
    for e in result.embeddings:
        if e.quantized:
            shared = f", one table with {', '.join(e.shared_with)} (tied)" if e.shared_with else ""
            click.echo(f"  embedding {e.table} [{e.V} x {e.D}]: {e.bits}-bit, {e.bits_per_weight:.2f} "
                       f"bits/weight{shared}")
        else:
            click.echo(f"  embedding {e.table} left float: {e.reason}")
    decided = Counter(layer.decision for layer in result.layers if layer.decision is not None and
                      not layer.decision.startswith("mixed precision"))
    for reason, n in decided.items():
        click.echo(f"  {n} x {reason}")
    if result.skipped:
        click.echo(f"  left float: {len(result.skipped)} MatMul/Gemm node(s)")
        for reason, n in Counter(s.reason for s in result.skipped).most_common():
            names = [s.name for s in result.skipped if s.reason == reason]
            shown = ", ".join(names[:4]) + (f", ... ({n - 4} more)" if n > 4 else "")
            click.echo(f"    {n} x {reason}: {shown}")
    click.echo(f"  to run it: {folders.how_to_run(fmt, written.kind if written else None, written.folder if written else output)}")


def _write_atomic(path: pathlib.Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@main.command()
@_verbose_option
@click.argument("model", type=click.Path(path_type=pathlib.Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def inspect(model, as_json):
    """Show what MODEL (an .onnx file or a model folder) has quantized: layers, bits per weight, sizes."""
    from int4onnx.folder import model_path
    from int4onnx.tools.inspect import describe

    info = describe(model_path(model))
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    layers = info["quantized_layers"]
    click.echo(f"{info['path']}: {_mb(info['file_bytes'])} on disk (external data included), {_mb(info['initializer_bytes'])} of initializers")
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


@main.command("build-native")
@_verbose_option
@click.option("--target", default="x86_64", show_default=True, metavar="TARGET",
              help="aarch64-linux-gnu (aarch64, arm64), armv7 (arm-linux-gnueabihf) or x86_64.")
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(file_okay=False, path_type=pathlib.Path),
              help="Directory for libint4onnx_ops.so.")
@click.option("--cc", default=None, help="C compiler (default: cc for the host, else <triple>-gcc).")
@click.option("--ort-include-dir", default=None, type=click.Path(file_okay=False, path_type=pathlib.Path),
              help="Directory with onnxruntime_c_api.h (default: $ORT_INCLUDE_DIR, .deps/, /usr/include).")
def build_native(target, out_dir, cc, ort_include_dir):
    """Build the ONNX Runtime custom-op library for a device without Python (needs the source tree)."""
    from int4onnx.tools.build_native import build_native as build

    result = build(target, out_dir, cc=cc, ort_include_dir=ort_include_dir)
    click.echo(f"wrote {result.library} ({result.size:,} bytes stripped; {result.triple}, {result.compiler})")
    click.echo("  register it in the app's session options: RegisterCustomOpsLibrary_V2 (C), "
               "register_custom_ops_library (Python); see docs/deploy.md")


@main.command("eval")
@_verbose_option
@click.argument("reference", type=click.Path(path_type=pathlib.Path))
@click.argument("candidate", type=click.Path(path_type=pathlib.Path))
@click.option("--data", type=click.Path(path_type=pathlib.Path), metavar="PATH",
              help="Inputs: an .npz (arrays keyed by input name) or a directory of .npz files.")
@click.option("--text", type=click.Path(path_type=pathlib.Path), metavar="FILE",
              help="Inputs for a causal LM: windows of tokens from this text (needs --tokenizer).")
@click.option("--samples", type=int, default=8, show_default=True, help="Text windows (or .npz files) to compare on.")
@click.option("--sequence-length", type=int, default=None,
              help="Tokens per text window (default: 512, or the model's context length when shorter).")
@click.option("--perplexity", "ppl_text", type=click.Path(path_type=pathlib.Path), metavar="TEXT",
              help="Also compute both models' perplexity on this text (causal LMs; needs --tokenizer).")
@click.option("--tokenizer", type=click.Path(path_type=pathlib.Path), metavar="FILE",
              help="tokenizer.json or sentencepiece .model (BOS is prepended when the tokenizer has one; default for a "
                   "model folder: its own).")
@click.option("--window", type=int, default=None,
              help="Perplexity: tokens per window (default: 512, or the model's context length when shorter).")
@click.option("--stride", type=int, default=None,
              help="Perplexity: sliding windows advancing by this many tokens (default: non-overlapping).")
@click.option("--skip-chars", type=int, default=0, show_default=True,
              help="Text inputs and perplexity: start after this many characters.")
@click.option("--max-chars", type=int, default=None, help="Text inputs and perplexity: read at most this many characters.")
@click.option("--threads", type=int, default=None, help="ONNX Runtime intra-op threads.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def eval_(reference, candidate, data, text, samples, sequence_length, ppl_text, tokenizer, window, stride, skip_chars,
          max_chars, threads, as_json):
    """Compare CANDIDATE (e.g. a converted model) with REFERENCE on the same inputs (.onnx files or model folders)."""
    from int4onnx.calibrate import FeedSource
    from int4onnx.errors import ConfigError
    from int4onnx.folder import model_path
    from int4onnx.tools.evaluate import evaluate

    folders = [m for m in (candidate, reference) if m.is_dir()]
    reference, candidate = model_path(reference), model_path(candidate)
    if (text or ppl_text) and not tokenizer and folders:  # a model folder's own tokenizer
        from int4onnx.tools.generate import find_tokenizer

        tokenizer = find_tokenizer(model_path(folders[0]))
    if data and text:
        raise ConfigError("give either --data or --text, not both")
    if (text or ppl_text) and not tokenizer:
        raise ConfigError("--text and --perplexity need --tokenizer (a tokenizer.json or sentencepiece .model)")
    if samples < 1 or min(sequence_length or 1, window or 1) < 1 or (stride is not None and not 1 <= stride <= (window or stride)):
        raise ConfigError("--samples, --sequence-length and --window must be at least 1; --stride between 1 and --window")
    source = None
    if data:
        source = FeedSource(path=str(data), samples=samples)
    elif text:
        source = FeedSource(text=str(text), tokenizer=str(tokenizer), samples=samples, sequence_length=sequence_length,
                            skip_chars=skip_chars, max_chars=max_chars)
    result = evaluate(reference, candidate, source, str(ppl_text) if ppl_text else None,
                      str(tokenizer) if tokenizer else None, window=window, stride=stride, skip_chars=skip_chars,
                      max_chars=max_chars, threads=threads)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"reference {reference}\ncandidate {candidate}")
    if "outputs" in result:
        click.echo(f"{result['samples']} sample(s) from {result['data']}")
        click.echo(f"  {'output':<24} {'cos mean':>9} {'cos min':>9} {'rel err':>9} {'max err':>10} {'top-1':>7}")
        for name, m in result["outputs"].items():
            top1 = f"{m['top1_agreement']:.4f}" if "top1_agreement" in m else "-"
            click.echo(f"  {name[:24]:<24} {m['cosine_mean']:>9.5f} {m['cosine_min']:>9.5f} {m['rel_error']:>9.5f} "
                       f"{m['max_abs_error']:>10.4g} {top1:>7}")
    if "perplexity" in result:
        p = result["perplexity"]
        click.echo(f"perplexity on {p['tokens']} tokens of {p['text']} (window {p['window']}, stride {p['stride']}): "
                   f"reference {p['reference']:.4f}, candidate {p['candidate']:.4f} "
                   f"({100 * (p['candidate'] / p['reference'] - 1):+.2f}%)")


def _int_list(ctx, param, value):
    try:
        vals = [int(v) for v in str(value).split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None
    if not vals or min(vals) < 1:
        raise click.BadParameter(f"expected positive integers, got {value!r}")
    return vals


@main.command()
@_verbose_option
@click.argument("model", type=click.Path(path_type=pathlib.Path))
@click.option("--vs", "others", multiple=True, type=click.Path(path_type=pathlib.Path),
              help="Another model with the same inputs to time against MODEL (repeatable).")
@click.option("--threads", type=int, default=None, help="intra_op_num_threads (default: all cores).")
@click.option("--seq", default="1", callback=_int_list, show_default=True,
              help="Comma-separated lengths for the dynamic dimensions after the first (tokens).")
@click.option("--batch", type=int, default=1, show_default=True, help="Size of the first dynamic dimension.")
@click.option("--repeats", type=int, default=20, show_default=True, help="Timed rounds (each runs every model once).")
@click.option("--vocab", type=int, default=32, show_default=True, help="Integer inputs (token ids) are drawn from [0, vocab).")
@click.option("--past", type=int, default=0, show_default=True,
              help="Causal LMs with a KV cache: tokens already in the cache (--seq 1 --past N times one decoding step).")
@click.option("--spin", is_flag=True,
              help="Keep ONNX Runtime's thread spinning on (off by default: idle sessions' spinning threads compete "
                   "with the one being timed).")
@click.option("--op-threads", type=int, default=None,
              help="Run MODEL's MatMulInt4 nodes on this many threads of int4onnx's own pool (spinning between "
                   "calls) and its other nodes on one; the --vs models keep --threads. 0: ONNX Runtime's pool.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def bench(model, others, threads, seq, batch, repeats, vocab, past, spin, op_threads, as_json):
    """Time MODEL (and --vs models) in one process, alternating, with random inputs.

    Prints the median and 90th-percentile latency per model and shape; on each --vs model's row,
    MODEL's speed-up over it (its median / MODEL's median: above 1 means MODEL is faster) and how
    close its first output is to MODEL's.
    """
    from int4onnx.errors import ConfigError
    from int4onnx.folder import model_path
    from int4onnx.tools.bench import bench_models

    model, others = model_path(model), [model_path(m) for m in others]
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {threads}")
    if batch < 1:
        raise ConfigError(f"--batch must be at least 1, got {batch}")
    if vocab < 1:
        raise ConfigError(f"--vocab must be at least 1 (token ids are drawn from [0, vocab)), got {vocab}")
    if repeats < 1:
        raise ConfigError(f"--repeats must be at least 1, got {repeats}")
    result = bench_models([model, *others], threads=threads, shapes=[(batch, s) for s in seq], repeats=repeats,
                          vocab=vocab, spin=spin, past=past, op_threads=op_threads)
    if as_json:
        click.echo(json.dumps({"threads": result.threads, "repeats": result.repeats, "rows": result.rows}, indent=2))
        return
    own = (f"; {model.name}'s MatMulInt4 on {op_threads} threads of int4onnx's own pool, its other nodes on one"
           if op_threads and op_threads >= 2 else "")
    click.echo(f"{result.threads} thread(s){own}, median of {result.repeats} alternating rounds")
    click.echo(result.table())


@main.command()
@click.argument("model", type=click.Path(path_type=pathlib.Path))
@click.option("--prompt", required=True, help="Text to continue.")
@click.option("--tokenizer", type=click.Path(path_type=pathlib.Path), metavar="FILE",
              help="tokenizer.json or sentencepiece .model (default: the one beside MODEL).")
@click.option("--max-new-tokens", type=int, default=64, show_default=True, help="Stop after this many new tokens.")
@click.option("--temperature", type=float, default=0.0, show_default=True, help="0: greedy; above 0: sampling.")
@click.option("--top-k", type=int, default=0, show_default=True, help="Sample among the k most likely tokens (0: all).")
@click.option("--top-p", type=float, default=1.0, show_default=True, help="Sample among the most likely tokens up to this probability.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the sampler.")
@click.option("--chat", is_flag=True, help="Wrap the prompt in the chat template of the tokenizer's tokenizer_config.json.")
@click.option("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all cores).")
@click.option("--op-threads", type=int, default=None,
              help="Run the MatMulInt4 nodes on this many threads of int4onnx's own pool and the other nodes on one: "
                   "faster decoding, slower prefill (docs/performance.md). 0 or unset: ONNX Runtime's pool.")
def generate(model, prompt, tokenizer, max_new_tokens, temperature, top_k, top_p, seed, chat, threads, op_threads):
    """Continue --prompt with the causal LM MODEL (KV cache when it has one); print the text, then the speed."""
    from int4onnx.tools.generate import generate as run

    result = run(model, prompt, tokenizer=tokenizer, max_new_tokens=max_new_tokens, temperature=temperature,
                 top_k=top_k, top_p=top_p, chat=chat, threads=threads, seed=seed, op_threads=op_threads)
    click.echo(result.text)
    click.echo(result.speed_line(), err=True)


if __name__ == "__main__":  # pragma: no cover
    main()
