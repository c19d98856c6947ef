# Resources of the compute rules, sized from what each job reads, raised on every retry and
# capped by config `resources:` (the model and its measurements: osteoimmune/slurm.py and the
# README's "On a SLURM cluster"). Local runs use them only to schedule jobs within --resources.

from osteoimmune.slurm import explain_failures, memory_request, runtime_request  # noqa: E402


def _resource_caps():
    # always set: config/config.yaml is merged under the run's config (Snakefile)
    return config["resources"]["max_mem_mb"], config["resources"]["max_runtime_min"]


def mem_mb():
    """mem_mb of a job from its input's size and attempt (osteoimmune.slurm.memory_request)."""

    def resource(wildcards, input, attempt):
        return memory_request(input.size_mb, attempt, cap_mb=_resource_caps()[0])

    return resource


def runtime():
    """runtime of a job, with its unit (osteoimmune.slurm.runtime_request)."""

    def resource(wildcards, input, attempt):
        return runtime_request(input.size_mb, attempt, cap_min=_resource_caps()[1])

    return resource


onerror:
    # A job SLURM killed for memory or time: say which, and what to raise (osteoimmune.slurm).
    max_mem, max_minutes = _resource_caps()
    for message in explain_failures(log, max_mem_mb=max_mem, max_runtime_min=max_minutes):
        print(message, file=sys.stderr)
