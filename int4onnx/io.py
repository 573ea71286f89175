"""Loading and atomic, memory-bounded saving of ONNX models (external data included).

Saving never holds the whole output in memory: onnx_ir writes every initializer to an external data
file one at a time (lazy quantized weights are computed as they are written), and a model small
enough for one file is then assembled by streaming those bytes into a protobuf file (`_inline`).
Everything is written inside a temporary directory next to the output and renamed into place at the
end, so a failure or an interrupt leaves any previous output as it was.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import pathlib
import re
import shutil
import signal
import tempfile
import threading

import onnx
import onnx_ir as ir

from int4onnx.errors import ModelLoadError, OutputError, first_line

# Above this many bytes of initializers the output keeps its weights in an external data file
# (protobuf cannot serialise a message over 2 GiB).
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
# Initializers smaller than this stay in the protobuf while saving; larger ones are streamed.
_STREAM_THRESHOLD = 1024
_COPY_CHUNK = 8 << 20


# -- loading ------------------------------------------------------------------------------------


def load_model(path) -> ir.Model:
    """Load an ONNX model; every failure is a ModelLoadError with a message a user can act on."""
    path = pathlib.Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if path.is_dir():
        raise ModelLoadError(f"{path}: is a directory, expected an .onnx file")
    if not path.is_file():
        raise ModelLoadError(f"{path}: is not a regular file")
    if not os.access(path, os.R_OK):
        raise ModelLoadError(f"{path}: permission denied")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"{path}: file is empty")
    try:
        model = ir.load(str(path))
    except Exception as exc:  # protobuf DecodeError, onnx errors, IR deserialisation errors
        raise ModelLoadError(f"{path}: not a valid ONNX model ({type(exc).__name__}: {first_line(exc, 'no details')})") from exc
    if model.ir_version < 1:
        # protobuf parses many byte strings as some message; an ONNX file always states its IR version
        raise ModelLoadError(f"{path}: not a valid ONNX model (no IR version; is this an ONNX file?)")
    check_tensors(model, path)
    check_external_data(model, path)
    return model


# elements per entry of a TensorProto's typed data field, by data type (raw_data is checked in bytes)
_PER_ENTRY = {onnx.TensorProto.COMPLEX64: 0.5, onnx.TensorProto.COMPLEX128: 0.5, onnx.TensorProto.INT4: 2,
              onnx.TensorProto.UINT4: 2}


def _constant_tensors(model: ir.Model):
    """(kind, name, tensor) of every initializer and every tensor attribute (Constant nodes), all graphs."""
    for graph in model.graphs():
        for value in graph.initializers.values():
            if value.const_value is not None:
                yield "initializer", value.name, value.const_value
        for node in graph:
            for attr in node.attributes.values():
                if attr.type == ir.AttributeType.TENSOR and attr.value is not None:
                    yield f"node '{node.name}' attribute", attr.name, attr.value


def check_tensors(model: ir.Model, where) -> None:
    """Every constant's dimensions are non-negative and its data is as long as they say, so a damaged
    or hand-edited file is a ModelLoadError here, not a numpy error in the middle of a conversion."""
    for kind, name, tensor in _constant_tensors(model):
        dims = [d if isinstance(d, int) else -1 for d in tensor.shape.dims]
        if any(d < 0 for d in dims):
            raise ModelLoadError(f"{where}: {kind} '{name}' has dims {list(tensor.shape.dims)}: a dimension is "
                                 "negative or not a number; the file is damaged: export the model again")
        proto = getattr(tensor, "raw", None)
        if not isinstance(proto, onnx.TensorProto) or proto.data_location == onnx.TensorProto.EXTERNAL:
            continue  # tensors built in memory are consistent; external data is checked by check_external_data
        count = 1
        for d in dims:
            count *= d
        dtype = tensor.dtype
        if proto.HasField("raw_data") or dtype == ir.DataType.UNDEFINED:
            have, need, unit = len(proto.raw_data), -(-count * dtype.bitwidth // 8) if dtype.bitwidth else 0, "bytes"
            if dtype == ir.DataType.STRING:
                continue
        else:
            try:
                field = onnx.helper.tensor_dtype_to_field(proto.data_type)
            except (KeyError, ValueError, TypeError):
                continue
            per = _PER_ENTRY.get(proto.data_type, 1)
            have, need, unit = len(getattr(proto, field)), int(-(-count // per)), f"{field} entries"
        if have != need:
            raise ModelLoadError(
                f"{where}: {kind} '{name}' has dims {dims} ({count:,} {dtype.name} values: {need:,} {unit}) but holds "
                f"{have:,} {unit}; the file is damaged or was written wrongly: export the model again")


def external_tensors(model: ir.Model):
    """(value, tensor) for every initializer of every graph whose data lives in an external file."""
    for graph in model.graphs():
        for value in graph.initializers.values():
            if isinstance(value.const_value, ir.ExternalTensor):
                yield value, value.const_value


def check_external_data(model: ir.Model, path: pathlib.Path) -> None:
    """Every external tensor's file must exist, stay inside the model's folder, and be long enough."""
    for value, tensor in external_tensors(model):
        data = pathlib.Path(tensor.base_dir) / tensor.location
        if not data.is_file():
            raise ModelLoadError(
                f"{path}: initializer '{value.name}' lives in external data file '{tensor.location}', "
                f"which is missing (looked for {data}); keep the .onnx and its data file together"
            )
        need = (tensor.offset or 0) + (tensor.length if tensor.length is not None else tensor.nbytes)
        size = data.stat().st_size
        if size < need:
            raise ModelLoadError(
                f"{path}: external data file '{tensor.location}' is truncated "
                f"({size} bytes, initializer '{value.name}' needs {need})"
            )
        if tensor.length is not None and tensor.length != tensor.nbytes:
            raise ModelLoadError(
                f"{path}: initializer '{value.name}' has {tensor.length} bytes in '{tensor.location}' but its "
                f"shape and type need {tensor.nbytes}"
            )
        # onnx_ir refuses data paths outside the model's folder (and hard links) when it maps the
        # data; run that check now rather than in the middle of the conversion
        check = getattr(tensor, "_check_path_containment", None)
        try:
            check() if check else tensor.numpy()
        except (ValueError, OSError) as exc:
            raise ModelLoadError(f"{path}: initializer '{value.name}': {first_line(exc, 'no details')}") from exc
        finally:
            tensor.release()


def external_data_files(model: ir.Model) -> set[pathlib.Path]:
    return {pathlib.Path(os.path.realpath(pathlib.Path(t.base_dir) / t.location)) for _, t in external_tensors(model)}


def model_file_bytes(path, model: ir.Model) -> int:
    """Size of a model file plus the external data files it references (no second parse)."""
    return os.path.getsize(path) + sum(os.path.getsize(p) for p in external_data_files(model))


def initializer_bytes(model: ir.Model) -> int:
    return sum(v.const_value.nbytes for g in model.graphs() for v in g.initializers.values()
               if v.const_value is not None)


# -- output checks ------------------------------------------------------------------------------


def data_path(output_path) -> pathlib.Path:
    """Where the external data of an output model goes (when it has any)."""
    out = pathlib.Path(output_path)
    return out.with_name(out.name + ".data")


def check_output_path(output_path, what: str = "output") -> pathlib.Path:
    """Refuse outputs that are not regular files or sit in a missing or read-only folder. `what` names
    the path in messages (the CLI's report: "--report")."""
    out = pathlib.Path(output_path)
    if out.is_dir():
        raise OutputError(f"{what} {out} is a directory; give a file name"
                          + (" such as model.int4.onnx" if what == "output" else ""))
    if out.exists() and not out.is_file():
        raise OutputError(f"{what} {out} exists and is not a regular file")
    parent = out.parent if str(out.parent) else pathlib.Path(".")
    if parent.exists() and not parent.is_dir():
        raise OutputError(f"{what} directory {parent} is not a directory")
    if not parent.is_dir():
        raise OutputError(f"{what} directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{what} directory {parent} is not writable")
    return out


def _same_file(a: pathlib.Path, b: pathlib.Path) -> bool:
    """Same path after resolving symlinks, or (both existing) the same inode: hard links too."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_overwrites(outputs, reads) -> None:
    """No file a run writes may be a file it reads, and no two outputs may be one file.

    outputs, reads: (what, path) pairs, e.g. ("output", "o.onnx"), ("--report", "r.json");
    ("the input model", "m.onnx"), ("--tokenizer", "tok.model"). This is the one check of that rule:
    every output path (the model, its .data file, the report) against every input (the model, its
    external data files, calibration .npz files, calibration text, tokenizer)."""
    outputs = [(what, pathlib.Path(p)) for what, p in outputs if p is not None]
    reads = [(what, pathlib.Path(p)) for what, p in reads if p is not None]
    for i, (what, out) in enumerate(outputs):
        for read_what, src in reads:
            if _same_file(out, src):
                raise OutputError(f"{what} {out} would overwrite {read_what} {src}, which this run reads; "
                                  "choose another path")
        for other_what, other in outputs[:i]:
            if _same_file(out, other):
                other_what = other_what if other_what.startswith(("the ", "-")) else f"the {other_what}"
                raise OutputError(f"{what} {out} would overwrite {other_what} {other}; choose another path")


# -- atomic save --------------------------------------------------------------------------------

_TMP_MARK = "int4onnx-"
# the output whose folder takes this run's temporary files (see temporaries_next_to)
_OUTPUT: contextvars.ContextVar[pathlib.Path | None] = contextvars.ContextVar("int4onnx_output", default=None)


@contextlib.contextmanager
def temporaries_next_to(output_path):
    """Temporary folders made inside this block (make_temp_dir: calibration's copy of the model, the
    output being written) go next to `output_path`, where remove_stale_temporaries finds what a
    SIGKILL left; stale ones of that output are removed first."""
    out = pathlib.Path(output_path)
    remove_stale_temporaries(out)
    token = _OUTPUT.set(out)
    try:
        yield
    finally:
        _OUTPUT.reset(token)


def make_temp_dir(kind: str = "") -> pathlib.Path:
    """A new temporary folder `.<output>.int4onnx-<pid>-<kind>-<random>.tmp` next to the current output
    (temporaries_next_to), or in the system's temporary folder when there is none (in-memory API use).
    The caller removes it (shutil.rmtree)."""
    out = _OUTPUT.get()
    tag = f"{kind}-" if kind else ""
    if out is None:
        return pathlib.Path(tempfile.mkdtemp(prefix=f"{_TMP_MARK}{os.getpid()}-{tag}"))
    try:
        return pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.{_TMP_MARK}{os.getpid()}-{tag}", suffix=".tmp",
                                             dir=out.parent))
    except OSError as exc:
        raise OutputError(f"cannot write {out}: creating a file in {out.parent} failed ({exc.strerror or exc})") from exc


def _tmp_pattern(out: pathlib.Path) -> re.Pattern:
    return re.compile(re.escape(f".{out.name}.{_TMP_MARK}") + r"(\d+)-.*\.tmp")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process
        return True
    return True


def remove_stale_temporaries(out: pathlib.Path) -> list[pathlib.Path]:
    """Delete temporary folders left next to `out` by conversions that were killed (SIGKILL, power
    loss) before they could clean up: those whose process no longer exists on this machine."""
    pattern = _tmp_pattern(out)
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(out.parent):
            m = pattern.fullmatch(entry.name)
            if m and entry.is_dir(follow_symlinks=False) and int(m.group(1)) != os.getpid() \
                    and not _pid_alive(int(m.group(1))):
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(pathlib.Path(entry.path))
    return removed


@contextlib.contextmanager
def _signals_deferred():
    """Hold SIGINT/SIGTERM/SIGHUP while the renames run, so an interrupt cannot fall between them;
    a signal that arrives meanwhile is re-delivered at the end."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    sigs = [s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None]
    pending: list[int] = []
    old = {}
    for s in sigs:
        old[s] = signal.signal(s, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        for s in sigs:
            signal.signal(s, old[s])
        for s in pending[:1]:
            os.kill(os.getpid(), s)


def _fsync(path: pathlib.Path) -> None:
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if path.is_dir() else os.O_RDONLY
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems (and all directories on some systems) cannot be synced
        pass
    finally:
        os.close(fd)


def save_model_atomic(model: ir.Model, output_path, external_data: bool | None = None) -> list[pathlib.Path]:
    """Write the model (and its external data) under temporary names in the target directory, then
    rename them into place, data file first. A failure or interrupt leaves any previous output intact
    and removes the temporary files. Memory stays bounded by the largest initializer (lazy
    initializers are evaluated one at a time, as they are written). Returns the files written."""
    out = pathlib.Path(output_path)
    if external_data is None:
        external_data = initializer_bytes(model) > EXTERNAL_DATA_THRESHOLD
    data_name = data_path(out).name
    with temporaries_next_to(out):
        tmpdir = make_temp_dir()
    try:
        tmp_model = tmpdir / out.name
        # string tensors cannot live in external data: a model with large ones is serialised in memory
        strings = any(v.const_value is not None and v.const_value.dtype == ir.DataType.STRING
                      and v.const_value.nbytes > _STREAM_THRESHOLD for g in model.graphs() for v in g.initializers.values())
        try:
            if strings and not external_data:
                ir.save(model, str(tmp_model))
            else:
                # every initializer above the threshold goes to the data file, one at a time
                ir.save(model, str(tmp_model), external_data=data_name, size_threshold_bytes=_STREAM_THRESHOLD)
            if not external_data and not strings:
                single = tmpdir / (out.name + ".single")
                _inline(tmp_model, tmpdir, single)
                os.replace(single, tmp_model)
                (tmpdir / data_name).unlink(missing_ok=True)
            files = [tmpdir / data_name, tmp_model] if (tmpdir / data_name).exists() else [tmp_model]
            for f in files:
                _fsync(f)
        except OSError as exc:
            raise OutputError(f"cannot write {out}: {exc.strerror or exc}") from exc
        written = []
        try:
            with _signals_deferred():
                for f in files:
                    os.replace(f, out.parent / f.name)
                    written.append(out.parent / f.name)
        except KeyboardInterrupt as exc:  # a signal held back during the renames: the output is complete
            exc.output_written = True
            raise
        _fsync(out.parent)
        return written
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def publish_folder(tmp: pathlib.Path, out) -> None:
    """Rename the finished temporary folder `tmp` (made by make_temp_dir next to `out`) to `out`, a
    folder that does not exist or is empty, with interrupts held back while it happens."""
    out = pathlib.Path(out)
    umask = os.umask(0o022)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # a folder like mkdir's, not mkdtemp's private 0700
    for root, _, names in os.walk(tmp):
        for name in names:
            _fsync(pathlib.Path(root) / name)
    try:
        with _signals_deferred():
            os.replace(tmp, out)
    except KeyboardInterrupt as exc:  # a signal held back during the rename: the output is complete
        exc.output_written = True
        raise
    except OSError as exc:
        raise OutputError(f"cannot write {out}: {exc.strerror or exc}") from exc
    _fsync(out.parent if str(out.parent) else pathlib.Path("."))

# -- streaming a model with external data into one protobuf file ----------------------------------
#
# Protobuf writes a message's fields in field-number order, an embedded message as a tag, its
# length and its bytes. Knowing every tensor's size in advance, the ModelProto can be written with
# each initializer's raw_data copied from the data file in chunks. The result is byte for byte what
# onnx.save would write for the same model loaded into memory (tests check this).

_WIRE_LEN = 2


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _tag(number: int) -> bytes:
    return _varint(number << 3 | _WIRE_LEN)


def _number(message_type, field: str) -> int:
    return message_type.DESCRIPTOR.fields_by_name[field].number


def _split(message, number: int, drop=()) -> tuple[bytes, bytes]:
    """Serialised fields of `message` numbered below / above `number` (fields in `drop` left out)."""
    low, high = type(message)(), type(message)()
    low.CopyFrom(message)
    high.CopyFrom(message)
    for fd, _ in message.ListFields():
        if fd.number >= number or fd.name in drop:
            low.ClearField(fd.name)
        if fd.number <= number or fd.name in drop:
            high.ClearField(fd.name)
    return low.SerializeToString(), high.SerializeToString()


def _external_info(tensor: onnx.TensorProto) -> tuple[str, int, int] | None:
    if tensor.data_location != onnx.TensorProto.EXTERNAL:
        return None
    info = {e.key: e.value for e in tensor.external_data}
    return info["location"], int(info.get("offset", 0)), int(info["length"])


def _read_external(tensor: onnx.TensorProto, base: pathlib.Path) -> None:
    location, offset, length = _external_info(tensor)
    with open(base / location, "rb") as f:
        f.seek(offset)
        tensor.raw_data = f.read(length)
    del tensor.external_data[:]
    tensor.ClearField("data_location")


def _inline_nested(graph: onnx.GraphProto, base: pathlib.Path) -> None:
    """Initializers of subgraphs (If/Loop bodies) are read into memory: they are rarely large."""
    for node in graph.node:
        for attr in node.attribute:
            subgraphs = [attr.g] if attr.HasField("g") else list(attr.graphs)
            for sub in subgraphs:
                for t in sub.initializer:
                    if _external_info(t):
                        _read_external(t, base)
                _inline_nested(sub, base)


def _inline(model_path: pathlib.Path, base: pathlib.Path, dest: pathlib.Path) -> None:
    model = onnx.load(str(model_path), load_external_data=False)
    graph = model.graph
    _inline_nested(graph, base)
    raw_no = _number(onnx.TensorProto, "raw_data")
    pieces = []  # per initializer: (header bytes, (location, offset, length) or None, trailer bytes)
    for t in graph.initializer:
        ext = _external_info(t)
        if ext is None:
            pieces.append((t.SerializeToString(), None, b""))
        else:
            head, tail = _split(t, raw_no, drop=("external_data", "data_location"))
            pieces.append((head + _tag(raw_no) + _varint(ext[2]), ext, tail))
    init_no = _number(onnx.GraphProto, "initializer")
    graph_head, graph_tail = _split(graph, init_no)
    graph_no = _number(onnx.ModelProto, "graph")
    model_head, model_tail = _split(model, graph_no)

    def record_len(p) -> int:
        n = len(p[0]) + (p[1][2] if p[1] else 0) + len(p[2])
        return len(_tag(init_no)) + len(_varint(n)) + n

    graph_len = len(graph_head) + sum(record_len(p) for p in pieces) + len(graph_tail)
    files: dict[str, object] = {}
    try:
        with open(dest, "wb") as f:
            f.write(model_head + _tag(graph_no) + _varint(graph_len) + graph_head)
            for head, ext, tail in pieces:
                n = len(head) + (ext[2] if ext else 0) + len(tail)
                f.write(_tag(init_no) + _varint(n) + head)
                if ext:
                    location, offset, length = ext
                    src = files.get(location) or files.setdefault(location, open(base / location, "rb"))
                    src.seek(offset)
                    while length:
                        chunk = src.read(min(length, _COPY_CHUNK))
                        if not chunk:
                            raise OSError(f"external data file {location} ended early")
                        f.write(chunk)
                        length -= len(chunk)
                f.write(tail)
            f.write(graph_tail + model_tail)
    finally:
        for src in files.values():
            src.close()

