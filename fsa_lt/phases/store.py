"""The Phase II feature store under ``feature/<config>/<note>/``.

    index.json        what Phase III needs to know: mode, sizes, dtype, the Phase I
                      checkpoint used, class counts and names, head/tail split, confusing classes,
                      tau_s/tau_g/h_r/n_f, and the list of shards with each of their files'
                      dtype, shape and byte size (written last: a store without index.json
                      is incomplete)
    confusion.pt      the K x K matrix of mean softmax scores by true class (row-wise)
    shard_RRR.<array>.npy   (cached mode) one plain ``.npy`` file per array for the contiguous
                      range of training samples ``[start, end)`` that rank RRR extracted:
                      fmaps   n x C x H x W   extract.dtype (fp16 by default)
                      cams    n x H x W       extract.dtype, normalised, for the sample's own class
                      labels  n               int64
                      pooled  n x C           float32, ``fmaps.float().mean((2, 3))`` of the
                                              stored maps (Phase III's real-sample features)

Writing (`ShardWriter`): each file is created at its full size under a temporary name, the
batches are written into it at their row offsets as they come (the store is never held in
memory), then it is flushed to disk and renamed; rank 0 writes ``index.json`` after every
rank has finished. Reading (`open_store`): the shards are stitched *virtually* (`MappedRows`
maps a global row to its shard and row); maps and CAMs are either read into memory (host,
or the CUDA device) or gathered per batch from the memory-mapped files, whose pages the OS
page cache shares between all the processes of a machine. ``extract.store_access`` chooses;
``auto`` takes memory when the store fits comfortably (`choose_access`).
"""
from __future__ import annotations

import ctypes
import json
import mmap
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from ..engine import faults
from ..engine.io import torch_save, write_json
from ..errors import CheckpointError, ConfigError

STORE_FORMAT = "fsa-lt-store/2"
OLD_FORMATS = ("fsa-lt-store/1",)
ARRAYS = ("fmaps", "cams", "labels", "pooled")
ACCESS = ("auto", "memory", "mmap")
# auto: the store goes into memory when it takes at most this share of the free memory
# (free device memory for CUDA; available host memory divided among the processes of the
# machine for the CPU): the rest is for the model, the test features and the batches.
MEMORY_SHARE = 0.5
_CHUNK = 64 << 20  # bytes per read when a store is loaded into memory


def array_name(rank: int, key: str) -> str:
    return f"shard_{rank:03d}.{key}.npy"


def _dtype(name: str) -> np.dtype:
    return np.dtype({"float16": np.float16, "float32": np.float32, "int64": np.int64}[name])


def _torch_dtype(dt: np.dtype) -> torch.dtype:
    return {np.dtype(np.float16): torch.float16, np.dtype(np.float32): torch.float32,
            np.dtype(np.int64): torch.int64}[np.dtype(dt)]


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


# ----------------------------------------------------------------------------- .npy headers
def _write_header(f, dtype: np.dtype, shape) -> int:
    np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                             "fortran_order": False, "shape": tuple(int(s) for s in shape)})
    return f.tell()


def read_header(path: Path) -> tuple[np.dtype, tuple, int]:
    """(dtype, shape, data offset) of a ``.npy`` file; a one-line `CheckpointError` if it is none."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            reader = {(1, 0): np.lib.format.read_array_header_1_0,
                      (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if reader is None:
                raise ValueError(f"unsupported .npy version {version}")
            shape, fortran, dtype = reader(f)
            if fortran:
                raise ValueError("Fortran order")
            return np.dtype(dtype), tuple(shape), f.tell()
    except FileNotFoundError:
        raise CheckpointError(f"feature store file missing: {path}") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path} is not a feature-store array (.npy): {reason}; "
                              "extract again (fsa-lt extract --force)") from None


# ----------------------------------------------------------------------------- writing
class ShardWriter:
    """Rows ``[start, end)`` of the store (one rank's shard), written batch by batch.

    The four files are created at their full size on the first batch (when the map shape is
    known) under temporary names; `append` writes each batch at its row offset (``pwrite``:
    nothing but the current batch is held in memory); `close` checks that every row came,
    flushes the files to disk and renames them into place. Used as a context manager, a
    writer left without `close` (an error) removes its temporary files.

    total_rows: samples of the whole store (every rank), for the disk-space check made
    before anything is written; None: this shard's.
    """

    def __init__(self, folder, rank: int, start: int, end: int, dtype: str = "float16", total_rows: int | None = None):
        self.folder, self.rank, self.start, self.end = Path(folder), int(rank), int(start), int(end)
        self.n = self.end - self.start
        self.dtype = _dtype(dtype)
        self.total_rows = self.n if total_rows is None else int(total_rows)
        self.pos = 0
        self.fmap_shape: tuple[int, int, int] | None = None
        self._fds: dict[str, tuple[int, Path, int, int]] = {}  # key -> (fd, tmp path, data offset, row bytes)
        self.closed = False

    def path(self, key: str) -> Path:
        return self.folder / array_name(self.rank, key)

    def _specs(self, c: int, h: int, w: int) -> dict:
        return {"fmaps": (self.dtype, (self.n, c, h, w)), "cams": (self.dtype, (self.n, h, w)),
                "labels": (np.dtype(np.int64), (self.n,)), "pooled": (np.dtype(np.float32), (self.n, c))}

    def _open(self, c: int, h: int, w: int) -> None:
        self.fmap_shape = (c, h, w)
        specs = self._specs(c, h, w)
        row = sum(dt.itemsize * int(np.prod(shape[1:], dtype=np.int64)) for dt, shape in specs.values())
        need = row * (self.total_rows if self.total_rows > self.n else self.n)
        self.folder.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.folder).free
        if need > free:
            raise ConfigError(f"the cached feature store needs {_gb(need)} of disk under {self.folder}, "
                              f"{_gb(free)} is free: free space, or use extract.mode=online")
        for key, (dt, shape) in specs.items():
            tmp = self.folder / f".{array_name(self.rank, key)}.tmp"
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            with os.fdopen(os.dup(fd), "wb") as f:
                offset = _write_header(f, dt, shape)
            os.ftruncate(fd, offset + dt.itemsize * int(np.prod(shape, dtype=np.int64)))  # full size, sparse
            self._fds[key] = (fd, tmp, offset, dt.itemsize * int(np.prod(shape[1:], dtype=np.int64)))

    def append(self, fmaps: torch.Tensor, cams: torch.Tensor, labels: torch.Tensor) -> None:
        """One batch: maps B x C x H x W, CAMs B x H x W, labels B (any device, any float dtype)."""
        b = int(fmaps.shape[0])
        if self.fmap_shape is None:
            self._open(*(int(s) for s in fmaps.shape[1:]))
        if tuple(fmaps.shape[1:]) != self.fmap_shape or self.pos + b > self.n:
            raise ValueError(f"ShardWriter: batch of {tuple(fmaps.shape)} does not fit rows {self.pos}.. "
                             f"of {self.n} x {self.fmap_shape}")
        tdt = _torch_dtype(self.dtype)
        f = fmaps.detach().to(tdt)
        arrays = {"fmaps": f, "cams": cams.detach().to(tdt), "labels": labels.detach().to(torch.int64),
                  "pooled": f.float().mean((2, 3))}  # what Phase III pools from the stored maps
        for key, t in arrays.items():
            if key == "cams" and faults.due("kill_in_write", str(self.folder)):  # fault injection: maps written, CAMs not
                faults.kill_now()
            fd, tmp, offset, row = self._fds[key]
            data = memoryview(np.ascontiguousarray(t.cpu().numpy())).cast("B")
            at = offset + self.pos * row
            try:
                while data:
                    done = os.pwrite(fd, data, at)
                    data, at = data[done:], at + done
            except OSError as exc:
                raise CheckpointError(f"cannot write feature store file {self.path(key)}: {exc.strerror}") from None
        self.pos += b

    def close(self) -> None:
        """All rows written: flush each file to disk, rename it into place."""
        if self.pos != self.n:
            raise ValueError(f"ShardWriter: {self.pos} of {self.n} rows written to shard {self.rank}")
        if self.fmap_shape is None:
            raise ValueError(f"ShardWriter: shard {self.rank} has no samples; use fewer processes than samples")
        for fd, _, _, _ in self._fds.values():
            os.fsync(fd)
        if faults.due("kill_in_write", str(self.folder)):  # fault injection: die with the shard written, nothing renamed
            faults.kill_now()
        for key, (fd, tmp, _, _) in self._fds.items():
            os.close(fd)
            os.replace(tmp, self.path(key))
        self._fds.clear()
        self.closed = True

    def abort(self) -> None:
        for fd, tmp, _, _ in self._fds.values():
            os.close(fd)
            tmp.unlink(missing_ok=True)
        self._fds.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if not self.closed:
            self.abort()
        return False


def describe_shard(folder: Path, rank: int, start: int, end: int) -> dict:
    """The index entry of a finished shard: range and, per array, file, dtype, shape, bytes."""
    files = {}
    for key in ARRAYS:
        path = Path(folder) / array_name(rank, key)
        dtype, shape, _ = read_header(path)
        files[key] = {"file": path.name, "dtype": dtype.name, "shape": list(shape), "bytes": path.stat().st_size}
    return {"start": int(start), "end": int(end), "files": files}


def write_index(folder: Path, index: dict) -> Path:
    index = dict(index, format=STORE_FORMAT)
    return write_json(folder / "index.json", index)


# ----------------------------------------------------------------------------- checking
def is_complete(folder: Path) -> bool:
    idx = folder / "index.json"
    if not idx.is_file():
        return False
    try:
        index = json.loads(idx.read_text())
    except ValueError:
        return False
    return index.get("format") == STORE_FORMAT and all(
        (folder / f["file"]).is_file() for s in index.get("shards", []) for f in s.get("files", {}).values())


def read_index(folder: Path) -> dict:
    path = folder / "index.json"
    if not path.is_file():
        raise CheckpointError(f"feature store not found: {path} (run Phase II first: fsa-lt extract)")
    try:
        index = json.loads(path.read_text())
    except ValueError as exc:
        raise CheckpointError(f"{path}: corrupt feature-store index ({exc})") from None
    if index.get("format") in OLD_FORMATS:
        raise CheckpointError(f"{path}: a feature store of an older format ({index['format']}) that this version "
                              "does not read; extract again (fsa-lt extract --force)")
    if index.get("format") != STORE_FORMAT:
        raise CheckpointError(f"{path} is not an fsa-lt feature store")
    return index


def _expected_shapes(index: dict, n: int) -> dict:
    c, h, w = index["fmap_shape"]
    return {"fmaps": (index["dtype"], (n, c, h, w)), "cams": (index["dtype"], (n, h, w)),
            "labels": ("int64", (n,)), "pooled": ("float32", (n, c))}


def check_shards(folder: Path, index: dict) -> None:
    """Every file the index lists is there, with the size, dtype and shape it was written with,
    and the shards cover the samples once, in order (cheap: a stat and a header read per file)."""
    if index.get("mode") != "cached":
        return
    try:
        _check_shards(Path(folder), index)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{Path(folder) / 'index.json'}: malformed feature-store index ({type(exc).__name__}: "
                              f"{exc}); extract again (fsa-lt extract --force)") from None


def _check_shards(folder: Path, index: dict) -> None:
    where = folder / "index.json"
    pos = 0
    for s in index["shards"]:
        if "files" not in s or s.get("start") != pos or s.get("end", -1) < pos:
            raise CheckpointError(f"{where}: its shard list does not cover the samples in order (at sample {pos})")
        n = s["end"] - s["start"]
        want = _expected_shapes(index, n)
        for key in ARRAYS:
            f = s["files"].get(key)
            if f is None:
                raise CheckpointError(f"{where}: shard at sample {pos} lists no {key} file")
            path = folder / f["file"]
            if not path.is_file():
                raise CheckpointError(f"feature store file missing: {path} (the store of {where} is incomplete; "
                                      "extract again: fsa-lt extract --force)")
            size = path.stat().st_size
            if size != f["bytes"]:
                raise CheckpointError(f"feature store file {path} has {size} bytes, its index says {f['bytes']}: "
                                      "it was changed or cut short; extract again (fsa-lt extract --force)")
            dtype, shape, offset = read_header(path)
            wdt, wshape = want[key]
            if (dtype.name, list(shape)) != (f["dtype"], list(f["shape"])) or (dtype.name, shape) != (wdt, wshape):
                raise CheckpointError(f"feature store file {path} holds {dtype.name} {list(shape)}, the store of "
                                      f"{where} needs {wdt} {list(wshape)}; extract again (fsa-lt extract --force)")
            if offset + dtype.itemsize * int(np.prod(shape, dtype=np.int64)) != size:
                raise CheckpointError(f"feature store file {path}: {size} bytes do not hold its {dtype.name} "
                                      f"{list(shape)} array; extract again (fsa-lt extract --force)")
        pos = s["end"]
    if pos != index["num_samples"]:
        raise CheckpointError(f"{where}: shards hold {pos} samples, the index says {index['num_samples']}")


# ----------------------------------------------------------------------------- reading
class MappedRows:
    """Rows of several memory-mapped ``.npy`` files as one ``N x ...`` array (the shards stitched
    virtually). ``rows[idx]`` with a LongTensor (or a slice, or an int) gathers the rows into a
    new CPU tensor, from each shard in turn; the files are mapped copy-on-write, so nothing can
    write to them.

    Pages read stay in the OS page cache (shared by every process that maps the same files);
    so that this process's resident memory does not grow towards the store's size over a long
    run, the mappings drop their pages (``madvise(MADV_DONTNEED)``: a later read maps them again
    from the page cache) after every `release_bytes` of rows gathered."""

    device = torch.device("cpu")

    def __init__(self, paths: list[Path], starts: list[int], release_bytes: int = 256 << 20):
        self._maps, parts = [], []
        for path in paths:
            dtype, shape, offset = read_header(path)
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                m = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY) if size else None
            n = int(np.prod(shape, dtype=np.int64))
            arr = (np.frombuffer(m, dtype=dtype, count=n, offset=offset) if m is not None
                   else np.empty(0, dtype)).reshape(shape)
            self._maps.append(m)
            parts.append(torch.from_numpy(arr))
        self.parts = parts
        self.starts = [int(s) for s in starts]
        self._starts = torch.tensor(self.starts, dtype=torch.long)
        self.row_shape = tuple(parts[0].shape[1:])
        self.shape = torch.Size([sum(p.shape[0] for p in parts), *self.row_shape])
        self.dtype = parts[0].dtype
        self._row_bytes = parts[0].element_size() * int(np.prod(self.row_shape, dtype=np.int64))
        self.release_bytes, self._since_release = int(release_bytes), 0

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        return self._row_bytes * self.shape[0]

    def __getitem__(self, idx) -> torch.Tensor:
        n = self.shape[0]
        if isinstance(idx, (int, np.integer)):
            return self[torch.tensor([int(idx) + (n if idx < 0 else 0)])][0]
        if isinstance(idx, slice):
            idx = torch.arange(n)[idx]
        idx = torch.as_tensor(idx).to(device="cpu", dtype=torch.long)
        flat = idx.reshape(-1)
        if flat.numel():
            lo, hi = torch.aminmax(flat)
            if int(lo) < 0 or int(hi) >= n:
                raise IndexError(f"row index out of range for a store of {n} rows")
        if len(self.parts) == 1:
            out = self.parts[0][flat]
        else:  # each shard's rows gathered into their places (as fast as indexing one tensor: measured)
            out = torch.empty((flat.numel(), *self.row_shape), dtype=self.dtype)
            which = torch.searchsorted(self._starts, flat, right=True) - 1
            for s, part in enumerate(self.parts):
                sel = (which == s).nonzero().squeeze(1)
                if sel.numel():
                    out.index_copy_(0, sel, part.index_select(0, flat.index_select(0, sel) - self.starts[s]))
        self._since_release += flat.numel() * self._row_bytes
        if self._since_release >= self.release_bytes:
            self.release()
        return out.reshape(*idx.shape, *self.row_shape)

    def release(self) -> None:
        """Drop the mapped pages from this process (they stay in the page cache)."""
        for m in self._maps:
            if m is not None:
                m.madvise(mmap.MADV_DONTNEED)
        self._since_release = 0


def _available_memory(device: torch.device) -> tuple[int, str]:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free), f"free on {device}"
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        avail = int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    procs = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return int(avail // procs), "available host memory" + (f" / {procs} processes" if procs > 1 else "")


def choose_access(nbytes: int, device, access: str = "auto", available: int | None = None) -> tuple[str, str]:
    """("memory" or "mmap", the reason in words) for a store of `nbytes` (maps + CAMs) read on `device`.

    auto: memory when the store takes at most MEMORY_SHARE of the free memory where it would
    live (`available`: measured when None: free CUDA memory, or the host's available memory
    divided among the machine's processes, LOCAL_WORLD_SIZE), mmap otherwise."""
    if access not in ACCESS:
        raise ConfigError(f"extract.store_access must be one of {', '.join(ACCESS)}, got {access!r}")
    device = torch.device(device)
    size = f"store {_gb(nbytes)}"
    if access != "auto":
        return access, f"{size}; extract.store_access={access}"
    if available is None:
        available, what = _available_memory(device)
    else:
        what = "available"
    if nbytes <= MEMORY_SHARE * available:
        return "memory", f"{size} <= {MEMORY_SHARE:g} x {_gb(available)} {what} (extract.store_access=auto)"
    return "mmap", f"{size} > {MEMORY_SHARE:g} x {_gb(available)} {what} (extract.store_access=auto)"


_MALLOC_SET = False


def _steady_malloc() -> None:
    """Keep the host's batch buffers between iterations (Linux with glibc; elsewhere nothing).

    glibc returns every freed block above 128 KB to the OS, so the few-MB buffers each Phase III
    batch allocates on the host (the gathered maps: 64 x 512 x 7 x 7, and the fusion's float32
    copies on a CPU) are page-faulted anew every iteration: measured 1.5x slower for 512 x 7 x 7
    maps on a CPU (benchmarks/store_scale.py). Freeing one large block raises glibc's thresholds
    by itself (the previous store loader's concatenation did, by accident); this sets them once:
    blocks up to 32 MB come from the heap, which is trimmed above 128 MB free."""
    global _MALLOC_SET
    if _MALLOC_SET or not sys.platform.startswith("linux"):
        return
    _MALLOC_SET = True
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
        libc.mallopt(m_mmap_threshold, 32 << 20)
        libc.mallopt(m_trim_threshold, 128 << 20)
    except (OSError, AttributeError):
        pass


def _read_into(path: Path, dst: torch.Tensor) -> None:
    """The rows of a ``.npy`` file into `dst` (CPU or CUDA), read in chunks (no second copy)."""
    _, shape, offset = read_header(path)
    n = shape[0]
    row = dst.element_size() * int(np.prod(shape[1:], dtype=np.int64))
    step = max(1, _CHUNK // max(row, 1))
    host = dst if dst.device.type == "cpu" else torch.empty((min(step, n), *shape[1:]), dtype=dst.dtype,
                                                            pin_memory=torch.cuda.is_available())
    with open(path, "rb", buffering=0) as f:
        f.seek(offset)
        for a in range(0, n, step):
            b = min(n, a + step)
            buf = host[a:b] if host is dst else host[: b - a]
            view = memoryview(buf.numpy()).cast("B")
            got = 0
            while got < len(view):
                k = f.readinto(view[got:])
                if not k:
                    raise CheckpointError(f"feature store file {path} ends early; "
                                          "extract again (fsa-lt extract --force)")
                got += k
            if host is not dst:
                dst[a:b].copy_(buf, non_blocking=False)


def _load(folder: Path, shards: list[dict], key: str, device: torch.device) -> torch.Tensor:
    first = shards[0]["files"][key]
    n = shards[-1]["end"]
    out = torch.empty((n, *first["shape"][1:]), dtype=_torch_dtype(_dtype(first["dtype"])), device=device)
    for s in shards:
        if s["end"] > s["start"]:
            _read_into(folder / s["files"][key]["file"], out[s["start"]: s["end"]])
    return out


def open_store(folder: Path, index: dict, device, access: str = "auto"):
    """Phase III's view of a cached store: ``(fmaps, cams, labels, pooled, how)``.

    `labels` (N, int64) is always a CPU tensor. `access` ("auto", "memory", "mmap"; see
    `choose_access`): in memory, `fmaps` and `cams` are tensors on `device` (CUDA) or in host
    memory; memory-mapped, `fmaps` and `cams` are `MappedRows` on the CPU (gathered per batch).
    `pooled` (N x C float32, small next to the maps) is a tensor on `device` either way, read
    without a second host copy. `how` says which access, and why, in words (for the log).
    Every file is checked first (`check_shards`)."""
    folder = Path(folder)
    device = torch.device(device)
    if index.get("mode") != "cached":
        raise ConfigError(f"{folder} was extracted online: it holds no feature maps")
    check_shards(folder, index)
    shards = sorted(index["shards"], key=lambda s: s["start"])
    nbytes = sum(s["files"][k]["bytes"] for s in shards for k in ("fmaps", "cams"))
    how, reason = choose_access(nbytes, device, access)
    _steady_malloc()
    labels = _load(folder, shards, "labels", torch.device("cpu"))
    pooled = _load(folder, shards, "pooled", device)
    if how == "memory":
        on = device if device.type == "cuda" else torch.device("cpu")
        fmaps, cams = _load(folder, shards, "fmaps", on), _load(folder, shards, "cams", on)
        words = f"in {'device' if on.type == 'cuda' else 'host'} memory ({on})"
    else:
        live = [s for s in shards if s["end"] > s["start"]]
        fmaps, cams = (MappedRows([folder / s["files"][k]["file"] for s in live], [s["start"] for s in live])
                       for k in ("fmaps", "cams"))
        words = f"memory-mapped from {len(live)} shard file(s), maps and CAMs gathered per batch"
    return fmaps, cams, labels, pooled, f"{how}: {words}; {reason}"


def load_shards(folder: Path, index: dict) -> dict:
    """The whole store in host memory: fmaps, cams, labels, pooled (CPU tensors; for tests and tools)."""
    fmaps, cams, labels, pooled, _ = open_store(folder, index, "cpu", "memory")
    return {"fmaps": fmaps, "cams": cams, "labels": labels, "pooled": pooled}


def load_confusion(folder: Path) -> torch.Tensor:
    return torch.load(folder / "confusion.pt", map_location="cpu", weights_only=True)


def save_confusion(folder: Path, scores: torch.Tensor) -> Path:
    return torch_save(folder / "confusion.pt", scores)
