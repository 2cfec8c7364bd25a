"""Which model versions are loaded, and serving them: TF Serving's manager, on one machine.

For every model in the config the manager lists the numbered version folders under
its base path, loads the ones its version policy asks for (latest N by default,
`all`, or `specific`), swaps a version in only once it is fully loaded, unloads the
ones the policy drops, and resolves version labels. The file system and the config
file are re-read on their own intervals, so new versions and label moves take
effect without a restart. All state changes happen on the event loop thread;
loading and model calls run in thread pools.
"""
import asyncio
import dataclasses
import logging
import time

import tensorflow as tf
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, model_pb2

from flowers.core import base_path, images, model_config, storage
from flowers.serving import batching, limits, warmup
from flowers.serving.servable import Servable
from flowers.serving.errors import Code, from_tf_error, invalid, not_found, redact_paths

log = logging.getLogger(__name__)

State = get_model_status_pb2.ModelVersionStatus.State
# The most work one request may ask for (not TF Serving flags: without batching it has no cap,
# and 10,000 tiny images in one request would take the whole machine).


@dataclasses.dataclass
class _Model:
    config: object  # tensorflow_serving ModelConfig
    servables: dict = dataclasses.field(default_factory=dict)  # version -> Servable (AVAILABLE only)
    states: dict = dataclasses.field(default_factory=dict)  # version -> (State, error message)
    labels: dict = dataclasses.field(default_factory=dict)  # label -> version
    failures: dict = dataclasses.field(default_factory=dict)  # version -> (failed loads, time of the last)
    label_error: str = ""  # why the config's labels are not applied yet (logged once)


class Manager:
    def __init__(self, config, *, config_path=None, batching_options=None, model_executor, load_executor,
                 allow_labels_for_unavailable=False, max_load_retries=5, load_retry_interval_s=60.0,
                 max_image_pixels=images.DEFAULT_MAX_PIXELS, max_request_instances=limits.DEFAULT_MAX_INSTANCES,
                 max_request_pixels=limits.DEFAULT_MAX_REQUEST_PIXELS, metrics=None, warmup=False):
        self.config_path = config_path
        self.models = {}
        self.model_executor, self.load_executor = model_executor, load_executor
        self.allow_labels_for_unavailable = allow_labels_for_unavailable
        self.max_load_retries, self.load_retry_interval_s = max_load_retries, load_retry_interval_s
        self.max_image_pixels, self.metrics, self.warmup = max_image_pixels, metrics, warmup
        self.max_request_instances, self.max_request_pixels = max_request_instances, max_request_pixels
        self.scheduler = batching.Scheduler(batching_options, model_executor) if batching_options else None
        self._config_text = self._bad_config_text = None
        self._initial_config = config
        self._lock = asyncio.Lock()

    # -- loading ---------------------------------------------------------------------------------------

    async def apply_config(self, config):
        """Adopt a ModelServerConfig: add/remove models, new policies, then labels."""
        async with self._lock:
            wanted = {m.name: m for m in config.model_config_list.config}
            if not wanted:  # as TF Serving: an empty config changes nothing (a truncated file is no order)
                log.warning("model config lists no models: keeping the %d loaded", len(self.models))
                return
            for name in list(self.models):
                if name not in wanted:
                    log.info("model %s removed from the config: unloading", name)
                    del self.models[name]
            for name, cfg in wanted.items():
                if name in self.models:  # a new base path: the old versions serve until new ones load
                    self.models[name].config = cfg
                else:
                    self.models[name] = _Model(cfg)
            await self._sync_locked()

    async def reload_config_file(self):
        """Re-read --model_config_file; a changed file is applied, a broken one logged and ignored."""
        loop = asyncio.get_running_loop()
        text = None
        try:
            text = await loop.run_in_executor(self.load_executor, storage.read_text, self.config_path)
            if text in (self._config_text, self._bad_config_text):
                return False
            config = model_config.parse(text)
        except Exception as e:  # noqa: BLE001 - keep serving the old config; say so once per bad file
            if text is None or text != self._bad_config_text:
                log.error("cannot use model config %s: %s", self.config_path, e)
            self._bad_config_text = text
            return False
        self._config_text = text
        log.info("model config %s changed: applying", self.config_path)
        await self.apply_config(config)
        return True

    async def start(self):
        if self.config_path:
            await self.reload_config_file()
        else:
            await self.apply_config(self._initial_config)

    async def sync(self):
        async with self._lock:
            await self._sync_locked()

    async def _sync_locked(self):
        loop = asyncio.get_running_loop()
        for name, model in list(self.models.items()):
            try:
                on_disk = await loop.run_in_executor(self.load_executor, base_path.scan, model.config.base_path)
            except Exception as e:  # noqa: BLE001 - e.g. gs:// unreachable: keep what is loaded
                log.error("cannot list %s: %s", model.config.base_path, e)
                continue
            wanted = model_config.served_versions(model.config, on_disk)
            stale = {v for v, s in model.servables.items() if v in wanted and s.path != on_disk[v]}
            for version in sorted(wanted - (set(model.servables) - stale)):
                failed, last = model.failures.get(version, (0, 0.0))
                if failed and (failed > self.max_load_retries
                               or time.monotonic() - last < self.load_retry_interval_s):
                    continue
                await self._load(name, model, version, on_disk[version])
            # Availability preserving (TF Serving's default policy): old versions are unloaded only
            # once a wanted one is AVAILABLE, so a corrupt new version or a wrong base path leaves
            # the old ones serving.
            current = {v for v, s in model.servables.items() if v in wanted and s.path == on_disk[v]}
            if current:
                for version in set(model.servables) - current:
                    log.info("unloading %s version %d", name, version)
                    model.servables = {v: s for v, s in model.servables.items() if v != version}
                    if version not in wanted:
                        model.states[version] = (State.END, "")
            elif model.servables:
                log.warning("keeping %s versions %s: none of the wanted versions %s is available", name,
                            sorted(model.servables), sorted(wanted))
            if not on_disk and not model.servables:
                log.warning("no versions of model %s found under %s", name, model.config.base_path)
            self._apply_labels(name, model)

    async def _load(self, name, model, version, path):
        model.states[version] = (State.LOADING, "")
        log.info("loading %s version %d from %s", name, version, path)
        started = time.monotonic()
        try:
            servable = await asyncio.get_running_loop().run_in_executor(
                self.load_executor, self._load_servable, name, version, path)
        except Exception as e:  # noqa: BLE001 - a broken version must not stop the server
            failed = model.failures.get(version, (0, 0.0))[0] + 1
            model.failures[version] = (failed, time.monotonic())
            model.states[version] = (State.END, redact_paths(f"Failed to load version {version}: {e}".splitlines()[0]))
            log.error("loading %s version %d failed (attempt %d of %d): %s", name, version, failed,
                      self.max_load_retries + 1, e)
            return
        if self.models.get(name) is not model:  # removed from the config meanwhile
            return
        model.servables = {**model.servables, version: servable}  # swap in, fully loaded
        model.states[version] = (State.AVAILABLE, "")
        model.failures.pop(version, None)
        log.info("%s version %d available (loaded in %.1fs)", name, version, time.monotonic() - started)

    def _load_servable(self, name, version, path):
        """In the load thread: load, then replay the warmup requests (the version is not AVAILABLE
        before they ran, as in TF Serving)."""
        servable = Servable(name, version, path)
        if self.warmup:
            try:
                count = warmup.replay(servable)
            except Exception as e:
                servable.close()
                raise ValueError(f"warmup failed: {e}") from e
            if count:
                log.info("%s version %d: replayed %d warmup requests", name, version, count)
        return servable

    def _apply_labels(self, name, model):
        """Labels may only point at AVAILABLE versions (new labels at any, with the flag);
        otherwise the old labels stay and the config's are retried after each sync."""
        labels = dict(model.config.version_labels)
        if labels == model.labels:
            return
        for label, version in sorted(labels.items()):
            new_label = label not in model.labels
            if version not in model.servables and not (self.allow_labels_for_unavailable and new_label):
                error = (f"Request to assign label {label} to version {version} of model {name}, which is not "
                         "currently available for inference; keeping the old labels until it is")
                if error != model.label_error:
                    log.error("%s", error)
                    model.label_error = error
                return
        log.info("model %s labels: %s", name, labels)
        model.labels, model.label_error = labels, ""

    async def poll(self, fs_wait, config_wait):
        """Background loop: file system every fs_wait seconds, config file every config_wait."""
        next_fs = time.monotonic() + fs_wait if fs_wait > 0 else float("inf")
        next_config = time.monotonic() + config_wait if self.config_path and config_wait > 0 else float("inf")
        while next_fs < float("inf") or next_config < float("inf"):
            await asyncio.sleep(max(0.0, min(next_fs, next_config) - time.monotonic()))
            now = time.monotonic()
            if now >= next_config:
                next_config = now + config_wait
                if await self.reload_config_file():
                    continue  # applying the config synced the file system too
            if now >= next_fs:
                next_fs = now + fs_wait
                await self.sync()

    # -- lookups ---------------------------------------------------------------------------------------

    def model_names(self):
        return set(self.models)

    def loaded_versions(self):
        return {name: sorted(model.servables) for name, model in self.models.items()}

    def base_paths(self):
        return {name: model.config.base_path for name, model in self.models.items()}

    def resolve(self, name, version=None, label=None):
        """The Servable a request names, with TF Serving's errors."""
        model = self.models.get(name)
        if label:
            if model is None or label not in model.labels:
                raise invalid(f"Unrecognized servable version label: {label}")
            version = model.labels[label]
        if version is not None:
            servable = model.servables.get(version) if model else None
            if servable is None:
                raise not_found(f"Servable not found for request: Specific({name}, {version})")
            return servable
        if model is None or not model.servables:
            raise not_found(f"Servable not found for request: Latest({name})")
        return model.servables[max(model.servables)]

    def status(self, name, version=None, label=None):
        """GetModelStatusResponse for one model (all versions, or one)."""
        if not name:
            raise invalid("Missing model name in request.")
        model = self.models.get(name)
        if label:
            if model is None or label not in model.labels:
                raise invalid(f"Unrecognized servable version label: {label}")
            version = model.labels[label]
        states = dict(model.states) if model else {}
        if version is not None:
            if version not in states:
                raise not_found(f"Could not find version {version} of model {name}")
            states = {version: states[version]}
        if not states:
            raise not_found(f"Could not find any versions of model {name}")
        response = get_model_status_pb2.GetModelStatusResponse()
        for v in sorted(states, reverse=True):
            state, error = states[v]
            entry = response.model_version_status.add(version=v, state=state)
            entry.status.SetInParent()
            if error:
                entry.status.error_code = Code.UNKNOWN.value[0]
                entry.status.error_message = error
        return response

    def metadata(self, name, version=None, label=None):
        """GetModelMetadataResponse with the `signature_def` field, as TF Serving builds it."""
        if not name:
            raise invalid("Missing model name in request.")
        servable = self.resolve(name, version, label)
        response = get_model_metadata_pb2.GetModelMetadataResponse(
            model_spec=model_pb2.ModelSpec(name=name, signature_name=""))
        response.model_spec.version.value = servable.version
        response.metadata["signature_def"].Pack(servable.signature_defs)
        return response

    # -- inference -------------------------------------------------------------------------------------

    def check_inputs(self, servable, signature, inputs):
        """TF Serving's input checks, plus a decompression-bomb guard on `*_bytes` inputs."""
        expected = set(signature.inputs)
        extra = sorted(set(inputs) - expected)
        if extra:
            raise invalid(f"input tensor alias not found in signature: {extra[0]}. "
                          f"Inputs expected to be in the set {{{','.join(sorted(expected))}}}.")
        missing = sorted(expected - set(inputs))
        if missing:
            raise invalid(f"Request inputs do not match required inputs for model `{servable.name}`. "
                          f"Send extra: {{}}. Missing but required: {{{','.join(missing)}}}.")
        sizes = set()  # shapes are TensorFlow's business, as in TF Serving; batching needs a batch dim
        for arr in inputs.values():
            if self.scheduler is not None:
                if arr.ndim == 0:
                    raise invalid("Batching Run() input tensors must have at least one dimension")
                sizes.add(arr.shape[0])
        if len(sizes) > 1:
            raise invalid("Batching Run() input tensors must have equal 0th-dimension size")
        limits.check_work(signature, inputs, max((a.shape[0] for a in inputs.values() if a.ndim), default=0),
                          self.max_image_pixels, self.max_request_instances, self.max_request_pixels)
        return sizes.pop() if sizes else None

    async def predict(self, servable, signature, inputs):
        """Run the signature on {name: ndarray}; batched with other requests when batching is on."""
        size = self.check_inputs(servable, signature, inputs)
        try:
            if self.scheduler is None:
                return await asyncio.get_running_loop().run_in_executor(self.model_executor, signature, inputs)
            key = (signature.name, tuple((n, a.dtype.str, a.shape[1:]) for n, a in sorted(inputs.items())))
            queue = servable.queues.get(key)
            if queue is None:
                on_batch = self.metrics.observe_batch if self.metrics else None
                queue = servable.queues[key] = batching.BatchQueue(self.scheduler, signature, on_batch)
            return await queue.submit(inputs, size)
        except tf.errors.OpError as e:
            raise from_tf_error(e) from None
        except (TypeError, ValueError) as e:  # the function rejected the inputs
            raise invalid(str(e).splitlines()[0]) from None


def outputs_filter(outputs, wanted):
    """PredictRequest.output_filter: keep only the named outputs."""
    if not wanted:
        return outputs
    for name in wanted:
        if name not in outputs:
            raise invalid(f"output tensor alias not found in signature: {name} Outputs expected to be in the "
                          f"set {{{','.join(sorted(outputs))}}}.")
    return {name: outputs[name] for name in wanted}
