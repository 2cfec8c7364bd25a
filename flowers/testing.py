"""`flowers serve` as a child process on free loopback ports, for the tests, the demo and the
benchmarks (not used by the server itself).

    with testing.running(["--model_config_file", path]) as (rest_url, grpc_addr): ...
"""
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time

from google.protobuf import text_format

from flowers.core import model_config
from flowers.serving import metrics as metrics_lib, protos
from flowers.serving.server import NO_VERSIONS, READY


def write_config_files(folder, model_name, base_path, *, labels=None, policy="latest {}", batching_text=None,
                       metrics_path=metrics_lib.DEFAULT_PATH):
    """Write models.config (and batching.config, monitoring.config) into FOLDER, as in
    containers/serve; returns the `flowers serve` arguments that use them.
    `policy` is a FileSystemStoragePathSourceConfig.ServableVersionPolicy in text form."""
    config = model_config.single_model(model_name, str(base_path))
    model = model_config.find(config, model_name)
    text_format.Parse(policy, model.model_version_policy)
    for label, version in (labels or {}).items():
        model.version_labels[label] = version
    paths = {"model_config_file": os.path.join(folder, "models.config")}
    model_config.save(paths["model_config_file"], config)
    if batching_text is not None:
        paths["batching_parameters_file"] = os.path.join(folder, "batching.config")
        protos.parse(batching_text, protos.BatchingParameters)  # fail here, not in the server
        with open(paths["batching_parameters_file"], "w") as f:
            f.write(batching_text)
    if metrics_path:
        paths["monitoring_config_file"] = os.path.join(folder, "monitoring.config")
        with open(paths["monitoring_config_file"], "w") as f:
            f.write(f'prometheus_config {{ enable: true, path: "{metrics_path}" }}\n')
    args = [arg for name, path in paths.items() for arg in (f"--{name}", path)]
    return args + (["--enable_batching"] if batching_text is not None else [])


def free_port(host="127.0.0.1"):
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def start_subprocess(args, *, env=None, timeout_s=180, log_path=None, tries=3):
    """Start `flowers serve ARGS` on free loopback ports (chosen here: leave --port and
    --rest_api_port out of ARGS); wait until it has loaded its models and listens.
    Returns (proc, rest_url, grpc_addr); proc.log_path holds its output.
    Stop it with `stop_subprocess(proc)`, or use `running(ARGS)`."""
    for attempt in range(tries):
        port, rest_port = free_port(), free_port()
        path = log_path
        if path is None:
            fd, path = tempfile.mkstemp(prefix="flowers-serve-", suffix=".log")
            os.close(fd)
        cmd = [sys.executable, "-m", "flowers", "serve", "--port", str(port), "--rest_api_port", str(rest_port),
               *args]
        child_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1", **(env or {})}
        with open(path, "wb") as log_file:
            proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=child_env)
        proc.log_path = path
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(line in _tail(path, None) for line in (READY, NO_VERSIONS)):
                return proc, f"http://127.0.0.1:{rest_port}", f"127.0.0.1:{port}"
            if proc.poll() is not None:
                break
            time.sleep(0.2)
        else:
            stop_subprocess(proc)
            raise TimeoutError(f"flowers serve not ready after {timeout_s}s; log: {path}\n{_tail(path)}")
        if "bind" not in _tail(path).lower() or attempt == tries - 1:  # else a port was taken meanwhile
            raise RuntimeError(f"flowers serve exited with {proc.returncode}; log: {path}\n{_tail(path)}")


def stop_subprocess(proc, timeout_s=20):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@contextlib.contextmanager
def running(args, **kwargs):
    """`with running([...]) as (rest_url, grpc_addr): ...`"""
    proc, rest_url, grpc_addr = start_subprocess(args, **kwargs)
    try:
        yield rest_url, grpc_addr
    except BaseException:
        stop_subprocess(proc)
        print(f"flowers serve log: {proc.log_path}", file=sys.stderr)  # kept for the post-mortem
        raise
    stop_subprocess(proc)
    if "log_path" not in kwargs:
        os.remove(proc.log_path)


def _tail(path, n=4000):
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    return text if n is None else text[-n:]
