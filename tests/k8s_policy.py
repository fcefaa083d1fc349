"""Test support: a stand-in for the Kubernetes Job and JobSet controllers' failure handling.

It decides what happens to a Job (or JobSet) whose pods ended a given way, as the
documentation of those controllers says, and nothing more:

- Kubernetes, "Jobs" and "Handling retriable and non-retriable pod failures with Pod
  failure policy" (kubernetes.io/docs/concepts/workloads/controllers/job/#pod-failure-policy):
  a pod whose containers all exit 0 (restartPolicy Never) is Succeeded, and an Indexed
  Job is Complete once every index has a Succeeded pod; a pod policy is evaluated only
  for Failed pods, its rules in order, the first that matches decides: `onExitCodes`
  (operator In: some container, or the named one, exited with a listed code; NotIn: with
  a code not listed, 0 excepted) or `onPodConditions` (the pod has a condition of that
  type with that status, "True" by default). FailJob fails the Job with reason
  PodFailurePolicy; Ignore replaces the pod without counting it; Count (and no match)
  counts it against backoffLimit, and more failures than backoffLimit fail the Job with
  reason BackoffLimitExceeded.
- JobSet, "Failure Policy" (jobset.sigs.k8s.io/docs/concepts, failurePolicy.rules): when a
  child Job fails, the first rule whose onJobFailureReasons holds the Job's failure
  reason decides; RestartJobSet (also the default) recreates every child Job and counts
  against maxRestarts (more restarts fail the JobSet), RestartJobSetAndIgnoreMaxRestarts
  recreates them without counting, FailJobSet fails it.
"""

from __future__ import annotations

Pod = dict  # {"index": i, "exit_codes": {container: code}, "conditions": [{"type", "status"}]}


def pod_phase(pod: Pod) -> str:
    return "Succeeded" if all(c == 0 for c in pod["exit_codes"].values()) else "Failed"


def _matches(rule: dict, pod: Pod) -> bool:
    if "onExitCodes" in rule:
        r = rule["onExitCodes"]
        codes = [code for name, code in pod["exit_codes"].items()
                 if r.get("containerName") in (None, name)]
        if r["operator"] == "In":
            return any(code in r["values"] for code in codes)
        return any(code != 0 and code not in r["values"] for code in codes)
    return any(any(c["type"] == p["type"] and c.get("status", "True") == p.get("status", "True")
                   for c in pod["conditions"]) for p in rule.get("onPodConditions", []))


def pod_failure_action(job_spec: dict, pod: Pod) -> str:
    """FailJob, Ignore or Count for a Failed pod of a Job with spec `job_spec`."""
    for rule in job_spec.get("podFailurePolicy", {}).get("rules", []):
        if _matches(rule, pod):
            return rule["action"]
    return "Count"


def job_result(job_spec: dict, pods: list[Pod]) -> str:
    """"Complete", "Failed: <reason>" or "Running" (failed pods replaced) after `pods` ended."""
    failures = 0
    for pod in pods:
        if pod_phase(pod) == "Succeeded":
            continue
        action = pod_failure_action(job_spec, pod)
        if action == "FailJob":
            return "Failed: PodFailurePolicy"
        failures += action == "Count"
    if failures > job_spec.get("backoffLimit", 6):
        return "Failed: BackoffLimitExceeded"
    succeeded = {p["index"] for p in pods if pod_phase(p) == "Succeeded"}
    return "Complete" if len(succeeded) == job_spec["completions"] else "Running"


def jobset_result(jobset_spec: dict, job_results: list[str], restarts: int = 0) -> str:
    """"Completed", "Failed", "Restart (counted)" or "Restart (not counted)" for a JobSet
    whose child Jobs ended with `job_results`, after `restarts` counted restarts."""
    failed = [r.split(": ", 1)[1] for r in job_results if r.startswith("Failed")]
    if not failed:
        return "Completed" if all(r == "Complete" for r in job_results) else "Running"
    policy = jobset_spec.get("failurePolicy", {})
    action = next((rule["action"] for rule in policy.get("rules", [])
                   if failed[0] in rule.get("onJobFailureReasons", [])), "RestartJobSet")
    if action == "FailJobSet":
        return "Failed"
    if action == "RestartJobSetAndIgnoreMaxRestarts":
        return "Restart (not counted)"
    return "Failed" if restarts >= policy.get("maxRestarts", 0) else "Restart (counted)"
