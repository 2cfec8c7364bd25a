"""`flowers serve`: a local stand-in for tensorflow_model_server, with its flags and files.

    flowers serve --model_config_file containers/serve/models.config \\
        --model_config_file_poll_wait_seconds 60 --enable_batching \\
        --batching_parameters_file containers/serve/batching.config \\
        --monitoring_config_file containers/serve/monitoring.config

gRPC on --port (8500), REST on --rest_api_port (8501; 0 disables REST, as in TF
Serving), both bound to loopback unless --grpc_host/--rest_api_host say otherwise.
Models are loaded before the ports open; then the file system and the config file
are polled. `flowers.testing` runs it as a child process for tests, the demo and benchmarks.
"""
import argparse
import asyncio
import concurrent.futures
import logging
import os
import signal
import socket
import sys

from flowers import cli
from flowers.core import defaults, images, model_config
from flowers.serving import batching, grpc_service, limits, metrics as metrics_lib, models, protos, rest

log = logging.getLogger("flowers.serve")
READY = "flowers serve: ready"
# Printed instead of READY when listening with no version loaded (e.g. an empty base path).
NO_VERSIONS = "flowers serve: listening, but no model version is loaded"


def _bool(text):
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def parse_args(argv=None):
    p = cli.ArgumentParser(prog="flowers serve", description=__doc__)
    flag = dict(nargs="?", const=True, default=False, type=_bool, metavar="BOOL")
    p.add_argument("--port", type=int, default=8500, help="gRPC port")
    p.add_argument("--grpc_host", default="127.0.0.1", help="gRPC bind address (not a TF Serving flag)")
    p.add_argument("--rest_api_port", type=int, default=8501, help="REST port; 0 disables the REST API")
    p.add_argument("--rest_api_host", default="127.0.0.1", help="REST bind address (not a TF Serving flag)")
    p.add_argument("--rest_api_timeout_in_ms", type=int, default=30000)
    p.add_argument("--rest_max_request_bytes", type=int, default=32 << 20,
                   help="larger REST bodies get 413 (not a TF Serving flag)")
    p.add_argument("--grpc_max_request_bytes", type=int, default=32 << 20,
                   help="larger gRPC messages get RESOURCE_EXHAUSTED (not a TF Serving flag)")
    p.add_argument("--grpc_socket_path", default="", help="also serve gRPC on this Unix socket")
    p.add_argument("--grpc_channel_arguments", default="",
                   help="gRPC server options, e.g. grpc.max_concurrent_streams=100,grpc.http2.max_pings_without_data=0")
    p.add_argument("--model_name", default=defaults.MODEL_NAME,
                   help="with --model_base_path (TF Serving's default is `default`; ours is the clients' default)")
    p.add_argument("--model_base_path", default="")
    p.add_argument("--model_config_file", default="")
    p.add_argument("--model_config_file_poll_wait_seconds", type=float, default=0,
                   help="re-read --model_config_file this often; 0: never")
    p.add_argument("--file_system_poll_wait_seconds", type=float, default=1,
                   help="look for new versions this often; 0: once at start")
    p.add_argument("--enable_batching", **flag)
    p.add_argument("--batching_parameters_file", default="")
    p.add_argument("--monitoring_config_file", default="")
    p.add_argument("--allow_version_labels_for_unavailable_models", **flag)
    p.add_argument("--enable_model_warmup", **flag,
                   help="replay assets.extra/tf_serving_warmup_requests before a version is AVAILABLE")
    p.add_argument("--prefer_tflite_model", **flag, help="not supported: TFLite models are refused")
    p.add_argument("--max_num_load_retries", type=int, default=5, help="retries of a version that failed to load")
    p.add_argument("--load_retry_interval_micros", type=int, default=60_000_000)
    p.add_argument("--max_image_pixels", type=int, default=images.DEFAULT_MAX_PIXELS,
                   help="reject *_bytes image inputs over this many pixels; 0: no check (not a TF Serving flag)")
    p.add_argument("--max_request_instances", type=int, default=limits.DEFAULT_MAX_INSTANCES,
                   help="requests with more instances get 400; 0: no cap (not a TF Serving flag)")
    p.add_argument("--max_request_pixels", type=int, default=limits.DEFAULT_MAX_REQUEST_PIXELS,
                   help="requests whose *_bytes images declare more pixels in all get 400; 0: no cap "
                        "(not a TF Serving flag)")
    p.add_argument("--rest_read_timeout_seconds", type=float, default=rest.DEFAULT_READ_TIMEOUT_S,
                   help="a REST body not all received by then gets 408, and idle keep-alive "
                        "connections are closed after it (not a TF Serving flag)")
    p.add_argument("--allow_reload_config_requests", **flag,
                   help="accept gRPC HandleReloadConfigRequest (unauthenticated!), only for base paths "
                        "under --reload_config_roots (not a TF Serving flag)")
    p.add_argument("--reload_config_roots", default="",
                   help="comma-separated folders/URLs reloaded base paths must be under; default: the "
                        "base paths the server starts with")
    p.add_argument("--model_threads", type=int, default=max(4, os.cpu_count() or 1),
                   help="threads for model calls when batching is off (not a TF Serving flag)")
    args = p.parse_args(argv)
    if not args.model_config_file and not args.model_base_path:
        p.error("give --model_config_file, or --model_base_path (with --model_name)")
    if args.prefer_tflite_model:
        p.error("--prefer_tflite_model: this server loads SavedModels only; run tensorflow_model_server for TFLite")
    try:
        args.grpc_options = grpc_service.channel_arguments(args.grpc_channel_arguments)
    except ValueError as e:
        p.error(str(e))
    return args


def check_ports_free(args):
    """Fail at once, before loading anything, if a port is taken (gRPC itself would share it)."""
    wanted = [("gRPC", args.grpc_host, args.port)]
    if args.rest_api_port:
        wanted.append(("REST", args.rest_api_host, args.rest_api_port))
    for what, host, port in wanted:
        if not port:
            continue
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do: TIME_WAIT is free
            try:
                s.bind((host, port))
            except OSError as e:
                raise OSError(f"cannot bind {what} to {_address(host, port)}: {e.strerror}; "
                              "is another flowers serve running there?") from None


def _address(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Server:
    """The whole server in this process's event loop: `await start()`, then `await stop()`."""

    def __init__(self, args):
        self.args = args
        if args.model_config_file:
            config = model_config.load(args.model_config_file)
        else:
            config = model_config.single_model(args.model_name, args.model_base_path)
        self.batching = None
        if args.enable_batching:
            params = (protos.load_batching(args.batching_parameters_file) if args.batching_parameters_file
                      else protos.BatchingParameters())
            self.batching = batching.Options.from_proto(params)
        self.metrics_path = None
        if args.monitoring_config_file:
            prometheus = protos.load_monitoring(args.monitoring_config_file).prometheus_config
            if prometheus.enable:
                self.metrics_path = prometheus.path or metrics_lib.DEFAULT_PATH
        threads = self.batching.num_batch_threads if self.batching else args.model_threads
        self.model_executor = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="model")
        self.load_executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="load")
        self.manager = models.Manager(
            config, config_path=args.model_config_file or None, batching_options=self.batching,
            model_executor=self.model_executor, load_executor=self.load_executor,
            allow_labels_for_unavailable=args.allow_version_labels_for_unavailable_models,
            max_load_retries=args.max_num_load_retries, load_retry_interval_s=args.load_retry_interval_micros / 1e6,
            max_image_pixels=args.max_image_pixels, warmup=args.enable_model_warmup,
            max_request_instances=args.max_request_instances, max_request_pixels=args.max_request_pixels)
        self.reload_roots = None
        if args.allow_reload_config_requests:
            self.reload_roots = ([r for r in args.reload_config_roots.split(",") if r]
                                 or [m.base_path for m in config.model_config_list.config])
        self.metrics = metrics_lib.Metrics(self.manager.model_names)
        self.manager.metrics = self.metrics
        self.grpc_addr = self.rest_url = None
        self._grpc = self._runner = self._poller = None

    async def start(self):
        args = self.args
        await self.manager.start()
        self._grpc = grpc_service.make_server(self.manager, metrics=self.metrics,
                                              max_request_bytes=args.grpc_max_request_bytes, options=args.grpc_options,
                                              reload_roots=self.reload_roots)
        addresses = [_address(args.grpc_host, args.port)]
        if args.grpc_socket_path:
            addresses.append(f"unix:{args.grpc_socket_path}")
        for address in addresses:
            try:
                port = self._grpc.add_insecure_port(address)
            except RuntimeError as e:
                raise OSError(f"cannot bind gRPC to {address}: {e}") from None
            if address.startswith("unix:"):
                log.info("Running gRPC ModelServer at UNIX socket %s", args.grpc_socket_path)
            else:
                self.grpc_addr = _address(args.grpc_host, port)
        await self._grpc.start()
        log.info("Running gRPC ModelServer at %s", self.grpc_addr)
        if args.rest_api_port:
            from aiohttp import web

            app = rest.make_app(self.manager, metrics=self.metrics, metrics_path=self.metrics_path,
                                max_request_bytes=args.rest_max_request_bytes,
                                timeout_s=args.rest_api_timeout_in_ms / 1000 if args.rest_api_timeout_in_ms > 0
                                else None, read_timeout_s=args.rest_read_timeout_seconds)
            self._runner = web.AppRunner(app, access_log=None, keepalive_timeout=args.rest_read_timeout_seconds)
            await self._runner.setup()
            site = web.TCPSite(self._runner, args.rest_api_host, args.rest_api_port, reuse_address=True)
            await site.start()
            self.rest_url = f"http://{_address(args.rest_api_host, args.rest_api_port)}"
            log.info("Exporting HTTP/REST API at %s%s", self.rest_url,
                     f" (metrics at {self.metrics_path})" if self.metrics_path else "")
        self._poller = asyncio.create_task(self.manager.poll(
            args.file_system_poll_wait_seconds, args.model_config_file_poll_wait_seconds))

    async def stop(self, grace_s=5.0):
        if self._poller:
            self._poller.cancel()
        if self._runner:
            await self._runner.cleanup()
        if self._grpc:
            await self._grpc.stop(grace_s)
        self.model_executor.shutdown(wait=False, cancel_futures=True)
        self.load_executor.shutdown(wait=False, cancel_futures=True)


def ready_line(server):
    """One line: where it listens and what it serves, or that it serves nothing yet."""
    where = f"grpc={server.grpc_addr} rest={server.rest_url or '-'}"
    loaded = server.manager.loaded_versions()  # {name: [versions]}
    served = ", ".join(f"{name} (versions {', '.join(map(str, versions))})" for name, versions in loaded.items()
                       if versions)
    if served:
        return f"{READY}: {where} models: {served}"
    bases = ", ".join(f"{name} under {path}" for name, path in server.manager.base_paths().items())
    return f"{NO_VERSIONS} ({bases or 'no models configured'}): {where}; waiting for versions"


async def _serve(args):
    server = Server(args)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    print(ready_line(server), flush=True)
    await stop.wait()
    log.info("shutting down")
    await server.stop()


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        check_ports_free(args)
    except OSError as e:
        print(f"flowers serve: {e}", file=sys.stderr, flush=True)
        return 1
    try:
        asyncio.run(_serve(args))
    except Exception as e:  # noqa: BLE001 - bad flags, files or ports: say so and exit non-zero
        log.error("Failed to start server: %s: %s", type(e).__name__, e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
