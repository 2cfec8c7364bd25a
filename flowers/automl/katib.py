"""The search on a cluster: a Katib Experiment over flowers.automl.space, whose trials run
`python -m flowers.automl.trial` in the train image on GPU nodes; Katib's StdOut collector reads
the `accuracy=` lines the trial prints.

    python -m flowers.automl.katib > k8s/katib/experiment.yaml    (regenerate the manifest)

The Experiment is created with the kubernetes client's CustomObjectsApi, not the kubeflow-katib
SDK: the SDK pins protobuf<5 and our pin is protobuf 6, and the SDK's create_experiment is the
same CustomObjectsApi call with a typed model in front of it.
"""
import sys
import time

import yaml

from flowers.automl import space
from flowers.core import containers
from flowers.pipeline.wiring import GPU_NODE_LABEL

GROUP, VERSION, PLURAL = "kubeflow.org", "v1beta1", "experiments"
NAME, NAMESPACE = "flowers-automl", "kubeflow"
GPU_TYPE = "nvidia-tesla-t4"
RECORDS = "gs://BUCKET/flowers/embeddings/efficientnet_lite2"  # the manifest's placeholder
ALGORITHM = "tpe"  # Katib runs it with Optuna, as `flowers automl` does locally
PARALLEL, MAX_TRIALS, MAX_FAILED = 3, 30, 3


def parameter_specs():
    specs = []
    for name, kind, low, high, log in space.PARAMETERS:
        if kind == "categorical":
            feasible = {"list": [str(v) for v in high]}
        else:
            feasible = {"min": str(low), "max": str(high), "distribution": "logUniform" if log else "uniform"}
        specs.append({"name": name, "parameterType": kind, "feasibleSpace": feasible})
    return specs


def experiment(train_records=f"{RECORDS}/train", eval_records=f"{RECORDS}/eval", name=NAME, namespace=NAMESPACE,
               max_trials=MAX_TRIALS, parallel=PARALLEL, image=None, gpu_type=GPU_TYPE):
    """The Experiment as a dict (what k8s/katib/experiment.yaml holds, with the placeholders)."""
    args = [f"--train_records={train_records}", f"--eval_records={eval_records}"] + [
        f"--{p}=${{trialParameters.{p}}}" for p, *_ in space.PARAMETERS]
    job = {
        "apiVersion": "batch/v1", "kind": "Job",
        "spec": {"backoffLimit": 0, "template": {
            "metadata": {"annotations": {"sidecar.istio.io/inject": "false"}},
            "spec": {
                "restartPolicy": "Never",
                "nodeSelector": {GPU_NODE_LABEL: gpu_type},
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                "containers": [{
                    "name": "training-container",
                    "image": image or containers.image("train", gpu=True),
                    "command": ["python", "-m", "flowers.automl.trial"], "args": args,
                    "resources": {"limits": {"nvidia.com/gpu": 1}},
                }],
            }}},
    }
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "Experiment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "objective": {"type": "maximize", "objectiveMetricName": space.OBJECTIVE,
                          "additionalMetricNames": ["eval_accuracy"],
                          "metricStrategies": [{"name": space.OBJECTIVE, "value": "max"}]},
            "algorithm": {"algorithmName": ALGORITHM,
                          "algorithmSettings": [{"name": "random_state", "value": str(space.SEED)}]},
            "earlyStopping": {"algorithmName": "medianstop",
                              "algorithmSettings": [{"name": "min_trials_required", "value": "3"},
                                                    {"name": "start_step", "value": "5"}]},
            "parallelTrialCount": parallel, "maxTrialCount": max_trials, "maxFailedTrialCount": MAX_FAILED,
            "metricsCollectorSpec": {"collector": {"kind": "StdOut"}},
            "parameters": parameter_specs(),
            "trialTemplate": {
                "primaryContainerName": "training-container",
                "trialParameters": [{"name": p, "description": f"head {p}", "reference": p}
                                    for p, *_ in space.PARAMETERS],
                "trialSpec": job,
            },
        },
    }


def best_params(status):
    """An Experiment's status -> the optimal trial's parameters, typed as the search space says."""
    types = {name: (float if kind == "double" else type(choices[0])) for name, kind, _, choices, _ in space.PARAMETERS}
    assignments = status["currentOptimalTrial"]["parameterAssignments"]
    return {a["name"]: types[a["name"]](a["value"]) for a in assignments}


def run_experiment(body, poll_s=30, timeout_s=6 * 3600, log=print):
    """Create the Experiment in the cluster this runs in, wait for it, return (best params, status)."""
    from kubernetes import client, config

    config.load_incluster_config()
    api = client.CustomObjectsApi()
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        status = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name).get("status", {})
        conditions = {c["type"]: c["status"] for c in status.get("conditions", [])}
        log(f"katib {name}: {status.get('trialsSucceeded', 0)} succeeded, {status.get('trialsRunning', 0)} running")
        if conditions.get("Succeeded") == "True":
            return best_params(status), status
        if conditions.get("Failed") == "True":
            raise RuntimeError(f"Katib experiment {name} failed: {status.get('conditions')}")
        time.sleep(poll_s)
    raise TimeoutError(f"Katib experiment {name} did not finish in {timeout_s} s")


def main(argv=None):
    sys.stdout.write("# Generated by `python -m flowers.automl.katib` from flowers/automl/space.py: do not edit.\n"
                     + yaml.safe_dump(experiment(), sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
