"""Which S3 client library for the object store: what each costs per request and per byte.

``python -m bench.s3_clients`` starts a throwaway SeaweedFS (tests/services/seaweedfs.py;
or ``--endpoint`` with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and ``--bucket`` for a
server of your own) and measures, for each candidate that is installed, in a fresh
child process of its own (so import time and peak memory are its own):

* import time (median of 5 fresh interpreters) and client set-up time;
* small requests (1 KiB): PUT, HEAD, GET, DELETE, one after another on one
  connection: median and p95 latency, and the client's CPU per request;
* a streamed 200 MB upload as a multipart upload of 8 MiB parts (the part size of
  ``S3BlobStore``) from one reused buffer, and a streamed GET of it read in 1 MiB
  pieces: MB/s, the client's CPU per MB, and the child's peak RSS.

Candidates: ``botocore`` (the client inside boto3: boto3 adds only its resource layer
and s3transfer, which the store does not need; ``boto3``'s import time is shown
too), ``minio`` (MinIO's SDK) and ``obstore`` (Rust's object_store crate). Install
them in the venv that runs this (``pip install boto3 minio obstore``); the missing
ones are listed and skipped. The server's own CPU is not counted: it is the same
server for all.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
PART = 8 * MIB
CANDIDATES = ("botocore", "minio", "obstore")
IMPORTS = {
    "boto3": "import boto3",
    "botocore": "import botocore.session",
    "minio": "import minio",
    "obstore": "import obstore, obstore.store",
}


# --- the parent: server, children, table ----------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint", help="an S3 server of your own (default: start SeaweedFS)")
    parser.add_argument("--bucket", default="imgshare-bench")
    parser.add_argument("--size-mb", type=int, default=200, help="the streamed object (MB)")
    parser.add_argument("--requests", type=int, default=200, help="small requests of each kind")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--child", choices=CANDIDATES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_child(args.child, args.bucket, args.size_mb, args.requests)))
        return

    installed = [name for name in CANDIDATES if _importable(name)]
    missing = sorted(set(CANDIDATES) - set(installed))
    if missing:
        print(f"not installed, skipped: {', '.join(missing)}")
    server = None
    if args.endpoint:
        env = {**os.environ, "AWS_ENDPOINT_URL": args.endpoint}
        bucket = args.bucket
    else:
        sys.path.insert(0, str(REPO / "tests"))
        from services.seaweedfs import SeaweedFS

        server = SeaweedFS(bucket=args.bucket).start()
        print(
            f"SeaweedFS ready in {server.ready_after:.1f} s, "
            f"RSS {server.rss_bytes() / MIB:.0f} MB, at {server.endpoint_url}"
        )
        env = {**os.environ, **server.env()}
        bucket = server.bucket
    try:
        results: dict[str, dict[str, Any]] = {}
        for name in ["boto3", *installed] if "botocore" in installed else installed:
            results.setdefault(name, {})["import_ms"] = import_time(name)
        for name in installed:
            print(f"measuring {name} ...", flush=True)
            command = [
                sys.executable, "-m", "bench.s3_clients", "--child", name,
                "--bucket", bucket, "--size-mb", str(args.size_mb),
                "--requests", str(args.requests),
            ]  # fmt: skip
            out = subprocess.run(
                command, cwd=REPO, env=env, capture_output=True, text=True, check=False
            )
            if out.returncode != 0:
                print(f"{name} failed:\n{out.stderr[-3000:]}")
                continue
            results[name].update(json.loads(out.stdout.strip().splitlines()[-1]))
            results[name]["version"] = _version(name)
    finally:
        if server is not None:
            server.stop()
    print_table(results, args.size_mb)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


def _importable(name: str) -> bool:
    code = IMPORTS[name]
    return subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def _version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "?"


def import_time(name: str, runs: int = 5) -> float:
    """Median milliseconds of ``import`` in a fresh interpreter (files already cached)."""
    code = (
        "import time; t = time.perf_counter(); " + IMPORTS[name] + "; "
        "print((time.perf_counter() - t) * 1000)"
    )
    times = []
    for _ in range(runs + 1):  # the first run warms the page cache
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if out.returncode != 0:
            return float("nan")
        times.append(float(out.stdout))
    return statistics.median(times[1:])


def print_table(results: dict[str, dict[str, Any]], size_mb: int) -> None:
    print()
    print(f"{'':24}" + "".join(f"{name:>14}" for name in results))
    rows: list[tuple[str, str, str]] = [
        ("version", "version", "{}"),
        ("import (ms)", "import_ms", "{:.0f}"),
        ("client set-up (ms)", "setup_ms", "{:.1f}"),
    ]
    for op in ("put", "head", "get", "delete"):
        rows.append((f"{op.upper()} 1 KiB p50 (ms)", f"{op}_p50_ms", "{:.2f}"))
        rows.append((f"{op.upper()} 1 KiB p95 (ms)", f"{op}_p95_ms", "{:.2f}"))
        rows.append((f"{op.upper()} CPU/req (ms)", f"{op}_cpu_ms", "{:.2f}"))
    for op, label in (("upload", f"multipart PUT {size_mb} MB"), ("download", "streamed GET")):
        rows.append((f"{label} MB/s", f"{op}_mb_s", "{:.0f}"))
        rows.append((f"{label} CPU ms/MB", f"{op}_cpu_ms_per_mb", "{:.2f}"))
    rows.append(("RSS after set-up (MB)", "rss_setup_mb", "{:.0f}"))
    rows.append(("peak RSS (MB)", "peak_rss_mb", "{:.0f}"))
    for label, key, fmt in rows:
        cells = []
        for figures in results.values():
            value = figures.get(key)
            cells.append(f"{'-' if value is None else fmt.format(value):>14}")
        print(f"{label:24}" + "".join(cells))


# --- a child: one library -------------------------------------------------------------


class Client:
    """What the bench does with each library: the same calls the store would make."""

    def put(self, key: str, data: bytes) -> None: ...
    def head(self, key: str) -> int: ...
    def get(self, key: str) -> bytes: ...
    def delete(self, key: str) -> None: ...
    def upload(self, key: str, parts: Iterator[memoryview], size: int) -> None: ...
    def download(self, key: str, sink: Callable[[memoryview], None]) -> int: ...


def make_client(name: str, bucket: str) -> Client:
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    access, secret = os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]
    region = os.environ.get("AWS_REGION", "us-east-1")
    if name == "botocore":
        return BotocoreClient(endpoint, access, secret, region, bucket)
    if name == "minio":
        return MinioClient(endpoint, access, secret, region, bucket)
    return ObstoreClient(endpoint, access, secret, region, bucket)


class BotocoreClient(Client):
    def __init__(self, endpoint: str, access: str, secret: str, region: str, bucket: str):
        import botocore.config
        import botocore.session

        self.bucket = bucket
        self.s3 = botocore.session.get_session().create_client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=access,
            aws_secret_access_key=secret,
            region_name=region,
            config=botocore.config.Config(
                s3={"addressing_style": "path"}, retries={"mode": "standard"}
            ),
        )

    def put(self, key: str, data: bytes) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=data)

    def head(self, key: str) -> int:
        return int(self.s3.head_object(Bucket=self.bucket, Key=key)["ContentLength"])

    def get(self, key: str) -> bytes:
        body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"]
        with body:
            return bytes(body.read())

    def delete(self, key: str) -> None:
        self.s3.delete_object(Bucket=self.bucket, Key=key)

    def upload(self, key: str, parts: Iterator[memoryview], size: int) -> None:
        upload_id = self.s3.create_multipart_upload(Bucket=self.bucket, Key=key)["UploadId"]
        done = []
        for number, part in enumerate(parts, 1):
            # botocore takes bytes, bytearray or a file, not a memoryview
            body = part.obj if part.nbytes == len(part.obj) else part.tobytes()  # type: ignore[arg-type]
            answer = self.s3.upload_part(
                Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body
            )
            done.append({"ETag": answer["ETag"], "PartNumber": number})
        self.s3.complete_multipart_upload(
            Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": done}
        )

    def download(self, key: str, sink: Callable[[memoryview], None]) -> int:
        body = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"]
        total = 0
        with body:
            while chunk := body.read(MIB):
                sink(memoryview(chunk))
                total += len(chunk)
        return total


class MinioClient(Client):
    def __init__(self, endpoint: str, access: str, secret: str, region: str, bucket: str):
        from minio import Minio

        self.bucket = bucket
        host = endpoint.split("://", 1)[1]
        self.s3 = Minio(
            host,
            access_key=access,
            secret_key=secret,
            region=region,
            secure=endpoint.startswith("https"),
        )

    def put(self, key: str, data: bytes) -> None:
        self.s3.put_object(self.bucket, key, io.BytesIO(data), len(data))

    def head(self, key: str) -> int:
        return int(self.s3.stat_object(self.bucket, key).size or 0)

    def get(self, key: str) -> bytes:
        answer = self.s3.get_object(self.bucket, key)
        try:
            return bytes(answer.read())
        finally:
            answer.close()
            answer.release_conn()

    def delete(self, key: str) -> None:
        self.s3.remove_object(self.bucket, key)

    def upload(self, key: str, parts: Iterator[memoryview], size: int) -> None:
        # The public API pulls from a stream (put_object reads part_size at a time).
        self.s3.put_object(self.bucket, key, _PartsReader(parts), size, part_size=PART)

    def download(self, key: str, sink: Callable[[memoryview], None]) -> int:
        answer = self.s3.get_object(self.bucket, key)
        buffer = bytearray(MIB)
        view = memoryview(buffer)
        total = 0
        try:
            while n := answer.readinto(buffer):
                sink(view[:n])
                total += n
        finally:
            answer.close()
            answer.release_conn()
        return total


class _PartsReader(io.RawIOBase):
    def __init__(self, parts: Iterator[memoryview]) -> None:
        self._parts = parts
        self._left = memoryview(b"")

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        out = bytearray()
        while size < 0 or len(out) < size:
            if not self._left:
                try:
                    self._left = next(self._parts)
                except StopIteration:
                    break
            take = len(self._left) if size < 0 else min(size - len(out), len(self._left))
            out += self._left[:take]
            self._left = self._left[take:]
        return bytes(out)


class ObstoreClient(Client):
    def __init__(self, endpoint: str, access: str, secret: str, region: str, bucket: str):
        import obstore
        from obstore.store import S3Store

        self.obstore = obstore
        self.s3 = S3Store(
            bucket,
            endpoint=endpoint,
            access_key_id=access,
            secret_access_key=secret,
            region=region,
            virtual_hosted_style_request=False,
            client_options={"allow_http": True},
        )

    def put(self, key: str, data: bytes) -> None:
        self.obstore.put(self.s3, key, data)

    def head(self, key: str) -> int:
        return int(self.obstore.head(self.s3, key)["size"])

    def get(self, key: str) -> bytes:
        return bytes(self.obstore.get(self.s3, key).bytes())

    def delete(self, key: str) -> None:
        self.obstore.delete(self.s3, key)

    def upload(self, key: str, parts: Iterator[memoryview], size: int) -> None:
        # A buffered writer: multipart uploads of buffer_size parts (no abort: a
        # writer dropped unclosed is the only way to give up).
        with self.obstore.open_writer(self.s3, key, buffer_size=PART) as writer:
            for part in parts:
                writer.write(part)

    def download(self, key: str, sink: Callable[[memoryview], None]) -> int:
        total = 0
        for chunk in self.obstore.get(self.s3, key).stream(min_chunk_size=MIB):
            view = memoryview(chunk)
            sink(view)
            total += len(view)
        return total


def _rss_mb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / MIB


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_child(name: str, bucket: str, size_mb: int, requests: int) -> dict[str, float]:
    out: dict[str, float] = {}
    started = time.perf_counter()
    client = make_client(name, bucket)
    out["setup_ms"] = (time.perf_counter() - started) * 1000
    client.put(f"{name}/warm", b"w")  # the connection, the first request's lazy set-up
    client.delete(f"{name}/warm")
    out["rss_setup_mb"] = _rss_mb()

    small = os.urandom(1024)
    keys = [f"{name}/small/{i:05d}" for i in range(requests)]
    operations: list[tuple[str, Callable[[str], object]]] = [
        ("put", lambda key: client.put(key, small)),
        ("head", client.head),
        ("get", client.get),
        ("delete", client.delete),
    ]
    for op, call in operations:
        latencies = []
        cpu = _cpu()
        for key in keys:
            t = time.perf_counter()
            call(key)
            latencies.append((time.perf_counter() - t) * 1000)
        cpu = _cpu() - cpu
        latencies.sort()
        out[f"{op}_p50_ms"] = statistics.median(latencies)
        out[f"{op}_p95_ms"] = latencies[int(len(latencies) * 0.95) - 1]
        out[f"{op}_cpu_ms"] = cpu * 1000 / len(keys)

    size = size_mb * 1000 * 1000
    buffer = memoryview(os.urandom(PART))

    def parts() -> Iterator[memoryview]:
        left = size
        while left:
            take = min(left, PART)
            yield buffer[:take]
            left -= take

    key = f"{name}/big"
    t, cpu = time.perf_counter(), _cpu()
    client.upload(key, parts(), size)
    wall, cpu = time.perf_counter() - t, _cpu() - cpu
    out["upload_mb_s"] = size / 1e6 / wall
    out["upload_cpu_ms_per_mb"] = cpu * 1000 / (size / 1e6)
    if client.head(key) != size:
        raise SystemExit(f"{name}: the uploaded object has the wrong size")

    t, cpu = time.perf_counter(), _cpu()
    got = client.download(key, lambda view: None)
    wall, cpu = time.perf_counter() - t, _cpu() - cpu
    if got != size:
        raise SystemExit(f"{name}: read {got} bytes of {size}")
    out["download_mb_s"] = size / 1e6 / wall
    out["download_cpu_ms_per_mb"] = cpu * 1000 / (size / 1e6)
    client.delete(key)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


if __name__ == "__main__":
    main()
