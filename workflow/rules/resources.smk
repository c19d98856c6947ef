# Resources of the compute rules, sized from what each job reads, raised on every retry and
# capped by config `resources:` (the model and its measurements: osteoimmune/slurm.py and the
# README's "On a SLURM cluster"). Local runs use them only to schedule jobs within --resources.

from osteoimmune.slurm import (  # noqa: E402
    data_mb,
    explain_failures,
    manifest_mb,
    memory_request,
    runtime_request,
)


def _resource_caps():
    # always set: config/config.yaml is merged under the run's config (Snakefile)
    return config["resources"]["max_mem_mb"], config["resources"]["max_runtime_min"]


def mem_mb(rule, *, fetched=False):
    """mem_mb of a job of ``rule`` from its input's data and attempt (osteoimmune.slurm).

    ``fetched``: the job reads the files of its input manifest (read_dataset, read_sample):
    their size counts, not the manifest's.
    """

    def resource(wildcards, input, attempt):
        size = manifest_mb(input.manifest) if fetched else data_mb(input)
        return memory_request(size, attempt, cap_mb=_resource_caps()[0], rule=rule)

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
